//! The reconciler's eyes: one task per target that reads, every `reconcile_interval` and on demand
//! ([`super::Handle::reconcile_now`]), what HAProxy
//! holds of stickwarden's blocks (the block ACL's patterns, the tagged entries of the block
//! table, the block map's keys) and hands it to the controller, which compares it with the active blocks and puts back
//! what is missing (an entry evicted from a full table, a pattern deleted by hand). Entries it did
//! not put there are never touched.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};
use tracing::debug;

use super::Msg;
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::proto::DataField;
use crate::time::{Clock, Millis};

pub use crate::decide::Actual;

pub(super) async fn run(
    target: String,
    client: Client,
    cfg: Arc<Config>,
    tx: mpsc::Sender<Msg>,
    mut shutdown: watch::Receiver<bool>,
    now: Arc<Notify>,
    clock: Clock,
) {
    let mut tick = tokio::time::interval(cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // start-up already re-applies everything
    let mut tag_field: Option<Option<DataField>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = now.notified() => {}
            _ = shutdown.changed() => if *shutdown.borrow() { return },
        }
        match read(&target, &client, &cfg, &mut tag_field, clock.now()).await {
            Ok(actual) => {
                if tx.send(Msg::Actual(actual)).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(%target, error = %e, "reconciliation skipped: HAProxy could not be read"),
        }
    }
}

/// What `client`'s HAProxy holds of the block ACL and the tag (`tag_field` caches how the tag
/// column is named in filters; start with `None`).
pub(crate) async fn read(
    target: &str,
    client: &Client,
    cfg: &Config,
    tag_field: &mut Option<Option<DataField>>,
    read_at: Millis,
) -> Result<Actual, ClientError> {
    let acl = match &cfg.block.acl {
        None => None,
        Some(a) => Some(crate::actuator::acl::listed(client, a).await?),
    };
    let tagged = match &cfg.block.table {
        None => None,
        Some(table) => {
            if tag_field.is_none() {
                *tag_field = Some(crate::columns::filter_name(client, table, &cfg.block.tag).await?);
            }
            match tag_field.clone().flatten() {
                // A tag HAProxy cannot filter on is not compared (check reports it).
                None => None,
                Some(field) => Some(crate::actuator::tag::tagged(client, table, field, cfg.block.tag_value).await?),
            }
        }
    };
    let mapped = match (&cfg.block.map, cfg.rules.policy.map_class()) {
        (Some(m), Some(_)) => Some(crate::actuator::map::mapped(client, m).await?),
        _ => None,
    };
    Ok(Actual { target: target.to_owned(), read_at, acl, tagged, mapped })
}
