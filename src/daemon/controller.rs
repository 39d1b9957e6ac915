//! The controller: the I/O shell around the [`Decider`], the one task that owns decisions. It
//! feeds the decider what happened (the pollers' observations with their history read from the
//! store, ticks of the [`Clock`], the actuators' outcomes, operator actions, what targets hold) and
//! carries out the effects it returns in their order: allowlist entries and writes to the store
//! (flushed before any actuator acts on a decision), then jobs to the actuators, metrics. Being
//! the only writer of blocks, it needs no locks.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::census::Census;
use super::lag::Lag;
use super::Msg;
use crate::actuator::{Actuator, Job};
use crate::client::ClientError;
use crate::config::Config;
use crate::decide::{Actual, Decider, Effects, Input, JobOutcome};
use crate::key::Key;
use crate::metrics::Metrics;
use crate::ops::{Manual, OpError, Outcome};
use crate::poll::Observation;
use crate::store::{Block, Store, StoreError, Write};
use crate::time::{ms, Clock, Millis};

/// What the controller answers to an operator action: what it decided, and one receiver per
/// HAProxy job, resolving with the refusals (empty when every target confirmed).
pub struct ManualReply {
    pub outcome: Outcome,
    pub pending: Vec<oneshot::Receiver<Vec<String>>>,
}

pub(super) struct Controller {
    pub(super) cfg: Arc<Config>,
    store: Store,
    pub(super) decider: Decider,
    clock: Clock,
    actuators: Vec<Actuator>,
    tx: mpsc::Sender<Msg>,
    /// What each target has not confirmed yet.
    pub(super) lag: Arc<Lag>,
    /// The tracked population (for the breaker's share) and the breaker's state, shown by the API.
    census: Arc<Census>,
    metrics: Arc<Metrics>,
    /// Jobs sent to the actuators whose outcome has not come back yet.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// The parts a controller works with.
pub(super) struct Parts {
    pub actuators: Vec<Actuator>,
    pub tx: mpsc::Sender<Msg>,
    pub metrics: Arc<Metrics>,
    pub lag: Arc<Lag>,
    pub census: Arc<Census>,
    pub clock: Clock,
}

impl Controller {
    /// A controller on `store`, with every stored block in its decider's index.
    pub fn new(cfg: Arc<Config>, store: Store, parts: Parts) -> Result<Controller, StoreError> {
        let Parts { actuators, tx, metrics, lag, census, clock } = parts;
        let mut decider = Decider::new(cfg.clone(), store.allows()?);
        // One at a time into the index: a list of 100,000 blocks would double the memory.
        let now = clock.now();
        for b in store.blocks_iter() {
            decider.load(b?, now);
        }
        Ok(Controller {
            cfg,
            store,
            decider,
            clock,
            actuators,
            tx,
            lag,
            census,
            metrics,
            in_flight: Default::default(),
        })
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Steps the decider (for anything but an operator action, which [`Controller::manual`]
    /// answers) and carries out the effects.
    async fn step(&mut self, input: Input) -> Result<(), StoreError> {
        let fx = self.decider.step(input, self.clock.now()).expect("only operator actions are refused");
        self.apply(fx).await.map(drop)
    }

    /// Carries out `fx` in order; returns, for each job an operator waits for, the receiver of
    /// its refusals.
    async fn apply(&mut self, fx: Effects) -> Result<Vec<oneshot::Receiver<Vec<String>>>, StoreError> {
        let Effects { allow_put, allow_remove, writes, durable, jobs, breaker, decisions, repairs, .. } = fx;
        if !allow_put.is_empty() || !allow_remove.is_empty() {
            self.on_store(move |s| {
                for e in &allow_put {
                    s.put_allow(e)?;
                }
                for k in &allow_remove {
                    s.remove_allow(k)?;
                }
                Ok(())
            })
            .await?;
        }
        // Durable before acted on: a crash from here on finds every decision in the store.
        self.commit(writes, durable).await?;
        if let Some(state) = breaker {
            self.metrics.breaker_open.set(i64::from(state.is_some()));
            self.census.set_breaker(state);
        }
        for (rule, event) in &decisions {
            self.metrics.decision(rule, event);
        }
        for target in &repairs {
            self.metrics.repairs.get_or_create(&Metrics::target(target)).inc();
        }
        let mut pending = Vec::new();
        for d in jobs {
            let notify = d.notify.then(|| {
                let (tx, rx) = oneshot::channel();
                pending.push(rx);
                tx
            });
            self.dispatch(d.only.as_deref(), d.block.as_ref(), d.job, notify, d.polled_at).await;
        }
        Ok(pending)
    }

    /// Re-applies every block still in force, on every target (`only`: on that one).
    pub async fn reapply_all(&mut self, only: Option<&str>) -> Result<(), StoreError> {
        self.step(Input::Reapply { only: only.map(str::to_owned) }).await
    }

    /// A target's HAProxy was reloaded or restarted (`was` -> `now`): it has lost every runtime
    /// ACL entry and (without peers) every tag, so everything in force goes back at once.
    pub async fn target_restarted(&mut self, target: String, was: String, now: String) -> Result<(), StoreError> {
        self.step(Input::Restarted { target, was, now }).await
    }

    /// Scores the observations of a poll that started at `polled_at` and acts on the decisions.
    pub async fn observe(&mut self, polled_at: Millis, batch: Vec<Observation>) -> Result<(), StoreError> {
        let candidates = self.decider.candidates(polled_at, batch, self.clock.now());
        if candidates.is_empty() {
            return Ok(());
        }
        // Every candidate's history in one read, off the daemon's thread.
        let keys: Vec<Key> = candidates.iter().map(|o| o.key.clone()).collect();
        let offenders = self.on_store(move |s| s.offenders(&keys)).await?;
        let scored = candidates.into_iter().zip(offenders).collect();
        let t = std::time::Instant::now();
        self.step(Input::Scored { polled_at, scored, population: self.census.population() }).await?;
        tracing::debug!(took = ?t.elapsed(), "poll decided");
        Ok(())
    }

    /// Releases the blocks whose `until` has come; retries failed releases.
    pub async fn tick(&mut self) -> Result<(), StoreError> {
        self.step(Input::Tick { population: self.census.population() }).await
    }

    /// Puts back on `actual.target` what it lacks of the active blocks and removes the leftovers
    /// of ended blocks that stickwarden put there ([`Decider`] says which).
    pub async fn reconcile(&mut self, actual: Actual) -> Result<(), StoreError> {
        // Which leftovers stickwarden put there: one read of the store, off the daemon's thread.
        let leftovers = self.decider.leftovers(&actual);
        let owned = if leftovers.is_empty() {
            leftovers
        } else {
            self.on_store(move |s| {
                let mut owned = Vec::new();
                for (k, actions) in leftovers {
                    if s.owns(&k)? {
                        owned.push((k, actions));
                    }
                }
                Ok(owned)
            })
            .await?
        };
        self.step(Input::Actual { actual, owned }).await
    }

    /// Runs an operator action; the reply carries what was decided and how HAProxy answers.
    pub async fn manual(&mut self, op: Manual, actor: &str) -> Result<ManualReply, OpError> {
        let mut fx = self.decider.step(Input::Manual { op, actor: actor.to_owned() }, self.clock.now())?;
        let outcome = std::mem::take(&mut fx.reply);
        let pending = self.apply(fx).await?;
        Ok(ManualReply { outcome, pending })
    }

    /// Jobs sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes every decision so far durable (fsync'd, on the blocking pool).
    pub(super) async fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(Vec::new(), true).await
    }

    /// Carries out `writes` in one call off the daemon's thread, then, when `durable`, makes
    /// everything so far durable.
    async fn commit(&mut self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
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

    /// Sends `job` to every target in order (`only`: to that one), and reports its outcome back to
    /// the controller, which passes the failures on to `notify` once it has recorded them.
    /// `polled_at`: the start of the poll that decided the job's blocks.
    async fn dispatch(
        &self,
        only: Option<&str>,
        b: Option<&Block>,
        job: Job,
        notify: Option<oneshot::Sender<Vec<String>>>,
        polled_at: Option<Millis>,
    ) {
        let keys: Arc<Vec<Key>> = Arc::new(match &job {
            Job::Apply { key, .. } | Job::Release { key, .. } => vec![key.clone()],
            Job::ApplyMany { blocks, .. } => blocks.iter().map(|(k, _)| k.clone()).collect(),
            Job::ImportAcl { keys, .. } => keys.iter().map(|k| Key::Net(*k)).collect(),
            Job::Forget => Vec::new(),
        });
        let (release, what) = (matches!(job, Job::Release { .. }), job_name(&job));
        let mut replies: Vec<(String, oneshot::Receiver<Result<(), ClientError>>)> = Vec::new();
        let targets: Vec<&Actuator> = self.actuators.iter().filter(|a| only.is_none_or(|o| a.name == o)).collect();
        // The last target gets the job itself, the others a copy: a re-apply of 100,000 blocks
        // is not copied once more for nothing.
        let mut job = Some(job);
        for (i, a) in targets.iter().enumerate() {
            let this = if i + 1 == targets.len() { job.take() } else { job.clone() };
            let Some(this) = this else { break };
            // A job that cannot even be queued is a failure on that target like any other:
            // unconfirmed, audited, retried, never taken for done.
            let rx = a.submit(this).unwrap_or_else(|e| {
                warn!(target = %a.name, error = %e, "the job could not be given to the actuator");
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(e));
                rx
            });
            self.lag.sent(&a.name, &keys);
            replies.push((a.name.clone(), rx));
        }
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, block) = (self.tx.clone(), b.cloned());
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
                            _ => refused.extend(keys.iter().cloned()),
                        }
                    }
                    Err(_) => {
                        failures.push(format!("{target}: actuator stopped"));
                        refused.extend(keys.iter().cloned());
                    }
                }
            }
            failures.sort();
            refused.sort_unstable();
            refused.dedup();
            let outcome = JobOutcome { what, release, failures, refused, polled_at };
            let _ = tx.send(Msg::Done { block, outcome, notify }).await;
        });
    }

    /// An actuator finished a job on every target: recorded, then told to whoever waits.
    pub async fn done(
        &mut self,
        block: Option<Block>,
        outcome: JobOutcome,
        notify: Option<oneshot::Sender<Vec<String>>>,
    ) -> Result<(), StoreError> {
        self.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(at) = outcome.polled_at.filter(|_| outcome.failures.is_empty()) {
            self.metrics.detection_seconds.observe(self.clock.now().saturating_sub(at) as f64 / 1000.0);
        }
        let failures = outcome.failures.clone();
        // Recorded before the caller hears of it.
        self.step(Input::Done { block, outcome }).await?;
        if let Some(n) = notify {
            let _ = n.send(failures);
        }
        Ok(())
    }

    /// Drops old history and audit records, as configured. A scan of the whole store, run on the
    /// daemon's thread on purpose: on a pool thread, decoding a million offenders grows a malloc
    /// arena of its own that is never given back (measured: +50 MB of peak RSS at scale).
    pub fn prune(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let s = &self.cfg.store;
        let (o, a) =
            self.store.prune(now.saturating_sub(ms(s.retention)), now.saturating_sub(ms(s.audit_retention)))?;
        if o + a > 0 {
            tracing::info!(offenders = o, audit_records = a, "pruned history");
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

/// What a job is, in the words of the audit log.
fn job_name(job: &Job) -> &'static str {
    match job {
        Job::Apply { .. } | Job::ApplyMany { fresh: true, .. } => "block",
        Job::Release { .. } => "release",
        Job::ImportAcl { .. } => "import",
        Job::Forget => "forget",
        Job::ApplyMany { fresh: false, .. } => "reapply",
    }
}
