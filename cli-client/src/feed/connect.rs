//! One WebSocket handshake: offer `orders.v1`, and fall back to a plain connection when the
//! server is older and does not pick a subprotocol.
//!
//! tungstenite fails a handshake whose response names no subprotocol when the request offered
//! one (RFC 6455 lets a client do that), so "older server" shows up as that specific error and
//! the fallback is a second handshake without the header, within the same deadline.

use std::{fmt, time::Duration};

use protocol::frames::SUBPROTOCOL;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{
        self,
        client::IntoClientRequest,
        error::{ProtocolError, SubProtocolError, UrlError},
        handshake::client::Request,
        http::HeaderValue,
    },
};

/// An open WebSocket connection to a ws-server.
pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which protocol the server speaks on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `orders.v1` was negotiated: the server sends `hello`, `event`, `pong` and `error` frames.
    OrdersV1,
    /// An older server that negotiated nothing: every frame is an event.
    Legacy,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OrdersV1 => f.write_str(SUBPROTOCOL),
            Self::Legacy => f.write_str("legacy, no subprotocol"),
        }
    }
}

/// Why a handshake did not produce a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The URL cannot work, however often it is retried.
    #[error("invalid WebSocket URL: {0}")]
    InvalidUrl(#[source] tungstenite::Error),
    /// No answer within the deadline.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The server answered with an HTTP status instead of switching protocols.
    #[error("server answered HTTP {status} instead of upgrading (is the URL ws-server's WebSocket path, e.g. /ws?)")]
    Http {
        /// The status line, e.g. `404 Not Found`.
        status: String,
    },
    /// The TCP connection failed (refused, unreachable, reset).
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The handshake itself failed (bad response).
    #[error("{0}")]
    Failed(#[source] tungstenite::Error),
}

impl HandshakeError {
    /// Whether retrying cannot help.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, Self::InvalidUrl(_))
    }

    fn from_tungstenite(err: tungstenite::Error) -> Self {
        match err {
            tungstenite::Error::Url(UrlError::UnableToConnect(_)) => Self::Failed(err),
            tungstenite::Error::Url(_) | tungstenite::Error::HttpFormat(_) => Self::InvalidUrl(err),
            tungstenite::Error::Io(err) => Self::Io(err),
            tungstenite::Error::Http(response) => Self::Http { status: response.status().to_string() },
            other => Self::Failed(other),
        }
    }
}

/// Builds the handshake request for `url`, offering `orders.v1` when `protocol` says so.
pub(crate) fn request(url: &str, protocol: Protocol) -> Result<Request, tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if protocol == Protocol::OrdersV1 {
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    Ok(request)
}

/// Connects to `url`, offering `orders.v1` and accepting a plain connection from an older
/// server; the whole thing, fallback included, within `timeout`.
///
/// # Cancel safety
/// Cancel-safe: nothing is shared until it returns.
pub(crate) async fn handshake(url: &str, timeout: Duration) -> Result<(WsStream, Protocol), HandshakeError> {
    let deadline = Instant::now() + timeout;
    match attempt(url, Protocol::OrdersV1, deadline, timeout).await {
        Err(HandshakeError::Failed(tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )))) => {
            tracing::debug!(url, "server did not negotiate {SUBPROTOCOL}; reconnecting without it");
            attempt(url, Protocol::Legacy, deadline, timeout).await
        }
        other => other,
    }
}

async fn attempt(
    url: &str,
    protocol: Protocol,
    deadline: Instant,
    timeout: Duration,
) -> Result<(WsStream, Protocol), HandshakeError> {
    let request = request(url, protocol).map_err(HandshakeError::InvalidUrl)?;
    // Nagle off: frames are small and latency is the point of the tool.
    let connect = connect_async_with_config(request, None, true);
    match tokio::time::timeout_at(deadline, connect).await {
        Err(_elapsed) => Err(HandshakeError::Timeout(timeout)),
        Ok(Err(err)) => Err(HandshakeError::from_tungstenite(err)),
        // tungstenite has already checked that a returned subprotocol is one we offered.
        Ok(Ok((ws, _response))) => Ok((ws, protocol)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_offers_the_subprotocol_only_when_asked() {
        let v1 = request("ws://localhost:8080/ws", Protocol::OrdersV1).unwrap();
        assert_eq!(v1.headers().get("sec-websocket-protocol").unwrap(), "orders.v1");
        let legacy = request("ws://localhost:8080/ws", Protocol::Legacy).unwrap();
        assert!(legacy.headers().get("sec-websocket-protocol").is_none());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        // Port 1 on loopback is essentially never listening.
        let err = handshake("ws://127.0.0.1:1/ws", Duration::from_secs(5)).await.unwrap_err();
        assert!(!err.is_fatal(), "{err:?}");
    }
}
