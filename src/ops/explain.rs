//! `explain ADDR`: why an address is or is not blocked. From the store: its block, allowlist
//! entry, decayed score and offences within the forgiveness window, and the ladder step its next
//! offence would get. From each HAProxy target: its entry in every watched table, read live, and
//! each rule of that table evaluated on it, condition by condition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::view::BlockView;
use super::OpError;
use crate::allowlist::Allowlist;
use crate::client::{Client, TableItem};
use crate::config::Config;
use crate::key::Key;
use crate::proto::{TableKey, TableSelect};
use crate::store::Store;
use crate::time::Millis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainView {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// `blocked`, `allowlisted` or `not blocked`.
    pub verdict: String,
    pub allowlisted: Option<String>,
    pub block: Option<BlockView>,
    /// The score now (decayed), against the threshold.
    pub score: f64,
    pub threshold: f64,
    pub offences_in_window: u32,
    /// What the next offence would get.
    pub next_level: u32,
    pub next_action: String,
    pub next_duration_s: u64,
    pub tables: Vec<TableExplain>,
    /// The running daemon's circuit breaker, when it is open: a new offence would not be blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<super::view::BreakerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableExplain {
    pub target: String,
    pub table: String,
    /// Whether the address has an entry in the table right now.
    pub found: bool,
    /// Why the table could not be read, if it could not.
    pub error: Option<String>,
    pub counters: BTreeMap<String, i64>,
    pub rules: Vec<RuleExplain>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleExplain {
    pub rule: String,
    pub matched: bool,
    pub weight: f64,
    pub dry_run: bool,
    /// Each condition with the entry's value (none when the column is missing) and its result.
    pub conditions: Vec<(String, Option<i64>, bool)>,
}

pub async fn explain(
    cfg: &Config,
    store: &Store,
    clients: &[(String, Client)],
    key: &Key,
    now: Millis,
) -> Result<ExplainView, OpError> {
    let key = super::checked_key(cfg, key)?;
    let allow = Allowlist::new(cfg, &store.allows()?);
    let allowlisted = key.addr().and_then(|a| allow.allows(a, now)).map(str::to_owned);
    let block = match key.addr() {
        Some(addr) => store.block_covering(addr)?,
        None => store.block(&key)?,
    };
    let block = block.map(|b| BlockView::of(&b, now));
    let policy = &cfg.rules.policy;
    let offender = store.offender(&key)?.unwrap_or_default();
    // The count the decider's next verdict will make (crate::engine::assess), and what of the
    // step applies to this key (the decider's own rule).
    let n = crate::engine::offences_in_window(policy, &offender, now, cfg.dry_run);
    let (next_level, next_actions, next_duration) = policy.step_for(n + 1);
    let next_actions = next_actions.for_key(&key);

    let mut tables = Vec::new();
    for (target, client) in clients {
        // An address is read in every watched table keyed by address; a table key in its own.
        for t in cfg.tables.iter().filter(|t| t.key.is_none() == key.table().is_none()) {
            if key.table().is_some_and(|k| k != t.name) {
                continue;
            }
            tables.push(read_table(cfg, client, target, &t.name, &key).await);
        }
    }
    let verdict = if block.is_some() {
        "blocked"
    } else if allowlisted.is_some() {
        "allowlisted"
    } else {
        "not blocked"
    };
    Ok(ExplainView {
        key: key.text(),
        table: key.table().map(str::to_owned),
        verdict: verdict.into(),
        allowlisted,
        block,
        score: offender.score.at(now, policy.half_life),
        threshold: policy.threshold,
        offences_in_window: n,
        next_level,
        next_action: next_actions.to_string(),
        next_duration_s: next_duration.as_secs(),
        tables,
        breaker: None,
    })
}

async fn read_table(cfg: &Config, client: &Client, target: &str, table: &str, who: &Key) -> TableExplain {
    let mut out = TableExplain {
        target: target.to_owned(),
        table: table.to_owned(),
        found: false,
        error: None,
        counters: BTreeMap::new(),
        rules: Vec::new(),
    };
    let result = async {
        let ty = client.table_key_type(table).await?;
        let key = match (who, who.addr()) {
            (_, Some(addr)) => TableKey::from_addr(ty, addr)?,
            (Key::Table(t), None) => TableKey::parse(ty, &t.key)?,
            (Key::Net(_), None) => return Ok(()),
        };
        let dump = client.show_table(table, TableSelect::Key(key)).await?;
        dump.for_each(|item| {
            let TableItem::Entry(e) = item else { return };
            out.found = true;
            for c in e.columns() {
                if let Some(v) = c.value.as_i128() {
                    out.counters.insert(c.name.to_owned(), v.clamp(i64::MIN.into(), i64::MAX.into()) as i64);
                }
            }
            for (_, r) in cfg.rules.for_table(table) {
                let conditions = r
                    .conditions()
                    .map(|c| {
                        let v = c.read(&e).map(|v| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64);
                        (c.to_string(), v, c.holds(&e))
                    })
                    .collect();
                out.rules.push(RuleExplain {
                    rule: r.name.clone(),
                    matched: r.matches(&e),
                    weight: r.weight,
                    dry_run: r.dry_run,
                    conditions,
                });
            }
        })
        .await?;
        Ok::<(), crate::client::ClientError>(())
    }
    .await;
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    out
}
