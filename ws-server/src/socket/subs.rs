//! A connection's subscriptions: what each event becomes for it, and the `subscribe`,
//! `unsubscribe`, `ack` and `auth` frames.
//!
//! Every connection keeps one place in the history (the cursor, `stream`); its subscriptions
//! share it. Each subscription has a [`View`] (table, filter, columns, within the token's
//! scope) and may start later than the cursor (`from`: a snapshot or a `since` ahead of it).
//! An event is shaped once per connection: the publisher's bytes unchanged when the only
//! subscription is the unfiltered default one (what every connection cost before filters),
//! otherwise one frame per distinct rendering, naming the subscriptions it is for (`subs`)
//! as soon as the connection holds a named subscription.
//!
//! A subscription added beside others cannot move the shared cursor: one that resumes from
//! before it gets its own replay from the log up to the cursor first (`replay_sub`), and one
//! that starts after it (a snapshot) skips what comes before its start.

use protocol::{
    frames::{ErrorCode, ResetReason, ServerFrame, Subscribe},
    log::Position,
};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::{Conn, End, Mode};
use crate::{
    consumers,
    history::{PAGE, Page},
    hub::Cursor,
    view::{Delivery, Lazy, Spec, View, ViewError, with_subs},
};

/// The name of the subscription a connection starts with (URL parameters), and that
/// `subscribe` frames without an `id` address.
pub(crate) const DEFAULT: &str = "default";

/// One subscription of a connection.
#[derive(Debug)]
pub(crate) struct Sub {
    /// `None`: the default subscription.
    pub(crate) id: Option<String>,
    pub(crate) view: View,
    /// Only events after this position are for it.
    pub(crate) from: Option<Cursor>,
    /// A durable consumer's storage key, and whether each delivered event counts as acked.
    pub(crate) consumer: Option<consumers::Key>,
}

impl Sub {
    pub(crate) fn name(&self) -> &str {
        self.id.as_deref().unwrap_or(DEFAULT)
    }

    fn wants(&self, at: Option<&Cursor>) -> bool {
        match (&self.from, at) {
            (Some(from), Some(at)) => at.epoch != from.epoch || at.pos > from.pos,
            _ => true,
        }
    }
}

/// What one event becomes on a connection.
pub(super) enum Shape {
    /// The publisher's frame, unchanged.
    Raw,
    /// Frames rendered for this connection's subscriptions.
    Frames(Vec<String>),
    /// Nothing: no subscription wants it.
    Nothing,
}

impl Conn<'_> {
    /// Whether every event goes out as the publisher wrote it (no parse, no copy).
    pub(super) fn takes_everything(&self) -> bool {
        matches!(self.subs.as_slice(), [only] if only.id.is_none() && only.from.is_none() && only.view.is_everything())
    }

    /// What the event at `at` becomes for this connection (for subscription `only`, if given).
    pub(super) fn shape(&self, at: Option<&Cursor>, frame: &str, parsed: &Lazy, only: Option<usize>) -> Shape {
        if only.is_none() && self.takes_everything() {
            return Shape::Raw;
        }
        let named = self.subs.iter().any(|s| s.id.is_some());
        let wanting: Vec<&Sub> = match only {
            Some(i) => self.subs.get(i).into_iter().collect(),
            None => self.subs.iter().filter(|s| s.wants(at)).collect(),
        };
        if let [only] = wanting.as_slice()
            && !named
            && only.view.is_everything()
        {
            return Shape::Raw;
        }
        if wanting.is_empty() {
            return Shape::Nothing;
        }
        let Some(event) = parsed.get(frame) else {
            // Not an event we can read (a pre-log publisher's frame): only views of
            // everything take it, as it is.
            let names: Vec<&str> = wanting.iter().filter(|s| s.view.is_everything()).map(|s| s.name()).collect();
            return match (names.is_empty(), named) {
                (true, _) => Shape::Nothing,
                (false, false) => Shape::Raw,
                (false, true) => Shape::Frames(vec![with_subs(frame, &names)]),
            };
        };
        let mut out: Vec<(String, Vec<&str>)> = Vec::new();
        for sub in wanting {
            let Some(delivery) = sub.view.route(event) else { continue };
            let rendered = if sub.view.is_everything() && delivery == Delivery::Change {
                frame.to_owned()
            } else {
                sub.view.render(event, delivery)
            };
            match out.iter_mut().find(|(r, _)| *r == rendered) {
                Some((_, names)) => names.push(sub.name()),
                None => out.push((rendered, vec![sub.name()])),
            }
        }
        if out.is_empty() {
            return Shape::Nothing;
        }
        Shape::Frames(
            out.into_iter().map(|(frame, names)| if named { with_subs(&frame, &names) } else { frame }).collect(),
        )
    }

    /// A `subscribe` frame.
    pub(super) async fn on_subscribe(&mut self, frame: Subscribe) -> Result<(), End> {
        let id = frame.id.clone().filter(|id| id != DEFAULT);
        let name = id.clone().unwrap_or_else(|| DEFAULT.to_owned());
        let replacing = self.subs.iter().position(|s| s.name() == name);
        if replacing.is_none() && self.subs.len() >= self.state.config.max_subscriptions {
            self.state.stats.limit_refusals.inc();
            let message = format!(
                "this connection holds {} subscriptions, the limit (WS_MAX_SUBSCRIPTIONS); unsubscribe one first \
                 ({{\"type\":\"unsubscribe\",\"id\":\"…\"}}) or combine them with one filter",
                self.subs.len()
            );
            return self.refuse(ErrorCode::LimitExceeded, Some(name), message).await;
        }
        let spec = Spec { filter: frame.filter.clone(), select: frame.select.clone(), table: frame.table.clone() };
        let view = match View::compile(&spec, &self.token.scope, self.state.config.max_filters) {
            Ok(view) => view,
            Err(error) => return self.refuse_view(Some(name), &error).await,
        };
        let consumer = match frame.consumer.as_deref().map(|c| self.consumer_key(c)).transpose() {
            Ok(consumer) => consumer,
            Err(message) => return self.refuse(ErrorCode::InvalidFrame, Some(name), message).await,
        };
        let mut since = frame.since.clone();
        if let Some(key) = &consumer
            && since.is_none()
            && !frame.snapshot
        {
            since = self.consumer_position(key).await?;
        }
        let sub = Sub { id, view, from: None, consumer };
        match replacing {
            Some(i) => self.subs[i] = sub,
            None => self.subs.push(sub),
        }
        let index = replacing.unwrap_or(self.subs.len() - 1);
        let newest = self.regate();
        self.state.stats.subscriptions_made.inc();
        if self.subs.len() == 1 {
            // The only subscription: it moves the connection's cursor (as before subscriptions).
            return self.subscribe_live(since, frame.snapshot, frame.conflate).await;
        }
        self.conflate |= frame.conflate;
        self.subscribe_beside(index, since, frame.snapshot, newest).await
    }

    /// Tells the hub which events this connection's subscriptions want: a connection whose
    /// every subscription is filtered is woken only for the events that match (`hub::gates`).
    /// Returns the newest position as of the change: later events are matched with the new
    /// subscriptions.
    pub(super) fn regate(&mut self) -> Option<Cursor> {
        let filters: Vec<&protocol::filter::Filter> = self.subs.iter().map(|s| s.view.filter()).collect();
        let gated = filters.iter().all(|f| !f.is_empty());
        self.rx.gate_on(gated.then_some(filters.as_slice()))
    }

    /// A subscription added beside others: it starts at the shared cursor or at `newest` (the
    /// newest position when it was registered, before which the hub did not match events
    /// against it), whichever is later; after its own snapshot; or after its own replay from
    /// `since` up to that start.
    async fn subscribe_beside(
        &mut self,
        index: usize,
        since: Option<Position>,
        snapshot: bool,
        newest: Option<Cursor>,
    ) -> Result<(), End> {
        let start = match (&self.cursor, newest) {
            (Some(c), Some(n)) if c.epoch == n.epoch => Some(if n.pos > c.pos { n } else { c.clone() }),
            (c, n) => n.or_else(|| c.clone()),
        };
        self.subs[index].from = start.clone();
        let mut conn = self.log_conn().await?;
        if snapshot {
            let at = self.snapshot_for(&mut conn, index).await?;
            match (&start, at) {
                (Some(s), Some(at)) if s.epoch == at.epoch && at.pos < s.pos => {
                    self.replay_sub(index, at.pos, s.clone()).await?;
                }
                (_, at) => self.subs[index].from = at,
            }
        } else if let Some(since) = since {
            let resume = match self.check_since(&mut conn, &since).await? {
                Ok(resume) => resume,
                Err((reason, head, message)) => {
                    self.subs.remove(index);
                    return self.refuse_resume(reason, head, message).await;
                }
            };
            self.state.stats.resumes.inc();
            match &start {
                Some(s) if *s.epoch == resume.epoch && resume.pos < s.pos => {
                    self.replay_sub(index, resume.pos, s.clone()).await?;
                }
                Some(s) if *s.epoch == resume.epoch => self.subs[index].from = Some(resume.into()),
                _ => {}
            }
        }
        let sub = &self.subs[index];
        let position = match (&sub.from, &self.cursor) {
            (Some(from), _) => Some(from.to_position()),
            (None, cursor) => cursor.as_ref().map(Cursor::to_position),
        };
        let id = sub.id.clone();
        info!(conn_id = self.conn_id, sub = %sub.name(), position = ?position, "subscribed beside others");
        self.send_frame(&ServerFrame::Subscribed { id, position }).await
    }

    /// Sends subscription `index` the events after `after` up to `cursor`, from the log.
    async fn replay_sub(&mut self, index: usize, after: u64, cursor: Cursor) -> Result<(), End> {
        let mut conn = self.log_conn().await?;
        let state = self.state;
        let mut at = Cursor::new(cursor.epoch.clone(), after);
        while at.pos < cursor.pos {
            match self.redis(state.history.page(&mut conn, &at.epoch, at.pos).await).await? {
                Page::End | Page::OtherEpoch => break,
                Page::Trimmed { first } => {
                    let message = format!(
                        "events after {} are no longer in the log (it keeps positions from {first} on); subscribe with \"snapshot\": true",
                        at.to_position()
                    );
                    self.refuse_resume(ResetReason::BeyondRetention, Some(cursor.to_position()), message).await?;
                    at.pos = first - 1;
                }
                Page::Frames(frames) => {
                    let short = frames.len() < PAGE;
                    for (pos, frame) in frames.into_iter().take_while(|(pos, _)| *pos <= cursor.pos) {
                        at.pos = pos;
                        // Only this subscription: the others already have these events.
                        self.send_shaped(Some(&at), &frame, &Lazy::default(), true, Some(index)).await?;
                    }
                    if short {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends what an event becomes here; `paced`: from the log, not watching the queue.
    pub(super) async fn send_shaped(
        &mut self,
        at: Option<&Cursor>,
        frame: &str,
        parsed: &Lazy,
        paced: bool,
        only: Option<usize>,
    ) -> Result<(), End> {
        let frames = match self.shape(at, frame, parsed, only) {
            Shape::Raw => vec![frame.to_owned()],
            Shape::Frames(frames) => frames,
            Shape::Nothing => return Ok(()),
        };
        for frame in frames {
            let msg = Message::Text(frame.into());
            if paced {
                self.send(msg).await?
            } else {
                self.send_live(msg).await?
            }
            self.state.stats.messages_out.inc();
        }
        Ok(())
    }

    /// A `subscribe` beside others asked for what cannot be served: the subscription is not
    /// made; the connection's other subscriptions go on.
    async fn refuse_resume(&mut self, reason: ResetReason, head: Option<Position>, message: String) -> Result<(), End> {
        self.state.stats.resets.inc();
        self.send_frame(&ServerFrame::Reset { reason, position: head, message }).await
    }

    /// An `unsubscribe` frame.
    pub(super) async fn on_unsubscribe(&mut self, id: String) -> Result<(), End> {
        let Some(index) = self.subs.iter().position(|s| s.name() == id) else {
            let held: Vec<&str> = self.subs.iter().map(Sub::name).collect();
            let message = format!("no subscription {id:?} on this connection (it holds {held:?})");
            return self.refuse(ErrorCode::UnknownSubscription, Some(id), message).await;
        };
        self.subs.remove(index);
        self.regate();
        debug!(conn_id = self.conn_id, sub = %id, "unsubscribed");
        self.send_frame(&ServerFrame::Unsubscribed { id }).await
    }

    pub(super) async fn refuse_view(&mut self, id: Option<String>, error: &ViewError) -> Result<(), End> {
        let code = match error {
            ViewError::Forbidden(_) => ErrorCode::Forbidden,
            ViewError::TooManyFilters { .. } => {
                self.state.stats.limit_refusals.inc();
                ErrorCode::LimitExceeded
            }
            _ => ErrorCode::InvalidFilter,
        };
        self.refuse(code, id, error.to_string()).await
    }

    /// An `error` frame about a client frame; the connection and its subscriptions go on.
    pub(super) async fn refuse(&mut self, code: ErrorCode, id: Option<String>, message: String) -> Result<(), End> {
        self.state.stats.bad_frames.inc();
        if self.mode == Mode::Plain {
            return Ok(());
        }
        self.send_live(Message::Text(ServerFrame::Error { code, id, message }.to_json().into())).await
    }
}
