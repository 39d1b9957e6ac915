//! The decider: every decision of the daemon as a pure function of its state, one input and
//! `now`. [`Decider::step`] takes what happened (a poll's scored candidates, a tick of the clock,
//! a job's outcome, an operator action, a reloaded HAProxy, what a target holds) and returns the
//! [`Effects`] to carry out: store writes (durable before any job when a block is decided), jobs
//! for the actuators, metrics and the breaker's state. It reads no clock, no store and no socket,
//! so its tests give exact instants and look at exact effects; the daemon's controller is the I/O
//! shell that feeds it and applies what it returns, and `simulate` runs the same decider over
//! recorded dumps, so what is simulated is what `run` does.

mod index;
mod manual;
mod reconcile;
pub mod windows;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tracing::{error, info, warn};

use crate::actuator::Job;
use crate::allowlist::Allowlist;
use crate::config::Config;
use crate::engine;
use crate::key::Key;
use crate::net;
use crate::ops::{Manual, OpError, Outcome};
use crate::poll::Observation;
use crate::rules::{Action, Actions, Rule};
use crate::store::{AllowEntry, AuditRecord, Block, Event, Offender, Origin, Place, Write};
use crate::time::{ms, Millis};
use windows::{Aggregator, Breaker, Limits, Transition};

/// The actor name written in the audit log for automatic decisions.
pub const AUTO_ACTOR: &str = "stickwarden";
/// The rule name of manual blocks.
pub const MANUAL_RULE: &str = "manual";

const BREAKER_WINDOW: Millis = 60_000;
/// How long after a failed release it is tried again.
pub const RELEASE_RETRY: Millis = 10_000;
/// Blocks per re-apply job.
const REAPPLY_BATCH: usize = 50_000;
/// Blocks younger than this when HAProxy was read may not be applied yet: not compared. (A repair
/// that was not needed would do no harm: applying is idempotent.)
const RECONCILE_MARGIN: Millis = 2_000;
/// How long a released key's polls from before the release are ignored.
const RELEASED_MEMORY: Millis = 60_000;

/// What one target holds, read at `read_at`. `None`: not used by this configuration.
#[derive(Debug, Clone)]
pub struct Actual {
    pub target: String,
    pub read_at: Millis,
    pub acl: Option<HashSet<IpNet>>,
    pub tagged: Option<HashSet<IpAddr>>,
    /// The block map's keys and values.
    pub mapped: Option<HashMap<IpNet, String>>,
}

/// How a job ended on every target.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub what: &'static str,
    pub release: bool,
    /// One line per target that refused or failed.
    pub failures: Vec<String>,
    /// The keys refused somewhere (every key of the job, unless a target named some).
    pub refused: Vec<Key>,
    /// The start of the poll that decided the job's blocks.
    pub polled_at: Option<Millis>,
}

/// What happened, for [`Decider::step`].
#[derive(Debug)]
pub enum Input {
    /// The candidates of a poll that started at `polled_at` ([`Decider::candidates`] chose them),
    /// each with its stored history; `population`: the clients the watched tables track.
    Scored { polled_at: Millis, scored: Vec<(Observation, Option<Offender>)>, population: Option<u64> },
    /// Time passed: releases due, the breaker's window.
    Tick { population: Option<u64> },
    /// A job ended on every target; `block` when it was one block's.
    Done { block: Option<Block>, outcome: JobOutcome },
    /// An operator action by `actor`.
    Manual { op: Manual, actor: String },
    /// Every active block, on every target (`only`: on that one), as after a start.
    Reapply { only: Option<String> },
    /// `target`'s HAProxy is a new process (reload, restart).
    Restarted { target: String, was: String, now: String },
    /// What `target` holds, and the leftovers of it ([`Decider::leftovers`]) that stickwarden
    /// put there (the store owns their keys): the ones to remove.
    Actual { actual: Actual, owned: Vec<(Key, Actions)> },
}

/// A job for the actuators.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// Only this target (all of them when `None`).
    pub only: Option<String>,
    /// The block the job is about, reported back with its outcome.
    pub block: Option<Block>,
    pub job: Job,
    /// The start of the poll that decided the job's blocks (for the detection time).
    pub polled_at: Option<Millis>,
    /// Whether the operator who asked waits for HAProxy's answer.
    pub notify: bool,
}

/// What a step asks the I/O shell to carry out, in this order: allowlist entries, writes (made
/// durable when `durable`), then jobs.
#[derive(Debug, Default)]
pub struct Effects {
    pub allow_put: Vec<AllowEntry>,
    pub allow_remove: Vec<IpNet>,
    pub writes: Vec<Write>,
    /// Whether the writes (and everything before them) must be durable before any job is sent.
    pub durable: bool,
    pub jobs: Vec<Dispatch>,
    /// The breaker opened (`Some(Some((since, reason)))`) or closed (`Some(None)`).
    pub breaker: Option<Option<(Millis, String)>>,
    /// Decisions by (rule, event), for the metrics.
    pub decisions: Vec<(String, &'static str)>,
    /// Repairs by target, for the metrics.
    pub repairs: Vec<String>,
    /// For an operator action: what was decided.
    pub reply: Outcome,
}

impl Effects {
    fn write(&mut self, w: Write) {
        self.writes.push(w);
    }

    /// A job whose outcome an operator waits for.
    fn ask(&mut self, block: Option<Block>, job: Job) {
        self.jobs.push(Dispatch { only: None, block, job, polled_at: None, notify: true });
    }

    fn send(&mut self, only: Option<&str>, block: Option<&Block>, job: Job) {
        self.jobs.push(Dispatch {
            only: only.map(str::to_owned),
            block: block.cloned(),
            job,
            polled_at: None,
            notify: false,
        });
    }
}

/// The decider's state: the active blocks (the store stays the truth; this is its index), what
/// is being released, the allowlist, the breaker and aggregation windows.
pub struct Decider {
    cfg: Arc<Config>,
    allow: Allowlist,
    /// The allowlist entries operators added (with the configuration's, they make `allow`).
    stored_allows: Vec<AllowEntry>,
    active: index::Blocks,
    /// Keys of active network blocks, to test addresses against.
    nets: Vec<IpNet>,
    /// Where the active blocks were applied, one copy of each.
    places: HashSet<Arc<Place>>,
    /// Blocks whose release was sent and not yet confirmed, with when to try again if it fails.
    releasing: HashMap<Key, Option<Millis>>,
    /// When each key was last released: a poll that started earlier saw the counters from before
    /// the release (which cleared them) and must not count against it again.
    released: HashMap<Key, Millis>,
    /// Releases an operator asked for, with who and why, for their audit record.
    unblocked_by: HashMap<Key, (String, String)>,
    breaker: Breaker,
    aggregator: Aggregator,
}

impl Decider {
    /// A decider with no active block and the operators' allowlist entries `stored`.
    pub fn new(cfg: Arc<Config>, stored: Vec<AllowEntry>) -> Decider {
        let limits = Limits {
            floor: cfg.safety.breaker_floor,
            share: cfg.safety.breaker_share,
            cap: cfg.safety.max_blocks_per_minute,
        };
        Decider {
            allow: Allowlist::new(&cfg, &stored),
            stored_allows: stored,
            active: index::Blocks::default(),
            nets: Vec::new(),
            places: HashSet::new(),
            releasing: HashMap::new(),
            released: HashMap::new(),
            unblocked_by: HashMap::new(),
            breaker: Breaker::new(limits, BREAKER_WINDOW),
            aggregator: Aggregator::default(),
            cfg,
        }
    }

    /// Takes a stored block into the index at start. One that now reaches a protected address (a
    /// never_block or allowlist entry added since, or one stored before the containment rule) is
    /// never re-applied: it ends at the first tick, its audit record saying why.
    pub fn load(&mut self, mut b: Block, now: Millis) {
        // Recorded before places were kept: where this configuration puts its actions.
        if b.place.is_none() {
            b.place = Some(Arc::new(Place::of(&self.cfg.block, &b.actions)));
        }
        if let Some(why) = b.key.net().and_then(|n| self.unsafe_reach(n, now)) {
            warn!(key = %b.key, protected = %why, "stored block reaches a protected address; releasing it");
            self.unblocked_by
                .insert(b.key.clone(), (AUTO_ACTOR.into(), format!("reaches a protected address ({why})")));
            b.until = b.until.min(now);
        }
        self.index(b);
    }

    /// The active blocks.
    pub fn active(&self) -> impl Iterator<Item = &Block> {
        self.active.values()
    }

    pub fn block(&self, key: &Key) -> Option<&Block> {
        self.active.get(key)
    }

    /// Whether the breaker is open (no automatic block).
    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// The observations of a poll that started at `polled_at` that are worth scoring: not
    /// allowlisted, not blocked already, not seen before their key's release.
    pub fn candidates(&self, polled_at: Millis, batch: Vec<Observation>, now: Millis) -> Vec<Observation> {
        batch
            .into_iter()
            .filter(|obs| {
                if self.released.get(&obs.key).is_some_and(|&t| t >= polled_at) {
                    return false;
                }
                if let Some(reason) = obs.key.addr().and_then(|a| self.allow.allows(a, now)) {
                    tracing::debug!(key = %obs.key, reason, "allowlisted, not scored");
                    return false;
                }
                !self.blocked(&obs.key)
            })
            .collect()
    }

    /// What `actual` holds that no active block wants, by key in order, with the actions to
    /// remove: the keys to ask the store about (whether stickwarden put them there) before
    /// [`Input::Actual`] gives back those it did.
    pub fn leftovers(&self, actual: &Actual) -> Vec<(Key, Actions)> {
        let mut found: Vec<(Key, Actions)> =
            self.leftover_actions(actual).into_iter().map(|(k, a)| (k, Actions::new(a))).collect();
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Carries `input` at `now` into the state and says what to do. Only operator actions can be
    /// refused (and then nothing changed).
    pub fn step(&mut self, input: Input, now: Millis) -> Result<Effects, OpError> {
        let mut fx = Effects::default();
        match input {
            Input::Scored { polled_at, scored, population } => self.scored(polled_at, scored, population, now, &mut fx),
            Input::Tick { population } => self.tick(population, now, &mut fx),
            Input::Done { block, outcome } => self.done(block, outcome, now, &mut fx),
            Input::Manual { op, actor } => self.manual(op, &actor, now, &mut fx)?,
            Input::Reapply { only } => {
                self.reapply(only.as_deref(), now, &mut fx);
            }
            Input::Restarted { target, was, now: desc } => {
                warn!(target, was, now = desc, "HAProxy was reloaded or restarted; re-applying every active block");
                fx.send(Some(&target), None, Job::Forget);
                let n = self.reapply(Some(&target), now, &mut fx);
                let reason = format!("{target}: HAProxy {was} replaced by {desc}; {n} active block(s) re-applied");
                fx.write(Write::Audit(AuditRecord::note(Event::TargetRestarted, now, AUTO_ACTOR, reason)));
            }
            Input::Actual { actual, owned } => self.reconcile(actual, owned, now, &mut fx),
        }
        Ok(fx)
    }

    /// Why a block of `key` must not be in force, if it must not: what no override allows (every
    /// IPv4 or IPv6 client), or an allowlisted or protected address.
    fn unsafe_reach(&self, key: &IpNet, now: Millis) -> Option<String> {
        let never = self.cfg.safety.check_breadth(key, true).err();
        never.or_else(|| self.allow.overlaps(key, now).map(str::to_owned))
    }

    fn index(&mut self, mut b: Block) {
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
        if let Some(n) = b.key.net().filter(|n| !net::is_host(n) && !self.nets.contains(n)) {
            self.nets.push(*n);
        }
        self.active.insert(b);
    }

    fn unindex(&mut self, key: &Key) {
        self.active.remove(key);
        self.nets.retain(|n| Some(n) != key.net());
    }

    /// Whether `key` is blocked: its own block, or (an address) a network block covering it.
    fn blocked(&self, key: &Key) -> bool {
        self.active.contains_key(key) || key.addr().is_some_and(|a| self.nets.iter().any(|n| net::covers_addr(n, a)))
    }

    /// Where the configuration puts `actions` for `key`.
    fn place(&self, key: &Key, actions: &Actions) -> Arc<Place> {
        Arc::new(Place::for_key(&self.cfg, key, actions))
    }

    fn scored(
        &mut self,
        polled_at: Millis,
        scored: Vec<(Observation, Option<Offender>)>,
        population: Option<u64>,
        now: Millis,
        fx: &mut Effects,
    ) {
        let cfg = self.cfg.clone();
        let mut decided: Vec<Block> = Vec::new();
        for (obs, offender) in scored {
            let rules: Vec<&Rule> = obs.rules.iter().map(|&i| &cfg.rules.rules[i]).collect();
            let mut offender = offender.unwrap_or_default();
            let policy = &cfg.rules.policy;
            let verdict = engine::assess(policy, &mut offender, &rules, now, cfg.dry_run, cfg.store.max_offences);
            let Some(v) = verdict else {
                fx.write(Write::Offender(obs.key, offender));
                continue;
            };
            if !v.dry_run && !self.breaker_check(now, population, fx) {
                warn!(key = %obs.key, rule = %v.rule, "circuit breaker open: not blocking");
                fx.decisions.push((v.rule.clone(), "suppressed"));
                offender.offences.pop(); // not acted on, so not counted for the ladder
                fx.write(Write::Offender(obs.key, offender));
                continue;
            }
            let actions = v.actions.for_key(&obs.key);
            let block = Block {
                key: obs.key.clone(),
                level: v.level,
                place: Some(self.place(&obs.key, &actions)),
                actions,
                rule: v.rule.clone(),
                reason: format!("score crossed {} ({})", policy.threshold, describe(&obs.counters)),
                source: Origin::Auto,
                actor: AUTO_ACTOR.into(),
                since: now,
                until: now + ms(v.duration),
                counters: obs.counters,
                dry_run: v.dry_run,
                nodes: obs.nodes,
            };
            if !v.dry_run {
                self.breaker.record(now);
            }
            let event = if v.dry_run { Event::WouldBlock } else { Event::Block };
            fx.decisions.push((v.rule.clone(), event.as_str()));
            let rec = AuditRecord::of(event, &block, now);
            info!(key = %obs.key, rule = %block.rule, level = block.level, actions = %block.actions,
                  duration = %crate::time::human(v.duration), dry_run = block.dry_run, "block decided");
            let addr = obs.key.addr();
            fx.write(Write::Decide { block: Box::new(block.clone()), offender: Some((obs.key, offender)), rec });
            if let (false, Some(addr)) = (v.dry_run, addr) {
                if let Some(prefix_block) = self.aggregate(addr, population, now, fx) {
                    decided.push(prefix_block);
                }
            }
            decided.push(block);
        }
        // Durable before acted on: a crash from here on finds every decision in the store.
        fx.durable = !decided.is_empty();
        // The poll's new blocks go out together: one pipelined job per place, not one round trip
        // per block.
        let mut by_place: HashMap<Arc<Place>, Vec<(Key, Actions)>> = HashMap::new();
        for b in decided {
            if !b.dry_run {
                by_place.entry(b.place()).or_default().push((b.key.clone(), b.actions.clone()));
            }
            self.index(b);
        }
        let mut places: Vec<_> = by_place.into_iter().collect();
        places.sort_by(|a, b| a.1[0].0.cmp(&b.1[0].0));
        for (place, blocks) in places {
            let job = Job::ApplyMany { blocks, place, fresh: true };
            fx.jobs.push(Dispatch { only: None, block: None, job, polled_at: Some(polled_at), notify: false });
        }
    }

    /// Whether an automatic block may happen now (false: the breaker is open). Opening and closing
    /// are logged and audited; the caller records the block it then makes.
    fn breaker_check(&mut self, now: Millis, population: Option<u64>, fx: &mut Effects) -> bool {
        let (allowed, change) = self.breaker.check(now, population);
        let Some(change) = change else { return allowed };
        let (event, reason) = match change {
            Transition::Opened { blocks, limit, population } => {
                let reason = breaker_reason(self.breaker.limits(), blocks, limit, population);
                error!(%reason, "circuit breaker open: automatic blocks suspended; manual actions still work");
                fx.breaker = Some(Some((now, reason.clone())));
                (Event::BreakerOpen, reason)
            }
            Transition::Closed => {
                info!("circuit breaker closed: automatic blocks resume");
                fx.breaker = Some(None);
                (Event::BreakerClosed, "automatic blocks within the last minute are under the limit again".to_owned())
            }
        };
        fx.write(Write::Audit(AuditRecord::note(event, now, AUTO_ACTOR, reason)));
        allowed
    }

    /// Subnet aggregation: the prefix block decided when `addr` is the N-th recent offender of its
    /// prefix.
    fn aggregate(&mut self, addr: IpAddr, population: Option<u64>, now: Millis, fx: &mut Effects) -> Option<Block> {
        let agg = self.cfg.aggregate.clone()?;
        let prefix = net::prefix_of(addr, agg.ipv4_prefix, agg.ipv6_prefix);
        let n = self.aggregator.record(prefix, addr, now, ms(agg.window));
        if n < agg.offenders || self.active.contains_key(&Key::Net(prefix)) || net::is_host(&prefix) {
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
        if !self.breaker_check(now, population, fx) {
            return None;
        }
        self.breaker.record(now);
        self.aggregator.reset(&prefix);
        let actions = Actions::new(vec![Action::Acl]);
        let block = Block {
            key: Key::Net(prefix),
            level: 0,
            place: Some(self.place(&Key::Net(prefix), &actions)),
            actions,
            rule: "subnet-aggregate".into(),
            reason: format!("{n} offenders of {prefix} blocked within {}", crate::time::human(agg.window)),
            source: Origin::Auto,
            actor: AUTO_ACTOR.into(),
            since: now,
            until: now + ms(agg.duration),
            counters: vec![("offenders".into(), n as i64)],
            dry_run: false,
            nodes: Vec::new(),
        };
        let rec = AuditRecord::of(Event::Block, &block, now);
        fx.write(Write::Decide { block: Box::new(block.clone()), offender: None, rec });
        info!(%prefix, offenders = n, "prefix block decided");
        Some(block)
    }

    /// Releases the blocks whose `until` has come; retries failed releases; closes a breaker whose
    /// minute is quiet; forgets old windows.
    fn tick(&mut self, population: Option<u64>, now: Millis, fx: &mut Effects) {
        let mut due = windows::due(self.active.values(), &self.releasing, now);
        due.sort_unstable_by(|a, b| (a.until, &a.key).cmp(&(b.until, &b.key)));
        for b in due {
            if b.dry_run {
                self.finish_release(&b, Event::WouldRelease, now, fx);
                continue;
            }
            self.releasing.insert(b.key.clone(), None);
            let job = Job::Release { key: b.key.clone(), actions: b.actions.clone(), place: b.place() };
            fx.send(None, Some(&b), job);
        }
        if self.breaker.is_open() {
            self.breaker_check(now, population, fx); // closes it once the last minute is quiet
        }
        self.released.retain(|_, t| *t + RELEASED_MEMORY > now);
        if let Some(agg) = &self.cfg.aggregate {
            self.aggregator.prune(now, ms(agg.window));
        }
    }

    /// Queues the end of `block` for the store (its record removed if it is still the one that
    /// started at `since`, with its audit record) and takes it out of the index.
    fn finish_release(&mut self, block: &Block, event: Event, now: Millis, fx: &mut Effects) {
        let mut rec = AuditRecord::of(event, block, now);
        if let Some((actor, reason)) = self.unblocked_by.remove(&block.key) {
            (rec.source, rec.actor, rec.reason) = (Origin::Manual, actor, format!("unblocked: {reason}"));
        }
        fx.write(Write::Release { key: block.key.clone(), since: block.since, rec });
        if self.active.get(&block.key).is_some_and(|b| b.since == block.since) {
            info!(key = %block.key, rule = %block.rule, "released");
            self.unindex(&block.key);
            self.released.insert(block.key.clone(), now);
        }
    }

    /// A job ended on every target: failures audited, a confirmed release finished, a failed one
    /// retried later.
    fn done(&mut self, block: Option<Block>, outcome: JobOutcome, now: Millis, fx: &mut Effects) {
        let JobOutcome { what, release, failures, refused, .. } = outcome;
        if !failures.is_empty() {
            error!(key = ?block.as_ref().map(|b| b.key.to_string()), refused = refused.len(), failures = ?failures, "{what} failed");
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
                fx.write(Write::Audit(rec));
            }
        }
        if let (Some(b), true) = (&block, release) {
            if failures.is_empty() {
                self.releasing.remove(&b.key);
                self.finish_release(b, Event::Release, now, fx);
            } else {
                self.releasing.insert(b.key.clone(), Some(now + RELEASE_RETRY));
            }
        }
    }

    /// Re-applies every block still in force, on every target (`only`: on that one): after a
    /// restart of the controller or of HAProxy, HAProxy must hold what the store says. Sessions
    /// are not killed again. Returns how many blocks were sent.
    fn reapply(&mut self, only: Option<&str>, now: Millis, fx: &mut Effects) -> usize {
        // Keys and actions only, by where they were applied (nearly always one place): a copy of
        // every block would double the memory of the index.
        let mut by_place: HashMap<Arc<Place>, Vec<(Key, Actions)>> = HashMap::new();
        let mut n = 0;
        for b in self.active.values().filter(|b| !b.dry_run && b.until > now) {
            by_place.entry(b.place()).or_default().push((b.key.clone(), b.actions.clone()));
            n += 1;
        }
        if n > 0 {
            info!(blocks = n, target = only.unwrap_or("all"), "re-applying active blocks");
        }
        let mut places: Vec<_> = by_place.into_iter().collect();
        for (_, items) in &mut places {
            // In key order: the same order every time, whatever the index's.
            items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        places.sort_by(|a, b| a.1[0].0.cmp(&b.1[0].0));
        for (place, mut items) in places {
            // Pipelined jobs of many blocks: 100,000 blocks go back in seconds, not minutes. Each
            // job takes its part of the list rather than a copy: at scale a copy is megabytes.
            while !items.is_empty() {
                let rest = items.split_off(items.len().min(REAPPLY_BATCH));
                let blocks = std::mem::replace(&mut items, rest);
                fx.send(only, None, Job::ApplyMany { blocks, place: place.clone(), fresh: false });
            }
        }
        n
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

#[cfg(test)]
mod tests;
