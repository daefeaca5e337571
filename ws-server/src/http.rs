//! HTTP routes: WebSocket at `/ws` and `/` (clients of the original design connect to
//! `ws://host:8080`), plus `/healthz`, `/readyz` and `/metrics`. The upgrade takes
//! `?protocol=orders.v1` and `?since=EPOCH:POS` or a `Last-Event-ID: EPOCH:POS` header (resume
//! at connect time).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::{
        Query, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use protocol::{frames::SUBPROTOCOL, log::Position};
use serde::Deserialize;

use crate::{
    AppState,
    socket::{self, Mode},
};

/// Per-connection buffer sizes: small, so tens of thousands of idle connections stay cheap.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Each frame is written to the socket at once; what the socket does not take stays in
/// tungstenite's buffer, and the connection sends nothing more until it is flushed.
const WRITE_BUFFER_BYTES: usize = 0;
/// Client frames over `max_frame_bytes` get an error frame; over this many times it, the
/// connection is closed with 1009 (`socket`), before the payload is read.
const HARD_LIMIT_FACTOR: usize = 16;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let ops = protocol::ops::router(state.stats.clone());
    Router::new().route("/ws", get(upgrade)).route("/", get(upgrade)).with_state(state).merge(ops)
}

#[derive(Debug, Deserialize)]
struct Params {
    protocol: Option<String>,
    /// Resume after this position (`EPOCH:POS`), for plain and protocol connections alike.
    since: Option<String>,
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::OK,
            "orders realtime ws-server: connect a WebSocket to /ws (protocol orders.v1, see docs/protocol.md)\n",
        )
            .into_response();
    };
    let query_protocol = match params.protocol.as_deref() {
        None => false,
        Some(SUBPROTOCOL) => true,
        Some(other) => {
            let msg = format!("unsupported protocol {other:?}; this server speaks {SUBPROTOCOL:?}\n");
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    // `?since=` wins; `Last-Event-ID` (the SSE convention, same EPOCH:POS form) also works.
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let requested = params.since.clone().or(last_event_id);
    let since = match requested.as_deref().map(Position::parse).transpose() {
        Ok(since) => since,
        Err(why) => {
            let msg = format!("invalid since / Last-Event-ID {:?}: {why}\n", requested.unwrap_or_default());
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        state.stats.rejected_full.inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached (WS_MAX_CONNECTIONS); try another replica\n",
        )
            .into_response();
    };
    let hard_limit = state.config.max_frame_bytes.saturating_mul(HARD_LIMIT_FACTOR);
    let ws = ws
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Not a bound that matters: a connection waits for each frame to be flushed before the
        // next (`socket`), so the buffer holds one frame and a control frame at most, and the
        // hub bounds what waits (WS_QUEUE_CAPACITY, WS_QUEUE_BYTES). A finite cap here would
        // only refuse events larger than it.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit);
    let mode = if query_protocol || ws.selected_protocol().is_some() { Mode::Protocol } else { Mode::Plain };
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let task = state.tracker.token();
    let shutdown = state.shutdown.clone();
    ws.on_upgrade(move |socket| async move {
        // Held for the connection's life: the slot, and shutdown's wait for this task.
        let _permit = permit;
        let _task = task;
        state.stats.accepted.inc();
        state.stats.connections.add(1);
        socket::serve(socket, mode, since, conn_id, &state, shutdown).await;
        state.stats.connections.add(-1);
    })
}
