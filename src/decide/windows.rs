//! The controller's time windows as plain data, driven by the `now` they are given: the circuit
//! breaker (automatic blocks in the last minute), subnet aggregation (distinct offenders of one
//! prefix within a window), and which blocks are due for release. No clock is read here, so the
//! tests below are exact.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::store::Block;
use crate::time::Millis;

/// How many automatic blocks a window may hold before the breaker opens: the larger of `floor`
/// and `share` of the tracked clients (the watched tables' entries), never more than `cap`.
///
/// A broken rule matches a large share of every client; a botnet is a burst of new clients that
/// stays a small share of them: a share tells the two apart where an absolute count cannot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub floor: u32,
    pub share: f64,
    pub cap: Option<u32>,
}

impl Limits {
    /// The most blocks a window may hold with `population` clients tracked (`None`: not known
    /// yet, the floor alone).
    pub fn allowed(&self, population: Option<u64>) -> usize {
        let by_share = population.map_or(0, |p| (p as f64 * self.share).floor() as usize);
        let limit = (self.floor as usize).max(by_share);
        self.cap.map_or(limit, |c| limit.min(c as usize))
    }
}

/// Counts automatic blocks over a sliding window; open (no more blocks) once they reach the limit
/// that the [`Limits`] give for the population of the moment.
#[derive(Debug)]
pub struct Breaker {
    limits: Limits,
    window: Millis,
    times: VecDeque<Millis>,
    open: bool,
}

/// A change of the breaker's state, to log and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `blocks` automatic blocks in the window reached `limit`, with `population` clients tracked.
    Opened {
        blocks: usize,
        limit: usize,
        population: Option<u64>,
    },
    Closed,
}

impl Breaker {
    pub fn new(limits: Limits, window: Millis) -> Breaker {
        Breaker { limits, window, times: VecDeque::new(), open: false }
    }

    /// Whether a block may happen at `now` with `population` clients tracked, and the state
    /// change this observation caused.
    pub fn check(&mut self, now: Millis, population: Option<u64>) -> (bool, Option<Transition>) {
        while self.times.front().is_some_and(|&t| t + self.window <= now) {
            self.times.pop_front();
        }
        let limit = self.limits.allowed(population);
        let open = self.times.len() >= limit;
        let change = (open != self.open).then_some(if open {
            Transition::Opened { blocks: self.times.len(), limit, population }
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

    pub fn limits(&self) -> Limits {
        self.limits
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
    releasing: &HashMap<crate::key::Key, Option<Millis>>,
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

    fn limits(floor: u32, share: f64, cap: Option<u32>) -> Limits {
        Limits { floor, share, cap }
    }

    #[test]
    fn breaker_opens_at_the_limit_and_closes_when_the_window_is_quiet() {
        let mut b = Breaker::new(limits(2, 0.0, None), 60_000);
        assert_eq!(b.check(0, None), (true, None));
        b.record(0);
        assert_eq!(b.check(10_000, None), (true, None));
        b.record(10_000);
        let opened = Transition::Opened { blocks: 2, limit: 2, population: None };
        assert_eq!(b.check(20_000, None), (false, Some(opened)));
        assert_eq!(b.check(59_999, None), (false, None));
        assert!(b.is_open());
        // The first block leaves the window at 60 s: one slot again.
        assert_eq!(b.check(60_000, None), (true, Some(Transition::Closed)));
        b.record(60_000);
        assert_eq!(b.check(60_001, None), (false, Some(opened)));
    }

    #[test]
    fn the_limit_is_a_share_of_the_tracked_clients_above_a_floor_below_a_cap() {
        let l = limits(100, 0.05, None);
        assert_eq!(l.allowed(None), 100, "the floor until the population is known");
        assert_eq!(l.allowed(Some(1_000)), 100, "5% of 1,000 is under the floor");
        assert_eq!(l.allowed(Some(25_000)), 1_250);
        assert!(l.allowed(Some(u64::MAX)) > 0);
        assert_eq!(limits(100, 0.05, Some(500)).allowed(Some(25_000)), 500);
        assert_eq!(limits(100, 0.05, Some(1)).allowed(None), 1, "the cap is below the floor too");
    }

    /// A botnet of 1,000 new clients among 25,000 tracked is blocked in full; a rule that
    /// matches every one of 1,000 normal clients stops at 5% of them.
    #[test]
    fn a_botnet_is_a_small_share_a_broken_rule_a_large_one() {
        let mut botnet = Breaker::new(limits(100, 0.05, None), 60_000);
        for i in 0..1_000 {
            assert!(botnet.check(i, Some(25_000)).0, "bot {i} refused");
            botnet.record(i);
        }
        let mut broken = Breaker::new(limits(10, 0.05, None), 60_000);
        let blocked = (0..1_000)
            .take_while(|&i| {
                let ok = broken.check(i, Some(1_000)).0;
                if ok {
                    broken.record(i);
                }
                ok
            })
            .count();
        assert_eq!(blocked, 50);
        assert!(broken.is_open());
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
            key: crate::key::Key::Net(crate::net::parse_net("10.0.0.1").unwrap()),
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
            nodes: Vec::new(),
        };
        let b = [block(1_000)];
        let mut releasing = HashMap::new();
        assert!(due(&b, &releasing, 999).is_empty());
        assert_eq!(due(&b, &releasing, 1_000).len(), 1);
        releasing.insert(b[0].key.clone(), None);
        assert!(due(&b, &releasing, 5_000).is_empty(), "in flight");
        releasing.insert(b[0].key.clone(), Some(11_000));
        assert!(due(&b, &releasing, 10_999).is_empty());
        assert_eq!(due(&b, &releasing, 11_000).len(), 1, "retried after a failure");
    }
}
