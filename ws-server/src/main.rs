//! Run with `cargo run --release --bin ws-server` (configuration: README.md, `.env.example`).

/// mimalloc: cheaper small and aligned blocks than glibc for tens of thousands of connections
/// (Cargo.toml, docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    protocol::service::main::<ws_server::WsServer>()
}
