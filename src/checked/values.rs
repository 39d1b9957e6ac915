use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The longest duration a configuration or rules file may give (ladder steps, `max_duration`,
/// windows, retention...): ten years. Anything longer is a typo, and would overflow instants.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// A positive duration written the human way: `500ms`, `10s`, `15m`, `1h 30m`, `7d`, at most
/// [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Dur(pub Duration);

impl TryFrom<String> for Dur {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("'{s}' is not a duration ({e}); write e.g. 500ms, 10s, 15m, 1h, 7d"))?;
        if d.is_zero() {
            return Err(format!("'{s}': a duration must be greater than zero"));
        }
        if d > MAX_DURATION {
            return Err(format!("'{s}': a duration is at most 3650d (10 years)"));
        }
        Ok(Dur(d))
    }
}

/// An address or a CIDR with its host bits cleared, in canonical form ([`crate::net::parse_net`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Net(pub IpNet);

impl TryFrom<String> for Net {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        crate::net::parse_net(&s).map(Net)
    }
}

/// An RFC 3339 time, as milliseconds since the epoch, at most [`MAX_DURATION`] from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Time(pub crate::time::Millis);

impl TryFrom<String> for Time {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let t = crate::time::parse_rfc3339(&s)?;
        if t > crate::time::now_ms().saturating_add(crate::time::ms(MAX_DURATION)) {
            return Err(format!("'{s}' is more than 10 years from now"));
        }
        Ok(Time(t))
    }
}
