//! The `table` command: a full-screen live table of the current orders. The feed (reconnect,
//! resume, a fresh snapshot on `reset`) is `watch`'s; this joins it, the keyboard and a timer
//! to the [`model`] and draws it with [`render`] after each change.
//!
//! The terminal is put back as it was (raw mode off, alternate screen left) on every way out:
//! `q`, Ctrl-C (a key in raw mode), SIGTERM / SIGINT (the token), an error (the guard's
//! `Drop`) and a panic (ratatui's panic hook).

mod model;
mod render;

use std::{
    io,
    time::{Duration, Instant, SystemTime},
};

use crossterm::event::{Event, EventStream};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

pub use model::{Action, Change, Model, RowRef};

use crate::{
    args::exit,
    clock,
    feed::{Feed, FeedConfig, FeedError, FeedItem},
    view,
};

/// How often the screen is redrawn without news (highlights fading, events/s).
const TICK: Duration = Duration::from_millis(250);

/// The notice while a new filter's snapshot is on its way.
const REFILTERING: &str = "new filter: taking a fresh snapshot";

/// Why `table` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The feed gave up, or the server refused what was asked.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// The terminal could not be set up or drawn on.
    #[error("terminal: {0}")]
    Terminal(#[source] io::Error),
}

impl TableError {
    /// The process exit code (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Feed(FeedError::GaveUp { .. }) => exit::GAVE_UP,
            Self::Feed(FeedError::InvalidUrl { .. } | FeedError::Refused { .. }) => exit::USAGE,
            Self::Feed(FeedError::Reset { .. }) => exit::RESET,
            Self::Terminal(_) => exit::FAILED,
        }
    }
}

/// In debug builds, makes `run` panic when the first snapshot arrives (the panic-hook test).
#[cfg(debug_assertions)]
const TEST_PANIC: &str = "CLI_CLIENT_TEST_PANIC";

/// Restores the terminal when dropped, however `run` ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        // When unwinding, ratatui's panic hook has restored already and printed the message on
        // the main screen; leaving the alternate screen a second time would move the cursor
        // back to where it was saved and the shell would write over the message.
        if !std::thread::panicking() {
            ratatui::restore();
        }
    }
}

/// Runs the table until `q`, Ctrl-C or `shutdown`.
///
/// # Errors
/// [`TableError::Feed`] when the feed gives up or the server refuses the view (a filter typed
/// with `/` that the server refuses only shows a notice and keeps the previous one);
/// [`TableError::Terminal`] when the terminal fails.
pub async fn run(config: FeedConfig, shutdown: CancellationToken) -> Result<(), TableError> {
    let zone = clock::local_zone();
    let mut terminal = ratatui::try_init().map_err(TableError::Terminal)?;
    let _restore = Restore;
    let mut keys = EventStream::new();
    let mut model = Model::new(config.params.filter.clone());
    let mut current = config.clone();
    // The filters that last worked, to fall back to when the server refuses new ones.
    let mut accepted = config.params.filter.clone();
    let mut feed = Feed::new(current.clone(), shutdown.child_token());
    let mut tick = tokio::time::interval(TICK);
    loop {
        let now = Instant::now();
        model.expire(now);
        terminal.draw(|frame| render::draw(frame, &mut model, &zone, now)).map_err(TableError::Terminal)?;
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => match model.key(key, Instant::now()) {
                    Action::None => {}
                    Action::Quit => return Ok(()),
                    Action::Refilter(filters) => {
                        current.params.filter.clone_from(&filters);
                        model.refiltered(filters);
                        model.notice = Some(REFILTERING.to_owned());
                        model.connection = "connecting".to_owned();
                        feed = Feed::new(current.clone(), shutdown.child_token());
                    }
                },
                Some(Ok(_)) => {} // resize and others: the next draw adapts
                Some(Err(err)) => return Err(TableError::Terminal(err)),
                None => return Ok(()),
            },
            item = feed.next() => match item {
                Ok(Some(item)) => {
                    // Test builds only: a panic with the table on screen, so a test can see the
                    // panic hook give the terminal back (tests/table.rs).
                    #[cfg(debug_assertions)]
                    if matches!(item, FeedItem::Snapshot { .. }) && std::env::var_os(TEST_PANIC).is_some() {
                        panic!("{TEST_PANIC} is set: panicking on the snapshot");
                    }
                    if on_item(&mut model, item) {
                        // The server took the filters: a snapshot with them arrived.
                        accepted.clone_from(&current.params.filter);
                    }
                }
                Ok(None) => return Ok(()),
                Err(FeedError::Refused { reason, .. }) if current.params.filter != accepted => {
                    // A filter typed with `/` was refused: say why, keep the previous one.
                    model.notice = Some(reason);
                    current.params.filter.clone_from(&accepted);
                    model.refiltered(accepted.clone());
                    feed = Feed::new(current.clone(), shutdown.child_token());
                }
                Err(err) => return Err(err.into()),
            },
        }
    }
}

/// Applies one feed item; `true` for a snapshot.
fn on_item(model: &mut Model, item: FeedItem) -> bool {
    let now = Instant::now();
    match item {
        FeedItem::Event { frame, raw } => {
            let lag = frame.ts.as_deref().and_then(|ts| clock::lag(ts, SystemTime::now()));
            model.push(Change::event(frame, &raw, lag), now);
        }
        FeedItem::Snapshot { position, rows, .. } => {
            model.push(Change::Snapshot { rows, position }, now);
            model.connection = "connected".to_owned();
            if model.notice.as_deref() == Some(REFILTERING) {
                model.notice = None;
            }
            return true;
        }
        FeedItem::Connected { server_id, .. } => {
            model.connection = "connected".to_owned();
            model.replica = server_id;
        }
        FeedItem::Resumed { .. } => model.connection = "connected".to_owned(),
        FeedItem::Disconnected { .. } | FeedItem::Retrying { .. } => {
            model.connection = "reconnecting".to_owned();
            model.notice = view::status_line(&item);
        }
        other => model.notice = view::status_line(&other),
    }
    false
}
