//! End-to-end tests: real PostgreSQL and Redis servers, the real publisher and ws-server.

mod api;
mod auth;
mod capture;
mod chaos;
mod close_codes;
mod cluster;
mod consumers;
mod dashboard;
mod durability;
mod express;
mod faults;
mod filters;
mod limits;
mod logging;
mod metrics;
mod nginx;
mod pipeline;
mod publisher_shutdown;
mod resume;
mod shutdown;
mod slow;
mod sse;
mod support;
mod tls;
mod websocket;
mod wipe;
