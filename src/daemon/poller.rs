//! The poller: one task per (target, table) that runs the table's server-side filtered
//! `show table` queries every interval and evaluates every rule on each entry as it streams in.
//!
//! Polls of one table never overlap (the task awaits each poll before the next tick, and a late
//! tick is delayed, not doubled); tables and targets poll concurrently. Before its first poll a
//! task asks HAProxy how each column is filtered ([`plan`]). Only entries that match a rule leave
//! the task, as [`Observation`]s for the controller.

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

/// An entry that matched at least one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub addr: IpAddr,
    /// Indices into the rule set of the rules it matched.
    pub rules: Vec<usize>,
    /// The values of the columns those rules read.
    pub counters: Vec<(String, i64)>,
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
        Some(Observation { addr, rules: matched, counters })
    }
}

/// What one poller task polls, and where it counts the table's entries.
pub(super) struct Task {
    pub target: String,
    pub client: Client,
    pub table: TableConfig,
    pub rules: Arc<RuleSet>,
    pub census: Arc<super::Census>,
}

pub(super) async fn run(task: Task, tx: mpsc::Sender<Msg>, mut shutdown: watch::Receiver<bool>, metrics: Arc<Metrics>) {
    let Task { target, client, table, rules, census } = task;
    let labels = Metrics::table(&target, &table.name);
    let mut queries: Option<Vec<Vec<Filter>>> = None;
    let mut tick = tokio::time::interval(table.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let (started, polled_at) = (Instant::now(), crate::time::now_ms());
        if queries.is_none() {
            match plan(&client, &table.name, &rules).await {
                Ok(q) => queries = Some(q),
                Err(e) => {
                    note_error(&mut last_error, &target, &table.name, &e);
                    continue;
                }
            }
        }
        let plan_queries = queries.as_deref().unwrap_or_default();
        match poll(&client, &table.name, plan_queries, &rules).await {
            Ok(Polled { observations, scanned, used }) => {
                if let Some(used) = used {
                    census.record(&target, &table.name, used);
                }
                metrics.poll_seconds.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                metrics.poll_entries.get_or_create(&labels).inc_by(scanned);
                if last_error.take().is_some() {
                    tracing::info!(%target, table = %table.name, "polling again");
                }
                debug!(%target, table = %table.name, scanned, candidates = observations.len(), took = ?started.elapsed(), "polled");
                if !observations.is_empty() && tx.send(Msg::Observed { polled_at, observations }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // The table may have changed under us (a reload with a new config): plan again.
                if e.haproxy()
                    .is_some_and(|h| matches!(h.kind, ErrorKind::UnknownDataType | ErrorKind::DataTypeNotStored))
                {
                    queries = None;
                }
                note_error(&mut last_error, &target, &table.name, &e);
            }
        }
    }
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
                        out.push(o);
                    }
                }
            })
            .await?;
        scanned += stats.entries;
    }
    Ok(Polled { observations: out, scanned, used })
}
