//! Shared by the auth, consumers and limits tests: ws-server configurations from env-like
//! variables, publisher processes (chaos, capture), test tokens, a fake publisher writing the replay log, raw HTTP requests (to read
//! refusals before the upgrade) and a minimal Server-Sent Events reader.
//!
//! The SSE reader is deliberately small and private to these tests (a harness one is planned
//! in `e2e/src/sse.rs`).

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use e2e::WAIT;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use protocol::{
    channel::ChannelName,
    log::{Append, Claim, Log, StateChange},
    retry::RetryPolicy,
};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};

/// Starts a publisher process (the shipped `main`, so a test can SIGKILL it) on a fresh health
/// port, with the harness's fast retries and `extra` variables.
pub(crate) fn start_publisher(
    name: &str,
    pg: &testkit::PgServer,
    redis: &testkit::RedisServer,
    dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> e2e::Process {
    let port = testkit::free_port();
    let mut env = vec![
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_PORT", port.to_string()),
        ("PUBLISHER_BIND_ADDR", "127.0.0.1".to_owned()),
        ("RETRY_MIN_DELAY", "50ms".to_owned()),
        ("RETRY_MAX_DELAY", "500ms".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    e2e::Process::start(env!("CARGO_BIN_EXE_e2e-publisher"), name, port, &env, dir)
}

/// The HS256 secret of the test servers (at least 32 bytes, as the server requires).
pub(crate) const SECRET: &str = "e2e-test-only-hs256-secret-0123456789abcdef";

/// A ws-server configuration from env-like variables (the JWT key fields are the crate's own,
/// so `WS_JWT_SECRET` and friends go through `from_lookup`), with the harness's fast retries.
pub(crate) fn config(redis_url: &str, vars: &[(&str, &str)]) -> ws_server::Config {
    let mut vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    vars.insert("REDIS_URL".to_owned(), redis_url.to_owned());
    let mut config = ws_server::Config::from_lookup(|k| vars.get(k).cloned()).expect("a valid test configuration");
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    config.keepalive_interval = Duration::from_secs(1);
    config
}

/// A configuration with HS256 auth on ([`SECRET`]) and `vars`.
pub(crate) fn hs_config(redis_url: &str, vars: &[(&str, &str)]) -> ws_server::Config {
    let mut all = vec![("WS_JWT_SECRET", SECRET)];
    all.extend_from_slice(vars);
    config(redis_url, &all)
}

/// The path of a key in `ws-server/tests/fixtures/`.
pub(crate) fn fixture(name: &str) -> String {
    format!("{}/../ws-server/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Seconds since 1970.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs()
}

/// `now() + secs` (negative: in the past).
pub(crate) fn in_secs(secs: i64) -> u64 {
    now().checked_add_signed(secs).expect("a time after 1970")
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).expect("claims serialize")
}

/// An HS256 token signed with `secret`.
pub(crate) fn hs256_with(secret: &str, claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key"), claims)
}

/// An HS256 token the test servers accept (if its claims are valid).
pub(crate) fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

/// An RS256 token signed with the fixture RSA key.
pub(crate) fn rs256(claims: &Value) -> String {
    use rsa::{pkcs1::EncodeRsaPrivateKey as _, pkcs8::DecodePrivateKey as _};
    let pem = std::fs::read_to_string(fixture("jwt-test-only-rsa-private.pem")).expect("the RSA fixture");
    let key = rsa::PrivateKey::from_pkcs8_pem(&pem).expect("a PKCS#8 RSA key");
    let der = key.to_pkcs1_der().expect("PKCS#1 DER");
    sign(Algorithm::RS256, &EncodingKey::from_rsa_der(der.as_bytes()), claims)
}

/// An ES256 token signed with the fixture EC P-256 key.
pub(crate) fn es256(claims: &Value) -> String {
    let pem = std::fs::read_to_string(fixture("jwt-test-only-ec-private.pem")).expect("the EC fixture");
    let (_, der) = p256::pkcs8::SecretDocument::from_pem(&pem).expect("a PKCS#8 EC key");
    sign(Algorithm::ES256, &EncodingKey::from_ec_der(der.as_bytes()), claims)
}

/// An unsigned token (`alg: none`, empty signature) with `claims`.
pub(crate) fn alg_none(claims: &Value) -> String {
    // base64url of {"alg":"none","typ":"JWT"}; the payload is a signed token's, the same claims.
    let payload = hs256(claims).split('.').nth(1).expect("three parts").to_owned();
    format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
}

/// Claims for subject `sub`, valid for an hour, with `extra` merged in.
pub(crate) fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({"sub": sub, "exp": in_secs(3600)});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    claims
}

/// Plays the publisher: appends events to the replay log (and the channel) with the log's own
/// scripts, so a test needs no PostgreSQL. Rows are keyed by their `id`.
pub(crate) struct Writer {
    conn: MultiplexedConnection,
    pub(crate) log: Log,
    claim: Claim,
    pub(crate) epoch: String,
    next_id: i64,
    /// `XADD MAXLEN ~`: what the log keeps (trimmed in whole nodes).
    pub(crate) maxlen: usize,
}

impl Writer {
    /// Claims a new history `epoch` with an empty state.
    pub(crate) async fn claim(redis_url: &str, epoch: &str) -> Writer {
        let client = redis::Client::open(redis_url).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to redis");
        let log = Log::new(&ChannelName::parse(protocol::channel::DEFAULT_REDIS_CHANNEL).expect("valid"));
        let claim = log.claim(&mut conn, epoch, 10, false, None).await.expect("claim a history");
        if !claim.seeded {
            log.seed(&mut conn, &claim, &[], true, true).await.expect("seed");
        }
        Writer { conn, log, epoch: claim.epoch.clone(), claim, next_id: 1, maxlen: 100_000 }
    }

    /// Appends one `operation` event per row (`old` for UPDATEs), in one atomic step;
    /// returns the last position.
    pub(crate) async fn append(&mut self, operation: &str, rows: &[(Value, Option<Value>)]) -> u64 {
        let mut bodies = Vec::new();
        for (row, old) in rows {
            let id = self.next_id;
            self.next_id += 1;
            let old = old.as_ref().map_or_else(String::new, |old| format!(r#","old":{old}"#));
            let rest = format!(r#""id":{id},"table":"orders","operation":"{operation}","order":{row}{old}}}"#);
            bodies.push((rest, format!("orders:{}", row["id"]), row.to_string(), id));
        }
        let appends: Vec<Append<'_>> = bodies
            .iter()
            .map(|(rest, field, row, id)| Append {
                body_rest: rest,
                event_id: Some(*id),
                state: match operation {
                    "DELETE" => StateChange::Delete { field },
                    _ => StateChange::Set { field, row },
                },
            })
            .collect();
        let append = self.log.append(&mut self.conn, &self.claim, None, self.maxlen, &appends);
        timeout(WAIT, append).await.expect("append in time").expect("append")
    }

    /// Inserts `rows` (each with an `id`); returns the last position.
    pub(crate) async fn insert(&mut self, rows: &[Value]) -> u64 {
        let rows: Vec<(Value, Option<Value>)> = rows.iter().map(|r| (r.clone(), None)).collect();
        self.append("INSERT", &rows).await
    }

    /// Inserts `n` rows of customer `customer`, in batches (ids from the event counter, so
    /// distinct); returns the last position.
    pub(crate) async fn inserts(&mut self, n: usize, customer: &str) -> u64 {
        let mut last = 0;
        let mut left = n;
        while left > 0 {
            let batch = left.min(250);
            let rows: Vec<Value> = (self.next_id..)
                .take(batch)
                .map(|id| json!({"id": id, "customer_name": customer, "status": "pending"}))
                .collect();
            last = self.insert(&rows).await;
            left -= batch;
        }
        last
    }

    /// `{"epoch":…,"pos":pos}` of this history.
    pub(crate) fn at(&self, pos: u64) -> Value {
        json!({"epoch": self.epoch, "pos": pos})
    }

    /// The stored position of durable consumer `key` (`sub/name` with auth on), as `EPOCH:POS`.
    pub(crate) async fn consumer(&mut self, key: &str) -> Option<String> {
        stored_consumer(&mut self.conn, key).await
    }

    /// The oldest position the log still holds.
    pub(crate) async fn first_pos(&mut self) -> Option<u64> {
        self.log.first_pos(&mut self.conn).await.expect("XRANGE")
    }
}

async fn stored_consumer(conn: &mut MultiplexedConnection, key: &str) -> Option<String> {
    let hash = format!("{{{}}}:consumers", protocol::channel::DEFAULT_REDIS_CHANNEL);
    let mut cmd = redis::cmd("HGET");
    cmd.arg(hash).arg(key);
    timeout(WAIT, cmd.query_async(conn)).await.expect("HGET in time").expect("HGET")
}

/// [`Writer::consumer`] without a writer (for polling from a closure).
pub(crate) async fn consumer_in(redis_url: &str, key: &str) -> Option<String> {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to redis");
    stored_consumer(&mut conn, key).await
}

/// The positions of event frames.
pub(crate) fn positions(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["pos"].as_u64().unwrap_or_else(|| panic!("an event with a position: {e}"))).collect()
}

/// An HTTP response read by [`request`].
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// Names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    /// Empty for a 101 or an event stream (not read).
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// The request headers of a WebSocket upgrade.
pub(crate) const UPGRADE: &[(&str, &str)] = &[
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Protocol", "orders.v1"),
];

/// Reads an HTTP response head from `stream`; what was read past it stays in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>) {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0_u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read the response head");
        assert!(n > 0, "the connection ended before a response head: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).expect("an ASCII head");
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status.unwrap_or_else(|| panic!("a status line in {head:?}")), headers)
}

/// Sends `GET target` with `headers` and reads the response: the whole body, unless it is a
/// 101 or an event stream (then the head only).
pub(crate) async fn request(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let (status, headers, mut buf) = send_request(&mut stream, addr, target, headers).await;
        let mut response = Response { status, headers, body: String::new() };
        if status == 101 || response.header("content-type") == Some("text/event-stream") {
            return response;
        }
        if response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            while !dechunk(&mut buf, &mut body) {
                read_more(&mut stream, &mut buf).await.then_some(()).expect("the chunked body ends");
            }
            response.body = String::from_utf8(body).expect("a UTF-8 body");
        } else {
            let length: usize = response.header("content-length").map_or(usize::MAX, |v| v.parse().expect("a length"));
            while buf.len() < length && read_more(&mut stream, &mut buf).await {}
            response.body = String::from_utf8(buf).expect("a UTF-8 body");
        }
        response
    };
    timeout(WAIT, exchange).await.unwrap_or_else(|_| panic!("no response to GET {target} within {WAIT:?}"))
}

async fn send_request(
    stream: &mut TcpStream,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut buf = Vec::new();
    let (status, headers) = read_head(stream, &mut buf).await;
    (status, headers, buf)
}

/// Reads more bytes into `buf`; `false` at the end of the stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0_u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Moves the complete chunks of `raw` (chunked transfer coding) to `body`; `true` once the
/// last (empty) chunk was read.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) -> bool {
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else { return false };
        let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("a chunk size, not {size_text:?}"));
        if raw.len() < line_end + 2 + size + 2 {
            return false;
        }
        body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return true;
        }
    }
}

pub(crate) use e2e::sse::SseEvent;

/// A `GET /events` stream (the harness's raw client, `e2e::sse`), with the few verbs these
/// tests use: blocks without data (`retry:`) and comments are skipped.
pub(crate) struct Sse(e2e::sse::SseClient);

impl Sse {
    /// Opens `target` (`/events?…`); panics unless it is a 200 event stream.
    pub(crate) async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Sse {
        let request = headers.iter().fold(e2e::sse::SseRequest::new(addr, target), |r, (n, v)| r.header(n, v));
        let client = request.send().await;
        assert_eq!(client.status, 200, "GET {target}: {:?}", client.headers);
        assert_eq!(client.header("content-type"), Some("text/event-stream"), "{:?}", client.headers);
        Sse(client)
    }

    /// The next event with data within `limit`: `Ok(None)` when the stream ended, `Err(())` on
    /// time out.
    pub(crate) async fn next_within(&mut self, limit: Duration) -> Result<Option<SseEvent>, ()> {
        let deadline = Instant::now() + limit;
        loop {
            match self.0.next_within(deadline.saturating_duration_since(Instant::now())).await {
                e2e::sse::Next::Item(e2e::sse::SseItem::Event(event)) if event.data.is_some() => {
                    return Ok(Some(event));
                }
                e2e::sse::Next::Item(_) => {}
                e2e::sse::Next::Ended => return Ok(None),
                e2e::sse::Next::TimedOut => return Err(()),
            }
        }
    }

    /// The next event; panics if none comes within [`WAIT`] or the stream ended.
    pub(crate) async fn next(&mut self) -> SseEvent {
        match self.next_within(WAIT).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the event stream ended"),
            Err(()) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next `n` changes (unnamed events), parsed, skipping named ones.
    pub(crate) async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let event = self.next().await;
            if event.event.is_none() {
                out.push(event.json());
            }
        }
        out
    }
}
