//! Integration tests for testkit: real PostgreSQL and Redis processes, started, queried, stopped,
//! killed and restarted the way the other crates' fault tests use them.

mod helpers;
mod postgres;
mod redis;
