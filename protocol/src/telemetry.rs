//! Logging setup: `tracing` with `RUST_LOG` filtering, human-readable or JSON lines.

use tracing_subscriber::EnvFilter;

/// The filter of every daemon when `RUST_LOG` is unset: lifecycle, reconnects and problems
/// (`info` and above), never a line per event or batch (those are `debug`). PostgreSQL's
/// notices (e.g. "relation already exists, skipping" from migrations) only from `warn`.
pub const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Log output format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line, for containers and log shippers.
    Json,
}

impl LogFormat {
    /// Parses `text` or `json`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" | "" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected \"text\" or \"json\"".to_owned()),
        }
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_filter);
    // Colour only for a person at a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `rust_log` when set and valid, else `default_filter`.
fn filter(rust_log: Option<&str>, default_filter: &str) -> EnvFilter {
    rust_log
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// What the daemons would print with `rust_log` for one lifecycle line and one per-batch line.
    fn printed(rust_log: Option<&str>) -> String {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(rust_log, DEFAULT_FILTER))
            .with_writer(out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "publisher::relay", "active publisher; listening on postgres");
            tracing::debug!(target: "publisher::active", events = 3, "appended");
            tracing::debug!(target: "ws_server::socket", "event sent");
            tracing::info!(target: "sqlx::postgres::notice", "relation already exists, skipping");
        });
        String::from_utf8(out.0.lock().expect("not poisoned").clone()).expect("utf-8")
    }

    #[test]
    fn the_default_filter_prints_lifecycle_but_no_line_per_batch() {
        let out = printed(None);
        assert!(out.contains("active publisher"), "{out}");
        assert!(!out.contains("appended"), "{out}");
        assert!(!out.contains("event sent"), "{out}");
        assert!(!out.contains("already exists"), "{out}");
    }

    #[test]
    fn rust_log_overrides_the_default_and_a_bad_one_falls_back() {
        assert!(printed(Some("debug")).contains("appended"));
        assert!(!printed(Some("")).contains("appended"));
        assert!(!printed(Some("publisher=[")).contains("appended"));
    }
}
