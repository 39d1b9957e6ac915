//! `stickwarden run` on a shared PostgreSQL store: several controllers, one leader at a time.
//!
//! Every controller serves its API from the start. A **follower** answers reads from the database,
//! hands operator actions to the leader through `sw_requests` and waits for the answer, and asks
//! for the leader's lock every [`lead::TRY_EVERY`]. The one that gets it bumps the epoch, audits
//! `leader_changed`, and runs a term: the same controller as on sled ([`super::run_core`]), at that
//! epoch, under a [`Lease`] its heartbeats renew, re-applying every active block and reconciling
//! every target before it decides anything. The term ends when the process is asked to stop, when
//! the lease runs out unrenewed (database unreachable, session lost) or when the database refuses
//! a write (another controller leads): the controller stops acting at once, drops its session so
//! the lock is free, and follows again.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{controller::ManualReply, run_core, Census, Core, Handle, Lag, Msg};
use crate::client::{Client, ClientOptions};
use crate::config::{Config, PgConfig};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::ops::{Manual, OpError, Outcome};
use crate::store::postgres::lead::{self, Leader, Session};
use crate::store::postgres::{requests, PgStore};
use crate::store::{AuditRecord, Event, Store, StoreError};
use crate::time::Clock;

/// How often the leader looks for actions asked on followers, and a follower for its answer.
const REQUEST_POLL: Duration = Duration::from_millis(100);
/// How long a follower waits for the leader's answer: the leader's own wait for HAProxy, and
/// an election.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// This controller's place among those sharing the store.
#[derive(Debug)]
pub struct Status {
    pub name: String,
    leading: AtomicBool,
    epoch: AtomicI64,
    leader: Mutex<Leader>,
}

impl Status {
    fn new(name: String) -> Status {
        Status {
            name,
            leading: AtomicBool::new(false),
            epoch: AtomicI64::new(0),
            leader: Mutex::new(Leader { epoch: 0, holder: String::new(), since: 0 }),
        }
    }

    /// `leader` or `follower`.
    pub fn role(&self) -> &'static str {
        if self.leading.load(Ordering::SeqCst) {
            "leader"
        } else {
            "follower"
        }
    }

    /// The epoch this controller leads at (0 when it follows).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The leader as last read from the database.
    pub fn leader(&self) -> Leader {
        self.leader.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, leading: bool, epoch: i64, metrics: &Metrics) {
        self.leading.store(leading, Ordering::SeqCst);
        self.epoch.store(epoch, Ordering::SeqCst);
        metrics.leader.set(i64::from(leading));
        metrics.epoch.set(epoch);
    }

    fn saw(&self, l: Leader) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = l;
    }

    /// What `/healthz` says of it.
    pub fn json(&self) -> serde_json::Value {
        let l = self.leader();
        serde_json::json!({
            "name": self.name,
            "role": self.role(),
            "epoch": self.epoch(),
            "leader": l.holder,
            "leader_epoch": l.epoch,
        })
    }
}

/// Runs a controller on the shared store `pg` until `shutdown` resolves; `on_start` receives its
/// [`Handle`] (the API's way in, the same through every term) at once.
pub async fn run(
    cfg: Config,
    pgc: PgConfig,
    pg: Arc<PgStore>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(Handle, Vec<(String, Client)>),
) -> Result<(), StoreError> {
    let store = Store::on_postgres(pg.clone());
    let status = Arc::new(Status::new(pgc.name.clone()));
    let api: String = cfg.api.iter().flat_map(|a| a.listen.iter()).map(|l| l.to_string()).collect::<Vec<_>>().join(" ");
    let (front_tx, mut front) = mpsc::channel::<Msg>(64);
    let lag = Arc::new(Lag::new(cfg.targets.iter().map(|t| t.name.clone()), metrics.clone()));
    let census = Arc::new(Census::default());
    let reconcile_now = Arc::new(tokio::sync::Notify::new());
    let clients: Vec<(String, Client)> =
        cfg.targets.iter().map(|t| (t.name.clone(), Client::new(t.target.clone(), ClientOptions::default()))).collect();
    let handle = Handle {
        tx: front_tx,
        reconcile: reconcile_now.clone(),
        lag: lag.clone(),
        census: census.clone(),
        ha: Some(status.clone()),
    };
    on_start(handle, clients);
    status.set(false, 0, &metrics);
    let follower = Follower { pg: pg.clone(), store: store.clone(), name: pgc.name.clone() };
    tokio::pin!(shutdown);
    let mut session: Option<Session> = None;
    let mut said_unreachable = false;
    // Set while this controller, cut off from the database while it led, keeps releasing the
    // blocks it held on time.
    let mut outage: Option<Outage> = None;
    loop {
        // Following: until this controller gets the lock, or is asked to stop.
        let mut tick = tokio::time::interval(lead::TRY_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = tokio::time::interval(super::TICK);
        let took = loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(msg) = front.recv() => follower.serve(msg),
                _ = due.tick(), if outage.is_some() => {
                    if let Some(o) = &mut outage {
                        o.release_due(clock.now());
                    }
                }
                _ = tick.tick() => {
                    match follow_once(&pgc, &mut session, &status, &api).await {
                        Ok(Some(took)) => break took,
                        Ok(None) => {
                            said_unreachable = false;
                            if let Some(o) = outage.take() {
                                info!(released = o.released.len(), leader = %status.leader().holder,
                                      "the database answers and another controller leads: it records the releases due meanwhile");
                            }
                        }
                        Err(e) => {
                            session = None;
                            if !said_unreachable {
                                warn!(error = %e, "cannot reach PostgreSQL; following until it answers");
                                said_unreachable = true;
                            }
                        }
                    }
                }
            }
        };
        let asked = Instant::now();
        let session_now = session.as_ref().expect("the lock was taken on a session");
        let epoch = took.epoch;
        pg.set_epoch(epoch);
        let lease = Lease::ended();
        lease.renew(asked, lead::LEASE);
        status.saw(Leader { epoch, holder: pgc.name.clone(), since: crate::time::now_ms() as i64 });
        info!(epoch, previous = took.previous.epoch, was = %took.previous.holder, "took the lead");
        let mut rec = AuditRecord::note(
            Event::LeaderChanged,
            clock.now(),
            &pgc.name,
            format!(
                "{} leads at epoch {epoch} (was {} at epoch {})",
                pgc.name,
                if took.previous.holder.is_empty() { "nobody" } else { took.previous.holder.as_str() },
                took.previous.epoch
            ),
        );
        rec.counters = vec![("previous_epoch".into(), took.previous.epoch), ("epoch".into(), epoch)];
        let s = store.clone();
        let released = outage.take().map(|o| o.released).unwrap_or_default();
        let audited = tokio::task::spawn_blocking(move || {
            s.audit(rec)?;
            // What this controller released while the database was away, recorded at the time it
            // was released (a block another leader released or replaced meanwhile is left alone).
            for (b, at) in released {
                let mut r = AuditRecord::of(Event::Release, &b, at);
                r.reason = "released on time while the database was unreachable".into();
                s.release(&b.key, b.since, r)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .expect("audit task");

        // A term: the controller, its heartbeats and the actions asked on followers.
        let (term_tx, term_rx) = watch::channel(false);
        if let Err(e) = audited {
            warn!(error = %e, "cannot record the takeover; following again");
            let _ = term_tx.send(true);
        }
        let inner: Arc<Mutex<Option<Handle>>> = Arc::new(Mutex::new(None));
        let slot = inner.clone();
        let at_end: Arc<Mutex<Vec<crate::store::Block>>> = Arc::new(Mutex::new(Vec::new()));
        let core = Core {
            lag: lag.clone(),
            census: census.clone(),
            reconcile_now: reconcile_now.clone(),
            lease: lease.clone(),
            reconcile_first: true,
            ha: Some(status.clone()),
            active_at_end: Some(at_end.clone()),
        };
        let mut stop = term_rx.clone();
        let stop = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // Said to lead once the term runs: blocks re-applied and every target reconciled.
        let (st, m) = (status.clone(), metrics.clone());
        let term = run_core(
            cfg.clone(),
            store.clone(),
            metrics.clone(),
            clock.clone(),
            stop,
            move |h, _| {
                st.set(true, epoch, &m);
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
            },
            core,
        );
        tokio::pin!(term);
        let mut beat = tokio::time::interval(lead::HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asks = tokio::time::interval(REQUEST_POLL);
        let mut prune = tokio::time::interval(super::PRUNE_EVERY);
        let (mut stopping, mut resign, mut cut_off) = (*term_rx.borrow(), false, false);
        let ended = loop {
            let running = inner.lock().unwrap_or_else(|e| e.into_inner()).clone();
            tokio::select! {
                r = &mut term => break r,
                _ = &mut shutdown, if !stopping => {
                    stopping = true;
                    resign = true;
                    let _ = term_tx.send(true);
                }
                Some(msg) = front.recv() => match &running {
                    Some(h) => {
                        let _ = h.tx.send(msg).await;
                    }
                    None => follower.serve(msg),
                },
                _ = beat.tick(), if !stopping => {
                    let asked = Instant::now();
                    let beat = tokio::time::timeout(lead::HEARTBEAT, session_now.heartbeat("leader", epoch, &api)).await;
                    let lost = match beat {
                        Ok(Ok(l)) if l.epoch == epoch => {
                            lease.renew(asked, lead::LEASE);
                            None
                        }
                        Ok(Ok(l)) => Some(format!("{} took the lead at epoch {}", l.holder, l.epoch)),
                        Ok(Err(e)) if session_now.is_closed() => {
                            cut_off = true;
                            Some(format!("the database session ended: {e}"))
                        }
                        // One slow or failed heartbeat is tolerated while the lease lasts.
                        Ok(Err(_)) | Err(_) => {
                            cut_off = !lease.valid();
                            (!lease.valid()).then(|| "heartbeats unanswered for the lease's length".to_owned())
                        }
                    };
                    if let Some(why) = lost {
                        warn!(epoch, %why, "stepping down: this controller stops acting on HAProxy");
                        lease.end();
                        pg.set_epoch(0);
                        stopping = true;
                        let _ = term_tx.send(true);
                    }
                }
                _ = prune.tick(), if !stopping => {
                    // Answered requests are kept a day, for whoever reads the table.
                    let (p, cutoff) = (pg.clone(), crate::time::now_ms().saturating_sub(86_400_000));
                    tokio::task::spawn_blocking(move || requests::prune(&p, cutoff));
                }
                _ = asks.tick(), if !stopping && running.is_some() => {
                    if let Some(h) = running {
                        carry_out_asked(&pg, &pgc.name, h);
                    }
                }
            }
        };
        lease.end();
        pg.set_epoch(0);
        status.set(false, 0, &metrics);
        if resign {
            if let Some(s) = &session {
                s.resign().await;
            }
            return ended;
        }
        // The lock goes with the session: whoever answers next leads.
        session = None;
        match ended {
            Ok(()) => info!(epoch, "term ended; following"),
            Err(e @ StoreError::Fenced(_)) => warn!(epoch, error = %e, "term ended by the database; following"),
            Err(e @ StoreError::Unreachable(_)) => {
                cut_off = true;
                warn!(epoch, error = %e, "term ended by the database; following")
            }
            Err(e) => return Err(e),
        }
        let blocks = std::mem::take(&mut *at_end.lock().unwrap_or_else(|e| e.into_inner()));
        if cut_off && !blocks.is_empty() {
            // Nobody can lead while the database is unreachable: if it is, this controller goes
            // on releasing what it held as each block ends (a release never denies anyone).
            let reachable = tokio::time::timeout(lead::HEARTBEAT * 2, Session::open(&pgc)).await;
            if !matches!(reachable, Ok(Ok(_))) {
                warn!(
                    blocks = blocks.len(),
                    "PostgreSQL is unreachable: releasing the blocks held as they end, nothing else"
                );
                outage = Some(Outage::start(&cfg, blocks, &metrics));
            }
        }
    }
}

/// A leader cut off from its database: the blocks it held, released on HAProxy as each ends (by
/// actuators of its own that are only ever given releases), and what it released, for the
/// record once the database answers.
struct Outage {
    blocks: Vec<crate::store::Block>,
    actuators: Vec<crate::actuator::Actuator>,
    released: Vec<(crate::store::Block, crate::time::Millis)>,
    _stop: watch::Sender<bool>,
}

impl Outage {
    fn start(cfg: &Config, blocks: Vec<crate::store::Block>, metrics: &Arc<Metrics>) -> Outage {
        let (stop, stop_rx) = watch::channel(false);
        let actuators = cfg
            .targets
            .iter()
            .map(|t| {
                let client = Client::new(t.target.clone(), ClientOptions::default());
                crate::actuator::Actuator::spawn(t, client, stop_rx.clone(), metrics.clone())
            })
            .collect();
        Outage { blocks, actuators, released: Vec::new(), _stop: stop }
    }

    /// Releases every block whose end has come (dry-run blocks were never sent).
    fn release_due(&mut self, now: crate::time::Millis) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.blocks).into_iter().partition(|b| b.until <= now);
        self.blocks = keep;
        for b in due {
            if !b.dry_run {
                info!(key = %b.key, "block ended: released while the database is unreachable");
                for a in &self.actuators {
                    let job = crate::actuator::Job::Release {
                        key: b.key.clone(),
                        actions: b.actions.clone(),
                        place: b.place(),
                    };
                    if let Ok(done) = a.submit(job) {
                        let key = b.key.clone();
                        tokio::spawn(async move {
                            if let Ok(Err(e)) = done.await {
                                warn!(%key, error = %e, "release during the outage not confirmed");
                            }
                        });
                    }
                }
                self.released.push((b, now));
            }
        }
    }
}

/// One follower round: a session if there is none, a heartbeat, and a try for the lock.
async fn follow_once(
    pgc: &PgConfig,
    session: &mut Option<Session>,
    status: &Status,
    api: &str,
) -> Result<Option<lead::Took>, StoreError> {
    if session.as_ref().is_none_or(Session::is_closed) {
        *session = Some(Session::open(pgc).await?);
    }
    let s = session.as_ref().expect("opened above");
    let l = tokio::time::timeout(lead::HEARTBEAT, s.heartbeat("follower", 0, api))
        .await
        .map_err(|_| StoreError::Unreachable("no answer to a heartbeat".into()))??;
    status.saw(l);
    Ok(tokio::time::timeout(lead::HEARTBEAT, s.try_lead())
        .await
        .map_err(|_| StoreError::Unreachable("no answer to the lock".into()))??)
}

/// Claims what followers asked, and carries each out through `h` (the leader's controller).
fn carry_out_asked(pg: &Arc<PgStore>, name: &str, h: Handle) {
    let (pg, name) = (pg.clone(), name.to_owned());
    tokio::spawn(async move {
        let p = pg.clone();
        let asked = match tokio::task::spawn_blocking(move || requests::claim(&p, &name)).await {
            Ok(Ok(a)) => a,
            _ => return,
        };
        for a in asked {
            let (pg, h) = (pg.clone(), h.clone());
            tokio::spawn(async move {
                let answer = match serde_json::from_str::<Manual>(&a.op) {
                    Err(e) => requests::Answer::Failed {
                        code: "invalid_request".into(),
                        message: format!("the leader cannot read the request: {e}"),
                    },
                    Ok(op) => match h.manual(op, &a.actor).await {
                        Ok(outcome) => {
                            requests::Answer::Done(serde_json::to_value(outcome).expect("outcomes serialize"))
                        }
                        Err(e) => requests::Answer::Failed { code: e.code().into(), message: e.to_string() },
                    },
                };
                let _ = tokio::task::spawn_blocking(move || requests::answer(&pg, a.id, &answer)).await;
            });
        }
    });
}

/// What a controller that does not lead answers itself.
struct Follower {
    pg: Arc<PgStore>,
    store: Store,
    name: String,
}

impl Follower {
    fn serve(&self, msg: Msg) {
        match msg {
            Msg::Manual { op, actor, reply } => {
                let (pg, name) = (self.pg.clone(), self.name.clone());
                tokio::spawn(async move {
                    let _ = reply.send(forward(pg, name, op, actor).await);
                });
            }
            Msg::Listing { listing, reply } => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    let blocks = tokio::task::spawn_blocking(move || store.blocks()).await.expect("read task");
                    if let Ok(blocks) = blocks {
                        let _ = reply.send(listing.select(blocks.iter(), crate::time::now_ms(), &Default::default()));
                    }
                });
            }
            Msg::Summary { reply } => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(blocks)) = tokio::task::spawn_blocking(move || store.blocks()).await {
                        let _ = reply.send(crate::ops::listing::summary(blocks.iter()));
                    }
                });
            }
            Msg::Backup { reply } => {
                // PostgreSQL reads one snapshot: no controller needs to wait for the copy.
                let store = self.store.clone();
                tokio::spawn(async move {
                    let made = tokio::task::spawn_blocking(move || {
                        let io = |e: std::io::Error| StoreError::Io(format!("cannot write the backup file: {e}"));
                        let file = tempfile::NamedTempFile::new_in(store.path()).map_err(io)?;
                        store.export(std::io::BufWriter::new(file.reopen().map_err(io)?))?;
                        Ok(file)
                    })
                    .await
                    .expect("backup task");
                    let _ = reply.send(made);
                });
            }
            // Nothing polls, reconciles or acts while following.
            Msg::Observed { .. } | Msg::Done { .. } | Msg::Restarted { .. } | Msg::Actual(_) => {}
        }
    }
}

/// An operator action asked on a follower: written for the leader, and its answer awaited.
async fn forward(pg: Arc<PgStore>, name: String, op: Manual, actor: String) -> Result<ManualReply, OpError> {
    let text = serde_json::to_string(&op).expect("actions serialize");
    let p = pg.clone();
    let id = tokio::task::spawn_blocking(move || requests::ask(&p, text, &actor, &name))
        .await
        .map_err(|_| OpError::Unavailable)??;
    let deadline = Instant::now() + ANSWER_WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(REQUEST_POLL).await;
        let p = pg.clone();
        let answer =
            tokio::task::spawn_blocking(move || requests::answer_of(&p, id)).await.map_err(|_| OpError::Unavailable)?;
        match answer {
            Ok(Some(requests::Answer::Done(v))) => {
                let outcome: Outcome = serde_json::from_value(v)
                    .map_err(|e| OpError::Store(StoreError::Backend(format!("the leader's answer: {e}"))))?;
                return Ok(ManualReply { outcome, pending: Vec::new() });
            }
            Ok(Some(requests::Answer::Failed { code, message })) => return Err(OpError::of_code(&code, message)),
            // A database that does not answer now may answer before the deadline.
            Ok(None) | Err(_) => {}
        }
    }
    Err(OpError::Store(StoreError::Unreachable(format!(
        "request {id}: no leader answered within {}: it may still be carried out (see `stickwarden history`)",
        crate::time::human(ANSWER_WAIT)
    ))))
}
