//! Wall-clock time as the store and the audit log keep it: milliseconds since the Unix epoch, and
//! its RFC 3339 form for people and JSON. Decision logic never reads the clock itself: it takes
//! `now` as an argument, so decay, ladders and expiry are tested on exact, made-up instants; the
//! daemon reads it from a [`Clock`], which a test can move forward instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Where the daemon reads the time: the system's wall clock, plus a skip that only a test moves
/// ([`Clock::skip`]). Time goes on flowing at its real pace (HAProxy's rates and expiries are
/// real), but a test waits for a block's end of an hour by skipping the hour, not by sleeping.
/// Every clone shares the skip.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    skipped: Arc<AtomicU64>,
}

impl Clock {
    /// The system's wall clock, as the daemon runs in production.
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> Millis {
        now_ms().saturating_add(self.skipped.load(Ordering::Acquire))
    }

    /// Moves this clock (and every clone of it) `d` forward, at once.
    pub fn skip(&self, d: Duration) {
        self.skipped.fetch_add(ms(d), Ordering::AcqRel);
    }
}

pub fn ms(d: Duration) -> Millis {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z).
const LAST_WRITABLE: Millis = 253_402_300_799_999;

/// `2026-11-23T23:40:01.250Z` (millisecond precision, UTC): a release at `until` never looks
/// late against what was shown. Instants past year 9999 (which no checked input can reach) are
/// shown as the last writable one rather than panicking.
pub fn rfc3339(t: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(t.min(LAST_WRITABLE))).to_string()
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

/// `in 14m`, `3h ago`, `now`: an instant relative to `now`, to the largest unit. A future instant
/// is rounded up (`until` 14m30s away shows `in 15m`), a past one down, so a release is never
/// shown as due before it is.
pub fn relative(t: Millis, now: Millis) -> String {
    let (d, future) = if t >= now { (t - now, true) } else { (now - t, false) };
    let unit = |ms: u64| if future { d.div_ceil(ms) } else { d / ms };
    if d == 0 || (!future && d < 1000) {
        return "now".into();
    }
    let text = match d {
        ..60_000 => format!("{}s", unit(1000)),
        60_000..3_600_000 => format!("{}m", unit(60_000)),
        3_600_000..86_400_000 => format!("{}h", unit(3_600_000)),
        _ => format!("{}d", unit(86_400_000)),
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
    fn a_skipped_clock_is_ahead_by_the_skip_in_every_clone() {
        let c = Clock::system();
        let other = c.clone();
        let before = now_ms();
        c.skip(Duration::from_secs(3600));
        let after = other.now();
        assert!(after >= before + 3_600_000 && after <= now_ms() + 3_600_000, "{before} {after}");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2026-11-23T23:40:01Z").unwrap();
        assert_eq!(rfc3339(t), "2026-11-23T23:40:01.000Z");
        assert_eq!(rfc3339(t + 250), "2026-11-23T23:40:01.250Z");
        assert_eq!(parse_rfc3339(&rfc3339(t + 250)), Ok(t + 250));
        // Far beyond any checked input: shown, never a panic.
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
        // Rounded up in the future, down in the past.
        assert_eq!(relative(1_000 + 14 * 60_000 + 1, 1_000), "in 15m");
        assert_eq!(relative(1_500, 1_000), "in 1s");
        assert_eq!(relative(1_000, 1_500), "now");
        assert_eq!(relative(0, 119_999), "1m ago");
        assert!(parse_rfc3339("tomorrow").is_err());
        assert_eq!(human(Duration::from_secs(3660)), "1h 1m");
        assert_eq!(relative(1_000 + 14 * 60_000, 1_000), "in 14m");
        assert_eq!(relative(0, 3 * 3_600_000 + 5), "3h ago");
        assert_eq!(relative(5, 5), "now");
        assert_eq!(relative(0, 2 * 86_400_000), "2d ago");
    }
}
