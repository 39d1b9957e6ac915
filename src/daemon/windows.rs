//! The controller's time windows as plain data, driven by the `now` they are given: the circuit
//! breaker (automatic blocks in the last minute), subnet aggregation (distinct offenders of one
//! prefix within a window), and which blocks are due for release. No clock is read here, so the
//! tests below are exact.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::store::Block;
use crate::time::Millis;

/// Counts automatic blocks over a sliding minute; open (no more blocks) at `max`.
#[derive(Debug)]
pub struct Breaker {
    max: usize,
    window: Millis,
    times: VecDeque<Millis>,
    open: bool,
}

/// A change of the breaker's state, to log and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { blocks: usize },
    Closed,
}

impl Breaker {
    pub fn new(max: u32, window: Millis) -> Breaker {
        Breaker { max: max as usize, window, times: VecDeque::new(), open: false }
    }

    /// Whether a block may happen at `now`, and the state change this observation caused.
    pub fn check(&mut self, now: Millis) -> (bool, Option<Transition>) {
        while self.times.front().is_some_and(|&t| t + self.window <= now) {
            self.times.pop_front();
        }
        let open = self.times.len() >= self.max;
        let change = (open != self.open).then_some(if open {
            Transition::Opened { blocks: self.times.len() }
        } else {
            Transition::Closed
        });
        self.open = open;
        (!open, change)
    }

    /// Counts a block made at `now` (after [`Breaker::check`] allowed it).
    pub fn record(&mut self, now: Millis) {
        self.times.push_back(now);
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// Recently blocked addresses per prefix, for subnet aggregation.
#[derive(Debug, Default)]
pub struct Aggregator {
    recent: HashMap<IpNet, Vec<(IpAddr, Millis)>>,
}

impl Aggregator {
    /// Records `addr` blocked at `now` under `prefix`; returns how many distinct addresses of the
    /// prefix were blocked within `window` (this one included).
    pub fn record(&mut self, prefix: IpNet, addr: IpAddr, now: Millis, window: Millis) -> usize {
        let recent = self.recent.entry(prefix).or_default();
        recent.retain(|(a, t)| *t + window > now && *a != addr);
        recent.push((addr, now));
        recent.len()
    }

    /// Forgets a prefix (it has been blocked as a whole).
    pub fn reset(&mut self, prefix: &IpNet) {
        self.recent.remove(prefix);
    }

    /// Drops prefixes with nothing recent, to keep memory bounded.
    pub fn prune(&mut self, now: Millis, window: Millis) {
        self.recent.retain(|_, v| v.iter().any(|(_, t)| *t + window > now));
    }
}

/// The blocks whose `until` has come at `now` and that are not being released already, unless a
/// failed release's retry time has come (`releasing` maps a key to that time, `None` while a
/// release is in flight).
pub fn due<'a>(
    blocks: impl IntoIterator<Item = &'a Block>,
    releasing: &HashMap<IpNet, Option<Millis>>,
    now: Millis,
) -> Vec<Block> {
    blocks
        .into_iter()
        .filter(|b| b.until <= now)
        .filter(|b| match releasing.get(&b.key) {
            None => true,
            Some(retry_at) => retry_at.is_some_and(|t| t <= now),
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Actions};
    use crate::store::Origin;

    #[test]
    fn breaker_opens_at_max_and_closes_when_the_minute_is_quiet() {
        let mut b = Breaker::new(2, 60_000);
        assert_eq!(b.check(0), (true, None));
        b.record(0);
        assert_eq!(b.check(10_000), (true, None));
        b.record(10_000);
        assert_eq!(b.check(20_000), (false, Some(Transition::Opened { blocks: 2 })));
        assert_eq!(b.check(59_999), (false, None));
        assert!(b.is_open());
        // The first block leaves the window at 60 s: one slot again.
        assert_eq!(b.check(60_000), (true, Some(Transition::Closed)));
        b.record(60_000);
        assert_eq!(b.check(60_001), (false, Some(Transition::Opened { blocks: 2 })));
    }

    #[test]
    fn aggregation_counts_distinct_recent_addresses() {
        let p: IpNet = "10.0.0.0/24".parse().unwrap();
        let a = |n: u8| IpAddr::from([10, 0, 0, n]);
        let mut g = Aggregator::default();
        assert_eq!(g.record(p, a(1), 0, 1_000), 1);
        assert_eq!(g.record(p, a(1), 100, 1_000), 1, "the same address counts once");
        assert_eq!(g.record(p, a(2), 500, 1_000), 2);
        // At 1,100 ms the first sighting of .1 (refreshed at 100) is still in the window.
        assert_eq!(g.record(p, a(3), 1_099, 1_000), 3);
        assert_eq!(g.record(p, a(4), 1_600, 1_000), 2, ".1 and .2 have left the window");
        g.prune(5_000, 1_000);
        assert!(g.recent.is_empty());
    }

    #[test]
    fn blocks_are_due_at_until_once_and_retried_after_failure() {
        let block = |until| Block {
            key: crate::net::parse_net("10.0.0.1").unwrap(),
            level: 1,
            actions: Actions::new(vec![Action::Tag]),
            rule: "r".into(),
            reason: String::new(),
            source: Origin::Auto,
            actor: "t".into(),
            since: 0,
            until,
            counters: vec![],
            dry_run: false,
            place: None,
        };
        let b = [block(1_000)];
        let mut releasing = HashMap::new();
        assert!(due(&b, &releasing, 999).is_empty());
        assert_eq!(due(&b, &releasing, 1_000).len(), 1);
        releasing.insert(b[0].key, None);
        assert!(due(&b, &releasing, 5_000).is_empty(), "in flight");
        releasing.insert(b[0].key, Some(11_000));
        assert!(due(&b, &releasing, 10_999).is_empty());
        assert_eq!(due(&b, &releasing, 11_000).len(), 1, "retried after a failure");
    }
}
