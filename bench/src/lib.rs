//! `orders-bench`: a black-box benchmark of a realtime orders pipeline. It speaks only SQL (to
//! the `orders` table) and plain WebSocket (to the replicas' URLs), so the same command measures
//! this project and the Node.js reference. Latency runs from the instant a writer's COMMIT
//! returned to the instant a client had the event, on the machine's monotonic clock, across
//! the worker processes that hold the clients.
//!
//! - [`scenario`]: the coordinator (workers, rounds, the report)
//! - [`worker`]: one process's share of the clients
//! - [`writer`]: open-loop paced SQL writes
//! - [`publisher`]: committed rows → the Redis log, our system only
//! - [`compare`]: median ratios of repeated runs against two systems
//! - [`report`], [`wire`], [`tag`], [`procfs`], [`clock`]: figures, the worker pipe, naming writes,
//!   `/proc`, the shared clock

pub mod clock;
pub mod compare;
pub mod procfs;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod tag;
pub mod wire;
pub mod worker;
pub mod writer;
