//! Times of day for the human view: an event's `ts` (or, without one, the current time) as
//! `HH:MM:SS` in the local time zone.
//!
//! The standard library has no time zone database, so the local UTC offset is asked of the
//! system once at start (`date +%z`, which honours `TZ`), falling back to UTC where that fails.
//! A run that spans a daylight-saving change keeps the offset it started with.

use std::{
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

const DAY: i64 = 86_400;

/// An offset from UTC, east positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcOffset {
    seconds: i32,
}

impl UtcOffset {
    /// UTC itself.
    pub const UTC: Self = Self { seconds: 0 };

    /// An offset of `seconds` east of UTC.
    pub fn from_seconds(seconds: i32) -> Self {
        Self { seconds }
    }

    /// The local offset, from `date +%z`; UTC when it cannot be found.
    pub fn local() -> Self {
        let output = Command::new("date").arg("+%z").output();
        match output {
            Ok(out) if out.status.success() => {
                Self::parse(String::from_utf8_lossy(&out.stdout).trim()).unwrap_or(Self::UTC)
            }
            Ok(_) | Err(_) => {
                tracing::debug!("local UTC offset unknown; showing times in UTC");
                Self::UTC
            }
        }
    }

    /// Parses `Z`, `+01`, `+0100`, `+01:00`, `-05:30`.
    pub fn parse(text: &str) -> Option<Self> {
        if text == "Z" || text == "z" {
            return Some(Self::UTC);
        }
        let (sign, rest) = match text.as_bytes().first()? {
            b'+' => (1, &text[1..]),
            b'-' => (-1, &text[1..]),
            _ => return None,
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if !(digits.len() == 2 || digits.len() == 4) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hours: i32 = digits[..2].parse().ok()?;
        let minutes: i32 = if digits.len() == 4 { digits[2..].parse().ok()? } else { 0 };
        (hours <= 23 && minutes <= 59).then(|| Self::from_seconds(sign * (hours * 3600 + minutes * 60)))
    }
}

/// `HH:MM:SS` at `offset` for an event: from `ts` when it is an ISO 8601 / PostgreSQL timestamp
/// with an offset, as written when it has none, and from `now` when there is no usable `ts`.
pub fn time_of_day(ts: Option<&str>, offset: UtcOffset, now: SystemTime) -> String {
    let seconds = ts.and_then(|ts| ts_seconds_of_day(ts, offset)).unwrap_or_else(|| {
        let since_epoch = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        (since_epoch + i64::from(offset.seconds)).rem_euclid(DAY)
    });
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds % 3600 / 60, seconds % 60)
}

/// Seconds since local midnight for `2026-11-26T17:39:19.123456+00:00` (or with a space
/// instead of `T`, or a `Z`); `None` when it does not look like that.
fn ts_seconds_of_day(ts: &str, local: UtcOffset) -> Option<i64> {
    let time = ts.get(11..)?;
    if !matches!(ts.as_bytes().get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let field = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = time.get(range)?;
        s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (h, m, s) = (field(0..2)?, field(3..5)?, field(6..8)?);
    if time.as_bytes().get(2) != Some(&b':') || time.as_bytes().get(5) != Some(&b':') || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let written = h * 3600 + m * 60 + s.min(59);
    // Whatever follows the seconds: an optional fraction, then the offset (if any).
    let rest = time[8..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if rest.is_empty() {
        return Some(written);
    }
    let ts_offset = UtcOffset::parse(rest)?;
    Some((written - i64::from(ts_offset.seconds) + i64::from(local.seconds)).rem_euclid(DAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TS: &str = "2026-11-26T17:39:19.123456+00:00";

    #[test]
    fn ts_is_shown_in_local_time() {
        assert_eq!(time_of_day(Some(TS), UtcOffset::UTC, UNIX_EPOCH), "17:39:19");
        assert_eq!(time_of_day(Some(TS), UtcOffset::from_seconds(3600), UNIX_EPOCH), "18:39:19");
        assert_eq!(time_of_day(Some(TS), UtcOffset::from_seconds(-18 * 3600), UNIX_EPOCH), "23:39:19");
        assert_eq!(time_of_day(Some("2026-11-26 23:30:00+05:30"), UtcOffset::UTC, UNIX_EPOCH), "18:00:00");
        assert_eq!(time_of_day(Some("2026-11-26T01:02:03Z"), UtcOffset::UTC, UNIX_EPOCH), "01:02:03");
    }

    #[test]
    fn ts_without_offset_is_shown_as_written() {
        assert_eq!(time_of_day(Some("2026-11-26T17:39:19.5"), UtcOffset::from_seconds(7200), UNIX_EPOCH), "17:39:19");
    }

    #[test]
    fn without_a_usable_ts_the_time_is_now() {
        let now = UNIX_EPOCH + Duration::from_secs(DAY as u64 * 100 + 3 * 3600 + 4 * 60 + 5);
        assert_eq!(time_of_day(None, UtcOffset::UTC, now), "03:04:05");
        assert_eq!(time_of_day(Some("yesterday"), UtcOffset::from_seconds(-4 * 3600), now), "23:04:05");
    }

    #[test]
    fn offsets_parse_in_every_common_spelling() {
        for (text, seconds) in [("Z", 0), ("+01", 3600), ("+0100", 3600), ("+01:00", 3600), ("-05:30", -19800)] {
            assert_eq!(UtcOffset::parse(text), Some(UtcOffset::from_seconds(seconds)), "{text}");
        }
        for bad in ["", "01:00", "+1", "+24:00", "+01:0x"] {
            assert_eq!(UtcOffset::parse(bad), None, "{bad}");
        }
    }
}
