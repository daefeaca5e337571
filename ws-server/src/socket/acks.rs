//! A connection's durable consumers: where they resume, and storing their acks.

use protocol::{
    frames::{ErrorCode, ServerFrame},
    log::Position,
};
use tracing::{debug, warn};

use super::{Conn, End};
use crate::consumers::Key;

impl Conn<'_> {
    /// The storage key of consumer `name` for this connection's token.
    pub(super) fn consumer_key(&self, name: &str) -> Result<Key, String> {
        Key::new(name, self.token.subject.as_deref(), self.state.auth.is_enabled())
    }

    /// Where a consumer resumes (after its last ack), if it ever acked.
    pub(super) async fn consumer_position(&mut self, key: &Key) -> Result<Option<Position>, End> {
        let mut conn = self.log_conn().await?;
        let state = self.state;
        let stored = self.redis(state.consumers.position(&mut conn, key).await).await?;
        debug!(conn_id = self.conn_id, consumer = key.name(), position = ?stored, "consumer resumes");
        Ok(stored)
    }

    /// An `ack` frame: store the consumer's position (never ahead of what was delivered).
    pub(super) async fn on_ack(&mut self, consumer: Option<String>, position: Position) -> Result<(), End> {
        let holders: Vec<&Key> = self.subs.iter().filter_map(|s| s.consumer.as_ref()).collect();
        let key = match (consumer.as_deref(), holders.as_slice()) {
            (None, [only]) => (*only).clone(),
            (None, []) => {
                let message =
                    "no durable consumer on this connection; subscribe with \"consumer\": \"<name>\" first".into();
                return self.refuse(ErrorCode::UnknownSubscription, None, message).await;
            }
            (None, _) => {
                let message = "this connection holds several consumers; name one in \"consumer\"".into();
                return self.refuse(ErrorCode::InvalidFrame, None, message).await;
            }
            (Some(name), held) => match held.iter().find(|k| k.name() == name) {
                Some(key) => (*key).clone(),
                None => {
                    let message = format!("no consumer {name:?} on this connection; subscribe with it first");
                    return self.refuse(ErrorCode::UnknownSubscription, None, message).await;
                }
            },
        };
        let delivered = self.cursor.as_ref().is_some_and(|c| *c.epoch == position.epoch && position.pos <= c.pos);
        if !delivered {
            let sent = self.cursor.as_ref().map_or_else(|| "nothing yet".to_owned(), |c| c.to_position().to_string());
            let message =
                format!("cannot ack {position}: it is not a position this connection delivered (last: {sent})");
            return self.refuse(ErrorCode::InvalidFrame, None, message).await;
        }
        let mut conn = self.log_conn().await?;
        let state = self.state;
        let stored = self.redis(state.consumers.ack(&mut conn, &key, &position).await).await?;
        self.state.stats.acks.inc();
        self.send_frame(&ServerFrame::Acked { consumer: key.name().to_owned(), position: stored }).await
    }

    /// Stores the newest delivered position for auto-acking consumers (`?ack=auto`).
    pub(super) async fn store_acks(&mut self) {
        let Some(at) = self.unacked.take() else { return };
        let Some(mut conn) = self.state.history.conn().await else {
            self.unacked = Some(at);
            return;
        };
        let position = at.to_position();
        for key in self.subs.iter().filter_map(|s| s.consumer.as_ref()) {
            match self.state.consumers.ack(&mut conn, key, &position).await {
                Ok(_) => self.state.stats.acks.inc(),
                Err(error) => {
                    warn!(conn_id = self.conn_id, consumer = key.name(), %error, "could not store an ack; retried");
                    self.unacked = Some(at.clone());
                }
            }
        }
    }
}
