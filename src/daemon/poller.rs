//! The poller: one task per (target, table) that runs the table's server-side filtered
//! `show table` queries every interval and evaluates every rule on each entry as it streams in.
//!
//! Polls of one table never overlap (the task awaits each poll before the next tick, and a late
//! tick is delayed, not doubled); tables and targets poll concurrently. Before its first poll a
//! task asks HAProxy how each column is filtered ([`plan`]). Only entries that match a rule leave
//! the task, as [`crate::poll::Observation`]s for the controller. A table in suspects mode
//! ([`crate::suspects`]) is read through its flags instead ([`poll_suspects`]), with a full poll
//! every sweep interval that checks nothing was missed ([`sweep`]). Every poll records the table's
//! entry count in the [`super::Census`], for the circuit breaker. What one poll does is
//! [`crate::poll`]'s; this module runs it on time.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::Msg;
use crate::client::{Client, ClientError};
use crate::config::TableConfig;
use crate::metrics::Metrics;
use crate::poll::{plan, poll, poll_suspects, sweep, Polled};
use crate::proto::{ErrorKind, Filter};
use crate::rules::RuleSet;

/// What one poller task polls, and where it counts the table's entries.
pub(super) struct Task {
    pub target: String,
    pub client: Client,
    pub table: TableConfig,
    pub rules: Arc<RuleSet>,
    pub census: Arc<super::Census>,
    /// Where blocks go (a tagged or listed client is blocked already).
    pub block: crate::config::BlockConfig,
    /// The controller's clock, to stamp each poll with.
    pub clock: crate::time::Clock,
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
        let (started, polled_at) = (Instant::now(), task.clock.now());
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
    let Some(suspects) = &task.table.suspects else { return poll(client, table, task.table.key, queries, rules).await };
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

/// Logs a poll failure once per kind of failure, not once per interval.
fn note_error(last: &mut Option<String>, target: &str, table: &str, e: &ClientError) {
    let text = e.to_string();
    if last.as_ref() != Some(&text) {
        warn!(%target, table, error = %text, "poll failed");
        *last = Some(text);
    }
}
