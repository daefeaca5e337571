//! Just enough of a Redis client (raw RESP over TCP) and a port check, so testkit's own tests need
//! no client crates.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Runs one command and returns the raw RESP reply (e.g. `+OK\r\n`, `$1\r\nv\r\n`, `$-1\r\n`).
pub(crate) async fn redis_command(port: u16, args: &[&str]) -> String {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    // QUIT closes the connection, so the reply can be read to the end without parsing RESP.
    request.push_str("*1\r\n$4\r\nQUIT\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("redis command timed out");
    reply.strip_suffix("+OK\r\n").expect("QUIT answers +OK").to_owned()
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) async fn accepts_connections(port: u16) -> bool {
    let connect = TcpStream::connect(("127.0.0.1", port));
    matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_)))
}
