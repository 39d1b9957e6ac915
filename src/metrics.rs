//! Prometheus metrics, in the text exposition format (prometheus-client): active blocks by action
//! and source, decisions by rule and outcome, poll duration and entries scanned per table,
//! actuator jobs by result and commands sent, target up/down, the circuit breaker's state, and
//! the reconciler's repairs.
//! One [`Metrics`] is shared by the pollers, the controller, the actuators and the API.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::Block;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    pub target: String,
    pub table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub rule: String,
    /// `block`, `would_block`, `suppressed` (circuit breaker).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub target: String,
    /// `block`, `release`, `import`.
    pub kind: String,
    /// `ok` or `error`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockLabels {
    pub action: String,
    pub source: String,
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub poll_seconds: Family<TableLabels, Histogram>,
    pub poll_entries: Family<TableLabels, Counter>,
    /// Offenders a sweep found that the suspects table had not flagged.
    pub suspects_missed: Family<TableLabels, Counter>,
    /// From the start of a poll that decided new blocks to their confirmation by every target.
    pub detection_seconds: Histogram,
    pub jobs: Family<JobLabels, Counter>,
    pub commands: Family<TargetLabels, Counter>,
    pub target_up: Family<TargetLabels, Gauge>,
    pub breaker_open: Gauge<i64, AtomicI64>,
    /// 1 while this controller leads on a shared store (always 0 on sled).
    pub leader: Gauge<i64, AtomicI64>,
    /// The epoch this controller leads at (0 when it follows).
    pub epoch: Gauge<i64, AtomicI64>,
    pub repairs: Family<TargetLabels, Counter>,
    pub unconfirmed: Family<TargetLabels, Gauge>,
    active_blocks: Family<BlockLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stickwarden");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("decisions", "Offences decided, by rule and outcome", decisions.clone());
        let poll_seconds = Family::<TableLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        registry.register("poll_duration_seconds", "Duration of one poll of a table", poll_seconds.clone());
        let poll_entries = Family::<TableLabels, Counter>::default();
        registry.register("poll_entries", "Entries received from polls (candidates only)", poll_entries.clone());
        let suspects_missed = Family::<TableLabels, Counter>::default();
        registry.register(
            "suspects_missed",
            "Offenders a sweep (full poll) found that the suspects table had not flagged",
            suspects_missed.clone(),
        );
        let detection_seconds = Histogram::new([0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register(
            "detection_to_block_seconds",
            "From the start of the poll that saw new offenders to their blocks confirmed by every target (one observation per poll's batch)",
            detection_seconds.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register("actuator_jobs", "Block, release and import jobs, by result", jobs.clone());
        let commands = Family::<TargetLabels, Counter>::default();
        registry.register("actuator_commands", "Runtime API commands sent by the actuator", commands.clone());
        let target_up = Family::<TargetLabels, Gauge>::default();
        registry.register("target_up", "1 when the target's last poll succeeded", target_up.clone());
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this controller leads on a shared PostgreSQL store", leader.clone());
        let epoch = Gauge::<i64, AtomicI64>::default();
        registry.register("leader_epoch", "The epoch this controller leads at (0 while it follows)", epoch.clone());
        let breaker_open = Gauge::<i64, AtomicI64>::default();
        registry.register("circuit_breaker_open", "1 while automatic blocks are suspended", breaker_open.clone());
        let repairs = Family::<TargetLabels, Counter>::default();
        registry.register("repairs", "Parts of active blocks found missing in HAProxy and put back", repairs.clone());
        let unconfirmed = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "unconfirmed",
            "Keys whose last block or release the target has not confirmed (queued, down or refused)",
            unconfirmed.clone(),
        );
        let active_blocks = Family::<BlockLabels, Gauge<i64, AtomicI64>>::default();
        registry.register("active_blocks", "Blocks in force, by action and source", active_blocks.clone());
        Metrics {
            registry,
            decisions,
            poll_seconds,
            poll_entries,
            suspects_missed,
            detection_seconds,
            jobs,
            commands,
            target_up,
            breaker_open,
            leader,
            epoch,
            repairs,
            unconfirmed,
            active_blocks,
        }
    }

    pub fn decision(&self, rule: &str, outcome: &str) {
        self.decisions.get_or_create(&DecisionLabels { rule: rule.to_owned(), outcome: outcome.to_owned() }).inc();
    }

    pub fn table(target: &str, table: &str) -> TableLabels {
        TableLabels { target: target.to_owned(), table: table.to_owned() }
    }

    pub fn target(target: &str) -> TargetLabels {
        TargetLabels { target: target.to_owned() }
    }

    /// The text exposition, with the active blocks counted from `blocks`.
    pub fn render(&self, blocks: &[Block]) -> String {
        self.active_blocks.clear();
        for b in blocks {
            let source = if b.source == crate::store::Origin::Auto { "auto" } else { "manual" };
            self.active_blocks
                .get_or_create(&BlockLabels { action: b.actions.to_string(), source: source.into() })
                .inc();
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
