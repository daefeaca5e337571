//! End-to-end tests: real PostgreSQL and Redis servers, the real publisher and ws-server.

mod chaos;
mod durability;
mod faults;
mod metrics;
mod pipeline;
mod resume;
mod shutdown;
mod websocket;
