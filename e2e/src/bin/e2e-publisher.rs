//! The publisher's own `main`, built inside this package so tests can run it as a process
//! (`CARGO_BIN_EXE_e2e-publisher`) and SIGKILL it. Same code as the shipped `publisher`.

fn main() -> std::process::ExitCode {
    protocol::service::main::<publisher::Publisher>()
}
