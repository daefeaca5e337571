//! End-to-end tests: real PostgreSQL and Redis servers, the real publisher and ws-server.

mod chaos;
mod durability;
mod faults;
mod logging;
mod nginx;
mod pipeline;
mod publisher_shutdown;
mod resume;
mod shutdown;
mod websocket;
