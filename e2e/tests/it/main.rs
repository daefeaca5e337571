//! End-to-end tests: real PostgreSQL and Redis servers, the real publisher and ws-server.

mod faults;
mod pipeline;
mod shutdown;
mod websocket;
