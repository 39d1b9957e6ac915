//! What the store keeps, as plain serde types: offenders with their scores and offences, active
//! blocks with their `until`, allowlist entries, and audit records. Encoded as JSON in sled, so a
//! store can be inspected with any JSON tool and survives field additions (`#[serde(default)]`).

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::key::Key;
use serde::{Deserialize, Serialize};

use crate::rules::Actions;
use crate::time::Millis;

/// A score that halves every `half_life`: stored as a value and the instant it was computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub value: f64,
    pub at: Millis,
}

impl Score {
    /// The decayed value at `now`.
    pub fn at(&self, now: Millis, half_life: Duration) -> f64 {
        let hl = half_life.as_millis().max(1) as f64;
        let elapsed = now.saturating_sub(self.at) as f64;
        self.value * (0.5f64).powf(elapsed / hl)
    }

    /// Adds `weight` at `now`, decaying what was there first.
    pub fn add(&mut self, now: Millis, half_life: Duration, weight: f64) {
        self.value = self.at(now, half_life) + weight;
        self.at = self.at.max(now);
    }
}

/// One offence: a score that crossed the threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offence {
    pub at: Millis,
    pub rule: String,
    /// The ladder level it got.
    pub level: u32,
    /// A dry-run offence: decided and audited, never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

/// An address's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Offender {
    /// Score from enforcing rules.
    pub score: Score,
    /// Score from every rule, dry-run ones included: what would happen if all were enforced.
    #[serde(default)]
    pub shadow: Score,
    pub offences: Vec<Offence>,
    pub last_seen: Millis,
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Auto,
    Manual,
}

/// An active block: what was done to whom, why, and until when. The controller releases it at
/// `until`; HAProxy's own table expiry is never trusted to end it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub key: Key,
    /// Ladder level (0 for manual and subnet blocks).
    pub level: u32,
    pub actions: Actions,
    pub rule: String,
    pub reason: String,
    pub source: Origin,
    pub actor: String,
    pub since: Millis,
    pub until: Millis,
    /// Counters that triggered it, as read from the table.
    #[serde(default)]
    pub counters: Vec<(String, i64)>,
    #[serde(default)]
    pub dry_run: bool,
    /// Where its actions were applied (absent in blocks recorded before this was kept: the
    /// configuration of the daemon that loads them is taken then).
    /// Shared: the controller keeps one copy of each place for all the blocks applied there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<std::sync::Arc<Place>>,
    /// Each node's values of `counters` when a fleet's values were merged for the decision
    /// (empty for one target, and for manual blocks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeCounters>,
}

/// One node's values of the counters a merged decision read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCounters {
    pub node: String,
    pub counters: Vec<(String, i64)>,
}

/// Where a block's actions were applied, recorded with the decision so that release and the
/// reconciler undo exactly what was done, whatever `[block]` says by then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// `tag`: the table, the column and the value set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagPlace>,
    /// `acl`: the ACL file, as HAProxy loaded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<String>,
    /// `map:CLASS`: the map file, as HAProxy loaded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagPlace {
    pub table: String,
    pub column: String,
    pub value: u32,
}

impl Place {
    /// Whether `action` was applied at the same place here as in `other`.
    pub fn same_for(&self, other: &Place, action: crate::rules::Action) -> bool {
        match action {
            crate::rules::Action::Acl => self.acl == other.acl,
            crate::rules::Action::Tag => self.tag == other.tag,
            crate::rules::Action::Kill => true,
            crate::rules::Action::Map(_) => self.map == other.map,
        }
    }

    /// Where the configuration puts `actions` for `key`: `[block]`'s places for an address or a
    /// network; for a key of a table keyed otherwise, the tag in that table and its own map.
    pub fn for_key(cfg: &crate::config::Config, key: &Key, actions: &Actions) -> Place {
        use crate::rules::Action;
        let Some(table) = key.table() else { return Place::of(&cfg.block, actions) };
        let map = cfg.tables.iter().find(|t| t.name == table).and_then(|t| t.map.as_ref());
        Place {
            tag: actions.has(Action::Tag).then(|| TagPlace {
                table: table.to_owned(),
                column: cfg.block.tag.to_string(),
                value: cfg.block.tag_value,
            }),
            acl: None,
            map: map.filter(|_| actions.map_class().is_some()).map(|m| m.to_string()),
        }
    }

    /// Where `[block]` of `cfg` puts `actions`.
    pub fn of(cfg: &crate::config::BlockConfig, actions: &Actions) -> Place {
        use crate::rules::Action;
        Place {
            tag: cfg.table.clone().filter(|_| actions.has(Action::Tag)).map(|table| TagPlace {
                table,
                column: cfg.tag.to_string(),
                value: cfg.tag_value,
            }),
            acl: cfg.acl.as_ref().filter(|_| actions.has(Action::Acl)).map(|a| a.to_string()),
            map: cfg.map.as_ref().filter(|_| actions.map_class().is_some()).map(|m| m.to_string()),
        }
    }
}

impl Block {
    /// `ip`, `cidr`, or `key` (a key of a table keyed otherwise).
    pub fn scope(&self) -> &'static str {
        match &self.key {
            Key::Net(n) if crate::net::is_host(n) => "ip",
            Key::Net(_) => "cidr",
            Key::Table(_) => "key",
        }
    }

    /// Where its actions were applied (the controller fills it in for blocks recorded without).
    pub fn place(&self) -> std::sync::Arc<Place> {
        self.place.clone().unwrap_or_default()
    }

    pub fn covers(&self, addr: IpAddr) -> bool {
        self.key.net().is_some_and(|n| crate::net::covers_addr(n, addr))
    }
}

/// An allowlist entry kept in the store (manual `allow`); the config's own entries are not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllowEntry {
    pub net: IpNet,
    pub reason: String,
    pub actor: String,
    pub since: Millis,
    pub until: Option<Millis>,
}

/// What an audit record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Block,
    Release,
    /// A block decided in dry-run: nothing sent to HAProxy.
    WouldBlock,
    WouldRelease,
    /// The circuit breaker opened: automatic blocks suspended.
    BreakerOpen,
    BreakerClosed,
    /// HAProxy refused or failed an action that was decided.
    ActionFailed,
    /// An operator added an allowlist entry.
    Allow,
    /// An operator removed an allowlist entry.
    Disallow,
    /// A target's HAProxy was reloaded or restarted, and the active blocks were put back.
    TargetRestarted,
    /// The reconciler found part of a block missing in HAProxy and put it back.
    Repaired,
    /// `store recover` rebuilt a damaged store: a block taken back from what HAProxy held, or
    /// the summary of the recovery.
    Recovered,
    /// `store restore` put a backup back.
    Restored,
    /// An operator moved the end of an active block (extended or shortened it).
    ExpiryChanged,
    /// Another controller took the lead on a shared store (both epochs in the counters).
    LeaderChanged,
}

impl Event {
    /// The name used in JSON and logs: `block`, `would_block`, `breaker_open`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Block => "block",
            Event::Release => "release",
            Event::WouldBlock => "would_block",
            Event::WouldRelease => "would_release",
            Event::BreakerOpen => "breaker_open",
            Event::BreakerClosed => "breaker_closed",
            Event::ActionFailed => "action_failed",
            Event::Allow => "allow",
            Event::Disallow => "disallow",
            Event::TargetRestarted => "target_restarted",
            Event::Repaired => "repaired",
            Event::Recovered => "recovered",
            Event::Restored => "restored",
            Event::ExpiryChanged => "expiry_changed",
            Event::LeaderChanged => "leader_changed",
        }
    }
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    #[serde(default)]
    pub id: u64,
    pub at: Millis,
    pub event: Event,
    pub key: Option<Key>,
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub counters: Vec<(String, i64)>,
    #[serde(default)]
    pub actions: Actions,
    #[serde(default)]
    pub level: u32,
    #[serde(default)]
    pub duration_ms: u64,
    pub source: Origin,
    pub actor: String,
    #[serde(default)]
    pub reason: String,
}

impl AuditRecord {
    /// A record about no block in particular (breaker, import, allowlist changes).
    pub fn note(event: Event, at: Millis, actor: &str, reason: String) -> AuditRecord {
        AuditRecord {
            id: 0,
            at,
            event,
            key: None,
            rule: String::new(),
            counters: Vec::new(),
            actions: Actions::default(),
            level: 0,
            duration_ms: 0,
            source: Origin::Auto,
            actor: actor.to_owned(),
            reason,
        }
    }

    /// The record of a block or release decision.
    pub fn of(event: Event, b: &Block, at: Millis) -> AuditRecord {
        AuditRecord {
            id: 0,
            at,
            event,
            key: Some(b.key.clone()),
            rule: b.rule.clone(),
            counters: b.counters.clone(),
            actions: b.actions.clone(),
            level: b.level,
            duration_ms: b.until.saturating_sub(b.since),
            source: b.source,
            actor: b.actor.clone(),
            reason: b.reason.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HL: Duration = Duration::from_secs(60);

    #[test]
    fn score_halves_every_half_life() {
        let mut s = Score::default();
        s.add(1_000, HL, 80.0);
        assert_eq!(s.at(1_000, HL), 80.0);
        assert_eq!(s.at(61_000, HL), 40.0);
        assert_eq!(s.at(121_000, HL), 20.0);
        s.add(61_000, HL, 10.0);
        assert_eq!(s.at(61_000, HL), 50.0);
        // Time going backwards (clock step) never grows a score.
        assert_eq!(s.at(0, HL), 50.0);
    }

    #[test]
    fn event_names_are_their_json_names() {
        for e in [
            Event::Block,
            Event::Release,
            Event::WouldBlock,
            Event::WouldRelease,
            Event::BreakerOpen,
            Event::BreakerClosed,
            Event::ActionFailed,
            Event::LeaderChanged,
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{}\"", e.as_str()));
        }
    }

    proptest! {
        #[test]
        fn decay_is_monotonic_and_bounded(v in 0.0f64..1e9, t1 in 0u64..1u64 << 40, dt in 0u64..1u64 << 40) {
            let s = Score { value: v, at: t1 };
            let (a, b) = (s.at(t1, HL), s.at(t1 + dt, HL));
            prop_assert!(b <= a && b >= 0.0 && a <= v);
        }
    }
}
