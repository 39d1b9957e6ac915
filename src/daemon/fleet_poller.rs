//! The fleet poller: one task per table that polls every target together and merges what each
//! node reports of an address ([`crate::fleet`]), so that an abuser spread over the nodes of a
//! fleet is scored on its whole traffic, not on one node's share.
//!
//! Each node is polled with the rules' conditions relaxed for the number of nodes (`gt 100` on 5
//! nodes polls `gt 20`), so every address whose merged values can match travels, and little else.
//! An address some nodes did not report is looked up on those nodes by key (`show table T key A`)
//! when its merged values do not already match every rule, at most [`MAX_LOOKUPS`] per poll. A
//! node that fails is left out of that poll (logged once), and the others are still merged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::Msg;
use crate::client::{Client, ClientError, TableItem};
use crate::config::TableConfig;
use crate::fleet::{relax_rule, Columns, MergeConfig, Merged};
use crate::metrics::Metrics;
use crate::poll::{plan_for, Observation};
use crate::proto::key::{KeyType, TableKey};
use crate::proto::table::Entry;
use crate::proto::{Filter, TableSelect};
use crate::rules::{Rule, RuleSet};

/// Key lookups on nodes that did not report an address, per poll at most.
pub const MAX_LOOKUPS: usize = 2_000;

/// What one node is polled with: its relaxed queries and the table's key type there.
#[derive(Clone)]
struct NodePlan {
    queries: Vec<Vec<Filter>>,
    key_type: KeyType,
}

/// The values one node reported, by address, in [`Columns`] order.
type NodeValues = HashMap<IpAddr, Vec<Option<i128>>>;

pub(super) struct Fleet {
    pub nodes: Vec<(String, Client)>,
    pub table: TableConfig,
    pub rules: Arc<RuleSet>,
    pub merge: MergeConfig,
    pub census: Arc<super::Census>,
    /// The controller's clock, to stamp each poll with.
    pub clock: crate::time::Clock,
}

pub(super) async fn run(
    fleet: Fleet,
    tx: mpsc::Sender<Msg>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let Fleet { nodes, table, rules, merge, census, clock } = fleet;
    let own: Vec<Rule> = rules.for_table(&table.name).map(|(_, r)| r.clone()).collect();
    let relaxed: Arc<Vec<Rule>> = Arc::new(own.iter().map(|r| relax_rule(r, &merge, nodes.len())).collect());
    let columns = Arc::new(Columns::of(&own, &merge));
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    let mut plans: Vec<Option<NodePlan>> = vec![None; nodes.len()];
    let mut last_error: Vec<Option<String>> = vec![None; nodes.len()];
    let mut tick = tokio::time::interval(table.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        let (started, polled_at) = (Instant::now(), clock.now());
        let mut polls = JoinSet::new();
        for (i, (name, client)) in nodes.iter().enumerate() {
            let (client, name, table, relaxed, columns, plan) =
                (client.clone(), name.clone(), table.name.clone(), relaxed.clone(), columns.clone(), plans[i].clone());
            let (metrics, census) = (metrics.clone(), census.clone());
            polls.spawn(async move {
                let t0 = Instant::now();
                let poll = async {
                    let plan = match plan {
                        Some(p) => p,
                        None => NodePlan {
                            queries: plan_for(&client, &table, relaxed.iter()).await?,
                            key_type: client.table_key_type(&table).await?,
                        },
                    };
                    let (values, scanned, used) = poll_node(&client, &table, &plan.queries, &relaxed, &columns).await?;
                    if let Some(used) = used {
                        census.record(&name, &table, used);
                    }
                    let labels = Metrics::table(&name, &table);
                    metrics.poll_seconds.get_or_create(&labels).observe(t0.elapsed().as_secs_f64());
                    metrics.poll_entries.get_or_create(&labels).inc_by(scanned);
                    Ok::<_, ClientError>((plan, values))
                };
                (i, poll.await)
            });
        }
        let mut merged: HashMap<IpAddr, Merged> = HashMap::new();
        let mut up = vec![false; nodes.len()];
        while let Some(joined) = polls.join_next().await {
            let Ok((i, result)) = joined else { continue };
            match result {
                Ok((plan, values)) => {
                    up[i] = true;
                    if last_error[i].take().is_some() {
                        tracing::info!(target = %nodes[i].0, table = %table.name, "polling again");
                    }
                    plans[i] = Some(plan);
                    for (addr, v) in values {
                        merged.entry(addr).or_insert_with(|| Merged::new(columns.names.len(), nodes.len())).add(
                            i,
                            &v,
                            &columns.modes,
                        );
                    }
                }
                Err(e) => {
                    if e.haproxy().is_some() {
                        plans[i] = None; // the table may have changed under us: plan again
                    }
                    let text = e.to_string();
                    if last_error[i].as_ref() != Some(&text) {
                        warn!(target = %nodes[i].0, table = %table.name, error = %text, "poll failed; merging the other nodes");
                        last_error[i] = Some(text);
                    }
                }
            }
        }
        let lookups = look_up_missing(&nodes, &plans, &up, &table.name, &own, &columns, &mut merged).await;
        let observations = observe(&rules, &table.name, &columns, &merged, &names);
        debug!(table = %table.name, nodes_up = up.iter().filter(|u| **u).count(), candidates = merged.len(),
               lookups, offending = observations.len(), took = ?started.elapsed(), "fleet polled");
        if !observations.is_empty() && tx.send(Msg::Observed { polled_at, observations }).await.is_err() {
            return;
        }
    }
}

/// One node's poll: every relaxed query; the values of every entry a relaxed rule matches, the
/// entries read and the table's `used` count.
async fn poll_node(
    client: &Client,
    table: &str,
    queries: &[Vec<Filter>],
    relaxed: &[Rule],
    columns: &Columns,
) -> Result<(NodeValues, u64, Option<u64>), ClientError> {
    let mut out = NodeValues::new();
    let (mut scanned, mut used) = (0, None);
    for q in queries {
        let select = TableSelect::query(q);
        let stats = client
            .show_table(table, select)
            .await?
            .for_each(|item| {
                let e = match item {
                    TableItem::Entry(e) => e,
                    TableItem::Header(h) => return used = Some(h.used),
                };
                let Some(addr) = e.key_addr() else { return };
                if !relaxed.iter().any(|r| r.matches(&e)) || out.contains_key(&addr) {
                    return;
                }
                out.insert(addr, values_of(&e, columns));
            })
            .await?;
        scanned += stats.entries;
    }
    Ok((out, scanned, used))
}

fn values_of(e: &Entry<'_>, columns: &Columns) -> Vec<Option<i128>> {
    columns.names.iter().map(|c| e.get(c.as_str()).and_then(|col| col.value.as_i128())).collect()
}

/// Reads, on the nodes that were up and did not report it, each address whose merged values do
/// not yet match every rule; returns how many lookups were made.
async fn look_up_missing(
    nodes: &[(String, Client)],
    plans: &[Option<NodePlan>],
    up: &[bool],
    table: &str,
    rules: &[Rule],
    columns: &Arc<Columns>,
    merged: &mut HashMap<IpAddr, Merged>,
) -> usize {
    let mut wanted: Vec<Vec<IpAddr>> = vec![Vec::new(); nodes.len()];
    let mut n = 0;
    'addresses: for (addr, m) in merged.iter() {
        if rules.iter().all(|r| r.matches_by(|c| m.get(columns, &c.column))) {
            continue;
        }
        for i in m.missing().filter(|i| up[*i]) {
            if n == MAX_LOOKUPS {
                warn!(table, max = MAX_LOOKUPS, "too many candidates to look up on every node this poll; the rest are merged from the nodes that reported them");
                break 'addresses;
            }
            wanted[i].push(*addr);
            n += 1;
        }
    }
    let mut lookups = JoinSet::new();
    for (i, addrs) in wanted.into_iter().enumerate().filter(|(_, a)| !a.is_empty()) {
        let Some(plan) = plans[i].clone() else { continue };
        let (client, table, columns) = (nodes[i].1.clone(), table.to_owned(), columns.clone());
        lookups.spawn(async move {
            let mut found = Vec::new();
            for addr in addrs {
                let Ok(key) = TableKey::parse(plan.key_type, &addr.to_string()) else { continue };
                let Ok(dump) = client.show_table(&table, TableSelect::Key(key)).await else { break };
                let mut values = None;
                let result = dump
                    .for_each(|item| {
                        if let TableItem::Entry(e) = item {
                            values = Some(values_of(&e, &columns));
                        }
                    })
                    .await;
                if result.is_err() {
                    break;
                }
                found.push((addr, values));
            }
            (i, found)
        });
    }
    while let Some(Ok((i, found))) = lookups.join_next().await {
        for (addr, values) in found {
            if let (Some(m), Some(v)) = (merged.get_mut(&addr), values) {
                m.add(i, &v, &columns.modes);
            }
        }
    }
    n
}

/// The merged addresses that match at least one rule of `table`, as observations.
/// Each carries every node's own values of its counters, the evidence of the merge.
fn observe(
    rules: &RuleSet,
    table: &str,
    columns: &Columns,
    merged: &HashMap<IpAddr, Merged>,
    names: &[String],
) -> Vec<Observation> {
    merged
        .iter()
        .filter_map(|(addr, m)| {
            let key = || Some(crate::key::Key::host(*addr));
            let mut o = Observation::of(key, rules, table, |c| m.get(columns, &c.column))?;
            for (i, node) in names.iter().enumerate().filter(|(i, _)| m.nodes[*i]) {
                let counters = o
                    .counters
                    .iter()
                    .filter_map(|(c, _)| {
                        let v = m.node_value(columns, i, c)?;
                        Some((c.clone(), v.clamp(i64::MIN.into(), i64::MAX.into()) as i64))
                    })
                    .collect();
                o.nodes.push(crate::store::NodeCounters { node: node.clone(), counters });
            }
            Some(o)
        })
        .collect()
}
