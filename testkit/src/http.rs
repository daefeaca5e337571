//! A minimal HTTP/1.1 GET, enough to read `/healthz`, `/readyz` and `/metrics` in tests
//! without an HTTP client dependency.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// `GET path` with `Connection: close`; the status and body, or `None` if nothing answered
/// within 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Some((status, body))
    };
    timeout(Duration::from_secs(5), exchange).await.ok().flatten()
}

/// Sends SIGTERM to process `pid` (to test a service's graceful shutdown).
pub fn terminate(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a live child has a positive pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
}

/// Sends SIGKILL to process `pid` (a crash, for failover tests).
pub fn kill(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a live child has a positive pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("send SIGKILL");
}

/// A command for a service binary under test: only `vars` in its environment (nothing leaks
/// in from the developer's shell or `.env`), no stdin, output discarded (a pipe nobody reads
/// would block a chatty service; `output()` still captures both), killed when dropped.
pub fn service_command(bin: &str, vars: &[(&str, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env_clear()
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}
