//! The `watch` command: reads the feed and hands each item to the printer, until Ctrl-C /
//! SIGTERM (the token), until the feed gives up, or until whoever reads stdout goes away.

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
            Self::Feed(FeedError::InvalidUrl { .. }) => exit::USAGE,
            Self::Output(_) => exit::FAILED,
        }
    }
}

/// Prints every event from `config`'s feed until `shutdown` is cancelled (`Ok`), the reader of
/// stdout goes away (`Ok`: `cli-client --json | head -1` is a normal use), or the feed stops.
///
/// # Errors
/// [`WatchError::Feed`] when `max_retries` attempts in a row failed or the URL cannot work;
/// [`WatchError::Output`] when stdout fails.
pub async fn run<O: Write, E: Write>(
    config: FeedConfig,
    printer: &mut Printer<O, E>,
    shutdown: CancellationToken,
) -> Result<(), WatchError> {
    let url = config.url.clone();
    let mut feed = Feed::new(config, shutdown);
    while let Some(item) = feed.next().await? {
        let FeedItem::Event { frame, raw } = &item else {
            printer.status(&item, &url);
            continue;
        };
        match printer.event(frame, raw) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(err) => return Err(WatchError::Output(err)),
        }
    }
    Ok(())
}
