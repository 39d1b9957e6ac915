//! One poll of a table, with no task around it: the query plan (each column under the filter
//! name this HAProxy knows it by), the filtered walk that evaluates every rule on each entry as it
//! streams in, a suspects mode poll of the flagged clients ([`crate::suspects`]), and the sweep that
//! checks suspects mode missed nothing. The daemon's pollers ([`crate::daemon`]) run these every
//! interval; `stickwarden check` runs the sweep once. Only entries that match a rule come out, as
//! [`Observation`]s.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use tracing::{debug, warn};

use crate::client::{Client, ClientError, TableItem};
use crate::columns;
use crate::key::Key;
use crate::proto::{DataField, Filter, KeyType, TableSelect};
use crate::rules::{filters, Condition, Rule, RuleSet};
pub use crate::suspects::Blocked;

/// An entry that matched at least one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The client: its address, or its key in a table keyed otherwise.
    pub key: Key,
    /// Indices into the rule set of the rules it matched.
    pub rules: Vec<usize>,
    /// The values of the columns those rules read.
    pub counters: Vec<(String, i64)>,
    /// Each node's own values of `counters`, when they were merged across a fleet.
    pub nodes: Vec<crate::store::NodeCounters>,
}

impl Observation {
    /// The observation of the client `key` names if it matches a rule of `table`, each
    /// condition's column read by `read` (from one entry, or from the values merged across a
    /// fleet). The key is made only for a match: most entries of a full poll match nothing.
    pub fn of(
        key: impl FnOnce() -> Option<Key>,
        rules: &RuleSet,
        table: &str,
        read: impl Fn(&Condition) -> Option<i128>,
    ) -> Option<Observation> {
        let matched: Vec<usize> = rules.for_table(table).filter(|(_, r)| r.matches_by(&read)).map(|(i, _)| i).collect();
        if matched.is_empty() {
            return None;
        }
        let key = key()?;
        let mut counters: Vec<(String, i64)> = Vec::new();
        for c in matched.iter().flat_map(|&i| rules.rules[i].conditions()) {
            if counters.iter().any(|(n, _)| n == c.column.as_str()) {
                continue;
            }
            if let Some(v) = read(c) {
                counters.push((c.column.to_string(), v.clamp(i64::MIN.into(), i64::MAX.into()) as i64));
            }
        }
        Some(Observation { key, rules: matched, counters, nodes: Vec::new() })
    }
}

/// What a sweep found: the union of a full poll and a suspects poll, and the offenders the full
/// poll found that were not flagged.
#[derive(Debug, Default)]
pub struct Sweep {
    pub polled: Polled,
    /// Untagged offenders of the full poll without a flag, in address order.
    pub missed: Vec<IpAddr>,
    /// How many keys were flagged.
    pub flagged: usize,
}

/// A full poll of `table` (its `queries`), then a suspects poll. A client a rule matched during
/// the full poll was flagged at its last event before it, and nothing unflags it but a suspects
/// poll finding it tagged: an offender of the full poll without a flag that is neither tagged nor
/// listed in the block ACL (asked of HAProxy for those few) was missed by the lines in HAProxy.
pub async fn sweep(
    client: &Client,
    table: &str,
    suspects: &str,
    key_type: crate::proto::KeyType,
    queries: &[Vec<Filter>],
    rules: &RuleSet,
    blocked: Blocked<'_>,
) -> Result<Sweep, ClientError> {
    let tag = blocked.tag;
    let mut untagged: HashSet<IpAddr> = HashSet::new();
    let mut full = poll_each(client, table, None, queries, rules, |key, e| {
        if let (Some(addr), false) = (key.addr(), is_tagged(e, tag)) {
            untagged.insert(addr);
        }
    })
    .await?;
    let flagged = poll_suspects(client, table, suspects, key_type, rules, tag).await?;
    let mut missed: Vec<IpAddr> = untagged.into_iter().filter(|a| !flagged.flagged.contains(a)).collect();
    missed.sort_unstable();
    if let (Some(acl), false) = (blocked.acl, missed.is_empty()) {
        let asks: Vec<crate::proto::Command> =
            missed.iter().map(|a| crate::proto::Command::GetAcl { acl: acl.clone(), addr: *a }).collect();
        let listed: Vec<bool> = client
            .execute_many(&asks)
            .await
            .into_iter()
            .map(|b| b.map(|b| crate::proto::acl::parse_get_acl(&b).unwrap_or(false)))
            .collect::<Result<_, _>>()?;
        let mut listed = listed.into_iter();
        missed.retain(|_| !listed.next().unwrap_or(false));
    }
    let seen: HashSet<Key> = full.observations.iter().map(|o| o.key.clone()).collect();
    full.observations.extend(flagged.polled.observations.into_iter().filter(|o| !seen.contains(&o.key)));
    full.scanned += flagged.polled.scanned;
    Ok(Sweep { polled: full, missed, flagged: flagged.flagged.len() })
}

/// Whether the entry carries the tag (its client is blocked).
fn is_tagged(e: &crate::proto::table::Entry<'_>, tag: Option<&DataField>) -> bool {
    tag.is_some_and(|t| e.get(t.as_str()).and_then(|c| c.value.as_i128()).unwrap_or(0) > 0)
}

/// The queries of one table's rules, each column under the filter name this HAProxy knows it by.
pub async fn plan(client: &Client, table: &str, rules: &RuleSet) -> Result<Vec<Vec<Filter>>, ClientError> {
    let own: Vec<&Rule> = rules.for_table(table).map(|(_, r)| r).collect();
    plan_for(client, table, own.into_iter()).await
}

/// [`plan`] for the given rules of `table` (the relaxed rules of a fleet poll).
pub async fn plan_for<'a>(
    client: &Client,
    table: &str,
    rules: impl Iterator<Item = &'a Rule> + Clone,
) -> Result<Vec<Vec<Filter>>, ClientError> {
    let mut names: HashMap<DataField, Option<DataField>> = HashMap::new();
    for rule in rules.clone() {
        for c in rule.conditions() {
            if names.contains_key(&c.column) {
                continue;
            }
            let name = columns::filter_name(client, table, &c.column).await?;
            if name.is_none() {
                warn!(table, column = %c.column, "HAProxy cannot filter on this column: its rules are evaluated on a wider dump");
            }
            names.insert(c.column.clone(), name);
        }
    }
    let queries = filters::queries_as(rules, |c| names.get(c).cloned().flatten());
    debug!(table, ?queries, "poll plan");
    Ok(queries)
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Polled {
    /// The entries that match a rule.
    pub observations: Vec<Observation>,
    /// The entries HAProxy sent.
    pub scanned: u64,
    /// The table's entries, as its header counted them.
    pub used: Option<u64>,
}

/// One poll: every query of the table, each entry evaluated once. `key`: what the table is keyed
/// by when it is not addresses (`[[table]] key`).
pub async fn poll(
    client: &Client,
    table: &str,
    key: Option<KeyType>,
    queries: &[Vec<Filter>],
    rules: &RuleSet,
) -> Result<Polled, ClientError> {
    poll_each(client, table, key, queries, rules, |_, _| {}).await
}

/// [`poll`], calling `matched` with each entry that matched a rule.
async fn poll_each(
    client: &Client,
    table: &str,
    key_type: Option<KeyType>,
    queries: &[Vec<Filter>],
    rules: &RuleSet,
    mut matched: impl FnMut(&Key, &crate::proto::table::Entry<'_>),
) -> Result<Polled, ClientError> {
    let mut out = Vec::new();
    let mut seen: HashSet<Key> = HashSet::new();
    let (mut scanned, mut used) = (0, None);
    for q in queries {
        let select = TableSelect::query(q);
        let dump = client.show_table(table, select).await?;
        let stats = dump
            .for_each(|item| {
                if let TableItem::Header(h) = &item {
                    used = Some(h.used);
                }
                if let TableItem::Entry(e) = item {
                    let key = || key_of(table, key_type, &e);
                    let Some(o) = Observation::of(key, rules, table, |c| c.read(&e)) else { return };
                    // An entry several queries return is one observation.
                    if queries.len() > 1 && !seen.insert(o.key.clone()) {
                        return;
                    }
                    matched(&o.key, &e);
                    out.push(o);
                }
            })
            .await?;
        scanned += stats.entries;
    }
    Ok(Polled { observations: out, scanned, used })
}

/// The client an entry of `table` is about: its address, or (for a table keyed otherwise) its key
/// as HAProxy takes it back. A key that does not fit the type is skipped (HAProxy never dumps one).
fn key_of(table: &str, key_type: Option<KeyType>, e: &crate::proto::table::Entry<'_>) -> Option<Key> {
    match key_type {
        None => e.key_addr().map(Key::host),
        Some(ty) => {
            let bytes = e.key_bytes();
            Key::in_table(table, ty, std::str::from_utf8(&bytes).ok()?).ok()
        }
    }
}

/// Keys read by key in one pipelined batch.
const LOOKUP_CHUNK: usize = 4096;

/// What one poll in suspects mode found.
#[derive(Debug, Default)]
pub struct SuspectsPolled {
    pub polled: Polled,
    /// The keys flagged in the suspects table.
    pub flagged: HashSet<IpAddr>,
    /// Flags cleared because their client is tagged (blocked) already.
    pub cleared: usize,
}

/// One poll in suspects mode ([`crate::suspects`]): the flagged keys of `suspects`, then the
/// entry of each in `table`, read by key (pipelined), every rule of `table` evaluated on the true
/// counters. The flag of a client found tagged (`tag`, in `table`) is cleared: it is blocked, and
/// HAProxy will not flag it again while it is.
pub async fn poll_suspects(
    client: &Client,
    table: &str,
    suspects: &str,
    key_type: crate::proto::KeyType,
    rules: &RuleSet,
    tag: Option<&DataField>,
) -> Result<SuspectsPolled, ClientError> {
    use crate::proto::{Command, TableKey};
    let flag = vec![Filter { field: "gpt0".parse().expect("a column name"), op: crate::proto::FilterOp::Gt, value: 0 }];
    let mut flagged = HashSet::new();
    let stats = client
        .show_table(suspects, TableSelect::query(&flag))
        .await?
        .for_each(|item| {
            if let TableItem::Entry(e) = item {
                if let Some(addr) = e.key_addr() {
                    flagged.insert(addr);
                }
            }
        })
        .await?;
    let keys: Vec<(IpAddr, TableKey)> =
        flagged.iter().filter_map(|a| TableKey::from_addr(key_type, *a).ok().map(|k| (*a, k))).collect();
    let polled = Polled { scanned: stats.entries, ..Polled::default() };
    let mut out = SuspectsPolled { polled, flagged, cleared: 0 };
    let mut tagged: Vec<TableKey> = Vec::new();
    let mut parser = crate::proto::table::EntryParser::new();
    for chunk in keys.chunks(LOOKUP_CHUNK) {
        let cmds: Vec<Command> = chunk
            .iter()
            .map(|(_, k)| Command::ShowTable { table: table.to_owned(), select: TableSelect::Key(k.clone()) })
            .collect();
        for ((addr, key), body) in chunk.iter().zip(client.execute_many(&cmds).await) {
            let body = body?;
            for line in crate::proto::table::lines(&body) {
                match parser.parse_line(line) {
                    crate::proto::table::Line::Header(h) => out.polled.used = Some(h.used),
                    crate::proto::table::Line::Entry(e) => {
                        out.polled.scanned += 1;
                        if is_tagged(&e, tag) {
                            tagged.push(key.clone());
                        } else if let Some(o) = Observation::of(|| Some(Key::host(*addr)), rules, table, |c| c.read(&e))
                        {
                            out.polled.observations.push(o);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if !tagged.is_empty() {
        let field: DataField = "gpt0".parse().expect("a column name");
        let clear: Vec<Command> = tagged
            .into_iter()
            .map(|key| Command::SetTable { table: suspects.to_owned(), key, fields: vec![(field.clone(), 0)] })
            .collect();
        for r in client.pipeline(&clear).await {
            match r {
                Ok(()) => out.cleared += 1,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => debug!(suspects, error = %e, "a flag could not be cleared"),
            }
        }
    }
    Ok(out)
}
