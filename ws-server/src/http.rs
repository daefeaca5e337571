//! HTTP routes: WebSocket at `/ws` and `/` (clients of the original design connect to
//! `ws://host:8080`), Server-Sent Events at `/events`, the browser dashboard at `/` (for
//! requests that accept HTML and ask for no upgrade), `/dashboard` and `/dashboard/…`
//! (`dashboard`), plus `/healthz`, `/readyz` and `/metrics`.
//!
//! `/ws`, `/` and `/events` take the same query parameters (docs/protocol.md):
//! `protocol=orders.v1`, `since=EPOCH:POS` (or a `Last-Event-ID` header), `snapshot`,
//! `conflate`, the default subscription's `filter` (repeatable), `select` and `table`,
//! `consumer` and `ack=auto`, `subscribe=false` (open with no subscription), and
//! `access_token` when auth is on (or `Authorization: Bearer`). Everything is checked before
//! the upgrade: a bad parameter is a 400 naming it, a bad token a 401, a foreign `Origin` a 403.

#![allow(
    clippy::result_large_err,
    reason = "the error is the HTTP response a refused request gets, built once per request"
)]

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use protocol::{frames::SUBPROTOCOL, log::Position};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{
    AppState,
    auth::{self, Auth},
    consumers, dashboard,
    socket::{self, Mode, Opening, Setup, Token},
    sse::SseWire,
    upgrade::{NotUpgrade, Upgrade},
    view::{Scope, Spec, View, ViewError},
};

/// Per-connection buffer sizes: small, so tens of thousands of idle connections stay cheap.
/// Client frames are small (subscribe, ack, ping); tungstenite grows the buffer for a larger
/// one as its header announces it, so this bounds only how much one read takes.
const READ_BUFFER_BYTES: usize = 128;
/// Each frame is written to the socket at once; what the socket does not take stays in
/// tungstenite's buffer, and the connection sends nothing more until it is flushed.
const WRITE_BUFFER_BYTES: usize = 0;
/// Client frames over `max_frame_bytes` get an error frame; over this many times it, the
/// connection is closed with 1009 (`socket`), before the payload is read.
const HARD_LIMIT_FACTOR: usize = 16;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let ops = protocol::ops::router(state.stats.clone());
    Router::new()
        .route("/ws", get(upgrade))
        .route("/", get(root))
        .route("/dashboard", get(dashboard::dashboard))
        .route("/dashboard/{version}/{file}", get(dashboard::asset))
        .route("/events", get(events))
        .with_state(state)
        .merge(ops)
}

/// The query parameters of `/ws` and `/events`.
#[derive(Debug, Default)]
struct Params {
    protocol: Option<String>,
    since: Option<String>,
    spec: Spec,
    snapshot: bool,
    conflate: bool,
    consumer: Option<String>,
    auto_ack: bool,
    subscribe: bool,
    access_token: Option<String>,
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

impl Params {
    fn parse(query: Option<&str>) -> Result<Self, Response> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|e| bad_request(format!("the query string cannot be read ({e}); encode it as a URL query")))?;
        let mut params = Self { subscribe: true, ..Self::default() };
        for (key, value) in pairs {
            let flag = |value: &str| match value {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                other => Err(bad_request(format!("invalid {key}={other:?}: expected true or false, e.g. {key}=true"))),
            };
            match key.as_str() {
                "protocol" => params.protocol = Some(value),
                "since" => params.since = Some(value),
                "filter" => params.spec.filter.push(value),
                "select" => params.spec.select = Some(value),
                "table" => params.spec.table = Some(value),
                "snapshot" => params.snapshot = flag(&value)?,
                "conflate" => params.conflate = flag(&value)?,
                "subscribe" => params.subscribe = flag(&value)?,
                "consumer" => params.consumer = Some(value),
                "ack" => match value.as_str() {
                    "auto" => params.auto_ack = true,
                    "manual" => params.auto_ack = false,
                    other => {
                        return Err(bad_request(format!("invalid ack={other:?}: expected ack=auto or ack=manual")));
                    }
                },
                auth::TOKEN_PARAM => params.access_token = Some(value),
                // Unknown parameters (cache busters, tracking) are left alone.
                _ => {}
            }
        }
        Ok(params)
    }
}

/// Everything checked before a connection opens: Origin, token, parameters, a free slot.
fn open(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    mode_of: impl FnOnce(&Params) -> Result<Mode, Response>,
) -> Result<(Opening, OwnedSemaphorePermit), Response> {
    if let Err(refused) = state.auth.check_origin(headers) {
        state.stats.origins_refused.inc();
        return Err(refused.into_response());
    }
    let params = Params::parse(query)?;
    let claims = match state.auth.check(Auth::token(headers, params.access_token.as_deref())) {
        Ok(claims) => claims,
        Err(error) => {
            state.stats.auth_failures.inc();
            return Err(error.into_response());
        }
    };
    let token = match &claims {
        None => Token::default(),
        Some(claims) => {
            // A 401 like any other refused token: with its RFC 6750 challenge.
            let scope = Scope::from_claims(&claims.filter, claims.select.as_deref()).map_err(|message| {
                state.stats.auth_failures.inc();
                auth::AuthError::BadClaims(message).into_response()
            })?;
            let expires_at = Some(tokio::time::Instant::now() + state.auth.expires_in(claims));
            Token { scope, subject: claims.sub.clone(), expires_at }
        }
    };
    let mode = mode_of(&params)?;
    // `?since=` wins; `Last-Event-ID` (the SSE convention, same EPOCH:POS form) also works.
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let requested = params.since.clone().or(last_event_id);
    let since = requested.as_deref().map(Position::parse).transpose().map_err(|why| {
        bad_request(format!("invalid since / Last-Event-ID {:?}: {why}", requested.clone().unwrap_or_default()))
    })?;
    let view = if params.subscribe || mode == Mode::Plain {
        Some(View::compile(&params.spec, &token.scope, state.config.max_filters).map_err(|e| view_refused(state, &e))?)
    } else {
        None
    };
    let consumer = params
        .consumer
        .as_deref()
        .map(|name| consumers::Key::new(name, token.subject.as_deref(), state.auth.is_enabled()))
        .transpose()
        .map_err(bad_request)?;
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        state.stats.rejected_full.inc();
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached (WS_MAX_CONNECTIONS); try another replica\n",
        )
            .into_response());
    };
    tracing::debug!(query = %auth::redact_query(query.unwrap_or("")), ?mode, "connection opening");
    let opening = Opening {
        mode,
        since,
        snapshot: params.snapshot,
        conflate: params.conflate,
        view,
        consumer,
        auto_ack: params.auto_ack,
        token,
    };
    Ok((opening, permit))
}

fn view_refused(state: &AppState, error: &ViewError) -> Response {
    let status = match error {
        ViewError::Forbidden(_) => StatusCode::FORBIDDEN,
        ViewError::TooManyFilters { .. } => {
            state.stats.limit_refusals.inc();
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::BAD_REQUEST,
    };
    (status, format!("{error}\n")).into_response()
}

/// `GET /`: a WebSocket upgrade as at `/ws`; a browser asking for a page gets the dashboard;
/// anything else gets the same one-line hint as a plain GET of `/ws`.
async fn root(
    state: State<Arc<AppState>>,
    query: RawQuery,
    headers: HeaderMap,
    ws: Result<Upgrade, NotUpgrade>,
) -> Response {
    if ws.is_err() && dashboard::wants_html(&headers) {
        return dashboard::index(&state, &headers);
    }
    upgrade(state, query, headers, ws).await
}

async fn upgrade(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<Upgrade, NotUpgrade>,
) -> Response {
    let Ok(ws) = ws else {
        return (
            StatusCode::OK,
            "orders realtime ws-server: connect a WebSocket to /ws (protocol orders.v1), or read /events (SSE); see docs/protocol.md\n",
        )
            .into_response();
    };
    let offered = ws.offers(SUBPROTOCOL);
    let mode_of = |params: &Params| match params.protocol.as_deref() {
        None if offered => Ok(Mode::Protocol),
        None => Ok(Mode::Plain),
        Some(SUBPROTOCOL) => Ok(Mode::Protocol),
        Some(other) => Err(bad_request(format!("unsupported protocol {other:?}; this server speaks {SUBPROTOCOL:?}"))),
    };
    let (opening, permit) = match open(&state, query.as_deref(), &headers, mode_of) {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let hard_limit = state.config.max_frame_bytes.saturating_mul(HARD_LIMIT_FACTOR);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Not a bound that matters: a connection waits for each frame to be flushed before the
        // next (`socket`), so the buffer holds one frame and a control frame at most, and the
        // hub bounds what waits (WS_QUEUE_CAPACITY, WS_QUEUE_BYTES). A finite cap here would
        // only refuse events larger than it.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let shutdown = state.shutdown.clone();
    let protocol = offered.then_some(SUBPROTOCOL);
    // Plain TCP connections get an express lane (`hub::express`); SSE and others do not.
    let lane = ws.tcp().filter(|_| state.config.express).map(|tcp| state.hub.express.register(tcp));
    let held = (permit, state.tracker.token());
    ws.on_upgrade(protocol, config, lane.clone(), move |socket| {
        let setup = Setup { ws: Box::pin(socket), lane, opening, conn_id, shutdown, held };
        socket::serve(state, Box::new(setup))
    })
}

/// `GET /events`: the stream as Server-Sent Events (`sse`).
async fn events(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let (opening, permit) = match open(&state, query.as_deref(), &headers, |_| Ok(Mode::Sse)) {
        Ok(opened) => opened,
        Err(refused) => return refused,
    };
    let origin = headers.get(header::ORIGIN).cloned();
    // A stream that replays first (from `Last-Event-ID`, `since`, or a consumer's last ack)
    // is behind the position its hello names.
    let resumes = opening.since.is_some() || (opening.consumer.is_some() && !opening.snapshot);
    let (wire, body) = SseWire::new(resumes);
    let conn_id = state.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let shutdown = state.shutdown.clone();
    let held = (permit, state.tracker.token());
    let setup = Setup { ws: Box::pin(wire), lane: None, opening, conn_id, shutdown, held };
    tokio::spawn(socket::serve(state, Box::new(setup)));
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx (and other proxies that honour it) must pass each event on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // An EventSource on another origin may read the stream once its Origin passed the check
    // (`WS_ALLOWED_ORIGINS`); no credentials are involved (tokens are in the URL or a header).
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}
