//! The shared store (issue 17), on a real PostgreSQL (`stickwarden::pg_sandbox`, fsync on, as
//! production runs) against sled in the same run:
//!
//! 1. decisions recorded per second: batches of 1,000 block decisions (block, offender, audit
//!    record), each made durable as the controller does before it acts on them (sled: one
//!    transaction and a flush; PostgreSQL: one committed transaction);
//! 2. review: `stickwarden blocks --json` of 100,000 blocks from PostgreSQL, through the leader's
//!    API and through a follower's (target < 1 s, as on sled);
//! 3. failover: three `stickwarden run` processes on one HAProxy and 1,000 active blocks; the
//!    leader is killed (SIGKILL) ten times; the time from the kill to a new leader whose term
//!    runs (lock taken, blocks re-applied, the target reconciled), p50 and max.
//!
//! Not criterion: one-shot end-to-end figures printed as a report. `cargo bench --bench ha`
//! (about two minutes; needs `haproxy` and PostgreSQL's server).

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stickwarden::api::client::ApiClient;
use stickwarden::config::{Listen, PgConfig};
use stickwarden::key::Key;
use stickwarden::pg_sandbox::PgSandbox;
use stickwarden::rules::{Action, Actions};
use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::store::postgres::{lead, PgStore};
use stickwarden::store::{AuditRecord, Block, Event, Offence, Offender, Origin, Store, Write};

use common::TOKEN;

const DECISIONS: u32 = 10_000;
const BATCH: u32 = 1_000;
const REVIEW_BLOCKS: u32 = 100_000;
const KILLS: usize = 10;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run());
}

fn block(i: u32, now: u64) -> Block {
    Block {
        key: Key::host(std::net::Ipv4Addr::from(0x0c00_0000 + i).into()),
        level: 1,
        actions: Actions::new(vec![Action::Tag, Action::Acl]),
        rule: "http-flood".into(),
        reason: "score crossed 100 (http_req_rate=150)".into(),
        source: Origin::Auto,
        actor: "stickwarden".into(),
        since: now,
        until: now + 7_200_000,
        counters: vec![("http_req_rate".into(), 150)],
        dry_run: false,
        place: None,
        nodes: Vec::new(),
    }
}

/// Decisions a second: `DECISIONS` decisions in batches of `BATCH`, each batch durable.
fn decisions_per_second(store: &Store, base: u32) -> f64 {
    let now = stickwarden::time::now_ms();
    let started = Instant::now();
    for b in 0..DECISIONS / BATCH {
        let writes: Vec<Write> = (0..BATCH)
            .map(|i| {
                let blk = block(base + b * BATCH + i, now);
                let mut o = Offender::default();
                o.offences.push(Offence { at: now, rule: "http-flood".into(), level: 1, dry_run: false });
                let rec = AuditRecord::of(Event::Block, &blk, now);
                Write::Decide { offender: Some((blk.key.clone(), o)), block: Box::new(blk), rec }
            })
            .collect();
        store.record(writes).unwrap();
        store.flush().unwrap();
    }
    f64::from(DECISIONS) / started.elapsed().as_secs_f64()
}

/// A new database of `pg` with the leader's lock held by `session`: a store leading there.
async fn leading(pg: &PgSandbox, db: &str, dir: &std::path::Path) -> (Store, PgConfig, lead::Session) {
    let cfg = PgConfig { url: pg.database(db).unwrap(), password_file: None, name: "bench".into() };
    let store = Arc::new(PgStore::connect(&cfg, dir).unwrap());
    let session = lead::Session::open(&cfg).await.unwrap();
    let took = session.try_lead().await.unwrap().unwrap();
    store.set_epoch(took.epoch);
    (Store::on_postgres(store), cfg, session)
}

async fn run() {
    let pg = PgSandbox::start(true).expect("PostgreSQL (make test-deps installs it)");
    let work = tempfile::tempdir().unwrap();

    // 1. Decisions per second, sled and PostgreSQL in turn, three rounds.
    let sled = Store::open(&work.path().join("sled"), 16 << 20).unwrap();
    let (pgs, _, session) = leading(&pg, "decisions", work.path()).await;
    let (mut on_sled, mut on_pg) = (Vec::new(), Vec::new());
    for round in 0..3 {
        on_sled.push(tokio::task::block_in_place(|| decisions_per_second(&sled, round * DECISIONS)));
        on_pg.push(tokio::task::block_in_place(|| decisions_per_second(&pgs, round * DECISIONS)));
    }
    drop(session);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ms, mp) = (median(&mut on_sled), median(&mut on_pg));

    // 2. blocks --json of 100,000 blocks, through a leader and a follower.
    let sb = Sandbox::start(&SandboxOptions::default()).expect("haproxy");
    let (review_store, review_cfg, session) = leading(&pg, "review", work.path()).await;
    let now = stickwarden::time::now_ms();
    let blocks: Vec<Block> = (0..REVIEW_BLOCKS).map(|i| block(i, now)).collect();
    let t = Instant::now();
    tokio::task::block_in_place(|| review_store.decide_many(&blocks, |b| AuditRecord::of(Event::Block, b, now)))
        .unwrap();
    eprintln!("{REVIEW_BLOCKS} blocks written to PostgreSQL in {:.1?}", t.elapsed());
    drop(session);
    let mut cluster = Cluster::new(work.path().join("review"), &sb, &review_cfg.url);
    cluster.start(2);
    let leader = cluster.leader(Duration::from_secs(120)).await.expect("a leader");
    // Timed once the leader's start-up is over: all 100,000 blocks confirmed by HAProxy.
    let settled = Instant::now();
    loop {
        let api = ApiClient::new(Listen::Unix(cluster.dir.join(format!("api-{leader}.sock"))), None);
        let h: serde_json::Value = api.get("/healthz").await.unwrap();
        if h["targets"][0]["unconfirmed"] == 0 && h["targets"][0]["up"] == true {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(120), "the leader never settled: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("leader settled {:.1?} after it took the lead", settled.elapsed());
    let mut through = Vec::new();
    for (what, i) in [("leader", leader), ("follower", 1 - leader)] {
        let mut runs = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
                .args(["blocks", "--json", "--config", cluster.config(i).to_str().unwrap()])
                .env("STICKWARDEN_TOKEN", TOKEN)
                .env_remove("STICKWARDEN_API")
                .output()
                .unwrap();
            runs.push(t.elapsed());
            let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
            assert_eq!(lines, REVIEW_BLOCKS as usize, "{}", String::from_utf8_lossy(&out.stderr));
        }
        runs.sort();
        through.push((what, runs));
    }
    drop(cluster);

    // 3. Failover, ten kills, on a fresh HAProxy (the other holds the review's 100,000 blocks,
    // which every new leader would read to reconcile).
    drop(sb);
    let sb = Sandbox::start(&SandboxOptions::default()).expect("haproxy");
    let (fo_store, fo_cfg, session) = leading(&pg, "failover", work.path()).await;
    let few: Vec<Block> = (0..1_000).map(|i| block(i, now)).collect();
    tokio::task::block_in_place(|| fo_store.decide_many(&few, |b| AuditRecord::of(Event::Block, b, now))).unwrap();
    drop(session);
    let mut cluster = Cluster::new(work.path().join("failover"), &sb, &fo_cfg.url);
    cluster.start(3);
    let mut times = Vec::new();
    let mut leader = cluster.leader(Duration::from_secs(30)).await.expect("a leader");
    for _ in 0..KILLS {
        cluster.kill(leader);
        let killed = Instant::now();
        let next = cluster.leader(Duration::from_secs(30)).await.unwrap_or_else(|| {
            for i in 0..3 {
                let log = std::fs::read_to_string(cluster.dir.join(format!("log-{i}.txt"))).unwrap_or_default();
                eprintln!("--- ctl-{i}\n{log}");
            }
            panic!("no new leader within 30 s")
        });
        times.push(killed.elapsed());
        if killed.elapsed() > Duration::from_secs(5) {
            let log = std::fs::read_to_string(cluster.dir.join(format!("log-{next}.txt"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("slow failover ({:.1?}) to ctl-{next}; its log ends:", killed.elapsed());
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
        cluster.restart(leader);
        leader = next;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    times.sort();
    drop(cluster);

    println!("\nShared store on PostgreSQL {} (fsync on) against sled, same run", pg_version());
    println!(
        "decisions recorded per second ({DECISIONS} in batches of {BATCH}, each batch durable): sled {ms:.0}/s, \
         PostgreSQL {mp:.0}/s (PostgreSQL/sled = {:.2}); rounds sled {on_sled:.0?}, PostgreSQL {on_pg:.0?}",
        mp / ms
    );
    for (what, runs) in &through {
        println!(
            "blocks --json, {REVIEW_BLOCKS} blocks from PostgreSQL through the {what}'s API: median {:.3?} (runs {runs:.3?}; target < 1 s)",
            runs[1]
        );
    }
    println!(
        "failover, {KILLS} SIGKILLs of the leader (3 controllers, 1,000 active blocks): p50 {:.2?}, max {:.2?} (all: {times:.2?}; target < 5 s)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
}

fn pg_version() -> String {
    stickwarden::pg_sandbox::bin_dir()
        .and_then(|b| Command::new(b.join("postgres")).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Controllers sharing one database, on one HAProxy, each with its API socket.
struct Cluster {
    dir: std::path::PathBuf,
    procs: Vec<Option<Child>>,
    base: String,
}

impl Cluster {
    fn new(dir: std::path::PathBuf, sb: &Sandbox, url: &str) -> Cluster {
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = common::write_config(
            &dir,
            sb,
            &common::BenchConfig {
                rules: &["http-flood.toml"],
                step: "[\"tag\", \"acl\"]",
                interval_ms: 1000,
                store: format!("backend = \"postgres\"\nurl = \"{url}\"\nname = \"NAME\""),
                safety: String::new(),
                tables: "",
                api: true,
            },
        );
        let base = std::fs::read_to_string(cfg).unwrap();
        Cluster { dir, procs: Vec::new(), base }
    }

    fn config(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("stickwarden-{i}.toml"))
    }

    fn start(&mut self, n: usize) {
        for i in 0..n {
            let sock = self.dir.join(format!("api-{i}.sock"));
            let text = self
                .base
                .replace("NAME", &format!("ctl-{i}"))
                .replace(&self.dir.join("api.sock").display().to_string(), &sock.display().to_string());
            std::fs::write(self.config(i), text).unwrap();
            self.procs.push(None);
            self.restart(i);
        }
    }

    fn restart(&mut self, i: usize) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("log-{i}.txt"))).unwrap();
        let p = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args(["run", "--config", self.config(i).to_str().unwrap()])
            .env("STICKWARDEN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i] = Some(p);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// The one controller whose term runs, polled every 10 ms.
    async fn leader(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for i in (0..self.procs.len()).filter(|i| self.procs[*i].is_some()) {
                let api = ApiClient::new(Listen::Unix(self.dir.join(format!("api-{i}.sock"))), None);
                if let Ok(Ok(h)) =
                    tokio::time::timeout(Duration::from_millis(500), api.get::<serde_json::Value>("/healthz")).await
                {
                    if h["ha"]["role"] == "leader" {
                        leaders.push(i);
                    }
                }
            }
            if leaders.len() == 1 {
                return Some(leaders[0]);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}
