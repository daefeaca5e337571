//! `cli-client`: a terminal monitor for the orders realtime pipeline, and a checker that says
//! which part of the pipeline is down and how to fix it.
//!
//! - [`args`]: the command line (clap derive), its help text and the exit codes
//! - [`feed`]: the WebSocket client: `orders.v1` negotiation with a fallback for older servers,
//!   reconnect with the shared backoff (rotating through several URLs), dead-server detection,
//!   resume from the last position printed (`subscribe` with `since`, dedupe by position),
//!   `--since` / `--snapshot` starts and `reset` handling; yields [`feed::FeedItem`]s
//! - [`view`]: rendering only (event lines, snapshot lines, JSON lines, status lines, check lines); knows
//!   nothing about sockets
//! - [`clock`]: an event's time as local `HH:MM:SS` (jiff, DST-correct), and its lag
//! - [`watch`]: the `watch` command, joining the feed to the renderer
//! - [`table`]: the `table` command: a full-screen live table (ratatui), its state kept in a
//!   pure model
//! - [`tls`]: `wss://`: the trusted CAs (system store, `--ca-file`) and certificate errors in words
//! - [`check`]: the `check` command: PostgreSQL, the `orders` table and trigger, Redis, the
//!   publisher and its backlog, every ws-server

pub mod args;
pub mod check;
pub mod clock;
pub mod feed;
pub mod table;
pub mod tls;
#[allow(clippy::print_stdout)]
pub mod view;
pub mod watch;
