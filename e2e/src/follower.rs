//! A client that keeps a copy of the orders the way a real dashboard would: snapshot first,
//! then every event, resuming after each disconnect (on whichever replica answers), moving to a
//! new history when told it was `rebased`, and taking a fresh snapshot when told its history is
//! gone. It records every broken promise it sees. [`PlainFollower`] is a client of the original
//! design: one plain connection, every frame an event, folded into its copy.

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
    /// Times it was moved into a new history (Redis lost its data) without a reset.
    pub rebases: usize,
    /// The `reset` frames it was sent, for the story of a failure.
    pub resets: Vec<String>,
    /// Broken promises: gaps, repeats, events from an unannounced epoch.
    pub violations: Vec<String>,
    /// Event ids applied: an id is one committed change, whatever history carries it.
    seen: HashSet<i64>,
    awaiting_snapshot: bool,
}

impl Follower {
    /// Follows the stream on `urls` (rotating on every reconnect) until `stop` turns true.
    /// Each change of `drop` closes the connection, as a flaky network would.
    pub async fn run(
        name: String,
        urls: Vec<String>,
        drop: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
    ) -> Follower {
        Self::run_reporting(name, urls, drop, stop, watch::Sender::new(None)).await
    }

    /// [`Follower::run`], publishing the last position applied on `progress`.
    pub async fn run_reporting(
        name: String,
        urls: Vec<String>,
        mut drop: watch::Receiver<u64>,
        stop: watch::Receiver<bool>,
        progress: watch::Sender<Option<Position>>,
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
                let next = me.handle(&frame);
                progress.send_replace(me.position.clone());
                if next == Next::Resnapshot && !me.request_snapshot(&mut ws).await {
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
                    && !self.seen.insert(id)
                {
                    self.violations.push(format!("{}: event id {id} twice (at {epoch}:{pos})", self.name));
                }
                apply(&mut self.state, frame);
                self.events += 1;
                self.position = Some(Position { epoch: epoch.to_owned(), pos });
            }
            Some("rebased") => {
                let (from, to) = (position(&frame["from"]), position(&frame["position"]));
                if from != self.position {
                    self.violations
                        .push(format!("{}: rebased from {from:?}, but it was at {:?}", self.name, self.position));
                }
                self.rebases += 1;
                self.position = to;
            }
            Some("reset") => {
                self.resets.push(frame.to_string());
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

/// A client of the original design: one plain connection (no protocol, no resume), every
/// frame an event folded into its copy of the rows.
#[derive(Debug, Default)]
pub struct PlainFollower {
    /// Its name in messages.
    pub name: String,
    /// Its copy of the rows.
    pub state: BTreeMap<String, Value>,
    /// Events applied.
    pub events: usize,
    /// Broken promises: the connection dropped, an event twice.
    pub violations: Vec<String>,
    seen: HashSet<i64>,
}

impl PlainFollower {
    /// Connects to `url` and folds every event until `stop` turns true; the last position seen
    /// goes to `progress`. A plain client cannot resume, so the connection must last.
    pub async fn run(
        name: String,
        url: String,
        stop: watch::Receiver<bool>,
        progress: watch::Sender<Option<Position>>,
    ) -> PlainFollower {
        let mut me = PlainFollower { name, ..PlainFollower::default() };
        let Ok(Ok((mut ws, _))) = timeout(Duration::from_secs(5), connect_async(url.as_str())).await else {
            me.violations.push(format!("{}: could not connect to {url}", me.name));
            return me;
        };
        while !*stop.borrow() {
            let text = match timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                other => {
                    me.violations.push(format!("{}: connection ended: {other:?}", me.name));
                    return me;
                }
            };
            let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
            if let Some(id) = frame["id"].as_i64()
                && !me.seen.insert(id)
            {
                me.violations.push(format!("{}: event id {id} twice: {frame}", me.name));
                continue;
            }
            apply(&mut me.state, &frame);
            me.events += 1;
            if let (Some(epoch), Some(pos)) = (frame["epoch"].as_str(), frame["pos"].as_u64()) {
                progress.send_replace(Some(Position { epoch: epoch.to_owned(), pos }));
            }
        }
        me
    }
}

/// Resuming followers (each on `urls` rotated by its index) and plain followers (one per URL
/// given for them), started together: what the fault tests watch while they break things.
#[derive(Debug)]
pub struct Crowd {
    stop: watch::Sender<bool>,
    drop: watch::Sender<u64>,
    progress: Vec<watch::Receiver<Option<Position>>>,
    followers: Vec<tokio::task::JoinHandle<Follower>>,
    plain: Vec<tokio::task::JoinHandle<PlainFollower>>,
}

impl Crowd {
    /// Starts `followers` resuming followers on `urls` and a plain follower on each of
    /// `plain_urls`.
    pub fn start(followers: usize, urls: &[String], plain_urls: &[String]) -> Crowd {
        let (stop, stop_rx) = watch::channel(false);
        let (drop, drop_rx) = watch::channel(0u64);
        let mut progress = Vec::new();
        let followers = (0..followers)
            .map(|i| {
                let mut urls = urls.to_vec();
                let turn = i % urls.len();
                urls.rotate_left(turn);
                let (tx, rx) = watch::channel(None);
                progress.push(rx);
                tokio::spawn(Follower::run_reporting(format!("client-{i}"), urls, drop_rx.clone(), stop_rx.clone(), tx))
            })
            .collect();
        let plain = plain_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let (tx, rx) = watch::channel(None);
                progress.push(rx);
                tokio::spawn(PlainFollower::run(format!("plain-{i}"), url.clone(), stop_rx.clone(), tx))
            })
            .collect();
        Crowd { stop, drop, progress, followers, plain }
    }

    /// Drops every resuming follower's connection, as a flaky network would.
    pub fn drop_connections(&self) {
        self.drop.send_modify(|n| *n += 1);
    }

    /// Waits (up to `limit`) until every follower has applied `head`; whether they all did. A
    /// follower that stalls fails the caller's assertions with its own story.
    pub async fn caught_up(&mut self, head: &Option<Position>, limit: Duration) -> bool {
        timeout(limit, async {
            for rx in &mut self.progress {
                let _ = rx.wait_for(|p| p == head).await;
            }
        })
        .await
        .is_ok()
    }

    /// Stops them all: what each ended with.
    pub async fn stop(self) -> (Vec<Follower>, Vec<PlainFollower>) {
        self.stop.send_replace(true);
        let mut followers = Vec::new();
        for f in self.followers {
            followers.push(f.await.expect("follower finished"));
        }
        let mut plain = Vec::new();
        for f in self.plain {
            plain.push(f.await.expect("plain follower finished"));
        }
        (followers, plain)
    }
}
