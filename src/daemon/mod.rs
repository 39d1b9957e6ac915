//! `stickwarden run`: the enforcement loop. It opens the store, starts one client and one
//! actuator per HAProxy target, one poller per (target, table), and the controller that owns every
//! decision; then runs until `shutdown` resolves.
//!
//! Start-up re-applies every block still in force (a restarted controller keeps its blocks) and the
//! first housekeeping tick releases those whose time has come while it was down. On shutdown the
//! pollers stop first, the controller finishes the batch in hand, and the store is flushed.

mod controller;
pub mod poller;
pub mod windows;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::actuator::Actuator;
use crate::client::{Client, ClientOptions};
use crate::config::Config;
use crate::store::{Block, Store, StoreError};

pub use controller::AUTO_ACTOR;
pub use poller::Observation;

/// What the controller's inbox receives.
#[derive(Debug)]
pub(crate) enum Msg {
    /// The candidates of one poll that started at `polled_at`.
    Observed { polled_at: crate::time::Millis, observations: Vec<Observation> },
    /// A block or release finished on every target (`failures` lists those that did not).
    Done { block: Block, release: bool, failures: Vec<String> },
}

/// How often blocks are checked for release.
const TICK: Duration = Duration::from_millis(250);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the daemon on an opened store until `shutdown` resolves.
pub async fn run(cfg: Config, store: Store, shutdown: impl Future<Output = ()>) -> Result<(), StoreError> {
    let cfg = Arc::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<Msg>(64);

    let mut actuators = Vec::new();
    let rules = Arc::new(cfg.rules.clone());
    for t in &cfg.targets {
        let client = Client::new(t.target.clone(), ClientOptions::default());
        actuators.push(Actuator::spawn(t, client.clone(), &cfg.block, stop_rx.clone()));
        for table in &cfg.tables {
            tokio::spawn(poller::run(
                t.name.clone(),
                client.clone(),
                table.clone(),
                rules.clone(),
                tx.clone(),
                stop_rx.clone(),
            ));
        }
    }
    let mut ctl = controller::Controller::new(cfg.clone(), store.clone(), actuators, tx.clone())?;
    info!(
        targets = cfg.targets.len(),
        tables = cfg.tables.len(),
        rules = cfg.rules.rules.len(),
        dry_run = cfg.dry_run,
        "stickwarden running"
    );
    ctl.reapply_all().await;

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    tokio::pin!(shutdown);
    loop {
        let step = tokio::select! {
            _ = &mut shutdown => break,
            Some(msg) = rx.recv() => match msg {
                Msg::Observed { polled_at, observations } => ctl.observe(polled_at, observations).await,
                Msg::Done { block, release, failures } => ctl.done(block, release, failures),
            },
            _ = tick.tick() => ctl.tick().await,
            _ = prune.tick() => ctl.prune(),
        };
        if let Err(e) = step {
            // The store is the record of every decision: without it nothing may be decided.
            error!(error = %e, "store failure; stopping");
            let _ = stop_tx.send(true);
            return Err(e);
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    let flushed = tokio::task::spawn_blocking(move || store.flush()).await.expect("flush task");
    flushed
}
