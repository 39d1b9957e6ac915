//! The poller: one task per (target, table) that runs the table's server-side filtered
//! `show table` queries every interval and evaluates every rule on each entry as it streams in.
//!
//! Polls of one table never overlap (the task awaits each poll before the next tick, and a late
//! tick is delayed, not doubled); tables and targets poll concurrently. Before its first poll a
//! task asks HAProxy how each column is filtered ([`plan`]). Only entries that match a rule leave
//! the task, as [`Observation`]s for the controller. A table in suspects mode
//! ([`crate::suspects`]) is read through its flags instead ([`poll_suspects`]), with a full poll
//! every sweep interval that checks nothing was missed ([`sweep`]). Every poll records the table's
//! entry count in the [`super::Census`], for the circuit breaker.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Msg;
use crate::client::{Client, ClientError, TableItem};
use crate::columns;
use crate::config::TableConfig;
use crate::metrics::Metrics;
use crate::proto::{DataField, ErrorKind, Filter, TableSelect};
use crate::rules::{filters, Condition, Rule, RuleSet};
pub use crate::suspects::Blocked;

/// An entry that matched at least one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub addr: IpAddr,
    /// Indices into the rule set of the rules it matched.
    pub rules: Vec<usize>,
    /// The values of the columns those rules read.
    pub counters: Vec<(String, i64)>,
    /// Each node's own values of `counters`, when they were merged across a fleet.
    pub nodes: Vec<crate::store::NodeCounters>,
}

impl Observation {
    /// The observation of `addr` if it matches a rule of `table`, each condition's column read by
    /// `read` (from one entry, or from the values merged across a fleet).
    pub fn of(
        addr: IpAddr,
        rules: &RuleSet,
        table: &str,
        read: impl Fn(&Condition) -> Option<i128>,
    ) -> Option<Observation> {
        let matched: Vec<usize> = rules.for_table(table).filter(|(_, r)| r.matches_by(&read)).map(|(i, _)| i).collect();
        if matched.is_empty() {
            return None;
        }
        let mut counters: Vec<(String, i64)> = Vec::new();
        for c in matched.iter().flat_map(|&i| rules.rules[i].conditions()) {
            if counters.iter().any(|(n, _)| n == c.column.as_str()) {
                continue;
            }
            if let Some(v) = read(c) {
                counters.push((c.column.to_string(), v.clamp(i64::MIN.into(), i64::MAX.into()) as i64));
            }
        }
        Some(Observation { addr, rules: matched, counters, nodes: Vec::new() })
    }
}

/// What one poller task polls, and where it counts the table's entries.
pub(super) struct Task {
    pub target: String,
    pub client: Client,
    pub table: TableConfig,
    pub rules: Arc<RuleSet>,
    pub census: Arc<super::Census>,
    /// Where blocks go (a tagged or listed client is blocked already).
    pub block: crate::config::BlockConfig,
}

/// What a poller task keeps from one poll to the next.
#[derive(Default)]
struct State {
    /// The full poll's queries (suspects mode: the sweep's).
    queries: Option<Vec<Vec<Filter>>>,
    /// The watched table's key type (suspects mode: to read flagged keys in it).
    key_type: Option<crate::proto::KeyType>,
    last_sweep: Option<Instant>,
}

pub(super) async fn run(task: Task, tx: mpsc::Sender<Msg>, mut shutdown: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    let labels = Metrics::table(&task.target, &task.table.name);
    let (target, table) = (&task.target, &task.table.name);
    let mut state = State::default();
    let mut tick = tokio::time::interval(task.table.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let (started, polled_at) = (Instant::now(), crate::time::now_ms());
        match poll_once(&task, &mut state, &metrics).await {
            Ok(Polled { observations, scanned, used }) => {
                if let Some(used) = used {
                    task.census.record(target, table, used);
                }
                metrics.poll_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                metrics.poll_entries.get_or_create(&labels).inc_by(scanned);
                if last_error.take().is_some() {
                    tracing::info!(%target, table, "polling again");
                }
                debug!(%target, table, scanned, candidates = observations.len(), took = ?started.elapsed(), "polled");
                if !observations.is_empty() && tx.send(Msg::Observed { polled_at, observations }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // The table may have changed under us (a reload with a new config): plan again.
                if e.haproxy().is_some_and(|h| {
                    matches!(h.kind, ErrorKind::UnknownDataType | ErrorKind::DataTypeNotStored | ErrorKind::NoSuchTable)
                }) {
                    state = State::default();
                }
                note_error(&mut last_error, target, table, &e);
            }
        }
    }
}

/// One poll of the task's table: the whole table through its filters, or in suspects mode the
/// flagged clients, with a sweep (a full poll first, to compare with) every sweep interval.
async fn poll_once(task: &Task, state: &mut State, metrics: &Metrics) -> Result<Polled, ClientError> {
    let (client, table, rules) = (&task.client, task.table.name.as_str(), &*task.rules);
    if state.queries.is_none() {
        state.queries = Some(plan(client, table, rules).await?);
    }
    let queries = state.queries.as_deref().unwrap_or_default();
    let Some(suspects) = &task.table.suspects else { return poll(client, table, queries, rules).await };
    let key_type = match state.key_type {
        Some(t) => t,
        None => *state.key_type.insert(client.table_key_type(table).await?),
    };
    let blocked = task.block.blocked_in(table);
    if state.last_sweep.is_some_and(|t| t.elapsed() < suspects.sweep) {
        return Ok(poll_suspects(client, table, &suspects.table, key_type, rules, blocked.tag).await?.polled);
    }
    let sweep = sweep(client, table, &suspects.table, key_type, queries, rules, blocked).await?;
    state.last_sweep = Some(Instant::now());
    if !sweep.missed.is_empty() {
        let missed = &sweep.missed;
        metrics.suspects_missed.get_or_create(&Metrics::table(&task.target, table)).inc_by(missed.len() as u64);
        warn!(target = %task.target, table, suspects = %suspects.table, missed = missed.len(), first = ?&missed[..missed.len().min(5)],
              "the sweep found offenders the suspects table had not flagged: are the lines of `stickwarden haproxy-config` in HAProxy's configuration?");
    }
    Ok(sweep.polled)
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
    let mut full = poll_each(client, table, queries, rules, |addr, e| {
        if !is_tagged(e, tag) {
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
    let seen: HashSet<IpAddr> = full.observations.iter().map(|o| o.addr).collect();
    full.observations.extend(flagged.polled.observations.into_iter().filter(|o| !seen.contains(&o.addr)));
    full.scanned += flagged.polled.scanned;
    Ok(Sweep { polled: full, missed, flagged: flagged.flagged.len() })
}

/// Whether the entry carries the tag (its client is blocked).
fn is_tagged(e: &crate::proto::table::Entry<'_>, tag: Option<&DataField>) -> bool {
    tag.is_some_and(|t| e.get(t.as_str()).and_then(|c| c.value.as_i128()).unwrap_or(0) > 0)
}

/// Logs a poll failure once per kind of failure, not once per interval.
fn note_error(last: &mut Option<String>, target: &str, table: &str, e: &ClientError) {
    let text = e.to_string();
    if last.as_ref() != Some(&text) {
        warn!(%target, table, error = %text, "poll failed");
        *last = Some(text);
    }
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

/// One poll: every query of the table, each entry evaluated once.
pub async fn poll(
    client: &Client,
    table: &str,
    queries: &[Vec<Filter>],
    rules: &RuleSet,
) -> Result<Polled, ClientError> {
    poll_each(client, table, queries, rules, |_, _| {}).await
}

/// [`poll`], calling `matched` with each entry that matched a rule.
async fn poll_each(
    client: &Client,
    table: &str,
    queries: &[Vec<Filter>],
    rules: &RuleSet,
    mut matched: impl FnMut(IpAddr, &crate::proto::table::Entry<'_>),
) -> Result<Polled, ClientError> {
    let mut out = Vec::new();
    let mut seen: HashSet<IpAddr> = HashSet::new();
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
                    let Some(addr) = e.key_addr() else { return };
                    if queries.len() > 1 && seen.contains(&addr) {
                        return;
                    }
                    if let Some(o) = Observation::of(addr, rules, table, |c| c.read(&e)) {
                        if queries.len() > 1 {
                            seen.insert(addr);
                        }
                        matched(addr, &e);
                        out.push(o);
                    }
                }
            })
            .await?;
        scanned += stats.entries;
    }
    Ok(Polled { observations: out, scanned, used })
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
                        } else if let Some(o) = Observation::of(*addr, rules, table, |c| c.read(&e)) {
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
