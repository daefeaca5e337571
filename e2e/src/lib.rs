//! Test harness for end-to-end tests: real PostgreSQL and Redis (private, from `testkit`),
//! the real publisher and ws-server replicas running in-process (their `run` functions, so a
//! test can stop and restart them), WebSocket and HTTP clients, and log capture.
//!
//! - [`System`]: the whole pipeline, with verbs for the faults tests inject
//! - [`Service`]: one in-process service (its address, stop, `/readyz`, `/metrics`)
//! - [`WsClient`]: a WebSocket client with bounded waits
//! - [`Crowd`]: followers and plain followers started and stopped together
//! - [`Follower`]: a resuming client that keeps a copy of the rows and records broken promises;
//!   [`PlainFollower`]: the same for a plain connection that must last
//! - [`SseClient`], [`SseRequest`]: a raw Server-Sent Events client (plain HTTP/1.1, chunked
//!   bodies, the event-stream parser) with bounded waits
//! - [`Process`]: a service as a real process (for SIGKILL)
//! - [`write_mix`]: a writer committing a mix of changes, some rolled back
//! - [`history`]: what reached Redis (the replay log, the state) and the table, to compare
//! - `logs`: every service's log lines, read back with [`Service::logs`]
//! - [`browser`]: a real headless Chromium over WebDriver, for the dashboard
//! - [`views`]: subscription views (filters, select, table): URLs, a folding client, what
//!   PostgreSQL says a view holds

pub mod browser;
mod client;
mod follower;
pub mod history;
mod logs;
mod process;
mod service;
pub mod sse;
pub mod views;
mod writer;

pub use browser::{Browser, BrowserOptions};
pub use client::WsClient;
pub use follower::{Crowd, Follower, PlainFollower};
pub use process::Process;
pub use service::{Service, System, publisher_config, spawn_publisher, spawn_ws, spawn_ws_on, ws_config};
pub use sse::{SseClient, SseEvent, SseItem, SseRequest};
pub use testkit::http_get;
pub use writer::write_mix;

use std::time::Duration;

/// How long a test waits for something that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(15);

/// A small deterministic PRNG (xorshift), so a failing schedule or load can be replayed from
/// its seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
