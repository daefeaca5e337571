//! Run with `cargo run --release --bin publisher` (configuration: README.md, `.env.example`).

fn main() -> std::process::ExitCode {
    protocol::service::main::<publisher::Publisher>()
}
