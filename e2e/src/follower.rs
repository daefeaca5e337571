//! A client that keeps a copy of the orders the way a real dashboard would: snapshot first,
//! then every event, resuming after each disconnect (on whichever replica answers) and taking a
//! fresh snapshot when told its history is gone. It records every broken promise it sees.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use protocol::log::Position;
use serde_json::{Value, json};
use tokio::{net::TcpStream, sync::watch, time::timeout};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::history::apply;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a follower ended with.
#[derive(Debug, Default)]
pub struct Follower {
    /// Its name in messages.
    pub name: String,
    /// Its copy of the rows, `<table>:<id>` → row.
    pub state: BTreeMap<String, Value>,
    /// The last position applied.
    pub position: Option<Position>,
    /// Events applied.
    pub events: usize,
    /// Snapshots taken.
    pub snapshots: usize,
    /// Times it resumed after a disconnect.
    pub resumes: usize,
    /// Broken promises: gaps, repeats, events from an unannounced epoch.
    pub violations: Vec<String>,
    seen: HashSet<(String, i64)>,
    awaiting_snapshot: bool,
}

impl Follower {
    /// Follows the stream on `urls` (rotating on every reconnect) until `stop` turns true.
    /// Each change of `drop` closes the connection, as a flaky network would.
    pub async fn run(
        name: String,
        urls: Vec<String>,
        mut drop: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
    ) -> Follower {
        let mut me = Follower { name, ..Follower::default() };
        let mut attempt = 0usize;
        while !*stop.borrow() {
            let base = &urls[attempt % urls.len()];
            attempt += 1;
            // Resume at connect time (`?since=`): no live event can slip in before the replay.
            let url = match &me.position {
                Some(p) => format!("{base}?since={p}"),
                None => base.clone(),
            };
            let Some(mut ws) = connect(&url).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if me.position.is_some() {
                me.resumes += 1;
            }
            if me.position.is_none() && !me.request_snapshot(&mut ws).await {
                continue;
            }
            drop.borrow_and_update();
            loop {
                let frame = tokio::select! {
                    _ = drop.changed() => {
                        // Stay away long enough to miss events: the resume must bring them back.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        break;
                    }
                    msg = timeout(Duration::from_millis(200), ws.next()) => match msg {
                        Err(_) if *stop.borrow() => break,
                        Err(_) => continue,
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => break,
                        Ok(Some(Ok(_))) => continue,
                    },
                };
                let frame: Value = serde_json::from_str(&frame).expect("frames are JSON");
                if me.handle(&frame) == Next::Resnapshot && !me.request_snapshot(&mut ws).await {
                    break;
                }
            }
            // Dropped without a close handshake on purpose (a network cut).
        }
        me
    }

    /// Asks for a snapshot; events until it arrives are live ones the snapshot (and what
    /// follows it) will cover, so they are ignored.
    async fn request_snapshot(&mut self, ws: &mut Ws) -> bool {
        self.awaiting_snapshot = true;
        let frame = json!({"type":"subscribe","snapshot":true}).to_string();
        ws.send(Message::Text(frame.into())).await.is_ok()
    }

    fn handle(&mut self, frame: &Value) -> Next {
        match frame["type"].as_str() {
            Some("event") if self.awaiting_snapshot => {}
            Some("snapshot") => {
                self.awaiting_snapshot = false;
                self.snapshots += 1;
                self.state = frame["rows"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|r| {
                        (
                            format!("{}:{}", r["table"].as_str().unwrap_or("orders"), r["order"]["id"]),
                            r["order"].clone(),
                        )
                    })
                    .collect();
                self.position = position(&frame["position"]);
            }
            Some("event") => {
                let (Some(epoch), Some(pos)) = (frame["epoch"].as_str(), frame["pos"].as_u64()) else {
                    self.violations.push(format!("{}: event without a position: {frame}", self.name));
                    return Next::Continue;
                };
                match &self.position {
                    Some(p) if p.epoch == epoch && pos == p.pos + 1 => {}
                    Some(p) if p.epoch == epoch && pos <= p.pos => {
                        self.violations.push(format!("{}: position {pos} again after {}", self.name, p.pos));
                        return Next::Continue;
                    }
                    other => {
                        self.violations.push(format!("{}: event {epoch}:{pos} after {other:?} (gap)", self.name));
                    }
                }
                if let Some(id) = frame["id"].as_i64()
                    && !self.seen.insert((epoch.to_owned(), id))
                {
                    self.violations.push(format!("{}: event id {id} twice", self.name));
                }
                apply(&mut self.state, frame);
                self.events += 1;
                self.position = Some(Position { epoch: epoch.to_owned(), pos });
            }
            Some("reset") => {
                self.position = None;
                return Next::Resnapshot;
            }
            _ => {}
        }
        Next::Continue
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Resnapshot,
}

fn position(value: &Value) -> Option<Position> {
    serde_json::from_value(value.clone()).ok()
}

async fn connect(url: &str) -> Option<Ws> {
    let mut request = url.into_client_request().ok()?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("orders.v1"));
    let (ws, _) = timeout(Duration::from_secs(2), connect_async(request)).await.ok()?.ok()?;
    Some(ws)
}
