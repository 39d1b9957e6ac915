//! Reload and restart detection: one task per target reads `show info` every interval, on a
//! connection of its own (the persistent one stays with the process it was opened to, which after
//! a master-worker reload is the old worker), and compares HAProxy's identity (`Pid`,
//! `Start_time_sec`) with the last one seen. A change means a
//! new process (a reload of a master-worker HAProxy, a restart), which has lost every runtime ACL
//! entry and every stick-table entry not shared through `peers`: the controller is told at once and
//! puts every active block back. A target that does not answer is reported down, and checked again
//! when it answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::Msg;
use crate::client::Client;
use crate::metrics::Metrics;

/// What tells one HAProxy process from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incarnation {
    pub pid: Option<u64>,
    pub start: Option<u64>,
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
        write!(f, "pid {} started {}", show(self.pid), show(self.start))
    }
}

pub(super) async fn run(
    target: String,
    client: Client,
    interval: Duration,
    tx: mpsc::Sender<Msg>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Incarnation> = None;
    let mut down = false;
    let up = Metrics::target(&target);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        match client.show_info_fresh().await {
            Ok(info) => {
                metrics.target_up.get_or_create(&up).set(1);
                if std::mem::take(&mut down) {
                    tracing::info!(%target, "HAProxy answers again");
                    // The persistent connection and the actuator may be waiting out a backoff of
                    // up to 10 s: they go now.
                    client.revive();
                }
                let now = Incarnation { pid: info.pid(), start: info.start_time_sec() };
                if let Some(was) = last.filter(|was| *was != now) {
                    client.revive();
                    let msg = Msg::Restarted { target: target.clone(), was: was.to_string(), now: now.to_string() };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                last = Some(now);
            }
            Err(e) => {
                metrics.target_up.get_or_create(&up).set(0);
                if !std::mem::replace(&mut down, true) {
                    warn!(%target, error = %e, "HAProxy does not answer; decisions are kept and applied when it does");
                }
            }
        }
    }
}
