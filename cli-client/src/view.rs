//! Rendering, and nothing else: what each event, status change and check result looks like,
//! and where it goes. Data (events, check results) goes to stdout; connection status goes to
//! stderr, so `cli-client --json | jq` sees nothing but events.
//!
//! This is the one module allowed to print (`clippy::print_stdout` is allowed on it); it knows
//! nothing about sockets or databases.

mod event;

use std::{
    io::{self, Write},
    time::{Duration, SystemTime},
};

pub use event::{FieldChange, changed_fields, describe_changes, event_line, json_line};
use protocol::{env::redact_url, frames::EventFrame};

use crate::{
    check::{CheckResult, Outcome},
    clock::{self, UtcOffset},
    feed::{DisconnectReason, FeedItem, Protocol},
};

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    /// ANSI colours.
    On,
    /// Plain text.
    Off,
}

impl Color {
    /// Colour only for a terminal, and only when neither `--no-color` nor `NO_COLOR` says no.
    pub fn resolve(no_color_flag: bool, no_color_env: bool, is_terminal: bool) -> Self {
        if no_color_flag || no_color_env || !is_terminal { Self::Off } else { Self::On }
    }
}

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One readable line per event.
    Human(Color),
    /// One JSON object per line: the frame as the server sent it.
    Json,
}

/// Writes events to `out` (stdout) and status lines to `err` (stderr).
#[derive(Debug)]
pub struct Printer<O, E> {
    format: Format,
    offset: UtcOffset,
    out: O,
    err: E,
}

impl Printer<io::Stdout, io::Stderr> {
    /// A printer on the process's stdout and stderr, showing times at `offset`.
    pub fn stdio(format: Format, offset: UtcOffset) -> Self {
        Self::new(format, offset, io::stdout(), io::stderr())
    }
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer on the given writers (tests pass buffers).
    pub fn new(format: Format, offset: UtcOffset, out: O, err: E) -> Self {
        Self { format, offset, out, err }
    }

    /// Prints one event and flushes, so each line reaches a pipe as soon as it happens.
    ///
    /// # Errors
    /// Writing to stdout failed (e.g. `BrokenPipe` when the reader went away).
    pub fn event(&mut self, frame: &EventFrame, raw: &str) -> io::Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}", json_line(raw))?,
            Format::Human(color) => {
                let time = clock::time_of_day(frame.ts.as_deref(), self.offset, SystemTime::now());
                writeln!(self.out, "{}", event_line(frame, &time, color))?;
            }
        }
        self.out.flush()
    }

    /// Prints the status line for a feed item (nothing for events) on stderr.
    pub fn status(&mut self, item: &FeedItem, url: &str) {
        if let Some(line) = status_line(item, url) {
            // Nowhere left to report a failing stderr; the data on stdout matters more.
            let _ = writeln!(self.err, "{line}");
        }
    }

    /// Prints one check result on stdout.
    ///
    /// # Errors
    /// Writing to stdout failed.
    pub fn check(&mut self, result: &CheckResult) -> io::Result<()> {
        let color = match self.format {
            Format::Human(color) => color,
            Format::Json => Color::Off,
        };
        writeln!(self.out, "{}", check_line(result, color))?;
        self.out.flush()
    }

    /// The writers back, for tests.
    pub fn into_parts(self) -> (O, E) {
        (self.out, self.err)
    }
}

/// The stderr line for a feed item: `connected to …`, `disconnected: …`, `reconnecting in 1.6s
/// (attempt 3)`; `None` for events.
pub fn status_line(item: &FeedItem, url: &str) -> Option<String> {
    let url = redact_url(url);
    Some(match item {
        FeedItem::Event { .. } => return None,
        FeedItem::Connected { server_id: Some(id), protocol } => {
            format!("connected to {url} (server {}, protocol {protocol})", sanitize_id(id))
        }
        FeedItem::Connected { server_id: None, protocol: Protocol::Legacy } => {
            format!("connected to {url} (older server without orders.v1: reading every frame as an event)")
        }
        FeedItem::Connected { server_id: None, protocol } => format!("connected to {url} (protocol {protocol})"),
        FeedItem::Disconnected { reason: DisconnectReason::ConnectFailed(error) } => {
            format!("could not connect to {url}: {error}")
        }
        FeedItem::Disconnected { reason } => format!("disconnected: {reason}"),
        FeedItem::Retrying { delay, attempt, max_retries } => {
            let of = max_retries.map(|max| format!(" of {max}")).unwrap_or_default();
            format!("reconnecting in {} (attempt {attempt}{of})", seconds(*delay))
        }
    })
}

/// The stdout line for one check: `ok      PostgreSQL: …`, `FAIL    Redis: … — fix: …`.
pub fn check_line(result: &CheckResult, color: Color) -> String {
    let (word, code, text) = match &result.outcome {
        Outcome::Passed { detail } => ("ok", "32", detail.clone()),
        Outcome::Failed { problem, fix } => ("FAIL", "31", format!("{problem} — fix: {fix}")),
        Outcome::Skipped { reason } => ("skipped", "2", reason.clone()),
    };
    let word = match color {
        Color::Off => format!("{word:<7}"),
        Color::On => format!("\x1b[{code}m{word:<7}\x1b[0m"),
    };
    format!("{word} {}: {text}", result.name)
}

/// `1.6s`: one decimal is the precision a person waiting needs.
fn seconds(delay: Duration) -> String {
    format!("{:.1}s", delay.as_secs_f64())
}

fn sanitize_id(id: &str) -> String {
    id.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::event::Operation;
    use serde_json::json;

    #[test]
    fn colour_needs_a_terminal_and_no_opt_out() {
        assert_eq!(Color::resolve(false, false, true), Color::On);
        assert_eq!(Color::resolve(true, false, true), Color::Off);
        assert_eq!(Color::resolve(false, true, true), Color::Off);
        assert_eq!(Color::resolve(false, false, false), Color::Off);
    }

    #[test]
    fn json_mode_prints_the_raw_frame_one_per_line_and_no_status_on_stdout() {
        let raw = r#"{"type":"event","id":7,"table":"orders","operation":"INSERT","order":{"id":1,"amount":10.50},"ts":"2026-11-26T17:39:19.123456+00:00"}"#;
        let frame: EventFrame = serde_json::from_str(raw).unwrap();
        let mut printer = Printer::new(Format::Json, UtcOffset::UTC, Vec::new(), Vec::new());
        printer
            .status(&FeedItem::Connected { server_id: Some("ws-1".into()), protocol: Protocol::OrdersV1 }, "ws://h/ws");
        printer.event(&frame, raw).unwrap();
        printer.event(&frame, raw).unwrap();
        let (out, err) = printer.into_parts();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{raw}\n{raw}\n"));
        assert_eq!(String::from_utf8(err).unwrap(), "connected to ws://h/ws (server ws-1, protocol orders.v1)\n");
    }

    #[test]
    fn human_mode_prints_the_event_time_from_ts() {
        let frame = EventFrame {
            id: Some(1),
            table: "orders".into(),
            operation: Operation::Insert,
            order: json!({"id": 5, "customer_name": "Bo", "product_name": "Lamp", "status": "pending", "amount": 5.0}),
            old: None,
            ts: Some("2026-11-26T17:39:19.123456+00:00".into()),
        };
        let mut printer = Printer::new(Format::Human(Color::Off), UtcOffset::UTC, Vec::new(), Vec::new());
        printer.event(&frame, "{}").unwrap();
        let (out, _) = printer.into_parts();
        assert_eq!(String::from_utf8(out).unwrap(), "17:39:19 INSERT #5 Bo · Lamp · pending · 5.00\n");
    }

    #[test]
    fn status_lines_read_well() {
        let url = "ws://u:secret@localhost:8080/ws";
        let line = |item| status_line(&item, url).unwrap();
        assert_eq!(
            line(FeedItem::Retrying { delay: Duration::from_millis(1630), attempt: 3, max_retries: None }),
            "reconnecting in 1.6s (attempt 3)"
        );
        assert_eq!(
            line(FeedItem::Retrying { delay: Duration::from_millis(100), attempt: 1, max_retries: Some(5) }),
            "reconnecting in 0.1s (attempt 1 of 5)"
        );
        assert_eq!(
            line(FeedItem::Disconnected { reason: DisconnectReason::ConnectFailed("Connection refused".into()) }),
            "could not connect to ws://u:***@localhost:8080/ws: Connection refused"
        );
        assert_eq!(
            line(FeedItem::Disconnected { reason: DisconnectReason::Lost }),
            "disconnected: connection lost (no close frame)"
        );
        assert!(
            line(FeedItem::Connected { server_id: None, protocol: Protocol::Legacy })
                .contains("every frame as an event")
        );
    }

    #[test]
    fn check_lines_align_and_carry_the_fix() {
        let passed = CheckResult { name: "Redis", outcome: Outcome::Passed { detail: "PONG".into() } };
        assert_eq!(check_line(&passed, Color::Off), "ok      Redis: PONG");
        let failed = CheckResult {
            name: "Redis",
            outcome: Outcome::Failed { problem: "no answer".into(), fix: "start Redis".into() },
        };
        assert_eq!(check_line(&failed, Color::Off), "FAIL    Redis: no answer — fix: start Redis");
        assert_eq!(check_line(&failed, Color::On), "\x1b[31mFAIL   \x1b[0m Redis: no answer — fix: start Redis");
        let skipped =
            CheckResult { name: "orders table", outcome: Outcome::Skipped { reason: "needs PostgreSQL".into() } };
        assert_eq!(check_line(&skipped, Color::Off), "skipped orders table: needs PostgreSQL");
    }
}
