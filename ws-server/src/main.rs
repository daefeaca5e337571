//! Run with `cargo run --release --bin ws-server` (configuration: README.md, `.env.example`).

fn main() -> std::process::ExitCode {
    protocol::service::main::<ws_server::WsServer>()
}
