//! The WebSocket handshake (RFC 6455 §4.2), done here rather than by axum's
//! `WebSocketUpgrade` so that a connection keeps a handle on its TCP socket after the upgrade:
//! the hub writes event frames to it directly (`hub::express`). Everything else about the
//! connection goes through tokio-tungstenite, as with axum's extractor (which wraps the same).

use std::{future::Future, sync::Arc};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};
use tracing::debug;

use crate::{hub::express::LaneIo, net::Peer};

/// A connection's transport after the upgrade.
pub(crate) type Socket = WebSocketStream<LaneIo<TokioIo<hyper::upgrade::Upgraded>>>;

/// A WebSocket upgrade request.
#[derive(Debug)]
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    key: HeaderValue,
    protocols: Option<HeaderValue>,
    /// The socket, when it is a plain TCP connection accepted by `net::Listener`.
    tcp: Option<Arc<TcpStream>>,
}

/// The request is not a WebSocket upgrade.
#[derive(Debug)]
pub(crate) struct NotUpgrade;

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::UPGRADE_REQUIRED, "expected a WebSocket upgrade\n").into_response()
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotUpgrade> {
        let headers = &parts.headers;
        let is_upgrade = parts.method == Method::GET
            && has_token(headers, header::CONNECTION, "upgrade")
            && has_token(headers, header::UPGRADE, "websocket")
            && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let key = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_upgrade).cloned().ok_or(NotUpgrade)?;
        let protocols = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotUpgrade)?;
        let tcp = parts.extensions.get::<ConnectInfo<Peer>>().map(|info| info.0.tcp.clone());
        Ok(Self { on_upgrade, key, protocols, tcp })
    }
}

impl Upgrade {
    /// Whether the client offered `protocol` in `Sec-WebSocket-Protocol`.
    pub(crate) fn offers(&self, protocol: &str) -> bool {
        self.protocols
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|p| p.trim() == protocol))
    }

    /// The socket, for an express lane (`None` when the connection is not plain TCP).
    pub(crate) fn tcp(&self) -> Option<Arc<TcpStream>> {
        self.tcp.clone()
    }

    /// Answers 101 (selecting `protocol`, which the client offered) and spawns the future
    /// `serve` makes of the upgraded connection once hyper hands it over.
    pub(crate) fn on_upgrade<F, Fut>(
        self,
        protocol: Option<&'static str>,
        config: WebSocketConfig,
        lane: Option<Arc<crate::hub::express::Lane>>,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    debug!(%error, "websocket upgrade failed");
                    if let Some(lane) = lane {
                        lane.close();
                    }
                    return;
                }
            };
            let io = LaneIo::new(TokioIo::new(upgraded), lane);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            // In a task of its own: awaited here, the connection would keep this task's state
            // (the handshake's, `serve`'s captures) beside its own for its whole life.
            tokio::spawn(serve(socket));
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a header value"));
        if let Some(protocol) = protocol {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        response
    }
}
