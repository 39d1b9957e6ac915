//! The controller: the one task that owns decisions. It takes the pollers' observations, scores
//! them ([`crate::engine`]), checks the allowlist and the circuit breaker, writes each decision to
//! the store and flushes it before any actuator acts on it, aggregates offenders of one prefix,
//! and releases blocks at their `until`. Being the only writer of blocks, it needs no locks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::census::Census;
use super::lag::Lag;
use super::reconcile::Actual;
use super::windows::{self, Aggregator, Breaker, Limits, Transition};
use super::Msg;
use crate::actuator::{Actuator, Job};
use crate::allowlist::Allowlist;
use crate::client::ClientError;
use crate::config::Config;
use crate::engine;
use crate::metrics::Metrics;
use crate::net;
use crate::poll::Observation;
use crate::rules::{Action, Actions, Rule};
use crate::store::{AuditRecord, Block, Event, Origin, Place, Store, StoreError, Write};
use crate::time::{ms, now_ms, Millis};

/// How a job ended on every target ([`Controller::done`]).
pub(crate) struct Outcome {
    pub what: &'static str,
    pub release: bool,
    /// One line per target that refused or failed.
    pub failures: Vec<String>,
    /// The keys refused somewhere (every key of the job, unless a target named some).
    pub refused: Vec<IpNet>,
    /// The start of the poll that decided the job's blocks.
    pub polled_at: Option<Millis>,
}

/// The actor name written in the audit log for automatic decisions.
pub const AUTO_ACTOR: &str = "stickwarden";

pub(super) struct Controller {
    pub(super) cfg: Arc<Config>,
    pub(super) store: Store,
    pub(super) allow: Allowlist,
    actuators: Vec<Actuator>,
    tx: mpsc::Sender<Msg>,
    /// What each target has not confirmed yet.
    pub(super) lag: Arc<Lag>,
    /// Every block in the store, by key (the store stays the truth; this is its index).
    pub(super) active: HashMap<IpNet, Block>,
    /// Keys of active network blocks, to test addresses against.
    nets: Vec<IpNet>,
    /// Writes decided and not yet carried out ([`Controller::commit`]).
    pending: Vec<Write>,
    /// Where the active blocks were applied, one copy of each ([`Controller::index`]).
    places: std::collections::HashSet<Arc<Place>>,
    /// Blocks whose release was sent and not yet confirmed, with when to try again if it fails.
    pub(super) releasing: HashMap<IpNet, Option<Millis>>,
    breaker: Breaker,
    /// The tracked population (for the breaker's share) and the breaker's state, shown by the API.
    census: Arc<Census>,
    aggregator: Aggregator,
    /// When each key was last released: a poll that started earlier saw the counters from before
    /// the release (which cleared them) and must not count against it again.
    released: HashMap<IpNet, Millis>,
    /// Releases an operator asked for, with who and why, for their audit record.
    pub(super) unblocked_by: HashMap<IpNet, (String, String)>,
    metrics: Arc<Metrics>,
    /// Jobs sent to the actuators whose outcome has not come back yet.
    in_flight: std::sync::atomic::AtomicUsize,
}

const BREAKER_WINDOW: Millis = 60_000;
const RELEASE_RETRY: Millis = 10_000;
/// Blocks per re-apply job.
const REAPPLY_BATCH: usize = 50_000;
/// Blocks younger than this when HAProxy was read may not be applied yet: not compared. (A repair
/// that was not needed would do no harm: applying is idempotent.)
const RECONCILE_MARGIN: Millis = 2_000;

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        actuators: Vec<Actuator>,
        tx: mpsc::Sender<Msg>,
        metrics: Arc<Metrics>,
        lag: Arc<Lag>,
        census: Arc<Census>,
    ) -> Result<Controller, StoreError> {
        let allow = Allowlist::new(&cfg, &store.allows()?);
        let mut c = Controller {
            lag,
            store,
            allow,
            actuators,
            tx,
            active: HashMap::new(),
            nets: Vec::new(),
            places: Default::default(),
            pending: Vec::new(),
            releasing: HashMap::new(),
            breaker: Breaker::new(
                Limits {
                    floor: cfg.safety.breaker_floor,
                    share: cfg.safety.breaker_share,
                    cap: cfg.safety.max_blocks_per_minute,
                },
                BREAKER_WINDOW,
            ),
            census,
            aggregator: Aggregator::default(),
            released: HashMap::new(),
            unblocked_by: HashMap::new(),
            metrics,
            in_flight: Default::default(),
            cfg,
        };
        // One at a time into the index: a list of 100,000 blocks would double the memory.
        let now = now_ms();
        for b in c.store.blocks_iter() {
            let mut b = b?;
            // Recorded before places were kept: where this configuration puts its actions.
            if b.place.is_none() {
                b.place = Some(Arc::new(Place::of(&c.cfg.block, &b.actions)));
            }
            // A block that now reaches a protected address (a never_block entry or allowlist added
            // since, or one stored before the containment rule) is never re-applied: it ends at
            // the first tick, its audit record saying why.
            if let Some(why) = c.unsafe_reach(&b.key, now) {
                warn!(key = %net::display(&b.key), protected = %why, "stored block reaches a protected address; releasing it");
                c.unblocked_by.insert(b.key, (AUTO_ACTOR.into(), format!("reaches a protected address ({why})")));
                b.until = b.until.min(now);
            }
            c.index(b);
        }
        Ok(c)
    }

    /// Why a block of `key` must not be in force, if it must not: what no override allows (every
    /// IPv4 or IPv6 client), or an allowlisted or protected address.
    fn unsafe_reach(&self, key: &IpNet, now: Millis) -> Option<String> {
        let never = self.cfg.safety.check_breadth(key, true).err();
        never.or_else(|| self.allow.overlaps(key, now).map(str::to_owned))
    }

    /// Re-applies every block still in force, on every target (`only`: on that one): after a
    /// restart of the controller or of HAProxy, HAProxy must hold what the store says. Sessions
    /// are not killed again. Returns how many blocks were sent.
    pub async fn reapply_all(&mut self, only: Option<&str>) -> usize {
        let now = now_ms();
        // Keys and actions only, by where they were applied (nearly always one place): a copy of
        // every block would double the memory of the index.
        let mut by_place: HashMap<Arc<Place>, Vec<(IpNet, Actions)>> = HashMap::new();
        let mut n = 0;
        for b in self.active.values().filter(|b| !b.dry_run && b.until > now) {
            by_place.entry(b.place()).or_default().push((b.key, b.actions.clone()));
            n += 1;
        }
        if n > 0 {
            info!(blocks = n, target = only.unwrap_or("all"), "re-applying active blocks");
        }
        for (place, mut items) in by_place {
            // In key order: the same order every time, whatever the index's.
            items.sort_unstable_by_key(|a| a.0);
            // Pipelined jobs of many blocks: 100,000 blocks go back in seconds, not minutes.
            for chunk in items.chunks(REAPPLY_BATCH) {
                let job = Job::ApplyMany { blocks: chunk.to_vec(), place: place.clone(), fresh: false };
                self.dispatch_to(only, None, job, None).await;
            }
        }
        n
    }

    /// A target's HAProxy was reloaded or restarted (`was` -> `now`): it has lost every runtime
    /// ACL entry and (without peers) every tag, so everything in force goes back at once.
    pub async fn target_restarted(&mut self, target: &str, was: &str, now_desc: &str) -> Result<(), StoreError> {
        warn!(target, was, now = now_desc, "HAProxy was reloaded or restarted; re-applying every active block");
        self.dispatch_to(Some(target), None, Job::Forget, None).await;
        let n = self.reapply_all(Some(target)).await;
        let reason = format!("{target}: HAProxy {was} replaced by {now_desc}; {n} active block(s) re-applied");
        self.write(Write::Audit(AuditRecord::note(Event::TargetRestarted, now_ms(), AUTO_ACTOR, reason)));
        self.commit(false).await
    }

    pub(super) fn index(&mut self, mut b: Block) {
        // One copy of each place, however many blocks were applied there.
        if let Some(p) = b.place.take() {
            b.place = Some(match self.places.get(&p) {
                Some(known) => known.clone(),
                None => {
                    self.places.insert(p.clone());
                    p
                }
            });
        }
        if !net::is_host(&b.key) && !self.nets.contains(&b.key) {
            self.nets.push(b.key);
        }
        self.active.insert(b.key, b);
    }

    fn unindex(&mut self, key: &IpNet) {
        self.active.remove(key);
        self.nets.retain(|n| n != key);
    }

    fn blocked(&self, addr: IpAddr) -> bool {
        self.active.contains_key(&net::host_net(addr)) || self.nets.iter().any(|n| net::covers_addr(n, addr))
    }

    /// Scores the observations of a poll that started at `polled_at` and acts on the decisions.
    pub async fn observe(&mut self, polled_at: Millis, batch: Vec<Observation>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut decided: Vec<Block> = Vec::new();
        let candidates: Vec<Observation> = batch
            .into_iter()
            .filter(|obs| {
                if self.released.get(&net::host_net(obs.addr)).is_some_and(|&t| t >= polled_at) {
                    return false;
                }
                if let Some(reason) = self.allow.allows(obs.addr, now) {
                    tracing::debug!(addr = %obs.addr, reason, "allowlisted, not scored");
                    return false;
                }
                !self.blocked(obs.addr)
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        // Every candidate's history in one read, off the daemon's thread.
        let addrs: Vec<IpAddr> = candidates.iter().map(|o| o.addr).collect();
        let offenders = self.on_store(move |s| s.offenders(&addrs)).await?;
        for (obs, offender) in candidates.into_iter().zip(offenders) {
            let rules: Vec<&Rule> = obs.rules.iter().map(|&i| &self.cfg.rules.rules[i]).collect();
            let mut offender = offender.unwrap_or_default();
            let verdict = engine::assess(
                &self.cfg.rules.policy,
                &mut offender,
                &rules,
                now,
                self.cfg.dry_run,
                self.cfg.store.max_offences,
            );
            let Some(v) = verdict else {
                self.write(Write::Offender(obs.addr, offender));
                continue;
            };
            if !v.dry_run && !self.breaker_check(now) {
                warn!(addr = %obs.addr, rule = %v.rule, "circuit breaker open: not blocking");
                self.metrics.decision(&v.rule, "suppressed");
                offender.offences.pop(); // not acted on, so not counted for the ladder
                self.write(Write::Offender(obs.addr, offender));
                continue;
            }
            let block = Block {
                key: net::host_net(obs.addr),
                level: v.level,
                actions: v.actions.clone(),
                rule: v.rule.clone(),
                reason: format!("score crossed {} ({})", self.cfg.rules.policy.threshold, describe(&obs.counters)),
                source: Origin::Auto,
                actor: AUTO_ACTOR.into(),
                since: now,
                until: now + ms(v.duration),
                counters: obs.counters,
                dry_run: v.dry_run,
                place: Some(Arc::new(Place::of(&self.cfg.block, &v.actions))),
                nodes: obs.nodes,
            };
            if !v.dry_run {
                self.breaker.record(now);
            }
            let event = if v.dry_run { Event::WouldBlock } else { Event::Block };
            self.metrics.decision(&v.rule, event.as_str());
            let rec = AuditRecord::of(event, &block, now);
            self.write(Write::Decide { block: Box::new(block.clone()), offender: Some((obs.addr, offender)), rec });
            info!(addr = %obs.addr, rule = %block.rule, level = block.level, actions = %block.actions,
                  duration = %crate::time::human(v.duration), dry_run = block.dry_run, "block decided");
            if !v.dry_run {
                if let Some(prefix_block) = self.aggregate(obs.addr, now) {
                    decided.push(prefix_block);
                }
            }
            decided.push(block);
        }
        // Durable before acted on: a crash from here on finds every decision in the store.
        let t = std::time::Instant::now();
        self.commit(!decided.is_empty()).await?;
        tracing::debug!(decided = decided.len(), took = ?t.elapsed(), "decisions committed");
        // The poll's new blocks go out together: one pipelined job per place and target, not one
        // round trip per block.
        let mut by_place: HashMap<Arc<Place>, Vec<(IpNet, Actions)>> = HashMap::new();
        for b in decided {
            if !b.dry_run {
                by_place.entry(b.place()).or_default().push((b.key, b.actions.clone()));
            }
            self.index(b);
        }
        for (place, blocks) in by_place {
            let job = Job::ApplyMany { blocks, place, fresh: true };
            self.dispatch_full(None, None, job, None, Some(polled_at)).await;
        }
        Ok(())
    }

    /// Jobs sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes every decision so far durable (carried out and fsync'd, on the blocking pool).
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(true).await
    }

    /// Queues a write for the next [`Controller::commit`].
    pub(super) fn write(&mut self, w: Write) {
        self.pending.push(w);
    }

    /// Carries out the queued writes in one call off the daemon's thread, then, when `durable`,
    /// makes everything so far durable.
    pub(super) async fn commit(&mut self, durable: bool) -> Result<(), StoreError> {
        let writes = std::mem::take(&mut self.pending);
        if writes.is_empty() && !durable {
            return Ok(());
        }
        self.on_store(move |s| {
            s.record(writes)?;
            if durable {
                s.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` on the store on the blocking pool: sled's reads, writes and fsyncs never hold
    /// up the daemon's one runtime thread (polls, the API, the actuators).
    pub(super) async fn on_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("store task: {e}"))))
    }

    /// Whether an automatic block may happen now (false: the breaker is open). Opening and closing
    /// are logged and audited; the caller records the block it then makes.
    fn breaker_check(&mut self, now: Millis) -> bool {
        let (allowed, change) = self.breaker.check(now, self.census.population());
        let Some(change) = change else { return allowed };
        self.metrics.breaker_open.set(i64::from(matches!(change, Transition::Opened { .. })));
        let (event, reason) = match change {
            Transition::Opened { blocks, limit, population } => {
                let reason = breaker_reason(self.breaker.limits(), blocks, limit, population);
                error!(%reason, "circuit breaker open: automatic blocks suspended; manual actions still work");
                self.census.set_breaker(Some((now, reason.clone())));
                (Event::BreakerOpen, reason)
            }
            Transition::Closed => {
                info!("circuit breaker closed: automatic blocks resume");
                self.census.set_breaker(None);
                (Event::BreakerClosed, "automatic blocks within the last minute are under the limit again".to_owned())
            }
        };
        self.write(Write::Audit(AuditRecord::note(event, now, AUTO_ACTOR, reason)));
        allowed
    }

    /// Subnet aggregation: the prefix block decided when `addr` is the N-th recent offender of its
    /// prefix, queued for the store.
    fn aggregate(&mut self, addr: IpAddr, now: Millis) -> Option<Block> {
        let agg = self.cfg.aggregate.clone()?;
        let prefix = net::prefix_of(addr, agg.ipv4_prefix, agg.ipv6_prefix);
        let n = self.aggregator.record(prefix, addr, now, ms(agg.window));
        if n < agg.offenders || self.active.contains_key(&prefix) || net::is_host(&prefix) {
            return None;
        }
        if let Some(reason) = self.allow.overlaps(&prefix, now) {
            warn!(%prefix, allowlisted = reason, "not blocking the prefix: it overlaps the allowlist");
            return None;
        }
        // An IPv6 client in ::/64 has a prefix that holds ::ffff:0:0/96: every IPv4 client.
        if let Err(why) = self.cfg.safety.check_breadth(&prefix, false) {
            warn!(%prefix, why, "not blocking the prefix");
            return None;
        }
        if !self.breaker_check(now) {
            return None;
        }
        self.breaker.record(now);
        self.aggregator.reset(&prefix);
        let block = Block {
            key: prefix,
            level: 0,
            actions: Actions::new(vec![Action::Acl]),
            rule: "subnet-aggregate".into(),
            reason: format!("{n} offenders of {prefix} blocked within {}", crate::time::human(agg.window)),
            source: Origin::Auto,
            actor: AUTO_ACTOR.into(),
            since: now,
            until: now + ms(agg.duration),
            counters: vec![("offenders".into(), n as i64)],
            dry_run: false,
            place: Some(Arc::new(Place::of(&self.cfg.block, &Actions::new(vec![Action::Acl])))),
            nodes: Vec::new(),
        };
        let rec = AuditRecord::of(Event::Block, &block, now);
        self.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
        info!(%prefix, offenders = n, "prefix block decided");
        Some(block)
    }

    /// Puts back on `actual.target` what it lacks of the active blocks (those old enough to have
    /// been applied before HAProxy was read, and not being released), and removes what it holds of
    /// keys stickwarden once blocked and no block wants now. Each repair is counted and audited;
    /// patterns and tags of keys stickwarden never blocked are left alone.
    pub async fn reconcile(&mut self, actual: Actual) -> Result<(), StoreError> {
        let settled = actual.read_at.saturating_sub(RECONCILE_MARGIN);
        let mut repairs: Vec<(Block, Actions)> = Vec::new();
        // What was read is the places of today's [block]; a block applied elsewhere (the
        // configuration changed since) is compared only where its place is today's.
        let every = vec![Action::Tag, Action::Acl, Action::Map(crate::rules::MapClass::Deny)];
        let here = Place::of(&self.cfg.block, &Actions::new(every));
        for b in self.active.values().filter(|b| !b.dry_run && b.since <= settled && b.until > actual.read_at) {
            if self.releasing.contains_key(&b.key) {
                continue;
            }
            let place = b.place();
            let mut missing = Vec::new();
            if b.actions.has(Action::Acl)
                && place.same_for(&here, Action::Acl)
                && actual.acl.as_ref().is_some_and(|a| !a.contains(&b.key))
            {
                missing.push(Action::Acl);
            }
            let host = net::is_host(&b.key);
            if b.actions.has(Action::Tag)
                && host
                && place.same_for(&here, Action::Tag)
                && actual.tagged.as_ref().is_some_and(|t| !t.contains(&b.key.addr()))
            {
                missing.push(Action::Tag);
            }
            if let Some(class) = b.actions.map_class() {
                let held = actual.mapped.as_ref().map(|m| m.get(&b.key).map(String::as_str));
                if place.same_for(&here, Action::Map(class)) && held.is_some_and(|v| v != Some(class.as_str())) {
                    missing.push(Action::Map(class));
                }
            }
            if !missing.is_empty() {
                repairs.push((b.clone(), Actions::new(missing)));
            }
        }
        // Leftovers: what HAProxy holds that stickwarden once put there and no block wants now.
        let wants = |k: &IpNet, a: Action| {
            self.active.get(k).is_some_and(|b| !b.dry_run && b.actions.has(a) && b.place().same_for(&here, a))
        };
        let wants_map = |k: &IpNet| {
            self.active.get(k).is_some_and(|b| {
                !b.dry_run && b.actions.map_class().is_some_and(|c| b.place().same_for(&here, Action::Map(c)))
            })
        };
        let recent = |k: &IpNet| self.releasing.contains_key(k) || self.released.get(k).is_some_and(|&t| t >= settled);
        let mut leftovers: HashMap<IpNet, Vec<Action>> = HashMap::new();
        for k in actual.acl.iter().flatten().filter(|k| !wants(k, Action::Acl) && !recent(k)) {
            leftovers.entry(*k).or_default().push(Action::Acl);
        }
        for k in actual.mapped.iter().flat_map(|m| m.keys()).filter(|k| !wants_map(k) && !recent(k)) {
            // Removed by key: the class in the action does not matter.
            leftovers.entry(*k).or_default().push(Action::Map(crate::rules::MapClass::Deny));
        }
        for a in actual.tagged.iter().flatten() {
            let k = net::host_net(*a);
            if !wants(&k, Action::Tag) && !recent(&k) {
                leftovers.entry(k).or_default().push(Action::Tag);
            }
        }
        // Which of them stickwarden put there: one read of the store, off the daemon's thread.
        let leftovers: Vec<(IpNet, Vec<Action>)> = leftovers.into_iter().collect();
        let keys: Vec<IpNet> = leftovers.iter().map(|(k, _)| *k).collect();
        let owned = self.on_store(move |s| keys.iter().map(|k| s.owns(k)).collect::<Result<Vec<bool>, _>>()).await?;
        let removals: Vec<(IpNet, Actions)> =
            leftovers.into_iter().zip(owned).filter(|(_, o)| *o).map(|((k, a), _)| (k, Actions::new(a))).collect();
        if repairs.is_empty() && removals.is_empty() {
            return Ok(());
        }
        warn!(target = %actual.target, missing = repairs.len(), leftovers = removals.len(), "HAProxy differs from the active blocks; repairing");
        // What the actuator remembers of this target is wrong, since HAProxy lost entries.
        self.dispatch_to(Some(&actual.target), None, Job::Forget, None).await;
        let now = now_ms();
        for (b, missing) in repairs {
            let mut rec = AuditRecord::of(Event::Repaired, &b, now);
            rec.actions = missing.clone();
            rec.reason = format!("{}: missing {missing}, put back", actual.target);
            self.write(Write::Audit(rec));
            self.metrics.repairs.get_or_create(&Metrics::target(&actual.target)).inc();
            self.dispatch_to(
                Some(&actual.target),
                Some(&b),
                Job::Apply { key: b.key, place: b.place(), actions: missing, kill: false },
                None,
            )
            .await;
        }
        for (key, actions) in removals {
            let reason = format!("{}: leftover {actions} of an ended block, removed", actual.target);
            let mut rec = AuditRecord::note(Event::Repaired, now, AUTO_ACTOR, reason);
            (rec.key, rec.actions) = (Some(key), actions.clone());
            self.write(Write::Audit(rec));
            self.metrics.repairs.get_or_create(&Metrics::target(&actual.target)).inc();
            let place = Arc::new(Place::of(&self.cfg.block, &actions));
            self.dispatch_to(Some(&actual.target), None, Job::Release { key, actions, place }, None).await;
        }
        self.commit(false).await
    }

    /// Sends `job` to every target in order, and reports its outcome back to the controller, which
    /// passes the failures on to `notify` once it has recorded them.
    pub(super) async fn dispatch_notify(
        &self,
        b: Option<&Block>,
        job: Job,
        notify: Option<oneshot::Sender<Vec<String>>>,
    ) {
        self.dispatch_to(None, b, job, notify).await;
    }

    /// [`Controller::dispatch_notify`], to the target named `only` when given.
    async fn dispatch_to(
        &self,
        only: Option<&str>,
        b: Option<&Block>,
        job: Job,
        notify: Option<oneshot::Sender<Vec<String>>>,
    ) {
        self.dispatch_full(only, b, job, notify, None).await;
    }

    /// [`Controller::dispatch_to`], for blocks decided on the poll that started at `polled_at`.
    async fn dispatch_full(
        &self,
        only: Option<&str>,
        b: Option<&Block>,
        job: Job,
        notify: Option<oneshot::Sender<Vec<String>>>,
        polled_at: Option<Millis>,
    ) {
        let keys: Arc<Vec<IpNet>> = Arc::new(match &job {
            Job::Apply { key, .. } | Job::Release { key, .. } => vec![*key],
            Job::ApplyMany { blocks, .. } => blocks.iter().map(|(k, _)| *k).collect(),
            Job::ImportAcl { keys, .. } => keys.clone(),
            Job::Forget => Vec::new(),
        });
        let mut replies: Vec<(String, oneshot::Receiver<Result<(), ClientError>>)> = Vec::new();
        for a in self.actuators.iter().filter(|a| only.is_none_or(|o| a.name == o)) {
            // A job that cannot even be queued is a failure on that target like any other:
            // unconfirmed, audited, retried, never taken for done.
            let rx = a.submit(job.clone()).unwrap_or_else(|e| {
                warn!(target = %a.name, error = %e, "the job could not be given to the actuator");
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(e));
                rx
            });
            self.lag.sent(&a.name, &keys);
            replies.push((a.name.clone(), rx));
        }
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, block, release) = (self.tx.clone(), b.cloned(), matches!(job, Job::Release { .. }));
        let what = match &job {
            Job::Apply { .. } | Job::ApplyMany { fresh: true, .. } => "block",
            Job::Release { .. } => "release",
            Job::ImportAcl { .. } => "import",
            Job::Forget => "forget",
            Job::ApplyMany { fresh: false, .. } => "reapply",
        };
        let (lag, cfg) = (self.lag.clone(), self.cfg.clone());
        tokio::spawn(async move {
            // Each target's answer is recorded as it comes: a node that is down does not hide
            // the confirmations of the others.
            let mut answers = tokio::task::JoinSet::new();
            for (target, rx) in replies {
                let (lag, keys) = (lag.clone(), keys.clone());
                answers.spawn(async move {
                    let r = rx.await;
                    match &r {
                        Ok(Err(ClientError::Refused { keys: bad, .. })) => {
                            lag.answered_but(&target, &keys, |k| bad.binary_search(k).is_ok())
                        }
                        _ => lag.answered(&target, &keys, matches!(r, Ok(Ok(())))),
                    }
                    (target, r)
                });
            }
            let (mut failures, mut refused) = (Vec::new(), Vec::new());
            while let Some(Ok((target, r))) = answers.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failures.push(format!("{target}: {e}{}", level_advice(&cfg, &target, &e)));
                        // A refusal of the whole job (not of some of its keys) refuses them all.
                        match e {
                            ClientError::Refused { keys: bad, .. } => refused.extend(bad),
                            _ => refused.extend(keys.iter().copied()),
                        }
                    }
                    Err(_) => {
                        failures.push(format!("{target}: actuator stopped"));
                        refused.extend(keys.iter().copied());
                    }
                }
            }
            failures.sort();
            refused.sort_unstable();
            refused.dedup();
            let outcome = Outcome { what, release, failures, refused, polled_at };
            let _ = tx.send(Msg::Done { block, outcome, notify }).await;
        });
    }

    async fn dispatch(&self, b: &Block, job: Job) {
        self.dispatch_notify(Some(b), job, None).await;
    }

    /// An actuator finished a job on every target.
    pub async fn done(
        &mut self,
        block: Option<Block>,
        outcome: Outcome,
        notify: Option<oneshot::Sender<Vec<String>>>,
    ) -> Result<(), StoreError> {
        let Outcome { what, release, failures, refused, polled_at } = outcome;
        self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let now = now_ms();
        if let Some(at) = polled_at.filter(|_| failures.is_empty()) {
            self.metrics.detection_seconds.observe(now.saturating_sub(at) as f64 / 1000.0);
        }
        if !failures.is_empty() {
            error!(key = ?block.as_ref().map(|b| net::display(&b.key)), refused = refused.len(), failures = ?failures, "{what} failed");
            let reason = format!("{what}: {}", failures.join("; "));
            // A poll's new blocks: the audit record of each one a target refused. (A re-apply of
            // every block, refused for a reason that is the same for all, is one record.)
            let blocks: Vec<&Block> = match &block {
                Some(b) => vec![b],
                None if what == "block" => refused.iter().filter_map(|k| self.active.get(k)).collect(),
                None => Vec::new(),
            };
            let mut records: Vec<AuditRecord> =
                blocks.into_iter().map(|b| AuditRecord::of(Event::ActionFailed, b, now)).collect();
            if records.is_empty() {
                let mut rec = AuditRecord::note(Event::ActionFailed, now, AUTO_ACTOR, String::new());
                rec.counters = vec![("keys_refused".into(), refused.len() as i64)];
                records.push(rec);
            }
            for mut rec in records {
                rec.reason = reason.clone();
                self.write(Write::Audit(rec));
            }
        }
        if let (Some(b), true) = (&block, release) {
            if failures.is_empty() {
                self.releasing.remove(&b.key);
                self.finish_release(b, Event::Release, now);
            } else {
                self.releasing.insert(b.key, Some(now + RELEASE_RETRY));
            }
        }
        // Recorded before the caller hears of it.
        self.commit(false).await?;
        if let Some(n) = notify {
            let _ = n.send(failures);
        }
        Ok(())
    }

    /// Queues the end of `block` for the store (its record removed if it is still the one that
    /// started at `since`, with its audit record) and takes it out of the index.
    pub(super) fn finish_release(&mut self, block: &Block, event: Event, now: Millis) {
        let mut rec = AuditRecord::of(event, block, now);
        if let Some((actor, reason)) = self.unblocked_by.remove(&block.key) {
            (rec.source, rec.actor, rec.reason) = (Origin::Manual, actor, format!("unblocked: {reason}"));
        }
        self.write(Write::Release { key: block.key, since: block.since, rec });
        if self.active.get(&block.key).is_some_and(|b| b.since == block.since) {
            info!(key = %net::display(&block.key), rule = %block.rule, "released");
            self.unindex(&block.key);
            self.released.insert(block.key, now);
        }
    }

    /// Releases the blocks whose `until` has come; retries failed releases.
    pub async fn tick(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let due = windows::due(self.active.values(), &self.releasing, now);
        for b in due {
            if b.dry_run {
                self.finish_release(&b, Event::WouldRelease, now);
                continue;
            }
            self.releasing.insert(b.key, None);
            self.dispatch(&b, Job::Release { key: b.key, actions: b.actions.clone(), place: b.place() }).await;
        }
        if self.breaker.is_open() {
            self.breaker_check(now); // closes it once the last minute is quiet
        }
        self.released.retain(|_, t| *t + 60_000 > now);
        if let Some(agg) = &self.cfg.aggregate {
            self.aggregator.prune(now, ms(agg.window));
        }
        self.commit(false).await
    }

    /// Drops old history and audit records, as configured. A scan of the whole store, run on the
    /// daemon's thread on purpose: on a pool thread, decoding a million offenders grows a malloc
    /// arena of its own that is never given back (measured: +50 MB of peak RSS at scale).
    pub fn prune(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let s = &self.cfg.store;
        let (o, a) =
            self.store.prune(now.saturating_sub(ms(s.retention)), now.saturating_sub(ms(s.audit_retention)))?;
        if o + a > 0 {
            info!(offenders = o, audit_records = a, "pruned history");
        }
        Ok(())
    }
}

/// For a refusal for want of level: the `stats socket` line that would allow it.
fn level_advice(cfg: &Config, target: &str, e: &crate::client::ClientError) -> String {
    let denied = e.haproxy().is_some_and(|h| h.kind == crate::proto::ErrorKind::PermissionDenied);
    match cfg.targets.iter().find(|t| t.name == target) {
        Some(t) if denied => {
            format!(
                " (the socket's level is too low for this: change its line to `{}`)",
                crate::haproxy_side::socket_line(&t.target, "admin")
            )
        }
        _ => String::new(),
    }
}

/// Why the breaker opened, in words: what the limit was made of.
fn breaker_reason(l: Limits, blocks: usize, limit: usize, population: Option<u64>) -> String {
    let pct = l.share * 100.0;
    let made_of = match population {
        _ if l.cap.is_some_and(|c| c as usize == limit) => format!("max_blocks_per_minute = {limit}"),
        Some(p) if limit > l.floor as usize => format!("{pct}% of the {p} clients the watched tables track"),
        Some(p) => format!("breaker_floor = {}; {pct}% of the {p} tracked clients is fewer", l.floor),
        None => format!("breaker_floor = {}; no poll has counted the tracked clients yet", l.floor),
    };
    format!("{blocks} automatic blocks within a minute reached the limit of {limit} ({made_of}): a rule that matches this many clients looks broken")
}

/// `http_req_rate=312, conn_cur=4`
fn describe(counters: &[(String, i64)]) -> String {
    counters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}
