//! Test support for the workspace: private PostgreSQL and Redis servers that one test owns and
//! can stop, kill and restart, plus the helpers to wait for things without fixed sleeps.
//!
//! - `binaries`: finds `initdb`/`postgres`/`psql`, `redis-server` and `nginx`, or panics saying how to
//!   install them
//! - `process`: one server child process: log capture, readiness polling, stop/kill, no leaks
//! - `postgres`: [`PgServer`], a throwaway cluster (runs as the `postgres` user when we are root)
//! - `redis`: [`RedisServer`], a `redis-server` without persistence
//! - `redis_cluster`: [`RedisCluster`], a Redis Cluster of masters and replicas, for cluster mode and failover
//! - `tls`: [`TestCa`], a private CA and the server certificate it signed, for the `start_tls` servers
//! - `nginx`: [`NginxServer`], an unprivileged nginx serving the configuration a test gives it
//! - `wait`: [`free_port`], [`wait_until`], [`wait_for`]
//! - `http`: [`http_get`] for ops endpoints; [`service_command`], [`terminate`] and [`kill`] for
//!   service processes
//! - `logging`: [`init_test_logging`], `tracing` output when `TEST_LOG=1`
//!
//! Every server gets its own temporary directory and port, so tests run in parallel, within one
//! process and across processes. Failures panic with a message (and the server log): this crate
//! is only ever used from tests.

mod binaries;
mod http;
mod logging;
mod nginx;
mod postgres;
mod process;
mod redis;
mod redis_cluster;
mod tls;
mod wait;

pub use http::{http_get, kill, service_command, terminate};
pub use logging::init_test_logging;
pub use nginx::NginxServer;
pub use postgres::PgServer;
pub use redis::RedisServer;
pub use redis_cluster::RedisCluster;
pub use tls::TestCa;
pub use wait::{free_port, wait_for, wait_until};
