//! The actuator: one actor per HAProxy target that owns its client and turns block and release
//! jobs into Runtime API commands, rate limited (governor) and confirmed. Each action has a module
//! of its own ([`tag`], [`acl`], [`kill`], [`map`]): how it is applied, released, and read back.
//!
//! Apply: `set table` the tag, `add acl` the address or CIDR (once: the ACL's contents are read
//! first, because HAProxy does not refuse duplicates), and for a kill step `show sess` then
//! `shutdown session` of each live session from the blocked address. Release undoes exactly that,
//! where the block recorded it was done ([`Place`]: the table, column and value of the tag, the
//! ACL file), whatever the configuration says by then: the tag set back to 0 and the entry
//! cleared (an entry in use is cleared later), `del acl`. A table or ACL that no longer exists in
//! HAProxy has nothing left to undo.
//! Every answer is checked; connection failures are retried with backoff until they succeed or the
//! daemon stops, and HAProxy's refusals are returned to the caller, who audits them.

pub mod acl;
pub mod kill;
pub mod map;
pub mod tag;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::key::Key;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::client::{Client, ClientError};
use crate::config::TargetConfig;
use crate::metrics::{JobLabels, Metrics};
use crate::proto::{AclPattern, AclRef, Command, DataField, ErrorKind, KeyType, TableKey};
use crate::rules::{Action, Actions};
use crate::store::Place;

/// What to do, to which key.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// `kill` is false when a block is re-applied (after a restart): sessions are killed once.
    Apply {
        key: Key,
        actions: Actions,
        kill: bool,
        place: Arc<Place>,
    },
    Release {
        key: Key,
        actions: Actions,
        place: Arc<Place>,
    },
    /// Adds many keys to the ACL file `acl` atomically: a new version of the ACL holding its
    /// current patterns and these, committed at once (`prepare acl` / `add acl @v` / `commit acl`).
    ImportAcl {
        keys: Vec<IpNet>,
        acl: String,
    },
    /// HAProxy was replaced (reload, restart): what was read from the old process is stale, and
    /// the connection may still reach the old process.
    Forget,
    /// Many blocks at once, pipelined: tags and missing ACL patterns sent in batches instead of
    /// one round trip each. `fresh`: the new blocks of one poll, rate limited like any command,
    /// and the live sessions of those with a kill step shut down (one `show sess` for them all).
    /// Otherwise what HAProxy held a moment ago (re-applied after a restart): not rate limited,
    /// no session killed. Keys HAProxy refused are answered as [`ClientError::Refused`].
    ApplyMany {
        blocks: Vec<(Key, Actions)>,
        place: Arc<Place>,
        fresh: bool,
    },
}

type Reply = oneshot::Sender<Result<(), ClientError>>;

/// A handle on one target's actuator. Clones share it. An actor that stopped on its own (a
/// panic) is started again by the next [`Actuator::submit`]; the jobs it held answer
/// [`ClientError::Stopped`], a failure like any other: unconfirmed, audited, retried.
#[derive(Clone)]
pub struct Actuator {
    pub name: String,
    inner: Arc<std::sync::Mutex<Running>>,
    start: Arc<dyn Fn() -> Running + Send + Sync>,
    shutdown: watch::Receiver<bool>,
}

/// The running actor: its queue, and a way to stop it.
struct Running {
    /// Unbounded: a target that is down must never hold up the controller, which serves the
    /// other targets; what queues is one job per decision taken meanwhile.
    tx: mpsc::UnboundedSender<(Job, Reply)>,
    task: tokio::task::AbortHandle,
}

impl Actuator {
    /// Starts the actor; it stops when every handle is dropped or `shutdown` turns true.
    pub fn spawn(
        target: &TargetConfig,
        client: Client,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Actuator {
        Actuator::spawn_leased(target, client, shutdown, metrics, crate::lease::Lease::always())
    }

    /// [`Actuator::spawn`] for a controller that acts only while `lease` is valid: every job is
    /// refused ([`ClientError::NotLeader`]) once it is not.
    pub fn spawn_leased(
        target: &TargetConfig,
        client: Client,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        lease: crate::lease::Lease,
    ) -> Actuator {
        let (name, cps, stopping) = (target.name.clone(), target.commands_per_second, shutdown.clone());
        let start = move || {
            let (tx, rx) = mpsc::unbounded_channel();
            let quota = Quota::per_second(NonZeroU32::new(cps).unwrap_or(NonZeroU32::MIN));
            let actor = Actor {
                name: name.clone(),
                client: client.clone(),
                limiter: RateLimiter::direct(quota),
                key_types: HashMap::new(),
                acl_known: HashMap::new(),
                map_known: HashMap::new(),
                pending_clears: Vec::new(),
                shutdown: shutdown.clone(),
                lease: lease.clone(),
                labels: Metrics::target(&name),
                metrics: metrics.clone(),
            };
            Running { tx, task: tokio::spawn(actor.run(rx)).abort_handle() }
        };
        let running = start();
        Actuator {
            name: target.name.clone(),
            inner: Arc::new(std::sync::Mutex::new(running)),
            start: Arc::new(start),
            shutdown: stopping,
        }
    }

    /// Queues `job` (jobs run in the order they are submitted); the receiver gets its outcome once
    /// HAProxy confirmed or refused it. An actor found stopped is started again first.
    pub fn submit(&self, job: Job) -> Result<oneshot::Receiver<Result<(), ClientError>>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut running = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if running.tx.is_closed() && !*self.shutdown.borrow() {
            tracing::error!(target = %self.name, "the actuator had stopped; starting it again");
            *running = (self.start)();
        }
        running.tx.send((job, tx)).map_err(|_| ClientError::Stopped)?;
        Ok(rx)
    }

    /// Stops the actor at once, as a crash would: what it holds answers `Stopped`, and the next
    /// job starts it again. For tests of exactly that.
    pub fn abort(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).task.abort();
    }

    /// Runs `job` and waits for its outcome.
    pub async fn run(&self, job: Job) -> Result<(), ClientError> {
        self.submit(job)?.await.map_err(|_| ClientError::Stopped)?
    }
}

struct Actor {
    name: String,
    client: Client,
    limiter: DefaultDirectRateLimiter,
    /// Each tag table's key type, read once per connection.
    key_types: HashMap<String, KeyType>,
    /// Each ACL's patterns as last read, kept up to date by our own adds and deletes.
    acl_known: HashMap<String, HashSet<AclPattern>>,
    /// Each map's keys and values as last read, kept up to date by our own changes.
    map_known: HashMap<String, HashMap<crate::proto::MapKey, String>>,
    /// Entries whose tag is already 0 but that were in use when cleared: (table, key, first try).
    pending_clears: Vec<(String, TableKey, Instant)>,
    shutdown: watch::Receiver<bool>,
    lease: crate::lease::Lease,
    metrics: Arc<Metrics>,
    labels: crate::metrics::TargetLabels,
}

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Commands of an import sent in one pipelined batch.
pub(super) const IMPORT_CHUNK: usize = 32 * 1024;
/// How long an in-use entry's clear is retried before it is left to HAProxy's expiry (its tag is 0).
pub(super) const CLEAR_PATIENCE: Duration = Duration::from_secs(600);

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(Job, Reply)>) {
        let mut clear_tick = tokio::time::interval(Duration::from_secs(1));
        clear_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some((job, reply)) = msg else { break };
                    let result = self.run_with_retry(&job).await;
                    let kind = match job {
                        Job::Apply { .. } => "block",
                        Job::Release { .. } => "release",
                        Job::ImportAcl { .. } => "import",
                        Job::Forget => "forget",
                        Job::ApplyMany { fresh: true, .. } => "block",
                        Job::ApplyMany { fresh: false, .. } => "reapply",
                    };
                    let labels = JobLabels {
                        target: self.name.clone(),
                        kind: kind.into(),
                        result: if result.is_ok() { "ok" } else { "error" }.into(),
                    };
                    self.metrics.jobs.get_or_create(&labels).inc();
                    let _ = reply.send(result);
                }
                _ = clear_tick.tick(), if !self.pending_clears.is_empty() && self.lease.valid() => self.retry_clears().await,
                _ = self.shutdown.changed() => if *self.shutdown.borrow() { break },
            }
        }
        debug!(target = %self.name, "actuator stopped");
    }

    async fn run_with_retry(&mut self, job: &Job) -> Result<(), ClientError> {
        let mut delay = RETRY_MIN;
        let mut revivals = self.client.revivals();
        loop {
            match self.perform(job).await {
                Err(e) if e.is_transient() && !*self.shutdown.borrow() => {
                    warn!(target = %self.name, ?job, error = %e, retry_in = ?delay, "HAProxy unreachable, retrying");
                    // HAProxy may come back as a new process: read its state afresh.
                    self.key_types.clear();
                    self.acl_known.clear();
                    self.map_known.clear();
                    // Word that HAProxy answers again ends the wait: a node back from a long
                    // outage gets its jobs at once, not after the rest of a 10 s backoff.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => delay = (delay * 2).min(RETRY_MAX),
                        _ = revivals.changed() => {
                            debug!(target = %self.name, "HAProxy answers again: retrying now");
                            delay = RETRY_MIN;
                        }
                        _ = self.shutdown.changed() => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Every action of the job is tried, so that one HAProxy refusal (a full table refusing the
    /// tag) does not keep the others (the ACL entry) from being applied; the first failure is
    /// returned. A connection failure stops at once: the whole job is retried, and every action is
    /// idempotent.
    async fn perform(&mut self, job: &Job) -> Result<(), ClientError> {
        self.leased()?;
        let mut first_error = None;
        let mut keep = |r: Result<(), ClientError>| -> Result<(), ClientError> {
            match r {
                Err(e) if e.is_transient() => Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        };
        let unplaced =
            |what: &str| ClientError::Unplaced(format!("the block has no {what} recorded: nothing to do it on"));
        match job {
            Job::Apply { key, actions, kill, place } => {
                if actions.has(Action::Tag) {
                    match &place.tag {
                        Some(tag) => keep(self.set_tag(tag, key, tag.value).await.map(drop))?,
                        None if key.is_single() => keep(Err(unplaced("tag table")))?,
                        None => {} // networks are blocked through the ACL only
                    }
                }
                if let (true, Some(net)) = (actions.has(Action::Acl), key.net()) {
                    match &place.acl {
                        Some(acl) => keep(self.add_acl(acl, net).await)?,
                        None => keep(Err(unplaced("ACL file")))?,
                    }
                }
                if let Some(class) = actions.map_class() {
                    match &place.map {
                        Some(map) => keep(self.set_map(map, key, class).await)?,
                        None => keep(Err(unplaced("map file")))?,
                    }
                }
                if let (true, Some(net)) = (*kill && actions.has(Action::Kill), key.net()) {
                    keep(self.kill(net).await)?;
                }
            }
            Job::ImportAcl { keys, acl } => return self.import_acl(acl, keys).await,
            Job::ApplyMany { blocks, place, fresh } => return self.apply_many(blocks, place, *fresh).await,
            Job::Forget => {
                // After a master-worker reload the connection still reaches the old worker.
                self.client.reconnect();
                self.key_types.clear();
                self.acl_known.clear();
                self.map_known.clear();
                self.pending_clears.clear();
            }
            Job::Release { key, actions, place } => {
                if let (true, Some(acl), Some(net)) = (actions.has(Action::Acl), &place.acl, key.net()) {
                    keep(gone_is_done(self.del_acl(acl, net).await))?;
                }
                if let (Some(_), Some(map)) = (actions.map_class(), &place.map) {
                    keep(gone_is_done(self.del_map(map, key).await))?;
                }
                if let (true, Some(tag)) = (actions.has(Action::Tag), &place.tag) {
                    let untagged = gone_is_done(self.set_tag(tag, key, 0).await);
                    if let Ok(Some(k)) = untagged {
                        keep(self.clear(&tag.table, k).await)?;
                    } else {
                        keep(untagged.map(drop))?;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether this controller may still act ([`crate::lease`]).
    pub(super) fn leased(&self) -> Result<(), ClientError> {
        if self.lease.valid() {
            Ok(())
        } else {
            Err(ClientError::NotLeader)
        }
    }

    /// Waits for the rate limiter, and counts the command about to be sent.
    async fn command(&self) {
        self.limiter.until_ready().await;
        self.count(1);
    }

    /// Counts commands sent without the rate limiter (putting back what HAProxy lost).
    fn count(&self, n: u64) {
        self.metrics.commands.get_or_create(&self.labels).inc_by(n);
    }

    async fn apply_many(&mut self, blocks: &[(Key, Actions)], place: &Place, fresh: bool) -> Result<(), ClientError> {
        // What to send, as keys: the commands themselves are made one batch at a time, so that
        // 100,000 blocks never hold 200,000 commands in memory at once.
        let mut tags: Vec<(Key, TableKey)> = Vec::new();
        if let Some(tag) = &place.tag {
            for (key, _) in blocks.iter().filter(|(k, a)| a.has(Action::Tag) && k.is_single()) {
                if let Some(k) = self.table_key(&tag.table, key).await? {
                    tags.push((key.clone(), k));
                }
            }
        }
        let mut adds: Vec<(Key, AclPattern)> = Vec::new();
        // An ACL HAProxy refuses to show (unknown, or a level too low) refuses every ACL action of
        // the job; the tags still go out.
        let (mut first_error, mut refused) = (None, Vec::new());
        if let Some(file) = &place.acl {
            match self.known_acl(file).await {
                Ok(known) => {
                    adds = blocks
                        .iter()
                        .filter(|(_, a)| a.has(Action::Acl))
                        .filter_map(|(k, _)| Some((k.clone(), Self::pattern(k.net()?))))
                        .filter(|(_, p)| !known.contains(p))
                        .collect();
                    adds.sort_unstable_by_key(|(_, p)| *p);
                    adds.dedup_by_key(|(_, p)| *p);
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    refused.extend(blocks.iter().filter(|(_, a)| a.has(Action::Acl)).map(|(k, _)| k.clone()));
                    first_error = Some(e);
                }
            }
        }
        // The map's commands, made now: how many there are is how many blocks have a map step.
        let mut maps: Vec<(Key, Command)> = Vec::new();
        if let Some(file) = &place.map {
            for (key, actions) in blocks {
                let Some(class) = actions.map_class() else { continue };
                match self.map_command(file, key, class).await {
                    Ok(Some(cmd)) => maps.push((key.clone(), cmd)),
                    Ok(None) => {}
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        refused.push(key.clone());
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        let tag = match &place.tag {
            Some(t) => Some((t.table.clone(), t.column.parse::<DataField>()?, u64::from(t.value))),
            None => None,
        };
        let acl: Option<AclRef> = place.acl.as_deref().map(str::parse).transpose()?;
        let commands = tags
            .into_iter()
            .filter_map(move |(net, key)| {
                let (table, field, value) = tag.clone()?;
                Some((net, Command::SetTable { table, key, fields: vec![(field, value)] }))
            })
            .chain(adds.into_iter().filter_map(move |(net, pattern)| {
                Some((net, Command::AddAcl { acl: acl.clone()?, version: None, pattern }))
            }))
            .chain(maps);
        let mut sent = 0usize;
        // A restore is not rate limited: this is what HAProxy held a moment ago (before a reload or
        // restart), and every second without it is a second without those blocks. The pipeline's
        // in-flight bounds pace it to what HAProxy answers.
        let mut commands = commands.peekable();
        while commands.peek().is_some() {
            let (nets, chunk): (Vec<Key>, Vec<Command>) = commands.by_ref().take(IMPORT_CHUNK).unzip();
            if fresh {
                for _ in 0..chunk.len() {
                    self.command().await;
                }
            } else {
                self.count(chunk.len() as u64);
            }
            sent += chunk.len();
            // A long job (its rate limit, a big batch) checks the lease before every batch: what
            // is left of it once another controller may lead is not sent.
            self.leased()?;
            for ((net, cmd), result) in nets.iter().zip(&chunk).zip(self.client.pipeline(&chunk).await) {
                match result {
                    // An ACL pattern is only known once HAProxy has it: a retry must not add it twice.
                    Ok(()) => {
                        if let (Command::AddAcl { pattern, .. }, Some(file)) = (cmd, &place.acl) {
                            self.acl_known.entry(file.clone()).or_default().insert(*pattern);
                        }
                        if let Some(file) = &place.map {
                            self.map_done(file, cmd);
                        }
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        refused.push(net.clone());
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if fresh {
            let kill: Vec<IpNet> =
                blocks.iter().filter(|(_, a)| a.has(Action::Kill)).filter_map(|(k, _)| k.net().copied()).collect();
            if let Err(e) = self.kill_all(&kill).await {
                if e.is_transient() {
                    return Err(e);
                }
                refused.extend(kill.into_iter().map(Key::Net));
                first_error.get_or_insert(e);
            }
            debug!(target = %self.name, blocks = blocks.len(), commands = sent, "new blocks applied");
        } else {
            info!(target = %self.name, blocks = blocks.len(), commands = sent, "blocks re-applied");
        }
        // Blocks with an action that has nowhere to go (recorded without a place, under a
        // configuration that lost that part of [block]) are a failure, not a silent skip.
        let lost: Vec<Key> = blocks
            .iter()
            .filter(|(k, a)| {
                (a.has(Action::Acl) && place.acl.is_none() && k.net().is_some())
                    || (a.has(Action::Tag) && k.is_single() && place.tag.is_none())
                    || (a.map_class().is_some() && place.map.is_none())
            })
            .map(|(k, _)| k.clone())
            .collect();
        if !lost.is_empty() {
            first_error.get_or_insert(ClientError::Unplaced(format!(
                "{} block(s) have an action the configuration gives no place to (no [block] acl, map or table)",
                lost.len()
            )));
            refused.extend(lost);
        }
        match first_error {
            None => Ok(()),
            Some(first) => {
                refused.sort_unstable();
                refused.dedup();
                Err(ClientError::Refused { keys: refused, first: Box::new(first) })
            }
        }
    }
}

/// For a release: a table or an ACL that HAProxy no longer has (its configuration changed, it was
/// reloaded without it) holds nothing left to undo.
fn gone_is_done<T: Default>(r: Result<T, ClientError>) -> Result<T, ClientError> {
    match r {
        Err(e)
            if e.haproxy().is_some_and(|h| {
                matches!(h.kind, ErrorKind::NoSuchTable | ErrorKind::UnknownAcl | ErrorKind::UnknownMap)
            }) =>
        {
            warn!(error = %e, "nothing to release there: HAProxy no longer has it");
            Ok(T::default())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An actor that stops (as a panic would stop it) answers what it held as a failure, and the
    /// next job starts it again.
    #[tokio::test]
    async fn a_stopped_actor_fails_its_jobs_and_is_started_again() {
        let client = Client::new("unix:/nonexistent/haproxy.sock".parse().unwrap(), Default::default());
        let target = TargetConfig {
            name: "t".into(),
            target: "unix:/nonexistent/haproxy.sock".parse().unwrap(),
            commands_per_second: 10,
        };
        let (_stop, stop_rx) = watch::channel(false);
        let a = Actuator::spawn(&target, client, stop_rx, Default::default());
        // HAProxy is unreachable: this job waits in the retry loop.
        let key: IpNet = "10.0.0.1/32".parse().unwrap();
        let place = Arc::new(Place { tag: None, acl: Some("/x.lst".into()), map: None });
        let held = a
            .submit(Job::Apply { key: Key::Net(key), actions: Actions::new(vec![Action::Acl]), kill: false, place })
            .unwrap();
        a.abort();
        assert!(held.await.is_err(), "a job held by a stopped actor must not look done");
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Started again: a job with no HAProxy command runs to completion.
        assert!(a.run(Job::Forget).await.is_ok());
    }
}
