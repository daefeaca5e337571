//! Everything that crosses a process boundary, plus the small pieces every service shares.
//!
//! - [`channel`]: validated channel names and the fixed defaults (`orders_channel`, `orders_updates`)
//! - [`event`]: the NOTIFY payload the trigger sends and the event the publisher emits
//! - [`filter`]: PostgREST-syntax row filters and column selects, and the index of subscriptions by filter
//! - [`frames`]: WebSocket frames in both directions (protocol `orders.v1`)
//! - [`log`]: the replay log in Redis (keys, atomic append, claim, snapshot, reads)
//! - [`retry`]: the reconnect policy (`backon` exponential schedule with jitter, never giving up)
//! - [`env`]: configuration from the environment, reporting every problem at once
//! - [`ops`]: readiness, Prometheus metrics and the `/healthz` `/readyz` `/metrics` router
//! - [`timestamp`]: an event's `ts` as a `SystemTime` (for the latency histograms)
//! - [`store`]: one Redis server or a Redis Cluster behind one connection type; pub/sub vs sharded pub/sub
//! - [`service`]: the daemons' shared `main` (env, config, logging, bind, signals, exit code)
//! - [`telemetry`], [`shutdown`]: logging setup and the SIGINT/SIGTERM future

pub mod channel;
pub mod env;
pub mod event;
pub mod filter;
pub mod frames;
pub mod log;
pub mod ops;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod signed;
pub mod store;
pub mod telemetry;
pub mod timestamp;
