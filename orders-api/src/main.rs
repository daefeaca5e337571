//! Run with `cargo run --release --bin orders-api` (configuration: README.md, "HTTP API").

fn main() -> std::process::ExitCode {
    protocol::service::main::<orders_api::Api>()
}
