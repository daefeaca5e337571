//! What the API tests share: a private PostgreSQL with the project's schema, the API running
//! in-process on a free port, and a minimal HTTP/1.1 client (any method, a body, headers).

#![allow(dead_code, unreachable_pub)] // Each test binary uses a different part.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use testkit::{PgServer, wait_until};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Time allowed for anything the tests wait for.
pub const WAIT: Duration = Duration::from_secs(20);

/// The project's schema, as the publisher's migrations apply it (the API never migrates).
const SCHEMA: [&str; 7] = [
    include_str!("../../../sql/0001_orders.sql"),
    include_str!("../../../sql/0002_realtime_events.sql"),
    include_str!("../../../sql/0003_notify.sql"),
    include_str!("../../../sql/0004_published_marks.sql"),
    include_str!("../../../sql/0005_log_positions.sql"),
    include_str!("../../../sql/0006_capture.sql"),
    include_str!("../../../sql/0007_signed_wakeups.sql"),
];

/// Applies the schema to the `postgres` database of `pg`.
pub async fn apply_schema(pg: &PgServer) {
    for sql in SCHEMA {
        pg.psql("postgres", sql).await;
    }
}

/// The API under test, stopped when dropped.
pub struct Api {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), orders_api::Error>>>,
}

impl Api {
    /// Starts the API on a free port against `database_url`, with `API_MAX_BODY_BYTES` of 1 KiB
    /// (so 413 is cheap to provoke); returns once it listens.
    pub async fn start(database_url: &str) -> Api {
        let config = orders_api::Config::from_lookup(|k| match k {
            "DATABASE_URL" => Some(database_url.to_owned()),
            "API_MAX_BODY_BYTES" => Some("1024".to_owned()),
            _ => None,
        })
        .expect("valid test configuration");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(orders_api::run(config, listener, shutdown.clone()));
        Api { addr, shutdown, task: Some(task) }
    }

    /// Starts a PostgreSQL with the schema and the API on it; waits until `/readyz` is 200.
    pub async fn with_database() -> (PgServer, Api) {
        let pg = PgServer::start().await;
        apply_schema(&pg).await;
        let api = Api::start(&pg.url()).await;
        api.wait_ready().await;
        (pg, api)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until(WAIT, "the API is ready", || async { self.get("/readyz").await.status == 200 }).await;
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None).await
    }

    /// `method path` with a JSON `body`.
    pub async fn send(&self, method: &str, path: &str, body: &str) -> Response {
        request(self.addr, method, path, Some(body)).await
    }

    /// Requests shutdown and waits for `run` to return; its result.
    pub async fn stop(mut self) -> Result<(), orders_api::Error> {
        self.shutdown.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(WAIT, task).await.expect("stopped in time").expect("run did not panic")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics, showing the response, if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts this is a problem with `status`, and returns its JSON.
    #[track_caller]
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let p = self.json();
        assert_eq!(p["status"], status, "{self:?}");
        for member in ["type", "title", "detail"] {
            assert!(p[member].is_string(), "{member} missing: {self:?}");
        }
        p
    }
}

/// One request on its own connection (`Connection: close`); panics if nothing answers in 10 s.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).await.expect("write body");
        }
        let mut raw = Vec::new();
        // A server that answers before reading the whole body (413) may reset the connection
        // after its response: what was read by then is the response.
        let _ = stream.read_to_end(&mut raw).await;
        parse(&String::from_utf8_lossy(&raw))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("the API answered in time")
}

fn parse(text: &str) -> Response {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}
