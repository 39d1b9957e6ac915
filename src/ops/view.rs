//! The JSON shapes of what operators see: blocks, audit records, an address's history. Times are
//! RFC 3339; keys are written as people write them (`10.0.0.1`, `10.0.0.0/24`). The API returns
//! them and the CLI prints them, as JSON Lines with `--json` or as aligned columns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::key::Key;
use crate::store::{AuditRecord, Block, Offender};
use crate::time::{rfc3339, Millis};

/// The circuit breaker while it is open: since when and why (automatic blocks are suspended).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerView {
    pub open_since: String,
    pub reason: String,
}

/// One active block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockView {
    /// The address or network, or the key of `table`.
    pub key: String,
    /// For a key of a table keyed otherwise (an API key, a user id): that table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// `ip` or `cidr`.
    pub scope: String,
    pub level: u32,
    /// `tag`, `tag+acl`, `tag+acl+kill`, `acl`.
    pub action: String,
    pub rule: String,
    pub reason: String,
    /// `auto` or `manual`.
    pub source: String,
    pub actor: String,
    pub since: String,
    pub until: String,
    /// Seconds left at the time of the answer.
    pub remaining_s: u64,
    pub dry_run: bool,
    pub counters: BTreeMap<String, i64>,
    /// Each node's own values of `counters` when a fleet's values were merged for the decision.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, BTreeMap<String, i64>>,
    /// Targets that have not confirmed the block yet (a fleet node down or lagging); only the
    /// running daemon knows, so this is empty in answers made without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unconfirmed_on: Vec<String>,
}

impl BlockView {
    pub fn of(b: &Block, now: Millis) -> BlockView {
        BlockView {
            key: b.key.text(),
            table: b.key.table().map(str::to_owned),
            scope: b.scope().to_owned(),
            level: b.level,
            action: b.actions.to_string(),
            rule: b.rule.clone(),
            reason: b.reason.clone(),
            source: source(b.source),
            actor: b.actor.clone(),
            since: rfc3339(b.since),
            until: rfc3339(b.until),
            remaining_s: b.until.saturating_sub(now).div_ceil(1000),
            dry_run: b.dry_run,
            counters: b.counters.iter().cloned().collect(),
            nodes: b.nodes.iter().map(|n| (n.node.clone(), n.counters.iter().cloned().collect())).collect(),
            unconfirmed_on: Vec::new(),
        }
    }
}

fn source(o: crate::store::Origin) -> String {
    serde_json::to_value(o).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditView {
    pub id: u64,
    pub at: String,
    pub event: String,
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub rule: String,
    pub action: String,
    pub level: u32,
    pub duration_s: u64,
    pub source: String,
    pub actor: String,
    pub reason: String,
    pub counters: BTreeMap<String, i64>,
}

impl AuditView {
    pub fn of(r: &AuditRecord) -> AuditView {
        AuditView {
            id: r.id,
            at: rfc3339(r.at),
            event: r.event.as_str().to_owned(),
            key: r.key.as_ref().map(Key::text),
            table: r.key.as_ref().and_then(|k| k.table()).map(str::to_owned),
            rule: r.rule.clone(),
            action: r.actions.to_string(),
            level: r.level,
            duration_s: r.duration_ms / 1000,
            source: source(r.source),
            actor: r.actor.clone(),
            reason: r.reason.clone(),
            counters: r.counters.iter().cloned().collect(),
        }
    }
}

/// An address's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Score as last stored (not decayed), and when.
    pub score: Option<f64>,
    pub last_seen: Option<String>,
    /// Offences kept in the store, oldest first: (time, rule, level, dry_run).
    pub offences: Vec<OffenceView>,
    /// The block in force on it (its own or its network's), if any.
    pub block: Option<BlockView>,
    /// Every audit record about it or a network containing it, oldest first.
    pub events: Vec<AuditView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffenceView {
    pub at: String,
    pub rule: String,
    pub level: u32,
    pub dry_run: bool,
}

impl HistoryView {
    pub fn new(key: &Key, o: Option<&Offender>, block: Option<BlockView>, events: Vec<AuditView>) -> HistoryView {
        HistoryView {
            key: key.text(),
            table: key.table().map(str::to_owned),
            score: o.map(|o| o.score.value),
            last_seen: o.filter(|o| o.last_seen > 0).map(|o| rfc3339(o.last_seen)),
            offences: o
                .map(|o| {
                    o.offences
                        .iter()
                        .map(|x| OffenceView {
                            at: rfc3339(x.at),
                            rule: x.rule.clone(),
                            level: x.level,
                            dry_run: x.dry_run,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            block,
            events,
        }
    }
}
