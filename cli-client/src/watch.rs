//! The `watch` command: reads the feed and hands each item to the printer, until Ctrl-C /
//! SIGTERM (the token), until the feed gives up, or until whoever reads stdout goes away. On
//! the way out it prints where to resume from.

use std::io::{self, Write};

use tokio_util::sync::CancellationToken;

use crate::{
    args::exit,
    feed::{Feed, FeedConfig, FeedError, FeedItem},
    view::Printer,
};

/// Why `watch` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The feed gave up or cannot work.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// Stdout failed for a reason other than its reader going away.
    #[error("failed to write to stdout")]
    Output(#[source] io::Error),
}

impl WatchError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Feed(FeedError::GaveUp { .. }) => exit::GAVE_UP,
            Self::Feed(FeedError::InvalidUrl { .. } | FeedError::Refused { .. }) => exit::USAGE,
            Self::Feed(FeedError::Reset { .. }) => exit::RESET,
            Self::Output(_) => exit::FAILED,
        }
    }
}

/// Prints every event from `config`'s feed until `shutdown` is cancelled (`Ok`), the reader of
/// stdout goes away (`Ok`: `cli-client --json | head -1` is a normal use), or the feed stops.
/// Then, when anything was printed, `last position: EPOCH:POS (resume with --since EPOCH:POS)`
/// on stderr (not after a refused resume: that position cannot be resumed from).
///
/// # Errors
/// [`WatchError::Feed`] when `max_retries` attempts in a row failed, the URL cannot work, or
/// the server could not resume and `--on-reset exit` was given; [`WatchError::Output`] when
/// stdout fails.
pub async fn run<O: Write, E: Write>(
    config: FeedConfig,
    printer: &mut Printer<O, E>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let mut feed = Feed::new(config, shutdown);
    let result = pump(&mut feed, printer).await;
    if !matches!(result, Err(WatchError::Feed(FeedError::Reset { .. })))
        && feed.seen_any()
        && let Some(position) = feed.position()
    {
        printer.resume_hint(position);
    }
    result
}

async fn pump<O: Write, E: Write>(feed: &mut Feed, printer: &mut Printer<O, E>) -> Result<(), WatchError> {
    while let Some(item) = feed.next().await? {
        let printed = match &item {
            FeedItem::Event { frame, raw } => printer.event(frame, raw),
            FeedItem::Snapshot { position, rows, raw } => printer.snapshot(position.as_ref(), rows, raw),
            status => {
                printer.status(status);
                Ok(())
            }
        };
        match printed {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(WatchError::Output(err)),
        }
    }
    Ok(())
}
