//! One WebSocket handshake: offer `orders.v1`, and fall back to a plain connection when the
//! server is older and does not pick a subprotocol.
//!
//! tungstenite fails a handshake whose response names no subprotocol when the request offered
//! one (RFC 6455 lets a client do that), so "older server" shows up as that specific error and
//! the fallback is a second handshake without the header, within the same deadline.

use std::{fmt, sync::Arc, time::Duration};

use protocol::frames::SUBPROTOCOL;
use tokio::{net::TcpStream, time::Instant};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream, connect_async_tls_with_config,
    tungstenite::{
        self,
        client::IntoClientRequest,
        error::{ProtocolError, SubProtocolError, UrlError},
        handshake::client::Request,
        http::HeaderValue,
    },
};

use super::Params;
use crate::tls;

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
    /// The server refused what was asked for (400: a parameter, 401: the token, 403: beyond
    /// the token's scope): retrying the same request cannot help.
    #[error("the server refused the connection (HTTP {status}): {reason}; {hint}")]
    Refused {
        /// The status line.
        status: String,
        /// The server's one-line reason (the response body).
        reason: String,
        /// What to change.
        hint: &'static str,
    },
    /// The server's certificate was not accepted.
    #[error("TLS: {0}")]
    Certificate(String),
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

    /// Whether the server refused the request or its certificate was refused: retrying
    /// cannot help, and it is the user's settings that must change.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Certificate(_))
    }

    fn from_tungstenite(err: tungstenite::Error) -> Self {
        if let Some(problem) = tls::certificate_problem(&err) {
            return Self::Certificate(problem);
        }
        match err {
            tungstenite::Error::Url(UrlError::UnableToConnect(_)) => Self::Failed(err),
            tungstenite::Error::Url(_) | tungstenite::Error::HttpFormat(_) => Self::InvalidUrl(err),
            tungstenite::Error::Io(err) => Self::Io(err),
            tungstenite::Error::Http(response) => {
                let status = response.status();
                let hint = match status.as_u16() {
                    400 => "check --filter, --select, --table and --consumer (docs/protocol.md, Filters)",
                    401 => "pass a valid token with --token or ORDERS_TOKEN",
                    403 => "the token does not allow it: ask only for what its claims cover",
                    _ => return Self::Http { status: status.to_string() },
                };
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                let reason: String =
                    body.lines().next().unwrap_or("no reason given").chars().filter(|c| !c.is_control()).collect();
                Self::Refused { status: status.to_string(), reason, hint }
            }
            other => Self::Failed(other),
        }
    }
}

/// How to dial: the parameters and token to send, and the TLS settings for `wss://`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial<'a> {
    pub(crate) params: &'a Params,
    pub(crate) tls: Option<&'a Arc<rustls::ClientConfig>>,
}

/// Builds the handshake request for `url` with `params` on its query and the token as
/// `Authorization: Bearer`, offering `orders.v1` when `protocol` says so.
pub(crate) fn request(url: &str, params: &Params, protocol: Protocol) -> Result<Request, tungstenite::Error> {
    let mut request = params.apply_to(url).into_client_request()?;
    if protocol == Protocol::OrdersV1 {
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
    }
    if let Some(token) = &params.token {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|e| tungstenite::Error::HttpFormat(e.into()))?;
        value.set_sensitive(true);
        request.headers_mut().insert("Authorization", value);
    }
    Ok(request)
}

/// Connects to `url`, offering `orders.v1` and accepting a plain connection from an older
/// server; the whole thing, fallback included, within `timeout`.
///
/// # Cancel safety
/// Cancel-safe: nothing is shared until it returns.
pub(crate) async fn handshake(
    url: &str,
    dial: Dial<'_>,
    timeout: Duration,
) -> Result<(WsStream, Protocol), HandshakeError> {
    let deadline = Instant::now() + timeout;
    match attempt(url, dial, Protocol::OrdersV1, deadline, timeout).await {
        Err(HandshakeError::Failed(tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        )))) => {
            tracing::debug!(url, "server did not negotiate {SUBPROTOCOL}; reconnecting without it");
            attempt(url, dial, Protocol::Legacy, deadline, timeout).await
        }
        other => other,
    }
}

async fn attempt(
    url: &str,
    dial: Dial<'_>,
    protocol: Protocol,
    deadline: Instant,
    timeout: Duration,
) -> Result<(WsStream, Protocol), HandshakeError> {
    let request = request(url, dial.params, protocol).map_err(HandshakeError::InvalidUrl)?;
    let connector = match dial.tls {
        Some(config) => Connector::Rustls(config.clone()),
        None if url.starts_with("wss://") => {
            let config = tls::client_config(None).map_err(|e| HandshakeError::Certificate(e.to_string()))?;
            Connector::Rustls(config)
        }
        None => Connector::Plain,
    };
    // Nagle off: frames are small and latency is the point of the tool.
    let connect = connect_async_tls_with_config(request, None, true, Some(connector));
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
        let none = Params::default();
        let v1 = request("ws://localhost:8080/ws", &none, Protocol::OrdersV1).unwrap();
        assert_eq!(v1.headers().get("sec-websocket-protocol").unwrap(), "orders.v1");
        assert!(v1.headers().get("authorization").is_none());
        let legacy = request("ws://localhost:8080/ws", &none, Protocol::Legacy).unwrap();
        assert!(legacy.headers().get("sec-websocket-protocol").is_none());
    }

    #[test]
    fn the_token_goes_in_the_authorization_header_and_filters_on_the_query() {
        let params = Params { token: Some("a.b.c".into()), filter: vec!["status=eq.new".into()], ..Params::default() };
        let req = request("ws://localhost:8080/ws", &params, Protocol::OrdersV1).unwrap();
        assert_eq!(req.headers().get("authorization").unwrap(), "Bearer a.b.c");
        assert_eq!(req.uri().query(), Some("filter=status%3Deq.new"));
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        // Port 1 on loopback is essentially never listening.
        let dial = Dial { params: &Params::default(), tls: None };
        let err = handshake("ws://127.0.0.1:1/ws", dial, Duration::from_secs(5)).await.unwrap_err();
        assert!(!err.is_fatal(), "{err:?}");
    }
}
