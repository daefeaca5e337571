//! A worker process: holds a share of the clients (at most one process's file limit), records
//! for every frame the instant it arrived, and counts each round when the coordinator sends the
//! round's COMMIT instants (`wire`). Runs as `orders-bench worker …`, started by the coordinator.

use std::borrow::Cow;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::clock::now_ns;
use crate::tag::{Tag, client_url, parse_product};
use crate::wire::{FromWorker, RoundCounts, ToWorker, Write};

/// What a worker is told on its command line.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The URLs clients connect to, round-robin by global client index: `ws://` for
    /// WebSocket, `http://…/events` for Server-Sent Events.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Global index of this worker's first client.
    #[arg(long)]
    pub first: u32,
    /// How many clients this worker holds.
    #[arg(long)]
    pub count: u32,
    /// The run's tag (in every written row's product_name).
    #[arg(long)]
    pub tag: u32,
    /// Each client subscribes to its own customer (`?filter=customer_name=eq.…`).
    #[arg(long)]
    pub filtered: bool,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// One receipt: round, sequence number, instant.
type Receipt = (u32, u32, u64);

#[derive(Debug, Default)]
struct Client {
    receipts: Mutex<Vec<Receipt>>,
    /// Receipts of the round in progress (to end the drain early).
    in_round: AtomicU32,
    closed: AtomicBool,
}

#[derive(Debug)]
struct Shared {
    tag: Tag,
    round: AtomicU32,
    foreign: AtomicU64,
}

/// Runs the worker until the coordinator sends `Stop` or closes stdin.
pub async fn run(args: WorkerArgs) -> Result<()> {
    let shared = Arc::new(Shared { tag: Tag(args.tag), round: AtomicU32::new(0), foreign: AtomicU64::new(0) });
    let clients: Vec<Arc<Client>> = (0..args.count).map(|_| Arc::default()).collect();

    // Connect everyone (bounded concurrency; each handshake bounded in time), then read.
    let mut tasks = tokio::task::JoinSet::new();
    let mut connected = 0u32;
    let mut failed = 0u32;
    let mut first_error = None;
    let mut handshakes = futures_util::stream::iter(0..args.count)
        .map(|i| {
            let g = args.first + i;
            let url = client_url(&args.urls, g, args.filtered.then_some(shared.tag));
            async move { (i, connect(&url).await.with_context(|| format!("connecting to {url}"))) }
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    while let Some((i, result)) = handshakes.next().await {
        match result {
            Ok(conn) => {
                connected += 1;
                tasks.spawn(read(conn, clients[i as usize].clone(), shared.clone()));
            }
            Err(e) => {
                failed += 1;
                clients[i as usize].closed.store(true, Ordering::Relaxed);
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    drop(handshakes);
    send(&FromWorker::Ready { connected, failed, first_error })?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await.context("reading the coordinator's commands")? {
        match serde_json::from_str::<ToWorker>(&line).context("parsing a coordinator command")? {
            ToWorker::Stop => break,
            ToWorker::Round { round, drain_ms, writes } => {
                let counts =
                    count_round(&clients, &shared, &args, round, Duration::from_millis(drain_ms), &writes).await;
                send(&FromWorker::Round(counts))?;
            }
        }
    }
    tasks.shutdown().await;
    Ok(())
}

fn send(msg: &FromWorker) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, msg)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client's connection: WebSocket (`ws://`) or Server-Sent Events (`http://…/events`).
enum Conn {
    Ws(Box<Ws>),
    /// The stream after the response headers, and the body bytes read with them.
    Sse(tokio::net::TcpStream, Vec<u8>),
}

async fn connect(url: &str) -> Result<Conn> {
    if url.starts_with("http://") {
        return connect_sse(url).await.map(|(s, rest)| Conn::Sse(s, rest));
    }
    connect_ws(url).await.map(|ws| Conn::Ws(Box::new(ws)))
}

/// An SSE stream over plain HTTP/1.0, so the body is the event stream itself until the server
/// closes it (no chunked framing to undo).
async fn connect_sse(url: &str) -> Result<(tokio::net::TcpStream, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("an SSE URL starts with http://")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let handshake = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the server closed before the response headers ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                anyhow::ensure!(head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"), "{head}");
                anyhow::ensure!(!head.contains("transfer-encoding: chunked"), "a chunked SSE body is not read here");
                return Ok((stream, buf.split_off(end + 4)));
            }
            anyhow::ensure!(buf.len() < 65536, "response headers over 64 KiB");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), handshake).await.context("SSE handshake timed out after 10s")?
}

async fn connect_ws(url: &str) -> Result<Ws> {
    // Small buffers: tens of thousands of clients share this process's memory.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let mut last = None;
    for attempt in 0..3u64 {
        let handshake = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Ok(Ok((ws, _))) => return Ok(ws),
            Ok(Err(e)) => last = Some(anyhow::Error::from(e)),
            Err(_) => last = Some(anyhow::anyhow!("handshake timed out after 10s")),
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    Err(last.expect("three attempts were made"))
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    order: Option<Order<'a>>,
}

#[derive(Deserialize)]
struct Order<'a> {
    #[serde(borrow)]
    product_name: Option<Cow<'a, str>>,
}

/// Reads one connection until it ends, timestamping every frame as it arrives.
async fn read(conn: Conn, client: Arc<Client>, shared: Arc<Shared>) {
    match conn {
        Conn::Ws(mut ws) => {
            while let Some(Ok(msg)) = ws.next().await {
                let at = now_ns();
                if let Message::Text(text) = msg {
                    receipt(text.as_str(), at, &client, &shared);
                }
            }
        }
        Conn::Sse(mut stream, mut pending) => {
            use tokio::io::AsyncReadExt;
            let mut chunk = vec![0u8; 16384];
            let mut at = now_ns();
            loop {
                // Each complete `data:` line is one frame (the server's JSON is one line).
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line = pending.drain(..=nl).collect::<Vec<u8>>();
                    let line = String::from_utf8_lossy(&line);
                    if let Some(data) = line.trim_end_matches(['\r', '\n']).strip_prefix("data:") {
                        receipt(data.strip_prefix(' ').unwrap_or(data), at, &client, &shared);
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        at = now_ns();
                        pending.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    }
    client.closed.store(true, Ordering::Relaxed);
}

/// Records one frame: ours and the Node reference's are both `{…,"operation","order":{…}}`.
fn receipt(text: &str, at: u64, client: &Client, shared: &Shared) {
    let parsed = serde_json::from_str::<Frame<'_>>(text)
        .ok()
        .and_then(|f| f.order?.product_name.and_then(|p| parse_product(&p, shared.tag)));
    match parsed {
        Some((round, seq)) => {
            client.receipts.lock().expect("never poisoned: no panics under the lock").push((round, seq, at));
            if round == shared.round.load(Ordering::Relaxed) {
                client.in_round.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            shared.foreign.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn count_round(
    clients: &[Arc<Client>],
    shared: &Shared,
    args: &WorkerArgs,
    round: u32,
    drain: Duration,
    writes: &[Write],
) -> RoundCounts {
    // commit_ns by seq, and (filtered) how many writes each customer got.
    let n = writes.iter().map(|w| w.0 as usize + 1).max().unwrap_or(0);
    let mut commit = vec![0u64; n];
    let mut customer = vec![u32::MAX; n];
    let mut per_customer = std::collections::HashMap::<u32, u32>::new();
    let mut committed = 0u32;
    for w in writes {
        commit[w.0 as usize] = w.2;
        customer[w.0 as usize] = w.1;
        if w.2 != 0 {
            committed += 1;
            *per_customer.entry(w.1).or_default() += 1;
        }
    }
    let expected_for = |g: u32| if args.filtered { per_customer.get(&g).copied().unwrap_or(0) } else { committed };

    // Drain: until every open client has as many receipts as it expects, or the deadline.
    let deadline = tokio::time::Instant::now() + drain;
    loop {
        let done = clients.iter().enumerate().all(|(i, c)| {
            c.closed.load(Ordering::Relaxed)
                || c.in_round.load(Ordering::Relaxed) >= expected_for(args.first + i as u32)
        });
        if done || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.round.store(round + 1, Ordering::Relaxed);

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
    let mut c = RoundCounts { round, ..RoundCounts::default() };
    let mut seen = vec![false; n];
    for (i, client) in clients.iter().enumerate() {
        client.in_round.store(0, Ordering::Relaxed);
        let g = args.first + i as u32;
        let receipts = std::mem::take(&mut *client.receipts.lock().expect("never poisoned: no panics under the lock"));
        seen.iter_mut().for_each(|s| *s = false);
        let mut distinct = 0u64;
        for (r, seq, at) in receipts {
            let s = seq as usize;
            if r < round {
                c.late += 1;
                continue;
            }
            if r > round || s >= n || commit[s] == 0 {
                // A write that failed on the writer's side, or one from a round not yet counted.
                c.foreign += 1;
                continue;
            }
            if args.filtered && customer[s] != g {
                c.misdelivered += 1;
                continue;
            }
            if seen[s] {
                c.duplicates += 1;
                continue;
            }
            seen[s] = true;
            distinct += 1;
            c.last_receipt_ns = c.last_receipt_ns.max(at);
            if at < commit[s] {
                c.early += 1;
            }
            hist.record(at.saturating_sub(commit[s])).expect("within the histogram's bounds");
        }
        let expected = u64::from(expected_for(g));
        c.expected += expected;
        c.delivered += distinct;
        c.lost += expected - distinct.min(expected);
        if client.closed.load(Ordering::Relaxed) {
            c.closed += 1;
        }
    }
    c.foreign += shared.foreign.swap(0, Ordering::Relaxed);
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(&hist, &mut bytes).expect("serializing to a Vec cannot fail");
    c.histogram = crate::tag::hex(&bytes);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(filtered: bool, count: u32) -> WorkerArgs {
        WorkerArgs { urls: vec!["ws://x/".into()], first: 10, count, tag: 1, filtered, connect_concurrency: 1 }
    }

    fn client(receipts: &[Receipt]) -> Arc<Client> {
        let c = Client::default();
        c.receipts.lock().unwrap().extend_from_slice(receipts);
        Arc::new(c)
    }

    #[tokio::test]
    async fn counts_lost_duplicated_early_and_late_receipts() {
        let shared = Shared { tag: Tag(1), round: AtomicU32::new(1), foreign: AtomicU64::new(2) };
        // Three writes committed at 1000, 2000, 3000 ns; write 3 failed.
        let writes = [Write(0, 0, 1000), Write(1, 0, 2000), Write(2, 0, 3000), Write(3, 0, 0)];
        let clients = vec![
            // All three, write 1 twice, write 0 before its COMMIT returned, one from round 0.
            client(&[(1, 0, 900), (1, 1, 2500), (1, 1, 2600), (1, 2, 3100), (0, 5, 50)]),
            // Write 2 never came; the failed write 3 did (it is not this round's to expect).
            client(&[(1, 0, 1100), (1, 1, 2100), (1, 3, 4000)]),
        ];
        let c = count_round(&clients, &shared, &args(false, 2), 1, Duration::ZERO, &writes).await;
        assert_eq!((c.expected, c.delivered, c.lost), (6, 5, 1));
        assert_eq!((c.duplicates, c.early, c.late, c.misdelivered), (1, 1, 1, 0));
        assert_eq!(c.foreign, 1 + 2, "the failed write, and the frames no write explains");
        let hist: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut crate::tag::unhex(&c.histogram).unwrap().as_slice())
            .unwrap();
        assert_eq!(hist.len(), 5);
        assert_eq!(hist.min(), 0, "the early receipt counts as 0, never negative");
        assert!(hist.max() >= 500 && hist.max() < 510, "{}", hist.max());
        assert_eq!(shared.round.load(Ordering::Relaxed), 2, "later receipts of round 1 are late");
        assert!(clients.iter().all(|c| c.receipts.lock().unwrap().is_empty()));
    }

    #[tokio::test]
    async fn filtered_clients_expect_only_their_customers_writes() {
        let shared = Shared { tag: Tag(1), round: AtomicU32::new(0), foreign: AtomicU64::new(0) };
        // Clients 10 and 11 (first = 10); writes for customers 10, 11, 11.
        let writes = [Write(0, 10, 1000), Write(1, 11, 1000), Write(2, 11, 1000)];
        let clients = vec![client(&[(0, 0, 1500), (0, 1, 1500)]), client(&[(0, 1, 1500)])];
        let c = count_round(&clients, &shared, &args(true, 2), 0, Duration::ZERO, &writes).await;
        assert_eq!((c.expected, c.delivered, c.lost, c.misdelivered), (3, 2, 1, 1));
    }
}
