//! `stickwarden run`: the enforcement loop. It opens the store, starts one client and one
//! actuator per HAProxy target, one poller per (target, table), and the controller that owns every
//! decision; then runs until `shutdown` resolves.
//!
//! Start-up re-applies every block still in force (a restarted controller keeps its blocks) and the
//! first housekeeping tick releases those whose time has come while it was down. A watcher per
//! target notices a reloaded or restarted HAProxy and has every active block put back at once. On shutdown the
//! pollers stop first, the controller finishes the batch in hand, and the store is flushed.
//! Operator actions reach the controller through a [`Handle`] (the HTTP API's), or, when no daemon
//! runs, through [`run_once`], which starts a controller for that one action. On a shared
//! PostgreSQL store, [`ha::run`] runs this controller only while it leads, a term at a time.

pub mod census;
mod controller;
mod fleet_poller;
pub mod ha;
mod lag;
pub mod poller;
pub(crate) mod reconcile;
mod restarts;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info};

use crate::actuator::Actuator;
use crate::client::{Client, ClientOptions};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ops::listing::{Listing, Page, Summary};
use crate::ops::{Manual, OpError, Outcome};
use crate::store::{Block, Store, StoreError};
use crate::time::Clock;

pub use crate::decide::{AUTO_ACTOR, MANUAL_RULE};
pub use crate::poll::Observation;
pub use census::Census;
pub use controller::ManualReply;
pub use lag::Lag;

/// What the controller's inbox receives.
pub(crate) enum Msg {
    /// The candidates of one poll that started at `polled_at`.
    Observed { polled_at: crate::time::Millis, observations: Vec<Observation> },
    /// A job finished on every target: how ([`crate::decide::JobOutcome`]), for `block` when it was one
    /// block's, and whom to tell once it is recorded.
    Done { block: Option<Block>, outcome: crate::decide::JobOutcome, notify: Option<oneshot::Sender<Vec<String>>> },
    /// An operator action.
    Manual { op: Manual, actor: String, reply: oneshot::Sender<Result<ManualReply, OpError>> },
    /// A target's HAProxy is a new process (reload, restart).
    Restarted { target: String, was: String, now: String },
    /// What a target holds, for the reconciler.
    Actual(reconcile::Actual),
    /// A consistent backup of the store, written to a temp file while the controller (the only
    /// writer) waits for it.
    Backup { reply: oneshot::Sender<Result<tempfile::NamedTempFile, StoreError>> },
    /// A page of the active blocks ([`crate::ops::listing`]).
    Listing { listing: Box<Listing>, reply: oneshot::Sender<Page> },
    /// The summary of the active blocks.
    Summary { reply: oneshot::Sender<Summary> },
}

/// The longest time between two checks of a target's process identity (reload detection).
const RESTART_CHECK_MAX: Duration = Duration::from_millis(500);
/// How often blocks are checked for release.
const TICK: Duration = Duration::from_millis(250);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long a new leader waits for each target's state before its first decision.
const RECONCILE_FIRST_WAIT: Duration = Duration::from_secs(5);
/// How long in-flight jobs may take to be confirmed at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long an operator action waits for HAProxy's confirmation before answering "pending".
pub const CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// A way into the running controller, for operator actions.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Msg>,
    reconcile: Arc<tokio::sync::Notify>,
    lag: Arc<Lag>,
    census: Arc<Census>,
    /// Who leads, when several controllers share a PostgreSQL store.
    ha: Option<Arc<ha::Status>>,
}

impl Handle {
    /// This controller's role and epoch, and who leads, on a shared store (`None` on sled).
    pub fn ha(&self) -> Option<&ha::Status> {
        self.ha.as_deref()
    }

    /// What each target has not confirmed yet.
    pub fn lag(&self) -> &Lag {
        &self.lag
    }

    /// The tracked population and the circuit breaker's state.
    pub fn census(&self) -> &Census {
        &self.census
    }

    /// Starts a reconciliation of every target now, without waiting for its interval.
    pub fn reconcile_now(&self) {
        self.reconcile.notify_waiters();
    }

    /// A backup of the store as of one moment ([`crate::store::backup`]), in a temp file that is
    /// deleted when dropped.
    pub async fn backup(&self) -> Result<tempfile::NamedTempFile, OpError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Backup { reply }).await.map_err(|_| OpError::Unavailable)?;
        Ok(rx.await.map_err(|_| OpError::Unavailable)??)
    }

    /// A page of the active blocks, from the controller's index (the blocks it enforces).
    pub async fn blocks_page(&self, listing: Listing) -> Result<Page, OpError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Listing { listing: Box::new(listing), reply };
        self.tx.send(msg).await.map_err(|_| OpError::Unavailable)?;
        rx.await.map_err(|_| OpError::Unavailable)
    }

    /// The active blocks by level, rule, source and network.
    pub async fn summary(&self) -> Result<Summary, OpError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Summary { reply }).await.map_err(|_| OpError::Unavailable)?;
        rx.await.map_err(|_| OpError::Unavailable)
    }

    /// Runs `op` in the controller and waits (at most [`CONFIRM_WAIT`]) for HAProxy to confirm.
    pub async fn manual(&self, op: Manual, actor: &str) -> Result<Outcome, OpError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Manual { op, actor: actor.to_owned(), reply }).await.map_err(|_| OpError::Unavailable)?;
        let r = rx.await.map_err(|_| OpError::Unavailable)??;
        Ok(confirm(r, CONFIRM_WAIT).await)
    }
}

/// Waits for the HAProxy jobs of an action; what did not answer in time is reported as pending.
async fn confirm(r: ManualReply, wait: Duration) -> Outcome {
    let mut outcome = r.outcome;
    let all = futures_join(r.pending);
    match tokio::time::timeout(wait, all).await {
        Ok(failures) => outcome.failures.extend(failures.into_iter().flatten()),
        Err(_) => outcome.failures.push(format!(
            "not confirmed by HAProxy within {}: recorded, and retried until it is",
            crate::time::human(wait)
        )),
    }
    outcome
}

async fn futures_join(pending: Vec<oneshot::Receiver<Vec<String>>>) -> Vec<Vec<String>> {
    let mut out = Vec::with_capacity(pending.len());
    for rx in pending {
        out.push(rx.await.unwrap_or_else(|_| vec!["the controller stopped".to_owned()]));
    }
    out
}

/// The clients, actuators and pollers of a configuration.
struct Parts {
    clients: Vec<(String, Client)>,
    actuators: Vec<Actuator>,
}

fn start_targets(
    cfg: &Config,
    stop_rx: &watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
    lease: &crate::lease::Lease,
) -> Parts {
    let mut parts = Parts { clients: Vec::new(), actuators: Vec::new() };
    for t in &cfg.targets {
        let client = Client::new(t.target.clone(), ClientOptions::default());
        parts.actuators.push(Actuator::spawn_leased(
            t,
            client.clone(),
            stop_rx.clone(),
            metrics.clone(),
            lease.clone(),
        ));
        parts.clients.push((t.name.clone(), client));
    }
    parts
}

/// Runs the daemon on an opened store until `shutdown` resolves.
pub async fn run(cfg: Config, store: Store, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
    run_with(cfg, store, Arc::new(Metrics::new()), Clock::system(), shutdown, |_, _| {}).await
}

/// [`run`], with the metrics to update, the clock to read (a test skips an hour on its own
/// instead of sleeping it), and a callback that receives a [`Handle`] and the targets' clients
/// once everything runs (the HTTP API is started there).
pub async fn run_with(
    cfg: Config,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(Handle, Vec<(String, Client)>),
) -> Result<(), StoreError> {
    let core = Core {
        lag: Arc::new(Lag::new(cfg.targets.iter().map(|t| t.name.clone()), metrics.clone())),
        census: Arc::new(Census::default()),
        reconcile_now: Arc::new(tokio::sync::Notify::new()),
        lease: crate::lease::Lease::always(),
        reconcile_first: false,
        ha: None,
        active_at_end: None,
    };
    run_core(cfg, store, metrics, clock, shutdown, on_start, core).await
}

/// What outlives one term of a controller: the parts its [`Handle`] shares, the lease it acts
/// under, and whether it reconciles every target before its first decision (a new leader).
pub(crate) struct Core {
    lag: Arc<Lag>,
    census: Arc<Census>,
    reconcile_now: Arc<tokio::sync::Notify>,
    lease: crate::lease::Lease,
    reconcile_first: bool,
    ha: Option<Arc<ha::Status>>,
    /// Receives the blocks in force when the term ends (a leader cut off from its database keeps
    /// releasing them on time, [`ha`]).
    active_at_end: Option<Arc<std::sync::Mutex<Vec<Block>>>>,
}

/// [`run_with`] with its [`Core`].
pub(crate) async fn run_core(
    cfg: Config,
    store: Store,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(Handle, Vec<(String, Client)>),
    core: Core,
) -> Result<(), StoreError> {
    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<Msg>(64);

    // Actuators stop last, after the in-flight jobs had their grace period.
    let (act_stop_tx, act_stop_rx) = watch::channel(false);
    let parts = start_targets(&cfg, &act_stop_rx, &metrics, &core.lease);
    let rules = Arc::new(cfg.rules.clone());
    let census = core.census.clone();
    let merged = cfg.merge.enabled && parts.clients.len() > 1;
    // A fleet merges the values of one client address across nodes; a table keyed otherwise is
    // polled on each node (its key is the same client wherever it is seen).
    for table in cfg.tables.iter().filter(|t| merged && t.key.is_none()) {
        let fleet = fleet_poller::Fleet {
            nodes: parts.clients.clone(),
            table: table.clone(),
            rules: rules.clone(),
            merge: cfg.merge.clone(),
            census: census.clone(),
            clock: clock.clone(),
        };
        tokio::spawn(fleet_poller::run(fleet, tx.clone(), stop_rx.clone(), metrics.clone()));
    }
    for (name, client) in &parts.clients {
        for table in cfg.tables.iter().filter(|t| !merged || t.key.is_some()) {
            let task = poller::Task {
                target: name.clone(),
                client: client.clone(),
                table: table.clone(),
                rules: rules.clone(),
                census: census.clone(),
                block: cfg.block.clone(),
                clock: clock.clone(),
            };
            tokio::spawn(poller::run(task, tx.clone(), stop_rx.clone(), metrics.clone()));
        }
    }
    // A reload is looked for at least twice a second: until it is seen, the new process holds no
    // block at all. (`show info` on a fresh connection costs HAProxy next to nothing.)
    let every = cfg.tables.iter().map(|t| t.interval).min().unwrap_or(crate::config::DEFAULT_POLL_INTERVAL);
    let every = every.min(RESTART_CHECK_MAX);
    let reconcile_now = core.reconcile_now.clone();
    for (name, client) in &parts.clients {
        tokio::spawn(restarts::run(name.clone(), client.clone(), every, tx.clone(), stop_rx.clone(), metrics.clone()));
        tokio::spawn(reconcile::run(
            name.clone(),
            client.clone(),
            cfg.clone(),
            tx.clone(),
            stop_rx.clone(),
            reconcile_now.clone(),
            clock.clone(),
        ));
    }
    // What `stickwarden check` would say, said at start too: a socket at too low a level, a
    // missing column or ACL file shows in the log at once, with what to change.
    for t in cfg.targets.clone() {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            for f in crate::check::check_target(&cfg, &t).await.into_iter().filter(|f| !f.ok) {
                error!(target = %t.name, "{}", f.what);
            }
        });
    }
    let lag = core.lag.clone();
    let clients = parts.clients;
    let parts = controller::Parts {
        actuators: parts.actuators,
        tx: tx.clone(),
        metrics,
        lag: lag.clone(),
        census: census.clone(),
        clock,
    };
    let mut ctl = controller::Controller::new(cfg.clone(), store.clone(), parts)?;
    info!(
        targets = cfg.targets.len(),
        tables = cfg.tables.len(),
        rules = cfg.rules.rules.len(),
        dry_run = cfg.dry_run,
        "stickwarden running"
    );
    ctl.reapply_all(None).await?;
    if core.reconcile_first {
        // A new leader: what the last one left half done (a block sent to some nodes only, a
        // leftover of a block it released from the store) is set right on every target before
        // anything new is decided; a release it sent but did not record is sent again at the
        // first tick (the block is still in the store, and over). A target that does not answer is left to the reconciler's next round.
        for (name, client) in &clients {
            let mut tag_field = None;
            let read = reconcile::read(name, client, &cfg, &mut tag_field, ctl.now());
            match tokio::time::timeout(RECONCILE_FIRST_WAIT, read).await {
                Ok(Ok(actual)) => ctl.reconcile(actual).await?,
                Ok(Err(e)) => {
                    tracing::warn!(target = %name, error = %e, "not reconciled at takeover: HAProxy could not be read")
                }
                Err(_) => tracing::warn!(target = %name, "not reconciled at takeover: HAProxy did not answer in time"),
            }
        }
    }
    on_start(Handle { tx: tx.clone(), reconcile: reconcile_now, lag, census, ha: core.ha.clone() }, clients);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    tokio::pin!(shutdown);
    loop {
        let step = tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = rx.recv() => handle(&mut ctl, msg).await,
            _ = tick.tick() => ctl.tick().await,
            _ = prune.tick() => ctl.prune(),
        };
        if let Err(e) = step {
            // The store is the record of every decision: without it nothing may be decided.
            error!(error = %e, "store failure; stopping");
            let _ = stop_tx.send(true);
            if let Some(slot) = &core.active_at_end {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = ctl.decider.active().cloned().collect();
            }
            return Err(e);
        }
    }
    // Pollers stop first; jobs already sent get up to SHUTDOWN_GRACE to be confirmed and recorded
    // (what is not will be re-applied or released at the next start: the store has it).
    info!(in_flight = ctl.in_flight(), "shutting down");
    let _ = stop_tx.send(true);
    let grace = tokio::time::sleep(SHUTDOWN_GRACE);
    tokio::pin!(grace);
    while ctl.in_flight() > 0 {
        tokio::select! {
            _ = &mut grace => {
                tracing::warn!(in_flight = ctl.in_flight(), "grace period over; unconfirmed jobs are redone at the next start");
                break;
            }
            Some(msg) = rx.recv() => {
                if let Msg::Done { .. } = msg {
                    handle(&mut ctl, msg).await?;
                }
            }
        }
    }
    let _ = act_stop_tx.send(true);
    if let Some(slot) = &core.active_at_end {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = ctl.decider.active().cloned().collect();
    }
    tokio::task::spawn_blocking(move || store.flush()).await.expect("flush task")
}

async fn handle(ctl: &mut controller::Controller, msg: Msg) -> Result<(), StoreError> {
    match msg {
        Msg::Observed { polled_at, observations } => ctl.observe(polled_at, observations).await,
        Msg::Done { block, outcome, notify } => ctl.done(block, outcome, notify).await,
        Msg::Restarted { target, was, now } => ctl.target_restarted(target, was, now).await,
        Msg::Actual(actual) => ctl.reconcile(actual).await,
        Msg::Backup { reply } => {
            // The controller waits, so nothing is written while the copy is made; the copy itself
            // runs off the runtime thread.
            ctl.flush().await?;
            let made = ctl
                .on_store(|store| {
                    let io = |e: std::io::Error| StoreError::Io(format!("cannot write the backup file: {e}"));
                    let file = tempfile::NamedTempFile::new_in(store.path()).map_err(io)?;
                    store.export(std::io::BufWriter::new(file.reopen().map_err(io)?))?;
                    Ok(file)
                })
                .await;
            let _ = reply.send(made);
            Ok(())
        }
        Msg::Listing { listing, reply } => {
            let lagging = ctl.lag.lagging();
            let _ = reply.send(listing.select(ctl.decider.active(), ctl.now(), &lagging));
            Ok(())
        }
        Msg::Summary { reply } => {
            let _ = reply.send(crate::ops::listing::summary(ctl.decider.active()));
            Ok(())
        }
        Msg::Manual { op, actor, reply } => match ctl.manual(op, &actor).await {
            Err(OpError::Store(e)) => {
                let _ = reply.send(Err(OpError::Unavailable));
                Err(e)
            }
            other => {
                let _ = reply.send(other);
                Ok(())
            }
        },
    }
}

/// Carries out one operator action without a running daemon: a controller on `store` (which the
/// caller has opened, so no daemon holds it), the targets' actuators, and the loop that records
/// HAProxy's answers, until they are all in (at most `wait`).
pub async fn run_once(cfg: Config, store: Store, op: Manual, actor: &str, wait: Duration) -> Result<Outcome, OpError> {
    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<Msg>(64);
    let metrics = Arc::new(Metrics::new());
    let parts = start_targets(&cfg, &stop_rx, &metrics, &crate::lease::Lease::always());
    let lag = Arc::new(Lag::new(cfg.targets.iter().map(|t| t.name.clone()), metrics.clone()));
    let census = Arc::new(Census::default());
    let parts = controller::Parts { actuators: parts.actuators, tx, metrics, lag, census, clock: Clock::system() };
    let mut ctl = controller::Controller::new(cfg, store.clone(), parts)?;
    let reply = ctl.manual(op, actor).await?;
    let confirmed = confirm(reply, wait);
    tokio::pin!(confirmed);
    let outcome = loop {
        tokio::select! {
            outcome = &mut confirmed => break outcome,
            Some(msg) = rx.recv() => handle(&mut ctl, msg).await?,
        }
    };
    let _ = stop_tx.send(true);
    tokio::task::spawn_blocking(move || store.flush()).await.map_err(|_| OpError::Unavailable)??;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: the wait is exactly [`CONFIRM_WAIT`] of clock time, and not one
    /// real second of the test's.
    #[tokio::test(start_paused = true)]
    async fn an_action_not_confirmed_in_time_is_answered_pending_and_one_confirmed_in_time_is_not() {
        let (tx, rx) = oneshot::channel::<Vec<String>>();
        let started = tokio::time::Instant::now();
        let out = confirm(ManualReply { outcome: Outcome::default(), pending: vec![rx] }, CONFIRM_WAIT).await;
        assert_eq!(started.elapsed(), CONFIRM_WAIT);
        assert_eq!(out.failures, ["not confirmed by HAProxy within 10s: recorded, and retried until it is"]);
        drop(tx);

        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            tokio::time::sleep(CONFIRM_WAIT - Duration::from_millis(1)).await;
            let _ = tx.send(vec!["lb1: refused".to_owned()]);
        });
        let started = tokio::time::Instant::now();
        let out = confirm(ManualReply { outcome: Outcome::default(), pending: vec![rx] }, CONFIRM_WAIT).await;
        assert_eq!(started.elapsed(), CONFIRM_WAIT - Duration::from_millis(1));
        assert_eq!(out.failures, ["lb1: refused"]);
    }
}
