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

pub use event::{
    FieldChange, changed_fields, describe_changes, event_line, json_line, snapshot_header, snapshot_line, sort_rows,
};
use jiff::tz::TimeZone;
use protocol::{
    env::redact_url,
    frames::{EventFrame, SnapshotRow},
    log::Position,
};

use crate::{
    check::{CheckResult, Outcome},
    clock,
    feed::{DisconnectReason, FeedItem, Protocol, Subscribe, reset_explanation},
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
    zone: TimeZone,
    out: O,
    err: E,
}

impl Printer<io::Stdout, io::Stderr> {
    /// A printer on the process's stdout and stderr, showing times in `zone`.
    pub fn stdio(format: Format, zone: TimeZone) -> Self {
        Self::new(format, zone, io::stdout(), io::stderr())
    }
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer on the given writers (tests pass buffers).
    pub fn new(format: Format, zone: TimeZone, out: O, err: E) -> Self {
        Self { format, zone, out, err }
    }

    /// Prints one event and flushes, so each line reaches a pipe as soon as it happens.
    ///
    /// # Errors
    /// Writing to stdout failed (e.g. `BrokenPipe` when the reader went away).
    pub fn event(&mut self, frame: &EventFrame, raw: &str) -> io::Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}", json_line(raw))?,
            Format::Human(color) => {
                let time = clock::time_of_day(frame.ts.as_deref(), &self.zone, SystemTime::now());
                writeln!(self.out, "{}", event_line(frame, &time, color))?;
            }
        }
        self.out.flush()
    }

    /// Prints a snapshot: in JSON, the frame as one line; for people, a header and one line per
    /// row (by id). Then `--- live from EPOCH:POS ---` on stderr. Flushes.
    ///
    /// # Errors
    /// Writing to stdout failed (e.g. `BrokenPipe` when the reader went away).
    pub fn snapshot(&mut self, position: Option<&Position>, rows: &[SnapshotRow], raw: &str) -> io::Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}", json_line(raw))?,
            Format::Human(color) => {
                writeln!(self.out, "{}", snapshot_header(position, rows.len(), color))?;
                let mut sorted: Vec<&SnapshotRow> = rows.iter().collect();
                sort_rows(&mut sorted);
                for row in sorted {
                    writeln!(self.out, "{}", snapshot_line(row, color))?;
                }
            }
        }
        self.out.flush()?;
        let from = position.map_or_else(|| "now".to_owned(), ToString::to_string);
        self.note(&format!("--- live from {from} ---"));
        Ok(())
    }

    /// Prints the status line for a feed item (nothing for events and snapshots) on stderr.
    pub fn status(&mut self, item: &FeedItem) {
        if let Some(line) = status_line(item) {
            self.note(&line);
        }
    }

    /// Prints `last position: EPOCH:POS (resume with --since EPOCH:POS)` on stderr.
    pub fn resume_hint(&mut self, position: &Position) {
        self.note(&resume_hint(position));
    }

    /// One line on stderr.
    fn note(&mut self, line: &str) {
        // Nowhere left to report a failing stderr; the data on stdout matters more.
        let _ = writeln!(self.err, "{line}");
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

/// The stderr line for a feed item: `connected to …`, `resumed from …`, `disconnected: …`,
/// `reconnecting in 1.6s (attempt 3)`; `None` for events and snapshots.
pub fn status_line(item: &FeedItem) -> Option<String> {
    Some(match item {
        FeedItem::Event { .. } | FeedItem::Snapshot { .. } => return None,
        FeedItem::Connected { url, server_id: Some(id), protocol, .. } => {
            format!("connected to {} (server {}, protocol {protocol})", redact_url(url), sanitize_id(id))
        }
        FeedItem::Connected { url, server_id: None, protocol: Protocol::Legacy, .. } => format!(
            "connected to {} (older server without orders.v1: reading every frame as an event; no resume)",
            redact_url(url)
        ),
        FeedItem::Connected { url, server_id: None, protocol, .. } => {
            format!("connected to {} (protocol {protocol})", redact_url(url))
        }
        FeedItem::Resumed { from, server_id, url } => {
            let on = server_id.as_deref().map_or_else(|| redact_url(url), |id| format!("server {}", sanitize_id(id)));
            format!("resumed from {} on {on}", sanitize_id(&from.to_string()))
        }
        FeedItem::Reset { from, reason, message, then } => {
            let then = match then {
                Subscribe::Snapshot => "taking a fresh snapshot".to_owned(),
                Subscribe::Since(newest) => format!(
                    "continuing live from {} (--on-reset live): events in between are not shown",
                    sanitize_id(&newest.to_string())
                ),
                Subscribe::Live => {
                    "continuing live from now (--on-reset live): events in between are not shown".to_owned()
                }
            };
            format!("{}; {then}", sanitize_id(&reset_explanation(from.as_ref(), *reason, message)))
        }
        FeedItem::NotResumed { asked, problem } => {
            let problem = sanitize_id(problem);
            match asked {
                Subscribe::Since(from) => format!(
                    "the server did not resume from {} ({problem}); continuing with its live events: changes made \
                     while disconnected are not shown",
                    sanitize_id(&from.to_string())
                ),
                Subscribe::Snapshot => {
                    format!("the server sent no snapshot ({problem}); continuing with its live events")
                }
                Subscribe::Live => {
                    format!("the server did not confirm the subscription ({problem}); continuing with its live events")
                }
            }
        }
        FeedItem::Conflated { from, to, folded } => format!(
            "the server folded {folded} {} after position {from} up to {to} (client behind): only the latest change per order follows",
            if *folded == 1 { "event" } else { "events" }
        ),
        FeedItem::Disconnected { url, reason: DisconnectReason::ConnectFailed(error) } => {
            format!("could not connect to {}: {error}", redact_url(url))
        }
        FeedItem::Disconnected { reason, .. } => format!("disconnected: {reason}"),
        FeedItem::Retrying { delay, attempt, max_retries, next_url } => {
            let of = max_retries.map(|max| format!(" of {max}")).unwrap_or_default();
            let to = next_url.as_deref().map(|url| format!(" to {}", redact_url(url))).unwrap_or_default();
            format!("reconnecting{to} in {} (attempt {attempt}{of})", seconds(*delay))
        }
    })
}

/// `last position: e1:42 (resume with --since e1:42)`.
pub fn resume_hint(position: &Position) -> String {
    let at = sanitize_id(&position.to_string());
    format!("last position: {at} (resume with --since {at})")
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
    use protocol::{event::Operation, frames::ResetReason};
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
        let mut printer = Printer::new(Format::Json, TimeZone::UTC, Vec::new(), Vec::new());
        printer.status(&FeedItem::Connected {
            url: "ws://h/ws".into(),
            server_id: Some("ws-1".into()),
            protocol: Protocol::OrdersV1,
            position: None,
        });
        printer.event(&frame, raw).unwrap();
        printer.event(&frame, raw).unwrap();
        let (out, err) = printer.into_parts();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{raw}\n{raw}\n"));
        assert_eq!(String::from_utf8(err).unwrap(), "connected to ws://h/ws (server ws-1, protocol orders.v1)\n");
    }

    #[test]
    fn human_mode_prints_the_event_time_from_ts() {
        let frame = EventFrame {
            epoch: Some("e1".into()),
            pos: Some(3),
            id: Some(1),
            table: "orders".into(),
            operation: Operation::Insert,
            order: json!({"id": 5, "customer_name": "Bo", "product_name": "Lamp", "status": "pending", "amount": 5.0}),
            old: None,
            ts: Some("2026-11-26T17:39:19.123456+00:00".into()),
        };
        let mut printer = Printer::new(Format::Human(Color::Off), TimeZone::UTC, Vec::new(), Vec::new());
        printer.event(&frame, "{}").unwrap();
        let (out, _) = printer.into_parts();
        assert_eq!(String::from_utf8(out).unwrap(), "17:39:19 INSERT #5 Bo · Lamp · pending · 5.00\n");
    }

    #[test]
    fn status_lines_read_well() {
        let url = "ws://u:secret@localhost:8080/ws";
        let line = |item| status_line(&item).unwrap();
        assert_eq!(
            line(FeedItem::Retrying {
                delay: Duration::from_millis(1630),
                attempt: 3,
                max_retries: None,
                next_url: None
            }),
            "reconnecting in 1.6s (attempt 3)"
        );
        assert_eq!(
            line(FeedItem::Retrying {
                delay: Duration::from_millis(100),
                attempt: 1,
                max_retries: Some(5),
                next_url: Some(url.into())
            }),
            "reconnecting to ws://u:***@localhost:8080/ws in 0.1s (attempt 1 of 5)"
        );
        assert_eq!(
            line(FeedItem::Disconnected {
                url: url.into(),
                reason: DisconnectReason::ConnectFailed("Connection refused".into())
            }),
            "could not connect to ws://u:***@localhost:8080/ws: Connection refused"
        );
        assert_eq!(
            line(FeedItem::Disconnected { url: url.into(), reason: DisconnectReason::Lost }),
            "disconnected: connection lost (no close frame)"
        );
        assert!(
            line(FeedItem::Connected { url: url.into(), server_id: None, protocol: Protocol::Legacy, position: None })
                .contains("every frame as an event")
        );
    }

    fn at(epoch: &str, pos: u64) -> Position {
        Position { epoch: epoch.into(), pos }
    }

    #[test]
    fn resume_lines_name_the_position_and_the_server() {
        let line = |item| status_line(&item).unwrap();
        assert_eq!(
            line(FeedItem::Resumed {
                from: at("k3xq9a", 1042),
                server_id: Some("ws-2".into()),
                url: "ws://h/ws".into()
            }),
            "resumed from k3xq9a:1042 on server ws-2"
        );
        assert_eq!(
            line(FeedItem::Resumed { from: at("e", 1), server_id: None, url: "ws://h/ws".into() }),
            "resumed from e:1 on ws://h/ws"
        );
        assert_eq!(
            line(FeedItem::Reset {
                from: Some(at("old", 5)),
                reason: ResetReason::HistoryLost,
                message: "cannot resume from old:5: redis restarted empty".into(),
                then: Subscribe::Snapshot
            }),
            "cannot resume from old:5 (history_lost): redis restarted empty; taking a fresh snapshot"
        );
        let live = line(FeedItem::Reset {
            from: Some(at("e", 5)),
            reason: ResetReason::BeyondRetention,
            message: String::new(),
            then: Subscribe::Since(at("e", 900)),
        });
        assert_eq!(
            live,
            "cannot resume from e:5 (beyond_retention): it is older than the history the server keeps; continuing live \
             from e:900 (--on-reset live): events in between are not shown"
        );
        assert_eq!(resume_hint(&at("e1", 42)), "last position: e1:42 (resume with --since e1:42)");
        let refused = line(FeedItem::NotResumed {
            asked: Subscribe::Since(at("e", 3)),
            problem: "unknown_type: unknown frame type \"subscribe\"".into(),
        });
        assert!(refused.starts_with("the server did not resume from e:3 (unknown_type"), "{refused}");
    }

    #[test]
    fn snapshots_print_rows_on_stdout_and_the_live_marker_on_stderr() {
        let raw = r#"{"type":"snapshot","position":{"epoch":"e1","pos":7},"rows":[{"table":"orders","order":{"id":2,"status":"new"}},{"table":"orders","order":{"id":1,"customer_name":"Al"}}]}"#;
        let protocol::frames::ServerFrame::Snapshot { position, rows, .. } = serde_json::from_str(raw).unwrap() else {
            panic!("a snapshot")
        };
        let mut printer = Printer::new(Format::Human(Color::Off), TimeZone::UTC, Vec::new(), Vec::new());
        printer.snapshot(position.as_ref(), &rows, raw).unwrap();
        let (out, err) = printer.into_parts();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "=== snapshot at e1:7: 2 rows ===\nSNAPSHOT #1 Al\nSNAPSHOT #2 new\n"
        );
        assert_eq!(String::from_utf8(err).unwrap(), "--- live from e1:7 ---\n");

        let mut printer = Printer::new(Format::Json, TimeZone::UTC, Vec::new(), Vec::new());
        printer.snapshot(position.as_ref(), &rows, raw).unwrap();
        let (out, _) = printer.into_parts();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{raw}\n"));
    }

    #[test]
    fn check_lines_align_and_carry_the_fix() {
        let passed = CheckResult { name: "Redis".into(), outcome: Outcome::Passed { detail: "PONG".into() } };
        assert_eq!(check_line(&passed, Color::Off), "ok      Redis: PONG");
        let failed = CheckResult {
            name: "Redis".into(),
            outcome: Outcome::Failed { problem: "no answer".into(), fix: "start Redis".into() },
        };
        assert_eq!(check_line(&failed, Color::Off), "FAIL    Redis: no answer — fix: start Redis");
        assert_eq!(check_line(&failed, Color::On), "\x1b[31mFAIL   \x1b[0m Redis: no answer — fix: start Redis");
        let skipped = CheckResult {
            name: "orders table".into(),
            outcome: Outcome::Skipped { reason: "needs PostgreSQL".into() },
        };
        assert_eq!(check_line(&skipped, Color::Off), "skipped orders table: needs PostgreSQL");
    }
}
