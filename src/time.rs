//! Wall-clock time as the store and the audit log keep it: milliseconds since the Unix epoch, and
//! its RFC 3339 form for people and JSON. Decision logic never reads the clock itself: it takes
//! `now` as an argument, so decay, ladders and expiry are tested on exact, made-up instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub fn ms(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// `2026-11-23T23:40:01Z` (seconds precision, UTC).
pub fn rfc3339(t: Millis) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(t)).to_string()
}

/// Parses `2026-11-23T23:40:01Z` (also without the `Z`, or with a space instead of the `T`).
pub fn parse_rfc3339(s: &str) -> Result<Millis, String> {
    humantime::parse_rfc3339_weak(s)
        .map(|t| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
        .map_err(|e| format!("'{s}' is not an RFC 3339 time ({e})"))
}

/// `14m`, `2h 5m`: a duration the way humantime writes it, at second precision.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(u64::from(d.subsec_millis() > 0)))).to_string()
}

/// `in 14m`, `3h ago`, `now`: an instant relative to `now`, to the largest unit.
pub fn relative(t: Millis, now: Millis) -> String {
    let (d, future) = if t >= now { (t - now, true) } else { (now - t, false) };
    let s = d / 1000;
    let text = match s {
        0 => return "now".into(),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// [`relative`] of an RFC 3339 text; the text itself if it does not parse.
pub fn relative_text(t: &str, now: Millis) -> String {
    parse_rfc3339(t).map_or_else(|_| t.to_owned(), |t| relative(t, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-11-23T23:40:01Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-23T23:40:01Z");
        assert!(parse_rfc3339("tomorrow").is_err());
        assert_eq!(human(Duration::from_secs(3660)), "1h 1m");
        assert_eq!(relative(1_000 + 14 * 60_000, 1_000), "in 14m");
        assert_eq!(relative(0, 3 * 3_600_000 + 5), "3h ago");
        assert_eq!(relative(5, 5), "now");
        assert_eq!(relative(0, 2 * 86_400_000), "2d ago");
    }
}
