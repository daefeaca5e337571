//! End-to-end tests: real PostgreSQL and Redis servers, the real publisher and ws-server.

mod chaos;
mod close_codes;
mod durability;
mod faults;
mod metrics;
mod pipeline;
mod resume;
mod shutdown;
mod slow;
mod websocket;
mod wipe;
