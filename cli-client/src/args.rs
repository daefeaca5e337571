//! The command line: `cli-client [watch] …` (the default) and `cli-client check …`, the help
//! text a newcomer reads first, and the exit codes it documents.
//!
//! Parsing only: turning arguments into a [`FeedConfig`] or [`CheckConfig`] is here too, but
//! nothing in this module reads the environment itself (clap's `env` does, for the two URLs).

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use protocol::log::Position;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::view::Color;
use crate::{
    check::CheckConfig,
    feed::{FeedConfig, OnReset, Params, Start},
    tls::{self, TlsSetupError},
    view::Format,
};

mod help;

use help::{ABOUT, AFTER_HELP, CHECK_AFTER_HELP, LONG_ABOUT, TABLE_AFTER_HELP, WATCH_AFTER_HELP};

/// Exit codes, as documented in `--help`.
pub mod exit {
    /// Everything passed, or `watch` was stopped by Ctrl-C / SIGTERM.
    pub const OK: u8 = 0;
    /// `check`: at least one check failed. Also any other runtime error.
    pub const FAILED: u8 = 1;
    /// Usage error: an unknown flag or a bad value (clap exits with it); also the server
    /// refusing --filter / --select / --table / --consumer / --token, a refused certificate,
    /// and `table` without a terminal.
    pub const USAGE: u8 = 2;
    /// `watch --max-retries N`: N reconnect attempts in a row failed.
    pub const GAVE_UP: u8 = 3;
    /// `watch --on-reset exit`: the server could not resume from the position asked for.
    pub const RESET: u8 = 4;
}

/// The ws-server endpoint used when `--url` is not given.
pub const DEFAULT_WS_URL: &str = "ws://localhost:8080/ws";
/// The database `check` connects to when neither `--database-url` nor `DATABASE_URL` is set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@localhost:5432/postgres";
/// The Redis `check` connects to when neither `--redis-url` nor `REDIS_URL` is set.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// `cli-client`: the parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "cli-client",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `watch`'s options, accepted without the subcommand name since `watch` is the default.
    #[command(flatten)]
    watch: WatchArgs,
}

impl Cli {
    /// The command to run: `watch` when none was named.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Watch(self.watch))
    }
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each change to `orders` as it happens (the default)
    #[command(after_help = WATCH_AFTER_HELP)]
    Watch(WatchArgs),
    /// A full-screen live table of the current orders, updated in place
    #[command(after_help = TABLE_AFTER_HELP)]
    Table(TableArgs),
    /// Check PostgreSQL, the trigger, Redis, the publisher and every ws-server; say how to fix what is down
    #[command(after_help = CHECK_AFTER_HELP)]
    Check(CheckArgs),
}

/// Options of `watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// ws-server's WebSocket endpoint. Several (comma-separated, or the flag repeated) are
    /// tried in turn: the next one after each failed or dropped connection
    #[arg(
        long,
        value_name = "URL",
        default_value = DEFAULT_WS_URL,
        value_parser = parse_ws_url,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub url: Vec<String>,
    /// Print each event as one JSON object per line (the frame as the server sent it)
    #[arg(long)]
    pub json: bool,
    /// Don't colour the output (also off when stdout is not a terminal or NO_COLOR is set)
    #[arg(long)]
    pub no_color: bool,
    /// Give up (exit code 3) after N reconnect attempts in a row fail; 0 exits as soon as the
    /// connection fails or drops [default: retry forever]
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Start with every change after this position (as printed on exit: `last position: …`),
    /// then live ones
    #[arg(long, value_name = "EPOCH:POS", value_parser = parse_position, conflicts_with = "snapshot")]
    pub since: Option<Position>,
    /// Start with the current orders (a snapshot: SNAPSHOT lines, or one JSON line with
    /// --json), then every change after it
    #[arg(long)]
    pub snapshot: bool,
    /// What to do when the server cannot resume from the position asked for
    #[arg(long, value_name = "WHAT", value_enum, default_value_t = OnResetArg::Snapshot)]
    pub on_reset: OnResetArg,
    #[command(flatten)]
    pub view: ViewArgs,
}

/// What to receive and how to connect, shared by `watch` and `table`: the server's own
/// parameters (docs/protocol.md, Filters and Auth), passed on unchanged.
#[derive(Debug, Clone, Default, Args)]
pub struct ViewArgs {
    /// Only rows matching a PostgREST filter, `<column>=<op>.<value>` (e.g.
    /// status=eq.pending, amount=gte.100); repeat it to AND several
    #[arg(long, value_name = "FILTER", action = clap::ArgAction::Append)]
    pub filter: Vec<String>,
    /// Only these columns (e.g. id,status,amount); `id` always comes along
    #[arg(long, value_name = "COLUMNS")]
    pub select: Option<String>,
    /// Only events of this table (e.g. orders)
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,
    /// A JWT for a server with auth on, sent as `Authorization: Bearer`
    #[arg(long, value_name = "JWT", env = "ORDERS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A durable consumer: the server resumes it after its last acknowledged position
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// Also trust the CA certificates in this PEM file for wss:// (a private CA)
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

impl ViewArgs {
    /// The server parameters.
    pub fn params(&self) -> Params {
        Params {
            filter: self.filter.clone(),
            select: self.select.clone(),
            table: self.table.clone(),
            consumer: self.consumer.clone(),
            token: self.token.clone().filter(|t| !t.trim().is_empty()),
        }
    }

    /// The TLS settings, when any URL is `wss://` (loading the system store takes time).
    ///
    /// # Errors
    /// `--ca-file` is unusable, or nothing is trusted.
    pub fn tls(&self, urls: &[String]) -> Result<Option<Arc<rustls::ClientConfig>>, TlsSetupError> {
        if !urls.iter().any(|url| url.starts_with("wss://")) {
            return Ok(None);
        }
        tls::client_config(self.ca_file.as_deref()).map(Some)
    }
}

/// Options of `table`.
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// ws-server's WebSocket endpoint(s), as for `watch`
    #[arg(
        long,
        value_name = "URL",
        default_value = DEFAULT_WS_URL,
        value_parser = parse_ws_url,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub url: Vec<String>,
    /// Give up after N reconnect attempts in a row fail [default: retry forever]
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    #[command(flatten)]
    pub view: ViewArgs,
}

impl TableArgs {
    /// The feed: a snapshot first, and a fresh one whenever the server cannot resume.
    pub fn feed_config(&self) -> FeedConfig {
        FeedConfig {
            max_retries: self.max_retries,
            start: Start::Snapshot,
            on_reset: OnReset::Snapshot,
            params: self.view.params(),
            ..FeedConfig::new(self.url.iter().cloned())
        }
    }
}

/// `--on-reset`: what to do when the server cannot resume from the position asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnResetArg {
    /// Print a fresh snapshot of the current orders, then continue after it
    Snapshot,
    /// Continue with changes from now on; the ones in between are not shown
    Live,
    /// Stop with exit code 4
    Exit,
}

impl From<OnResetArg> for OnReset {
    fn from(arg: OnResetArg) -> Self {
        match arg {
            OnResetArg::Snapshot => Self::Snapshot,
            OnResetArg::Live => Self::Live,
            OnResetArg::Exit => Self::Exit,
        }
    }
}

impl WatchArgs {
    /// The feed these options ask for.
    pub fn feed_config(&self) -> FeedConfig {
        let start = match (&self.since, self.snapshot) {
            (Some(position), _) => Start::Since(position.clone()),
            (None, true) => Start::Snapshot,
            (None, false) => Start::Live,
        };
        FeedConfig {
            max_retries: self.max_retries,
            start,
            on_reset: self.on_reset.into(),
            params: self.view.params(),
            ..FeedConfig::new(self.url.iter().cloned())
        }
    }

    /// The output format, given whether colour is otherwise allowed (see [`Color::resolve`]).
    pub fn format(&self, color: Color) -> Format {
        if self.json { Format::Json } else { Format::Human(color) }
    }
}

/// The publisher's HTTP address when `--publisher-url` is not given.
pub const DEFAULT_PUBLISHER_URL: &str = "http://localhost:9100";

/// Options of `check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Every ws-server replica's WebSocket endpoint (comma-separated, or the flag repeated):
    /// each one's /readyz and a handshake are checked
    #[arg(
        long,
        value_name = "URL",
        default_value = DEFAULT_WS_URL,
        value_parser = parse_ws_url,
        value_delimiter = ',',
        action = clap::ArgAction::Append
    )]
    pub url: Vec<String>,
    /// The publisher's HTTP address (its /readyz and /metrics)
    #[arg(long, value_name = "URL", default_value = DEFAULT_PUBLISHER_URL)]
    pub publisher_url: String,
    /// Fail the backlog check when the oldest unpublished change is older than this many seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub max_backlog_age: u64,
    /// Fail the replication slot check (PUBLISHER_CAPTURE=logical) when the slot keeps more WAL than this many MiB
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub max_retained_wal_mb: u64,
    /// Print one JSON object for scripts: {"ok": bool, "checks": [{"name", "status": "ok"|"fail"|"skipped", …}]}
    #[arg(long)]
    pub json: bool,
    /// A JWT for ws-servers with auth on
    #[arg(long, value_name = "JWT", env = "ORDERS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Also trust the CA certificates in this PEM file for wss:// and https://
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL to check
    #[arg(long, value_name = "URL", env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Redis to check
    #[arg(long, value_name = "URL", env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// The CA (PEM) a rediss:// server's certificate must chain to (default: the system's trust store)
    #[arg(long, value_name = "PEM", env = "REDIS_TLS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Don't colour the output (also off when stdout is not a terminal or NO_COLOR is set)
    #[arg(long)]
    pub no_color: bool,
}

impl CheckArgs {
    /// The checks these options ask for, each with a 5 s timeout.
    ///
    /// # Errors
    /// `--ca-file` is unusable (only read when a URL is `wss://` or `https://`).
    pub fn check_config(&self) -> Result<CheckConfig, TlsSetupError> {
        let secure = self.url.iter().any(|u| u.starts_with("wss://")) || self.publisher_url.starts_with("https://");
        let tls = if secure { Some(tls::client_config(self.ca_file.as_deref())?) } else { None };
        Ok(CheckConfig {
            database_url: self.database_url.clone(),
            redis_url: self.redis_url.clone(),
            redis_ca_file: self.redis_ca_file.clone(),
            ws_urls: self.url.clone(),
            publisher_url: self.publisher_url.clone(),
            max_backlog_age: Duration::from_secs(self.max_backlog_age),
            max_retained_wal: self.max_retained_wal_mb.saturating_mul(1024 * 1024),
            params: Params { token: self.token.clone().filter(|t| !t.trim().is_empty()), ..Params::default() },
            tls,
            timeout: Duration::from_secs(5),
        })
    }
}

/// Accepts `EPOCH:POS`, as `cli-client` prints it on exit.
fn parse_position(text: &str) -> Result<Position, String> {
    Position::parse(text.trim())
        .map_err(|e| format!("{e}; pass the position a previous run printed as `last position: EPOCH:POS`"))
}

/// Accepts a `ws://` or `wss://` URL with a host; explains what is wrong with anything else.
fn parse_ws_url(url: &str) -> Result<String, String> {
    if !url.starts_with("ws://") && !url.starts_with("wss://") {
        return Err(format!("expected a ws:// or wss:// URL such as {DEFAULT_WS_URL}"));
    }
    url.into_client_request().map_err(|e| format!("not a usable WebSocket URL: {e}"))?;
    Ok(url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("cli-client").chain(args.iter().copied())).map(Cli::into_command)
    }

    #[test]
    fn help_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn watch_is_the_default_subcommand() {
        let Command::Watch(args) = parse(&[]).unwrap() else { panic!("expected watch") };
        assert_eq!(args.url, [DEFAULT_WS_URL]);
        assert!(!args.json && !args.no_color && !args.snapshot);
        assert_eq!((args.max_retries, &args.since), (None, &None));
        let config = args.feed_config();
        assert_eq!((config.start, config.on_reset), (Start::Live, OnReset::Snapshot));
    }

    #[test]
    fn watch_flags_work_with_and_without_the_subcommand_name() {
        for argv in [
            &["--json", "--max-retries", "3", "--url", "ws://h:1/ws"][..],
            &["watch", "--json", "--max-retries", "3", "--url", "ws://h:1/ws"][..],
        ] {
            let Command::Watch(args) = parse(argv).unwrap() else { panic!("expected watch for {argv:?}") };
            assert!(args.json, "{argv:?}");
            assert_eq!(args.max_retries, Some(3));
            assert_eq!(args.url, ["ws://h:1/ws"]);
            assert_eq!(args.feed_config().max_retries, Some(3));
        }
    }

    #[test]
    fn check_takes_its_own_urls() {
        let Command::Check(args) =
            parse(&["check", "--database-url", "postgres://u:p@db/app", "--redis-url", "redis://r:6379"]).unwrap()
        else {
            panic!("expected check")
        };
        let config = args.check_config().unwrap();
        assert_eq!(config.database_url, "postgres://u:p@db/app");
        assert_eq!(config.redis_url, "redis://r:6379");
        assert_eq!(config.ws_urls, [DEFAULT_WS_URL]);
        assert_eq!(config.publisher_url, DEFAULT_PUBLISHER_URL);
    }

    #[test]
    fn bad_urls_are_usage_errors_that_say_why() {
        assert!(parse(&["--url", "wss://h/ws"]).is_ok());
        for (url, needle) in [("http://h/ws", "ws://"), ("ws://", "usable")] {
            let err = parse(&["--url", url]).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(exit::USAGE));
            assert!(err.to_string().contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn several_urls_comma_separated_or_repeated() {
        for argv in [
            &["--url", "ws://a:1/ws,ws://b:2/ws", "--url", "ws://c:3/ws"][..],
            &["watch", "--url", "ws://a:1/ws", "--url", "ws://b:2/ws,ws://c:3/ws"][..],
        ] {
            let Command::Watch(args) = parse(argv).unwrap() else { panic!("expected watch") };
            assert_eq!(args.feed_config().urls, ["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"], "{argv:?}");
        }
        let err = parse(&["--url", "ws://a:1/ws,http://b/ws"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn since_takes_a_position_and_starts_there() {
        let Command::Watch(args) = parse(&["--since", "k3xq9a:1042"]).unwrap() else { panic!("expected watch") };
        let position = Position { epoch: "k3xq9a".into(), pos: 1042 };
        assert_eq!(args.feed_config().start, Start::Since(position));
    }

    #[test]
    fn a_bad_since_is_a_usage_error_that_says_what_is_expected() {
        for (value, needle) in [("1042", "EPOCH:POS"), ("k3:x", "whole number"), (":5", "epoch"), ("", "EPOCH:POS")] {
            let err = parse(&["--since", value]).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(exit::USAGE), "{value}");
            let text = err.to_string();
            assert!(text.contains(needle) && text.contains("--since"), "{value}: {text}");
        }
    }

    #[test]
    fn snapshot_and_on_reset() {
        let Command::Watch(args) = parse(&["--snapshot", "--on-reset", "exit"]).unwrap() else { panic!("watch") };
        let config = args.feed_config();
        assert_eq!((config.start, config.on_reset), (Start::Snapshot, OnReset::Exit));
        let Command::Watch(args) = parse(&["--on-reset", "live"]).unwrap() else { panic!("watch") };
        assert_eq!(args.feed_config().on_reset, OnReset::Live);
        assert_eq!(parse(&["--on-reset", "later"]).unwrap_err().exit_code(), i32::from(exit::USAGE));
        let both = parse(&["--snapshot", "--since", "e:1"]).unwrap_err();
        assert_eq!(both.exit_code(), i32::from(exit::USAGE), "{both}");
    }

    #[test]
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for needle in ["3  watch: gave up", "4  watch --on-reset exit"] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
    }

    #[test]
    fn watch_flags_are_not_mixed_with_check() {
        assert!(parse(&["--json", "check"]).is_err());
    }

    #[test]
    fn json_flag_selects_the_json_format() {
        let Command::Watch(args) = parse(&["--json"]).unwrap() else { panic!("expected watch") };
        assert_eq!(args.format(Color::On), Format::Json);
        let Command::Watch(args) = parse(&[]).unwrap() else { panic!("expected watch") };
        assert_eq!(args.format(Color::Off), Format::Human(Color::Off));
    }
}
