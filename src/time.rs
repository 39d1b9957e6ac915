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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-11-23T23:40:01Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-23T23:40:01Z");
        assert!(parse_rfc3339("tomorrow").is_err());
        assert_eq!(human(Duration::from_secs(3660)), "1h 1m");
    }
}
