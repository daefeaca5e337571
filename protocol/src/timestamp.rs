//! An event's `ts` (when the trigger recorded the change, PostgreSQL's `clock_timestamp()`
//! rendered as a JSON `timestamptz`, e.g. `2026-12-01T20:50:00.123456+00:00`) as a
//! [`SystemTime`], for the latency histograms.
//!
//! PostgreSQL writes the offset of the session's `TimeZone`, so any offset can appear
//! (`+05:30`, and for historical dates seconds too), and it leaves out trailing zeros of the
//! fraction. `jiff` parses all of that as RFC 3339 / ISO 8601 without a time-zone database.

use std::time::SystemTime;

/// The instant `ts` names; `None` when it is not a timestamp with an offset.
pub fn parse(ts: &str) -> Option<SystemTime> {
    let instant: jiff::Timestamp = ts.parse().ok()?;
    SystemTime::try_from(instant).ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at(seconds: u64, nanos: u32) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::new(seconds, nanos))
    }

    #[test]
    fn postgres_timestamps_parse_in_every_offset() {
        // 2026-12-01T20:50:00Z
        let base = 1_796_158_200;
        assert_eq!(parse("2026-12-01T20:50:00.123456+00:00"), at(base, 123_456_000));
        assert_eq!(parse("2026-12-01T20:50:00+00:00"), at(base, 0));
        assert_eq!(parse("2026-12-01T20:50:00.5Z"), at(base, 500_000_000));
        assert_eq!(parse("2026-12-02T02:20:00.1+05:30"), at(base, 100_000_000));
        assert_eq!(parse("2026-12-01T15:50:00-05:00"), at(base, 0));
        assert_eq!(parse("2026-12-01 20:50:00+00"), at(base, 0), "psql's text form");
    }

    #[test]
    fn anything_else_is_none() {
        for bad in ["", "yesterday", "2026-12-01T20:50:00", "2026-13-01T20:50:00Z", "1796158200"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
