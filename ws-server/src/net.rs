//! The listener axum serves: accepted sockets are shared (`Arc<TcpStream>`), so a WebSocket
//! connection keeps a handle on its socket after hyper hands it over, and the hub can write
//! event frames to it directly (`hub::express`). `TCP_NODELAY` is set on every socket: each
//! write is a whole frame, and Nagle's algorithm would hold a small one back behind an
//! unacknowledged one.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tracing::error;

/// A TCP listener whose connections are [`Shared`].
#[derive(Debug)]
pub(crate) struct Listener(pub(crate) TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Shared;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Shared, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    // Best effort: a socket that refuses it still works, only slower.
                    let _ = tcp.set_nodelay(true);
                    return (Shared(Arc::new(tcp)), addr);
                }
                // The client went away before we took it.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    // Most likely out of file descriptors: wait for some to be freed (as
                    // axum's own listener does).
                    error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// An accepted socket, shared between hyper (which reads and writes it through this) and the
/// connection it carries.
#[derive(Debug, Clone)]
pub(crate) struct Shared(pub(crate) Arc<TcpStream>);

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale: `poll_read_ready` registers for the next one.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is buffered here
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A shared socket is shut only in the write direction, as `TcpStream`'s own does.
        Poll::Ready(socket2_shutdown_write(&self.0))
    }
}

fn socket2_shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    use std::os::fd::AsFd;
    rustix::net::shutdown(tcp.as_fd(), rustix::net::Shutdown::Write).map_err(io::Error::from)
}

/// The connection's socket, for every request on it (axum's connect info).
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) tcp: Arc<TcpStream>,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Self { tcp: stream.io().0.clone() }
    }
}
