//! The allowlist: networks that are never blocked, whatever the rules say. It merges the config's
//! `[[allow]]` entries, `[safety] never_block` (and the hosts of tcp targets), and the entries an
//! operator added to the store; entries may expire. It is consulted before scoring and again before
//! every block is written, with IPv4-mapped IPv6 addresses folded to IPv4 first.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::Config;
use crate::store::AllowEntry;
use crate::time::Millis;

#[derive(Debug, Clone)]
struct Allowed {
    net: IpNet,
    until: Option<Millis>,
    reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    entries: Vec<Allowed>,
}

impl Allowlist {
    pub fn new(cfg: &Config, stored: &[AllowEntry]) -> Allowlist {
        let mut entries: Vec<Allowed> =
            cfg.safety.never_block.iter().map(|p| Allowed { net: p.net, until: None, reason: p.why.clone() }).collect();
        entries.extend(cfg.allow.iter().map(|a| Allowed { net: a.net, until: a.until, reason: a.reason.clone() }));
        entries.extend(stored.iter().map(|a| Allowed { net: a.net, until: a.until, reason: a.reason.clone() }));
        Allowlist { entries }
    }

    fn live(&self, now: Millis) -> impl Iterator<Item = &Allowed> {
        self.entries.iter().filter(move |e| e.until.is_none_or(|u| u > now))
    }

    /// The reason `addr` is allowlisted at `now`, if it is.
    pub fn allows(&self, addr: IpAddr, now: Millis) -> Option<&str> {
        self.live(now).find(|e| crate::net::covers_addr(&e.net, addr)).map(|e| e.reason.as_str())
    }

    /// The reason blocking `net` would touch an allowlisted address, if it would.
    pub fn overlaps(&self, net: &IpNet, now: Millis) -> Option<&str> {
        self.live(now).find(|e| crate::net::overlaps(&e.net, net)).map(|e| e.reason.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, Option<Millis>)]) -> Allowlist {
        Allowlist {
            entries: entries
                .iter()
                .map(|(n, until)| Allowed {
                    net: crate::net::parse_net(n).unwrap(),
                    until: *until,
                    reason: format!("r {n}"),
                })
                .collect(),
        }
    }

    #[test]
    fn matches_folded_addresses_overlaps_and_expiry() {
        let l = list(&[("10.0.0.0/24", None), ("2001:db8::/64", None), ("192.0.2.7", Some(5_000))]);
        assert_eq!(l.allows("10.0.0.9".parse().unwrap(), 0), Some("r 10.0.0.0/24"));
        assert_eq!(l.allows("::ffff:10.0.0.9".parse().unwrap(), 0), Some("r 10.0.0.0/24"));
        assert_eq!(l.allows("2001:db8::5".parse().unwrap(), 0), Some("r 2001:db8::/64"));
        assert_eq!(l.allows("10.0.1.1".parse().unwrap(), 0), None);
        assert_eq!(l.allows("192.0.2.7".parse().unwrap(), 4_999), Some("r 192.0.2.7"));
        assert_eq!(l.allows("192.0.2.7".parse().unwrap(), 5_000), None);
        // A prefix block containing an allowed address, or inside an allowed network, is refused.
        assert!(l.overlaps(&crate::net::parse_net("10.0.0.0/16").unwrap(), 0).is_some());
        assert!(l.overlaps(&crate::net::parse_net("10.0.0.128/25").unwrap(), 0).is_some());
        assert!(l.overlaps(&crate::net::parse_net("192.0.2.0/24").unwrap(), 4_000).is_some());
        assert!(l.overlaps(&crate::net::parse_net("192.0.2.0/24").unwrap(), 6_000).is_none());
        // IPv6 networks that hold ::ffff:0:0/96 reach the allowed IPv4 clients too.
        for wide in ["::/0", "::/1", "::/64", "::ffff:0:0/96", "::ffff:10.0.0.0/120"] {
            assert!(l.overlaps(&wide.parse().unwrap(), 0).is_some(), "{wide}");
        }
        assert!(l.overlaps(&"2001:db8:1::/48".parse().unwrap(), 0).is_none());
    }
}
