//! The ws-server's own `main`, built inside this package so tests can run it as a process
//! (`CARGO_BIN_EXE_e2e-ws-server`) and SIGKILL it. Same code as the shipped `ws-server`.

fn main() -> std::process::ExitCode {
    protocol::service::main::<ws_server::WsServer>()
}
