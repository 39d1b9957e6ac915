//! The actuator: one actor per HAProxy target that owns its client and turns block and release
//! jobs into Runtime API commands, rate limited (governor) and confirmed.
//!
//! Apply: `set table` the tag, `add acl` the address or CIDR (once: the ACL's contents are read
//! first, because HAProxy does not refuse duplicates), and for a kill step `show sess` then
//! `shutdown session` of each live session from the blocked address. Release undoes exactly that:
//! the tag set back to 0 and the entry cleared (an entry in use is cleared later), `del acl`.
//! Every answer is checked; connection failures are retried with backoff until they succeed or the
//! daemon stops, and HAProxy's refusals are returned to the caller, who audits them.

use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::client::{Client, ClientError};
use crate::config::{BlockConfig, TargetConfig};
use crate::metrics::{JobLabels, Metrics};
use crate::proto::{AclPattern, Command, DataField, ErrorKind, KeyType, TableKey};
use crate::rules::{Action, Actions};

/// What to do, to which key.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// `kill` is false when a block is re-applied (after a restart): sessions are killed once.
    Apply {
        key: IpNet,
        actions: Actions,
        kill: bool,
    },
    Release {
        key: IpNet,
        actions: Actions,
    },
    /// Adds many keys to the ACL atomically: a new version of the ACL holding its current
    /// patterns and these, committed at once (`prepare acl` / `add acl @v` / `commit acl`).
    ImportAcl {
        keys: Vec<IpNet>,
    },
    /// HAProxy was replaced (reload, restart): what was read from the old process is stale, and
    /// the connection may still reach the old process.
    Forget,
    /// Many blocks at once (re-applying everything after a restart), pipelined: tags and missing
    /// ACL patterns sent in batches instead of one round trip each, not rate limited (it restores
    /// what HAProxy held). Sessions are not killed.
    ApplyMany {
        blocks: Vec<(IpNet, Actions)>,
    },
}

type Reply = oneshot::Sender<Result<(), ClientError>>;

/// A handle on one target's actuator. Clones share it.
#[derive(Clone)]
pub struct Actuator {
    pub name: String,
    /// Unbounded: a target that is down must never hold up the controller, which serves the
    /// other targets; what queues is one job per decision taken meanwhile.
    tx: mpsc::UnboundedSender<(Job, Reply)>,
}

impl Actuator {
    /// Starts the actor; it stops when every handle is dropped or `shutdown` turns true.
    pub fn spawn(
        target: &TargetConfig,
        client: Client,
        block: &BlockConfig,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Actuator {
        let (tx, rx) = mpsc::unbounded_channel();
        let quota = Quota::per_second(NonZeroU32::new(target.commands_per_second).unwrap_or(NonZeroU32::MIN));
        let actor = Actor {
            name: target.name.clone(),
            client,
            limiter: RateLimiter::direct(quota),
            block: block.clone(),
            key_type: None,
            acl_known: None,
            pending_clears: Vec::new(),
            shutdown,
            labels: Metrics::target(&target.name),
            metrics,
        };
        tokio::spawn(actor.run(rx));
        Actuator { name: target.name.clone(), tx }
    }

    /// Queues `job` (jobs run in the order they are submitted); the receiver gets its outcome once
    /// HAProxy confirmed or refused it.
    pub fn submit(&self, job: Job) -> Result<oneshot::Receiver<Result<(), ClientError>>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((job, tx)).map_err(|_| ClientError::Stopped)?;
        Ok(rx)
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
    block: BlockConfig,
    /// The block table's key type, read once per connection.
    key_type: Option<KeyType>,
    /// The ACL's patterns as last read, kept up to date by our own adds and deletes.
    acl_known: Option<HashSet<AclPattern>>,
    /// Entries whose tag is already 0 but that were in use when cleared: (key, first try).
    pending_clears: Vec<(TableKey, Instant)>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    labels: crate::metrics::TargetLabels,
}

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Commands of an import sent in one pipelined batch.
const IMPORT_CHUNK: usize = 32 * 1024;
/// How long an in-use entry's clear is retried before it is left to HAProxy's expiry (its tag is 0).
const CLEAR_PATIENCE: Duration = Duration::from_secs(600);

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
                        Job::ApplyMany { .. } => "reapply",
                    };
                    let labels = JobLabels {
                        target: self.name.clone(),
                        kind: kind.into(),
                        result: if result.is_ok() { "ok" } else { "error" }.into(),
                    };
                    self.metrics.jobs.get_or_create(&labels).inc();
                    let _ = reply.send(result);
                }
                _ = clear_tick.tick(), if !self.pending_clears.is_empty() => self.retry_clears().await,
                _ = self.shutdown.changed() => if *self.shutdown.borrow() { break },
            }
        }
        debug!(target = %self.name, "actuator stopped");
    }

    async fn run_with_retry(&mut self, job: &Job) -> Result<(), ClientError> {
        let mut delay = RETRY_MIN;
        loop {
            match self.perform(job).await {
                Err(e) if e.is_transient() && !*self.shutdown.borrow() => {
                    warn!(target = %self.name, ?job, error = %e, retry_in = ?delay, "HAProxy unreachable, retrying");
                    // HAProxy may come back as a new process: read its state afresh.
                    self.key_type = None;
                    self.acl_known = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
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
        match job {
            Job::Apply { key, actions, kill } => {
                if actions.has(Action::Tag) {
                    keep(self.set_tag(key, self.block.tag_value).await.map(drop))?;
                }
                if actions.has(Action::Acl) {
                    keep(self.add_acl(key).await)?;
                }
                if *kill && actions.has(Action::Kill) {
                    keep(self.kill(key).await)?;
                }
            }
            Job::ImportAcl { keys } => return self.import_acl(keys).await,
            Job::ApplyMany { blocks } => return self.apply_many(blocks).await,
            Job::Forget => {
                // After a master-worker reload the connection still reaches the old worker.
                self.client.reconnect();
                self.key_type = None;
                self.acl_known = None;
                self.pending_clears.clear();
            }
            Job::Release { key, actions } => {
                if actions.has(Action::Acl) {
                    keep(self.del_acl(key).await)?;
                }
                if actions.has(Action::Tag) {
                    let untagged = self.set_tag(key, 0).await;
                    if let Ok(Some(k)) = untagged {
                        keep(self.clear(k).await)?;
                    } else {
                        keep(untagged.map(drop))?;
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
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

    /// The table key of a host block in the block table, if it can be tagged there.
    async fn table_key(&mut self, key: &IpNet) -> Result<Option<TableKey>, ClientError> {
        let Some(table) = &self.block.table else { return Ok(None) };
        if !crate::net::is_host(key) {
            return Ok(None); // networks are blocked through the ACL only
        }
        let ty = match self.key_type {
            Some(t) => t,
            None => {
                self.command().await;
                let t = self.client.table_key_type(table).await?;
                self.key_type = Some(t);
                t
            }
        };
        match TableKey::from_addr(ty, key.addr()) {
            Ok(k) => Ok(Some(k)),
            Err(e) => {
                warn!(target = %self.name, key = %crate::net::display(key), table, error = %e, "cannot tag this address in the block table");
                Ok(None)
            }
        }
    }

    /// Sets the tag; returns the key it used.
    async fn set_tag(&mut self, key: &IpNet, value: u32) -> Result<Option<TableKey>, ClientError> {
        let Some(k) = self.table_key(key).await? else { return Ok(None) };
        let table = self.block.table.clone().expect("checked by table_key");
        let field: DataField = self.block.tag.clone();
        self.command().await;
        self.client.set_table(&table, k.clone(), &[(field, u64::from(value))]).await?;
        Ok(Some(k))
    }

    async fn clear(&mut self, k: TableKey) -> Result<(), ClientError> {
        let table = self.block.table.clone().expect("a tagged key has a table");
        self.command().await;
        match self.client.clear_table_key(&table, k.clone()).await {
            Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::EntryInUse) => {
                debug!(target = %self.name, key = %k, "entry in use; clearing it later");
                self.pending_clears.push((k, Instant::now()));
                Ok(())
            }
            other => other,
        }
    }

    async fn retry_clears(&mut self) {
        let table = self.block.table.clone().expect("a tagged key has a table");
        let pending = std::mem::take(&mut self.pending_clears);
        for (k, first) in pending {
            self.command().await;
            match self.client.clear_table_key(&table, k.clone()).await {
                Ok(()) => debug!(target = %self.name, key = %k, "cleared"),
                Err(e) if first.elapsed() > CLEAR_PATIENCE => {
                    warn!(target = %self.name, key = %k, error = %e, "giving up clearing an untagged entry; HAProxy's expiry will")
                }
                Err(_) => self.pending_clears.push((k, first)),
            }
        }
    }

    fn pattern(key: &IpNet) -> AclPattern {
        if crate::net::is_host(key) {
            AclPattern::addr(key.addr())
        } else {
            AclPattern::Net(*key)
        }
    }

    async fn known_acl(&mut self) -> Result<&mut HashSet<AclPattern>, ClientError> {
        if self.acl_known.is_none() {
            let acl = self.block.acl.clone().expect("checked at config load");
            self.command().await;
            let entries = self.client.show_acl(&acl).await?;
            let set = entries.iter().filter_map(|e| e.pattern.parse::<AclPattern>().ok()).collect();
            self.acl_known = Some(set);
        }
        Ok(self.acl_known.as_mut().expect("just filled"))
    }

    async fn add_acl(&mut self, key: &IpNet) -> Result<(), ClientError> {
        let p = Self::pattern(key);
        if self.known_acl().await?.contains(&p) {
            return Ok(());
        }
        let acl = self.block.acl.clone().expect("checked at config load");
        self.command().await;
        self.client.add_acl(&acl, p).await?;
        self.known_acl().await?.insert(p);
        Ok(())
    }

    async fn del_acl(&mut self, key: &IpNet) -> Result<(), ClientError> {
        let p = Self::pattern(key);
        let acl = self.block.acl.clone().expect("checked at config load");
        self.command().await;
        match self.client.del_acl(&acl, p).await {
            Err(e) if !e.haproxy().is_some_and(|h| h.kind == ErrorKind::KeyNotFound) => return Err(e),
            _ => {}
        }
        if let Some(known) = &mut self.acl_known {
            known.remove(&p);
        }
        Ok(())
    }

    async fn import_acl(&mut self, keys: &[IpNet]) -> Result<(), ClientError> {
        let acl = self.block.acl.clone().expect("checked at config load");
        let known = self.known_acl().await?;
        let mut fresh: Vec<AclPattern> = keys.iter().map(Self::pattern).filter(|p| !known.contains(p)).collect();
        fresh.sort_unstable();
        fresh.dedup();
        let mut all: Vec<AclPattern> = known.iter().copied().collect();
        let known_len = all.len();
        all.extend(fresh);
        self.command().await;
        let version = self.client.prepare_acl(&acl).await?;
        let cmds: Vec<Command> =
            all.iter().map(|p| Command::AddAcl { acl: acl.clone(), version: Some(version), pattern: *p }).collect();
        for chunk in cmds.chunks(IMPORT_CHUNK) {
            for _ in 0..chunk.len() {
                self.command().await;
            }
            if let Some(e) = self.client.pipeline(chunk).await.into_iter().find_map(Result::err) {
                // The live version was never touched: drop the prepared one and report.
                let _ = self.client.execute(&Command::ClearAclVersion { acl: acl.clone(), version }).await;
                return Err(e);
            }
        }
        self.command().await;
        self.client.commit_acl(&acl, version).await?;
        info!(target = %self.name, added = all.len() - known_len, total = all.len(), "ACL import committed");
        self.acl_known = Some(all.into_iter().collect());
        Ok(())
    }

    async fn apply_many(&mut self, blocks: &[(IpNet, Actions)]) -> Result<(), ClientError> {
        // What to send, as keys: the commands themselves are made one batch at a time, so that
        // 100,000 blocks never hold 200,000 commands in memory at once.
        let mut tags: Vec<TableKey> = Vec::new();
        if self.block.table.is_some() {
            for (key, _) in blocks.iter().filter(|(k, a)| a.has(Action::Tag) && crate::net::is_host(k)) {
                if let Some(k) = self.table_key(key).await? {
                    tags.push(k);
                }
            }
        }
        let mut adds: Vec<AclPattern> = Vec::new();
        if self.block.acl.is_some() {
            let known = self.known_acl().await?;
            adds = blocks
                .iter()
                .filter(|(_, a)| a.has(Action::Acl))
                .map(|(k, _)| Self::pattern(k))
                .filter(|p| !known.contains(p))
                .collect();
            adds.sort_unstable();
            adds.dedup();
        }
        let (table, field, value) = (self.block.table.clone(), self.block.tag.clone(), u64::from(self.block.tag_value));
        let acl = self.block.acl.clone();
        let commands = tags
            .into_iter()
            .filter_map(move |key| {
                let table = table.clone()?;
                Some(Command::SetTable { table, key, fields: vec![(field.clone(), value)] })
            })
            .chain(
                adds.into_iter()
                    .filter_map(move |pattern| Some(Command::AddAcl { acl: acl.clone()?, version: None, pattern })),
            );
        let (mut first_error, mut sent) = (None, 0usize);
        // Not rate limited: this is what HAProxy held a moment ago (before a reload or restart),
        // and every second without it is a second without those blocks. The pipeline's in-flight
        // bounds pace it to what HAProxy answers.
        let mut commands = commands.peekable();
        while commands.peek().is_some() {
            let chunk: Vec<Command> = commands.by_ref().take(IMPORT_CHUNK).collect();
            self.count(chunk.len() as u64);
            sent += chunk.len();
            for (cmd, result) in chunk.iter().zip(self.client.pipeline(&chunk).await) {
                match result {
                    // An ACL pattern is only known once HAProxy has it: a retry must not add it twice.
                    Ok(()) => {
                        if let (Command::AddAcl { pattern, .. }, Some(known)) = (cmd, self.acl_known.as_mut()) {
                            known.insert(*pattern);
                        }
                    }
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        info!(target = %self.name, blocks = blocks.len(), commands = sent, "blocks re-applied");
        first_error.map_or(Ok(()), Err)
    }

    /// Shuts down every live session whose client address is inside `key`.
    async fn kill(&mut self, key: &IpNet) -> Result<(), ClientError> {
        self.command().await;
        let sessions = self.client.show_sess().await?;
        let mut killed = 0;
        for s in sessions.iter().filter(|s| s.client_ip().is_some_and(|ip: IpAddr| crate::net::covers_addr(key, ip))) {
            self.command().await;
            match self.client.shutdown_session(s.ptr).await {
                Ok(()) => killed += 1,
                Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::NoSuchSession) => {}
                Err(e) => return Err(e),
            }
        }
        info!(target = %self.name, key = %crate::net::display(key), killed, "live sessions shut down");
        Ok(())
    }
}
