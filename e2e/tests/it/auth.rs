//! Auth (docs/protocol.md, "Auth"): refusals before the upgrade, the token's scope as the
//! widest view, refresh with `auth` frames, expiry (4011), Origins, and tokens kept out of
//! the logs.

use std::{collections::BTreeMap, time::Duration};

use e2e::{Service, System, WAIT, WsClient, publisher_config, spawn_publisher, spawn_ws};
use serde_json::{Value, json};
use testkit::{PgServer, RedisServer, free_port, http_get, wait_until};
use tokio::time::Instant;

use crate::support::{
    SECRET, Sse, UPGRADE, Writer, alg_none, claims, config, es256, fixture, hs_config, hs256, hs256_with, in_secs,
    positions, request, rs256,
};

/// `s` percent-encoded for a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn auth_server(redis: &RedisServer, vars: &[(&str, &str)]) -> Service {
    let ws = spawn_ws(hs_config(&redis.url(), vars)).await;
    ws.wait_ready().await;
    ws
}

/// Every way a token can be refused, each on `/ws` (an upgrade) and `/events`, as a Bearer
/// header and as `?access_token=`: a 401 with an RFC 6750 challenge and a one-line reason,
/// and no connection opened.
#[tokio::test]
async fn every_auth_failure_is_a_401_with_a_challenge_and_never_a_stream() {
    let redis = RedisServer::start().await;
    let ws = auth_server(&redis, &[]).await;
    let other_secret = "another-test-secret-of-enough-length-0123456789";
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "no token; send one as Authorization: Bearer <token> or ?access_token=<token>"),
        ("not a JWT", Some("not-a-jwt".to_owned()), "malformed token"),
        ("garbage parts", Some("a.b.c".to_owned()), "malformed token"),
        ("wrong signature", Some(hs256_with(other_secret, &claims("bob", json!({})))), "signature does not verify"),
        ("expired", Some(hs256(&json!({"sub": "bob", "exp": in_secs(-60)}))), "token expired at"),
        (
            "nbf in the future",
            Some(hs256(&json!({"sub": "bob", "exp": in_secs(3600), "nbf": in_secs(600)}))),
            "token not valid before",
        ),
        ("no exp", Some(hs256(&json!({"sub": "bob"}))), "token has no exp"),
        ("alg none", Some(alg_none(&claims("bob", json!({})))), r#"token signed with alg "none""#),
        (
            "a filter claim that does not parse",
            Some(hs256(&claims("bob", json!({"filter": ["customer_name"]})))),
            "filter claim",
        ),
    ];
    let mut refused = 0;
    for (what, token, needle) in &cases {
        for path in ["/ws", "/events"] {
            let mut attempts: Vec<(String, Vec<(&str, String)>)> = Vec::new();
            match token {
                None => attempts.push((path.to_owned(), vec![])),
                Some(token) => {
                    attempts.push((path.to_owned(), vec![("Authorization", format!("Bearer {token}"))]));
                    attempts.push((format!("{path}?protocol=orders.v1&access_token={}", enc(token)), vec![]));
                }
            }
            for (target, extra) in attempts {
                let mut headers: Vec<(&str, &str)> = if path == "/ws" { UPGRADE.to_vec() } else { vec![] };
                headers.extend(extra.iter().map(|(n, v)| (*n, v.as_str())));
                let response = request(ws.addr, &target, &headers).await;
                let via = if extra.is_empty() { "query" } else { "header" };
                let ctx = format!("{what} on {path} via {via}: {response:?}");
                refused += 1;
                assert_eq!(response.status, 401, "{ctx}");
                let challenge = response.header("www-authenticate").unwrap_or_else(|| panic!("a challenge: {ctx}"));
                if token.is_none() {
                    assert_eq!(challenge, r#"Bearer realm="orders""#, "{ctx}");
                } else {
                    assert!(
                        challenge.starts_with(r#"Bearer realm="orders", error="invalid_token", error_description=""#),
                        "{ctx}"
                    );
                }
                assert!(response.body.ends_with('\n') && response.body.matches('\n').count() == 1, "one line: {ctx}");
                assert!(response.body.contains(needle), "{needle:?} in the reason: {ctx}");
                if let Some(token) = token {
                    assert!(!response.body.contains(token.as_str()), "the token is not echoed: {ctx}");
                }
                assert!(response.header("upgrade").is_none(), "no upgrade: {ctx}");
                assert_ne!(response.header("content-type"), Some("text/event-stream"), "no event stream: {ctx}");
            }
        }
    }
    assert_eq!(ws.metric("ws_auth_failures_total").await, refused);
    assert_eq!(ws.metric("ws_connections_total").await, 0, "no connection was ever opened");
    assert_eq!(ws.metric("ws_open_sse_streams").await, 0);
}

/// Valid tokens open WebSocket and SSE connections, by header and by query, with each kind of
/// key; a token for another algorithm than the key's is refused (key confusion included).
#[tokio::test]
async fn valid_hs256_rs256_and_es256_tokens_connect() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "valid").await;
    let rsa_key = fixture("jwt-test-only-rsa-public.pem");
    let ec_key = fixture("jwt-test-only-ec-public.pem");
    let hs = spawn_ws(hs_config(&redis.url(), &[])).await;
    let rs = spawn_ws(config(&redis.url(), &[("WS_JWT_PUBLIC_KEY", &rsa_key)])).await;
    let es = spawn_ws(config(&redis.url(), &[("WS_JWT_PUBLIC_KEY", &ec_key)])).await;
    for ws in [&hs, &rs, &es] {
        ws.wait_ready().await;
    }
    let bob = claims("bob", json!({}));
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for (ws, token) in [(&hs, hs256(&bob)), (&rs, rs256(&bob)), (&es, es256(&bob))] {
        let bearer = format!("Bearer {token}");
        let (by_header, hello) =
            WsClient::connect_with_headers(&ws.ws_url(), true, &[("Authorization", &bearer)]).await;
        assert_eq!(hello.unwrap()["protocol"], 1);
        clients.push(by_header);
        clients.push(WsClient::connect(&format!("{}?access_token={token}", ws.ws_url())).await);
        streams.push(Sse::open(ws.addr, "/events", &[("Authorization", &bearer)]).await);
        streams.push(Sse::open(ws.addr, &format!("/events?access_token={token}"), &[]).await);
    }
    for sse in &mut streams {
        let hello = sse.next().await;
        assert_eq!(hello.event.as_deref(), Some("hello"), "{hello:?}");
    }
    for ws in [&hs, &rs, &es] {
        wait_until(WAIT, "every connection is open", || async { ws.metric("ws_open_connections").await == 4 }).await;
    }
    writer.inserts(1, "Bob").await;
    for client in &mut clients {
        assert_eq!(positions(&client.events(1).await), [1]);
    }
    for sse in &mut streams {
        assert_eq!(positions(&sse.changes(1).await), [1]);
    }

    // Each server takes its own algorithm only.
    let public_pem = std::fs::read_to_string(&rsa_key).unwrap();
    for (ws, token, needle) in [
        (&hs, rs256(&bob), "accepts only HS256"),
        (&rs, hs256(&bob), "accepts only RS256"),
        (&rs, hs256_with(&public_pem, &bob), "accepts only RS256"),
        (&rs, es256(&bob), "accepts only RS256"),
        (&es, rs256(&bob), "accepts only ES256"),
    ] {
        let response = request(ws.addr, &format!("/ws?access_token={token}"), UPGRADE).await;
        assert_eq!(response.status, 401, "{response:?}");
        assert!(response.body.contains(needle), "{response:?}");
    }
}

/// A copy of the rows a client holds, folded from a snapshot and the events after it.
#[derive(Debug)]
struct Viewer {
    what: String,
    client: WsClient,
    rows: BTreeMap<i64, Value>,
    events: Vec<Value>,
}

impl Viewer {
    /// Folds `frame` (of subscription `sub`, if the connection holds named ones) and checks
    /// that nothing outside Bob's scope is in it.
    fn take(&mut self, frame: &Value, sub: Option<&str>) {
        let text = frame.to_string();
        match frame["type"].as_str() {
            Some("snapshot") | Some("event") => {
                for secret in ["Alice", "alice-secret", "Bobby"] {
                    assert!(!text.contains(secret), "{}: {secret:?} is outside the token's scope: {frame}", self.what);
                }
            }
            _ => return,
        }
        if frame["type"] == "snapshot" {
            if let Some(sub) = sub
                && frame["id"] != sub
            {
                return;
            }
            for row in frame["rows"].as_array().unwrap() {
                self.rows.insert(row["order"]["id"].as_i64().unwrap(), row["order"].clone());
            }
            return;
        }
        if let Some(sub) = sub {
            assert_eq!(frame["subs"], json!([sub]), "{}: only {sub} gets events: {frame}", self.what);
        }
        let id = frame["order"]["id"].as_i64().unwrap();
        if frame["operation"] == "DELETE" || frame["view"] == "leave" {
            self.rows.remove(&id);
        } else {
            self.rows.insert(id, frame["order"].clone());
        }
        self.events.push(frame.clone());
    }

    fn ids(&self) -> Vec<i64> {
        self.rows.keys().copied().collect()
    }
}

/// Bob's rows (`customer_name = 'Bob'`) that also satisfy `extra`, as the database says.
async fn bobs(system: &System, extra: &str) -> Vec<i64> {
    let out = system.sql(&format!("SELECT id FROM orders WHERE customer_name = 'Bob' AND ({extra}) ORDER BY id")).await;
    out.lines().filter(|l| !l.is_empty()).map(|l| l.trim().parse().unwrap()).collect()
}

/// A token with `"filter":["customer_name=eq.Bob"]` sees Bob's rows only, in snapshots and
/// live events, whatever the client asks for: its own filters only narrow the view, a second
/// subscription gets no more, and rows moving out of or into the scope carry nothing of what
/// the token may not see.
#[tokio::test]
async fn a_token_filter_is_the_widest_view_and_nothing_the_client_sends_widens_it() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    let ws = spawn_ws(hs_config(&redis.url(), &[])).await;
    let system = System { pg, redis, publisher, ws: vec![ws] };
    system.wait_ready().await;
    let ws = &system.ws[0];
    system
        .sql(
            "INSERT INTO orders (customer_name, product_name) VALUES ('Alice', 'alice-lamp'), ('Alice', 'alice-desk'), \
             ('Bob', 'bob-chair'), ('Bob', 'bob-table'), ('Bobby', 'bobby-pen')",
        )
        .await;
    wait_until(WAIT, "the replica saw the seed rows", || async { ws.metric("ws_messages_in_total").await == 5 }).await;

    let token = hs256(&claims("bob", json!({"filter": ["customer_name=eq.Bob"]})));
    let url = |query: &str| format!("{}?snapshot=true&access_token={token}{query}", ws.ws_url());
    // (the client's own filter in the URL, the rows it should hold among Bob's, in SQL)
    let cases: &[(&[&str], &str)] = &[
        (&[], "true"),
        (&["customer_name=eq.Alice"], "false"),
        (&["customer_name=is.null"], "false"),
        (&["customer_name=neq.Bob"], "false"),
        (&["customer_name=not.eq.Bob"], "false"),
        (&["customer_name=in.(Alice,Bob)"], "true"),
        (&["customer_name=not.in.(Bob)"], "false"),
        (&["customer_name=eq.Bob,customer_name.eq.Alice"], "false"),
        (&["customer_name=eq.Bob)or(customer_name.eq.Alice"], "false"),
        (&["customer_name=like.*"], "true"),
        (&["customer_name=ilike.*"], "true"),
        (&["customer_name=is.not_null"], "true"),
        (&["customer_name=eq.Alice", "customer_name=eq.Bob"], "false"),
        (&["status=eq.pending"], "status = 'pending'"),
        (&["or=eq.Alice"], "false"),
    ];
    let mut viewers = Vec::new();
    for (filters, expected) in cases {
        let query: String = filters.iter().map(|f| format!("&filter={}", enc(f))).collect();
        let (client, _) = WsClient::connect_protocol(&url(&query)).await;
        viewers.push((
            Viewer { what: format!("filter {filters:?}"), client, rows: BTreeMap::new(), events: vec![] },
            *expected,
        ));
    }
    // PostgREST's own `or=(…)` parameter is not a filter here: ignored, the scope still holds.
    let (client, _) = WsClient::connect_protocol(&url("&or=(customer_name.eq.Alice,customer_name.eq.Bob)")).await;
    viewers.push((Viewer { what: "?or=(…)".into(), client, rows: BTreeMap::new(), events: vec![] }, "true"));

    // Subscribing by frame, after `?subscribe=false`: no filter gets the scope; a second
    // subscription with another filter gets nothing the scope does not allow.
    let no_default = format!("{}?subscribe=false&access_token={token}", ws.ws_url());
    let (mut framed, _) = WsClient::connect_protocol(&no_default).await;
    framed.send_json(&json!({"type": "subscribe", "id": "mine", "snapshot": true})).await;
    let mut mine = Viewer { what: "frames: mine".into(), client: framed, rows: BTreeMap::new(), events: vec![] };
    for frame in mine.client.frames_until("subscribed").await {
        mine.take(&frame, Some("mine"));
    }
    for (id, filter) in [
        ("alice", json!("customer_name=eq.Alice")),
        ("nulls", json!(["customer_name=is.null"])),
        ("not-bob", json!("customer_name=neq.Bob")),
        ("everyone", json!(["customer_name=in.(Alice,Bob,Bobby)"])),
    ] {
        mine.client.send_json(&json!({"type": "subscribe", "id": id, "filter": filter, "snapshot": true})).await;
        let frames = mine.client.frames_until("subscribed").await;
        let snapshot = frames.iter().find(|f| f["type"] == "snapshot").unwrap_or_else(|| panic!("{frames:?}"));
        assert_eq!(snapshot["id"], id, "{snapshot}");
        let mut rows: Vec<i64> =
            snapshot["rows"].as_array().unwrap().iter().map(|r| r["order"]["id"].as_i64().unwrap()).collect();
        rows.sort_unstable();
        let allowed: &[i64] = if id == "everyone" { &[3, 4] } else { &[] };
        assert_eq!(rows, allowed, "{id}: only Bob's rows, if any: {snapshot}");
        for frame in &frames {
            mine.take(frame, Some("mine"));
        }
    }
    // "everyone" is Bob's view too; keep only "mine" and the ones that must stay empty.
    mine.client.send_json(&json!({"type": "unsubscribe", "id": "everyone"})).await;
    assert_eq!(mine.client.frames_until("unsubscribed").await.last().unwrap()["id"], "everyone");

    for (viewer, expected) in &mut viewers {
        for frame in viewer.client.frames_until("subscribed").await {
            viewer.take(&frame, None);
        }
        assert_eq!(viewer.ids(), bobs(&system, expected).await, "{}: the snapshot", viewer.what);
    }
    assert_eq!(mine.ids(), [3, 4], "the snapshot of a subscription by frame");

    // Live: ids 1, 2 are Alice's, 3, 4 Bob's, 5 Bobby's.
    for sql in [
        "INSERT INTO orders (customer_name, product_name) VALUES ('Alice', 'alice-new')", // 6
        "INSERT INTO orders (customer_name, product_name) VALUES ('Bob', 'bob-new')",     // 7
        "UPDATE orders SET status = 'shipped' WHERE id IN (2, 4)",
        // Bob's row moves to Alice: Bob's clients are told it left, and nothing more.
        "UPDATE orders SET customer_name = 'Alice', product_name = 'alice-secret' WHERE id = 3",
        // Alice's row moves to Bob: it enters, without its old (Alice's) version.
        "UPDATE orders SET customer_name = 'Bob' WHERE id = 1",
        "UPDATE orders SET status = 'void' WHERE id = 5",
        "DELETE FROM orders WHERE id IN (2, 7)",
        "INSERT INTO orders (customer_name, product_name) VALUES ('Bob', 'bob-final')", // 8
    ] {
        system.sql(sql).await;
    }
    let all = std::iter::once((&mut mine, "true")).chain(viewers.iter_mut().map(|(v, e)| (v, *e)));
    let mut all: Vec<(&mut Viewer, &str)> = all.collect();
    // Those that hold Bob's last row have every event; then a ping, answered after whatever
    // the replica holds for the others (it has every event by then), closes each stream.
    for (viewer, expected) in &mut all {
        if *expected == "false" {
            continue;
        }
        let sub = viewer.what.starts_with("frames").then_some("mine");
        while !viewer.rows.contains_key(&8) {
            let frame = viewer.client.next_json().await;
            viewer.take(&frame, sub);
        }
    }
    for (viewer, expected) in &mut all {
        let sub = viewer.what.starts_with("frames").then_some("mine");
        viewer.client.send_json(&json!({"type": "ping", "id": "end"})).await;
        for frame in viewer.client.frames_until("pong").await {
            viewer.take(&frame, sub);
        }
        let truth = bobs(&system, expected).await;
        assert_eq!(
            viewer.ids(),
            truth,
            "{}: what it holds is Bob's rows of its filter: {:?}",
            viewer.what,
            viewer.events
        );
        if *expected == "false" {
            assert!(viewer.events.is_empty(), "{}: no event at all: {:?}", viewer.what, viewer.events);
        }
    }

    let scope = &all[1].0;
    assert_eq!(scope.what, "filter []");
    let of = |id: i64| scope.events.iter().filter(|e| e["order"]["id"] == id).collect::<Vec<_>>();
    let left = of(3);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["view"], "leave", "{}", left[0]);
    assert_eq!(left[0]["order"], json!({"id": 3}), "a row that left the scope shows only its key: {}", left[0]);
    assert_eq!(left[0]["old"]["customer_name"], "Bob", "its old version was Bob's: {}", left[0]);
    let entered = of(1);
    assert_eq!(entered.len(), 1, "{entered:?}");
    assert_eq!(entered[0]["view"], "enter", "{}", entered[0]);
    assert!(entered[0].get("old").is_none(), "the old version was Alice's: {}", entered[0]);
    assert_eq!(entered[0]["order"]["customer_name"], "Bob");
    assert!(of(5).is_empty() && of(6).is_empty() && of(2).is_empty(), "{:?}", scope.events);
}

/// A token's `select` is the most columns any subscription sees: a column outside it is a 403
/// on the URL and a `forbidden` error frame, and what is sent never has more.
#[tokio::test]
async fn a_select_outside_the_token_is_forbidden() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "select").await;
    let ws = auth_server(&redis, &[]).await;
    let scoped =
        claims("bob", json!({"filter": ["customer_name=eq.Bob"], "select": ["id", "customer_name", "status"]}));
    let token = hs256(&scoped);
    for path in ["/ws", "/events"] {
        for select in ["amount", "id,amount", "status,secret"] {
            let headers: &[(&str, &str)] = if path == "/ws" { UPGRADE } else { &[] };
            let target = format!("{path}?select={}&access_token={token}", enc(select));
            let response = request(ws.addr, &target, headers).await;
            assert_eq!(response.status, 403, "select={select} on {path}: {response:?}");
            assert_eq!(response.body.matches('\n').count(), 1, "{response:?}");
        }
    }

    let (mut all, _) = WsClient::connect_protocol(&format!("{}?access_token={token}", ws.ws_url())).await;
    let (mut narrow, _) =
        WsClient::connect_protocol(&format!("{}?select=status&access_token={token}", ws.ws_url())).await;
    // `*` is "every column the token allows".
    let (mut star, _) = WsClient::connect_protocol(&format!("{}?select=*&access_token={token}", ws.ws_url())).await;
    for select in [json!("amount"), json!(["id", "secret"])] {
        all.send_json(&json!({"type": "subscribe", "id": "wider", "select": select})).await;
        let error = all.next_json().await;
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("forbidden")), "{error}");
        assert_eq!(error["id"], "wider", "{error}");
    }
    let bob = |id: i64, status: &str| json!({"id": id, "customer_name": "Bob", "status": status, "amount": 9.5, "secret": "s"});
    writer.insert(&[bob(1, "pending"), json!({"id": 2, "customer_name": "Alice", "status": "x", "secret": "a"})]).await;
    writer.append("UPDATE", &[(bob(1, "shipped"), Some(bob(1, "pending")))]).await;
    let events = all.events(2).await;
    assert_eq!(positions(&events), [1, 3], "Bob's events only");
    assert_eq!(events[0]["order"], json!({"id": 1, "customer_name": "Bob", "status": "pending"}));
    assert_eq!(events[1]["order"], json!({"id": 1, "customer_name": "Bob", "status": "shipped"}));
    assert_eq!(events[1]["old"], json!({"id": 1, "customer_name": "Bob", "status": "pending"}));
    assert_eq!(star.events(2).await, events, "select=* is the token's select");
    let events = narrow.events(2).await;
    assert_eq!(events[0]["order"], json!({"id": 1, "status": "pending"}));
    assert_eq!(events[1]["old"], json!({"id": 1, "status": "pending"}));
    // The snapshot is projected the same way.
    all.send_json(&json!({"type": "subscribe", "snapshot": true})).await;
    let snapshot = all.frames_until("snapshot").await.pop().unwrap();
    assert_eq!(
        snapshot["rows"],
        json!([{"table": "orders", "order": {"id": 1, "customer_name": "Bob", "status": "shipped"}}])
    );
}

/// An `auth` frame with a new valid token for the same `sub` is answered with `authenticated`
/// and keeps the stream (no gap, no duplicate); the new scope applies at once; a refused one
/// changes nothing; and the refreshed expiry is the one that counts.
#[tokio::test]
async fn an_auth_frame_refreshes_the_token_and_keeps_the_stream() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "refresh").await;
    let ws = auth_server(&redis, &[("WS_JWT_LEEWAY", "0s")]).await;
    let short = claims("bob", json!({"exp": in_secs(3)}));
    let expires = Instant::now() + Duration::from_secs(3);
    let (mut c, _) = WsClient::connect_protocol(&format!("{}?access_token={}", ws.ws_url(), hs256(&short))).await;
    writer.inserts(3, "Bob").await;
    assert_eq!(positions(&c.events(3).await), [1, 2, 3]);

    // A refresh while events stream: every one of them arrives, once, in order.
    let long = claims("bob", json!({"exp": in_secs(3600)}));
    let appender = tokio::spawn(async move {
        for _ in 0..10 {
            writer.inserts(5, "Bob").await;
        }
        writer
    });
    c.send_json(&json!({"type": "auth", "token": hs256(&long)})).await;
    let mut seen = Vec::new();
    let mut authenticated = None;
    while seen.len() < 50 || authenticated.is_none() {
        let frame = c.next_json().await;
        match frame["type"].as_str() {
            Some("event") => seen.push(frame),
            Some("authenticated") => authenticated = Some(frame),
            _ => panic!("unexpected {frame}"),
        }
    }
    assert_eq!(authenticated.unwrap(), json!({"type": "authenticated", "exp": long["exp"]}));
    assert_eq!(positions(&seen), (4..=53).collect::<Vec<_>>(), "no gap, no duplicate across the refresh");
    let mut writer = appender.await.unwrap();

    // A narrower token narrows at once.
    let bob_only = claims("bob", json!({"exp": in_secs(3600), "filter": ["customer_name=eq.Bob"]}));
    c.send_json(&json!({"type": "auth", "token": hs256(&bob_only)})).await;
    assert_eq!(c.next_json().await["type"], "authenticated");
    writer.inserts(1, "Alice").await; // 54
    writer.inserts(1, "Bob").await; // 55
    assert_eq!(positions(&c.events(1).await), [55], "Alice's row is outside the new scope");

    // Refused tokens: an error, and nothing changes.
    let other_secret = "another-test-secret-of-enough-length-0123456789";
    for (token, needle) in [
        ("not-a-jwt".to_owned(), "malformed token"),
        (hs256(&json!({"sub": "bob", "exp": in_secs(-30)})), "token expired"),
        (hs256_with(other_secret, &long), "signature"),
        (hs256(&json!({"sub": "bob"})), "no exp"),
        (alg_none(&long), "alg"),
        (hs256(&claims("alice", json!({}))), "another subject"),
        (hs256(&json!({"exp": in_secs(3600)})), "another subject"),
        (hs256(&claims("bob", json!({"filter": ["nonsense"]}))), "filter claim is invalid"),
    ] {
        c.send_json(&json!({"type": "auth", "token": token})).await;
        let error = c.next_json().await;
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("unauthorized")), "{error}");
        assert!(error["message"].as_str().unwrap().contains(needle), "{needle}: {error}");
        assert!(!error.to_string().contains(&token), "the token is not echoed: {error}");
    }
    assert_eq!(ws.metric("ws_auth_failures_total").await, 8, "every refused auth frame is counted");
    writer.inserts(1, "Alice").await; // 56
    writer.inserts(1, "Bob").await; // 57
    assert_eq!(positions(&c.events(1).await), [57], "the scope is still the last accepted token's");

    // The first token's expiry has no effect any more.
    tokio::time::sleep_until(expires + Duration::from_millis(1500)).await;
    writer.inserts(1, "Bob").await; // 58
    assert_eq!(positions(&c.events(1).await), [58], "still open after the first token's exp");
    assert_eq!(ws.metric("ws_tokens_expired_total").await, 0);
}

/// A token that expires unrefreshed (WS_JWT_LEEWAY=0s) closes a WebSocket with 4011 and ends
/// an event stream with `event: close` carrying 4011.
#[tokio::test]
async fn an_expired_token_closes_websockets_with_4011_and_sse_with_a_close_event() {
    let redis = RedisServer::start().await;
    let ws = auth_server(&redis, &[("WS_JWT_LEEWAY", "0s")]).await;
    let token = hs256(&claims("bob", json!({"exp": in_secs(2)})));
    let opened = Instant::now();
    let (mut typed, _) = WsClient::connect_protocol(&format!("{}?access_token={token}", ws.ws_url())).await;
    let mut plain = WsClient::connect(&format!("{}?access_token={token}", ws.ws_url())).await;
    let mut sse = Sse::open(ws.addr, &format!("/events?access_token={token}"), &[]).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("hello"));

    for client in [&mut typed, &mut plain] {
        let (code, reason) = client.expect_close(Duration::from_secs(8)).await;
        assert_eq!(code, 4011, "{reason}");
        assert!(reason.starts_with("token expired; reconnect with a new token"), "{reason}");
    }
    let close = loop {
        let event = sse.next_within(Duration::from_secs(8)).await.expect("the close event in time");
        let event = event.expect("a close event before the stream ends");
        if event.event.as_deref() == Some("close") {
            break event;
        }
    };
    assert_eq!(close.json()["code"], 4011, "{close:?}");
    assert!(close.json()["reason"].as_str().unwrap().starts_with("token expired"), "{close:?}");
    assert!(matches!(sse.next_within(WAIT).await, Ok(None)), "the stream ends after the close event");
    let elapsed = opened.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "not before the token's exp: {elapsed:?}");
    assert_eq!(ws.metric("ws_tokens_expired_total").await, 3);
}

/// WS_ALLOWED_ORIGINS: a browser page of another origin gets 403 (before the token is looked
/// at); the allowed origin and requests without Origin connect.
#[tokio::test]
async fn origins_not_allowed_get_403() {
    let redis = RedisServer::start().await;
    let ws = auth_server(&redis, &[("WS_ALLOWED_ORIGINS", "https://shop.example.com")]).await;
    let token = hs256(&claims("bob", json!({})));
    let bearer = format!("Bearer {token}");
    for path in ["/ws", "/events"] {
        let mut headers: Vec<(&str, &str)> = if path == "/ws" { UPGRADE.to_vec() } else { vec![] };
        headers.push(("Origin", "https://evil.example.com"));
        headers.push(("Authorization", &bearer));
        let response = request(ws.addr, path, &headers).await;
        assert_eq!(response.status, 403, "{path}: {response:?}");
        assert!(
            response.body.starts_with(r#"origin "https://evil.example.com" is not allowed"#)
                && response.body.contains("WS_ALLOWED_ORIGINS")
                && response.body.matches('\n').count() == 1,
            "{response:?}"
        );
        headers.pop();
        assert_eq!(request(ws.addr, path, &headers).await.status, 403, "{path} without a token: the Origin first");
    }
    assert_eq!(ws.metric("ws_origins_refused_total").await, 4);

    let allowed = [("Origin", "https://shop.example.com"), ("Authorization", bearer.as_str())];
    let (mut from_shop, _) = WsClient::connect_with_headers(&ws.ws_url(), true, &allowed).await;
    let (mut no_origin, _) = WsClient::connect_with_headers(&ws.ws_url(), true, &allowed[1..]).await;
    let mut sse_shop = Sse::open(ws.addr, "/events", &allowed).await;
    let mut sse_none = Sse::open(ws.addr, "/events", &allowed[1..]).await;
    for sse in [&mut sse_shop, &mut sse_none] {
        assert_eq!(sse.next().await.event.as_deref(), Some("hello"));
    }
    for client in [&mut from_shop, &mut no_origin] {
        client.send_json(&json!({"type": "ping", "id": 1})).await;
        assert_eq!(client.next_json().await, json!({"type": "pong", "id": 1}));
    }
    assert_eq!(ws.metric("ws_origins_refused_total").await, 4);
}

/// With auth on and the ws-server's debug logs on, no token reaches the log: not from a
/// `?access_token=` that connects, one that is refused, a Bearer header, or an `auth` frame.
#[tokio::test]
async fn tokens_never_appear_in_the_logs() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ws.log");
    let port = free_port();
    let env = [
        ("REDIS_URL", redis.url()),
        ("PORT", port.to_string()),
        ("WS_BIND_ADDR", "127.0.0.1".to_owned()),
        ("WS_JWT_SECRET", SECRET.to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let mut child = testkit::service_command(env!("CARGO_BIN_EXE_e2e-ws-server"), &env)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the ws-server");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(WAIT, "the ws-server is ready", || async {
        http_get(addr, "/readyz").await.is_some_and(|r| r.0 == 200)
    })
    .await;
    let url = format!("ws://{addr}/ws");

    let good = hs256(&claims("bob", json!({"filter": ["customer_name=eq.Bob"]})));
    let refresh = hs256(&claims("bob", json!({"exp": in_secs(7200)})));
    let expired = hs256(&json!({"sub": "bob", "exp": in_secs(-60)}));
    let forged = hs256_with("another-test-secret-of-enough-length-0123456789", &claims("bob", json!({})));
    let refused_refresh = hs256(&claims("mallory", json!({})));
    let (mut c, _) = WsClient::connect_protocol(&format!("{url}?access_token={good}&filter=status=eq.pending")).await;
    c.send_json(&json!({"type": "auth", "token": refresh})).await;
    assert_eq!(c.next_json().await["type"], "authenticated");
    c.send_json(&json!({"type": "auth", "token": refused_refresh})).await;
    assert_eq!(c.next_json().await["code"], "unauthorized");
    c.send_json(&json!({"type": "auth", "token": "garbage.garbage.garbage"})).await;
    assert_eq!(c.next_json().await["code"], "unauthorized");
    let mut sse = Sse::open(addr, &format!("/events?access_token={good}"), &[]).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("hello"));
    assert_eq!(request(addr, &format!("/ws?access_token={expired}"), UPGRADE).await.status, 401);
    assert_eq!(request(addr, &format!("/events?access_token={forged}"), &[]).await.status, 401);
    let bearer = format!("Bearer {forged}");
    let mut headers = UPGRADE.to_vec();
    headers.push(("Authorization", &bearer));
    assert_eq!(request(addr, "/ws", &headers).await.status, 401);
    drop((c, sse));
    wait_until(WAIT, "both connections closed", || async {
        let (_, body) = http_get(addr, "/metrics").await.unwrap_or_default();
        body.contains("\nws_open_connections 0")
    })
    .await;
    testkit::terminate(child.id().expect("running"));
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits in time").unwrap();
    assert!(status.success(), "{status}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG") && text.contains("connection opening"), "debug lines were written:\n{text}");
    assert!(text.contains("access_token=REDACTED"), "the query is logged, redacted:\n{text}");
    for token in [&good, &refresh, &expired, &forged, &refused_refresh] {
        // Any part of it: the signature and the claims are each enough to matter.
        for part in token.split('.').filter(|p| p.len() > 16) {
            assert!(!text.contains(part), "a token part {part:?} is in the log:\n{text}");
        }
    }
    assert!(!text.contains("garbage.garbage"), "{text}");
}
