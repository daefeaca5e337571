//! Times of day for the human view: an event's `ts` (or, without one, the current time) as
//! `HH:MM:SS` in the local time zone, and the commit→screen lag for `table`.
//!
//! The zone comes from jiff (`TZ`, else /etc/localtime, with the system's tz database), and
//! each instant is converted with the rules in force at that instant: a run that spans a
//! daylight-saving change shows the times on both sides of it correctly.

use std::time::{Duration, SystemTime};

use jiff::{Timestamp, civil::DateTime, tz::TimeZone};

/// The local time zone; UTC when it cannot be found.
pub fn local_zone() -> TimeZone {
    TimeZone::try_system().unwrap_or_else(|err| {
        tracing::debug!(%err, "local time zone unknown; showing times in UTC");
        TimeZone::UTC
    })
}

/// An event's `ts` as an instant: ISO 8601 / RFC 3339 or PostgreSQL's text form, with an
/// offset (`+00`, `+00:00`, `Z`). `None` without an offset or when it does not parse.
pub fn parse_ts(ts: &str) -> Option<Timestamp> {
    ts.trim().parse::<Timestamp>().ok()
}

/// `HH:MM:SS` in `zone` for an event: from `ts` when it has an offset, as written when it has
/// none, and from `now` when there is no usable `ts`.
pub fn time_of_day(ts: Option<&str>, zone: &TimeZone, now: SystemTime) -> String {
    if let Some(ts) = ts {
        if let Some(instant) = parse_ts(ts) {
            return zone.to_datetime(instant).strftime("%H:%M:%S").to_string();
        }
        if let Ok(written) = ts.trim().parse::<DateTime>() {
            return written.strftime("%H:%M:%S").to_string();
        }
    }
    let now = Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH);
    zone.to_datetime(now).strftime("%H:%M:%S").to_string()
}

/// How long ago `ts` was at `now` (zero when the clocks disagree the other way); `None` when
/// `ts` is not an instant.
pub fn lag(ts: &str, now: SystemTime) -> Option<Duration> {
    let then = SystemTime::try_from(parse_ts(ts)?).ok()?;
    Some(now.duration_since(then).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const TS: &str = "2026-11-26T17:39:19.123456+00:00";

    fn fixed(hours: i8) -> TimeZone {
        TimeZone::fixed(jiff::tz::Offset::constant(hours))
    }

    #[test]
    fn ts_is_shown_in_local_time() {
        assert_eq!(time_of_day(Some(TS), &TimeZone::UTC, UNIX_EPOCH), "17:39:19");
        assert_eq!(time_of_day(Some(TS), &fixed(1), UNIX_EPOCH), "18:39:19");
        assert_eq!(time_of_day(Some(TS), &fixed(-18), UNIX_EPOCH), "23:39:19");
        assert_eq!(time_of_day(Some("2026-11-26 23:30:00+05:30"), &TimeZone::UTC, UNIX_EPOCH), "18:00:00");
        assert_eq!(time_of_day(Some("2026-11-26 23:30:00.5+01"), &TimeZone::UTC, UNIX_EPOCH), "22:30:00");
        assert_eq!(time_of_day(Some("2026-11-26T01:02:03Z"), &TimeZone::UTC, UNIX_EPOCH), "01:02:03");
    }

    #[test]
    fn ts_without_offset_is_shown_as_written() {
        assert_eq!(time_of_day(Some("2026-11-26T17:39:19.5"), &fixed(2), UNIX_EPOCH), "17:39:19");
    }

    #[test]
    fn without_a_usable_ts_the_time_is_now() {
        let now = UNIX_EPOCH + Duration::from_secs(86_400 * 100 + 3 * 3600 + 4 * 60 + 5);
        assert_eq!(time_of_day(None, &TimeZone::UTC, now), "03:04:05");
        assert_eq!(time_of_day(Some("yesterday"), &fixed(-4), now), "23:04:05");
    }

    /// New York's rules as a POSIX TZ string (no tz database needed): EST, EDT from the
    /// second Sunday of March to the first Sunday of November, at 02:00 local.
    fn new_york() -> TimeZone {
        TimeZone::posix("EST5EDT,M3.2.0,M11.1.0").unwrap()
    }

    #[test]
    fn daylight_saving_changes_are_followed_instant_by_instant() {
        let zones = [new_york()].into_iter().chain(TimeZone::get("America/New_York").ok());
        for zone in zones {
            // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
            assert_eq!(time_of_day(Some("2026-03-08T06:59:59Z"), &zone, UNIX_EPOCH), "01:59:59");
            assert_eq!(time_of_day(Some("2026-03-08T07:00:00Z"), &zone, UNIX_EPOCH), "03:00:00");
            // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC): 01:30 happens twice.
            assert_eq!(time_of_day(Some("2026-11-01T05:30:00Z"), &zone, UNIX_EPOCH), "01:30:00");
            assert_eq!(time_of_day(Some("2026-11-01T06:30:00Z"), &zone, UNIX_EPOCH), "01:30:00");
            assert_eq!(time_of_day(Some("2026-11-01T07:00:00Z"), &zone, UNIX_EPOCH), "02:00:00");
            // Summer and winter offsets away from the changes.
            assert_eq!(time_of_day(Some("2026-07-01T12:00:00+00:00"), &zone, UNIX_EPOCH), "08:00:00");
            assert_eq!(time_of_day(Some("2026-12-01T12:00:00+00:00"), &zone, UNIX_EPOCH), "07:00:00");
        }
    }

    #[test]
    fn lag_is_the_time_since_ts() {
        let now = SystemTime::try_from(parse_ts("2026-11-26T17:39:20.5Z").unwrap()).unwrap();
        assert_eq!(lag("2026-11-26T17:39:19+00", now), Some(Duration::from_millis(1500)));
        assert_eq!(lag("2026-11-26T17:39:21Z", now), Some(Duration::ZERO));
        assert_eq!(lag("soon", now), None);
    }
}
