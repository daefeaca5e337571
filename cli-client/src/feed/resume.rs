//! What an open connection's steps mean for the stream: the socket-facing half of resuming
//! (`cursor` is the pure half). It reports the connection once it is known to be open, sends
//! the `subscribe` the cursor asks for, and turns each server frame into feed items: events
//! through the cursor's dedupe, and the answers to a `subscribe` (`subscribed`, `snapshot`,
//! `reset`, an `error`, or none in time).
//!
//! It decides nothing about the connection's lifetime: a [`Flow`] tells the caller whether to
//! keep reading, close, reconnect or stop.

use std::collections::VecDeque;

use protocol::log::Position;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    DisconnectReason, FeedConfig, FeedError, FeedItem, Protocol, Subscribe,
    cursor::{AfterReset, Cursor, Fate},
    inbound::Inbound,
    session::{Session, Step},
};

/// Error codes that mean the view asked for is refused (docs/protocol.md, Errors).
const REFUSALS: &[&str] = &["invalid_filter", "forbidden", "unauthorized", "limit_exceeded"];

/// What one step of an open session leads to.
pub(super) enum Flow {
    /// Keep reading.
    Continue,
    /// Shutdown was requested: say goodbye and end the feed.
    Shutdown,
    /// The connection ended: reconnect, or give up.
    End(DisconnectReason),
    /// The feed stops with this error.
    Stop(FeedError),
}

/// Takes one step of `session` and applies what came of it to the cursor and `pending`.
///
/// Cancel-safe: the only await is [`Session::step`], which is; everything after it is
/// synchronous.
pub(super) async fn advance(
    session: &mut Session,
    cursor: &mut Cursor,
    config: &FeedConfig,
    shutdown: &CancellationToken,
    pending: &mut VecDeque<FeedItem>,
) -> Flow {
    match session.step(config, shutdown).await {
        Step::Continue => Flow::Continue,
        Step::Shutdown => Flow::Shutdown,
        Step::Ended(reason) => Flow::End(reason),
        Step::HelloTimeout => {
            // A server that speaks orders.v1 but sent no hello yet: report anyway.
            opened(session, cursor, config, None, None, pending);
            Flow::Continue
        }
        Step::AnswerTimeout => {
            let problem = format!("no answer within {}s", config.answer_timeout.as_secs());
            not_resumed(cursor, problem, pending);
            Flow::Continue
        }
        Step::Frame(inbound, raw) => frame(session, cursor, config, *inbound, raw, pending),
    }
}

/// A legacy connection (no `orders.v1`) is open: no hello will come, and no `subscribe` can be
/// sent, so the connection is all there is to report, and what it cannot do.
pub(super) fn legacy_opened(session: &mut Session, cursor: &mut Cursor, pending: &mut VecDeque<FeedItem>) {
    session.announce(None, None, pending);
    if let Some(asked) = cursor.opened(None) {
        let problem = "older server without orders.v1".to_owned();
        pending.push_back(FeedItem::NotResumed { asked, problem });
        cursor.give_up_waiting(pending);
    }
}

/// The connection is known to be open (`hello`, or a protocol server that sent none in time):
/// report it, and send the `subscribe` that puts the stream where the cursor wants it.
fn opened(
    session: &mut Session,
    cursor: &mut Cursor,
    config: &FeedConfig,
    server_id: Option<String>,
    position: Option<Position>,
    pending: &mut VecDeque<FeedItem>,
) {
    if session.announced() {
        tracing::debug!(?server_id, "late hello ignored");
        return;
    }
    session.announce(server_id, position.clone(), pending);
    if let Some(subscribe) = cursor.opened(position) {
        send(session, config, &subscribe);
    }
}

/// The `subscribe` in flight will not be answered: say so, then carry on with what was held.
fn not_resumed(cursor: &mut Cursor, problem: String, pending: &mut VecDeque<FeedItem>) {
    if let Some(asked) = cursor.awaiting().cloned() {
        pending.push_back(FeedItem::NotResumed { asked, problem });
    }
    cursor.give_up_waiting(pending);
}

fn send(session: &mut Session, config: &FeedConfig, subscribe: &Subscribe) {
    session.queue(&subscribe.frame(&config.params));
    session.answer_deadline = Some(Instant::now() + config.answer_timeout);
}

/// What one text frame does to the stream.
fn frame(
    session: &mut Session,
    cursor: &mut Cursor,
    config: &FeedConfig,
    inbound: Inbound,
    raw: String,
    pending: &mut VecDeque<FeedItem>,
) -> Flow {
    match inbound {
        Inbound::Hello { server_id, position } => opened(session, cursor, config, server_id, position, pending),
        Inbound::Event(event) => {
            if !session.announced() && session.protocol == Protocol::OrdersV1 {
                opened(session, cursor, config, None, None, pending);
            }
            if cursor.event(event, raw, pending) == Fate::Delivered && cursor.awaiting().is_some() {
                // The replay is making progress: keep waiting for its end.
                session.answer_deadline = Some(Instant::now() + config.answer_timeout);
            }
        }
        Inbound::Subscribed { position } => {
            session.answer_deadline = None;
            if let Some(Subscribe::Since(from)) = cursor.subscribed(position, pending) {
                pending.push_back(FeedItem::Resumed {
                    from,
                    server_id: session.server_id().map(str::to_owned),
                    url: session.url.clone(),
                });
            }
        }
        Inbound::Snapshot { position, rows } => {
            cursor.snapshot(position, rows, raw, pending);
            if cursor.awaiting().is_none() {
                session.answer_deadline = None;
            }
        }
        Inbound::Reset { reason, position, message } => {
            session.answer_deadline = None;
            session.resets += 1;
            if session.resets > 3 {
                return Flow::End(DisconnectReason::Broken(format!(
                    "the server refused {} positions in a row ({message})",
                    session.resets
                )));
            }
            let from = cursor.position().cloned();
            match cursor.reset(config.on_reset, position) {
                AfterReset::Exit => return Flow::Stop(FeedError::Reset { from, reason, message }),
                AfterReset::Subscribe(then) => {
                    send(session, config, &then);
                    pending.push_back(FeedItem::Reset { from, reason, message, then });
                }
            }
        }
        Inbound::Rebased { from, position } => cursor.rebased(&from, position),
        Inbound::Conflated { from, to, folded } => pending.push_back(FeedItem::Conflated { from, to, folded }),
        Inbound::ServerError { code, message } if REFUSALS.contains(&code.as_str()) => {
            // About the filter, select, table, consumer or token: the same request would be
            // refused again on every replica.
            return Flow::Stop(FeedError::Refused {
                url: protocol::env::redact_url(&session.url),
                reason: format!("the server refused the subscription ({code}): {message}"),
            });
        }
        Inbound::ServerError { code, message } => {
            if cursor.awaiting().is_some() {
                // The one frame this client sends is `subscribe`: the error is about it.
                session.answer_deadline = None;
                not_resumed(cursor, format!("{code}: {message}"), pending);
            } else {
                tracing::warn!(code, message, "server reported an error");
            }
        }
        Inbound::Skip { kind } => tracing::debug!(kind, "frame skipped"),
        Inbound::Malformed { problem } => tracing::warn!(problem, frame = raw, "unreadable frame skipped"),
    }
    Flow::Continue
}
