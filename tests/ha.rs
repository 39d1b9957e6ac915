//! Several `stickwarden run` processes on one real PostgreSQL (`stickwarden::pg_sandbox`) and
//! real HAProxy nodes: one leads at a time; a killed leader is replaced within 5 s and no block it
//! decided is lost, doubled or released late; a paused leader acts on nothing once another leads;
//! an operator action on a follower is carried out by the leader and confirmed on every node;
//! while PostgreSQL is down nobody leads, the blocks stay in force, and everything converges
//! when it returns.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stickwarden::api::client::ApiClient;
use stickwarden::config::{Listen, PgConfig};
use stickwarden::pg_sandbox::PgSandbox;
use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::store::{Event, Store};
use stickwarden::Client;

fn pg() -> PgSandbox {
    PgSandbox::start(false).unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"))
}

/// `n` HAProxy nodes sharing one block ACL file.
fn nodes(n: usize) -> (tempfile::TempDir, Vec<Sandbox>) {
    let shared = tempfile::tempdir().unwrap();
    let opts = SandboxOptions { acl_file: Some(shared.path().join("block.lst")), ..Default::default() };
    (shared, (0..n).map(|_| haproxy_with(&opts)).collect())
}

async fn clients(nodes: &[Sandbox]) -> Vec<Client> {
    let mut out = Vec::new();
    for sb in nodes {
        out.push(admin(sb).await);
    }
    out
}

/// `addr`'s tag on every node (`None`: no entry).
async fn tags(cs: &[Client], addr: &str) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for c in cs {
        out.push(gpt0(c, addr).await);
    }
    out
}

/// Whether `addr` has no tag set, on each node (no entry, or `gpt0` 0).
async fn untagged(cs: &[Client], addr: &str) -> Vec<bool> {
    tags(cs, addr).await.iter().map(|t| t.unwrap_or(0) == 0).collect()
}

/// Whether `addr` is in the block ACL of every node (`true`) or of none (`false`); `None` when
/// the nodes disagree.
async fn in_acl(cs: &[Client], nodes: &[Sandbox], addr: &str) -> Option<bool> {
    let mut seen = Vec::new();
    for (c, sb) in cs.iter().zip(nodes) {
        seen.push(acl(c, sb).await.iter().any(|p| p == addr));
    }
    seen.dedup();
    (seen.len() == 1).then(|| seen[0])
}

/// Controllers sharing the database `db` of a PostgreSQL sandbox, each a real process with its
/// own API socket and log.
struct Cluster {
    s: Setup,
    url: String,
    procs: Vec<Option<Child>>,
}

impl Cluster {
    /// `n` controllers on `nodes` (the first is `sandbox`, the others `node2`...), with `policy`
    /// and `top` (settings before any table).
    fn start(nodes: &[Sandbox], pg: &PgSandbox, db: &str, top: &str, policy: &str, n: usize) -> Cluster {
        let mut targets = String::new();
        for (i, sb) in nodes.iter().enumerate().skip(1) {
            targets.push_str(&format!("[[haproxy]]\nname = \"node{}\"\nsocket = \"{}\"\n\n", i + 1, sb.admin()));
        }
        let s = setup(&nodes[0], top, policy, &targets);
        let url = pg.database(db).unwrap();
        let base = std::fs::read_to_string(&s.config).unwrap();
        let mut c = Cluster::on(s, url.clone());
        for i in 0..n {
            let store =
                format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nname = \"ctl-{i}\"\npath = \"store-{i}\"");
            c.add(&base.replace("[store]\npath = \"store\"", &store));
        }
        c
    }

    /// No controller yet, on the database at `url`; the tokens file of [`with_api`] in the
    /// setup's directory.
    fn on(s: Setup, url: String) -> Cluster {
        with_api(&s);
        let text = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(&s.config, text.split("\n[api]").next().unwrap()).unwrap();
        Cluster { s, url, procs: Vec::new() }
    }

    /// Starts controller number `procs.len()` on `config` (its `[api]` added: a socket of its own).
    fn add(&mut self, config: &str) {
        let i = self.procs.len();
        let text =
            format!("{config}\n[api]\nlisten = [\"unix:{}\"]\ntokens = \"tokens.toml\"\n", self.sock(i).display());
        std::fs::write(self.config(i), text).unwrap();
        let p = self.spawn(i);
        self.procs.push(Some(p));
    }

    fn config(&self, i: usize) -> std::path::PathBuf {
        self.s.dir.path().join(format!("stickwarden-{i}.toml"))
    }

    fn sock(&self, i: usize) -> std::path::PathBuf {
        self.s.dir.path().join(format!("api-{i}.sock"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.s.dir.path().join(format!("log-{i}.txt"))).unwrap_or_default()
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.s.dir.path().join(format!("log-{i}.txt")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args(["run", "--config", self.config(i).to_str().unwrap()])
            .env("STICKWARDEN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.procs[i].as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    fn kill(&mut self, i: usize) {
        self.signal(i, "-KILL");
        let mut p = self.procs[i].take().unwrap();
        p.wait().unwrap();
    }

    fn api(&self, i: usize, token: Option<&str>) -> ApiClient {
        ApiClient::new(Listen::Unix(self.sock(i)), token.map(str::to_owned))
    }

    /// `/healthz` of controller `i`, if it answers within a second.
    async fn health(&self, i: usize) -> Option<serde_json::Value> {
        self.procs[i].as_ref()?;
        let api = self.api(i, None);
        tokio::time::timeout(Duration::from_secs(1), api.get::<serde_json::Value>("/healthz")).await.ok()?.ok()
    }

    /// The controllers that say they lead, with their epochs.
    async fn leaders(&self) -> Vec<(usize, i64)> {
        let mut out = Vec::new();
        for i in 0..self.procs.len() {
            if let Some(h) = self.health(i).await {
                if h["ha"]["role"] == "leader" {
                    out.push((i, h["ha"]["epoch"].as_i64().unwrap()));
                }
            }
        }
        out
    }

    /// The one leader, once there is exactly one (within `within`).
    async fn leader(&self, within: Duration) -> Option<(usize, i64)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let l = self.leaders().await;
            if l.len() == 1 {
                return Some(l[0]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The shared store, read as the tests' own controller (it leads nothing, so it writes nothing).
    fn store(&self) -> Store {
        let cfg = PgConfig { url: self.url.clone(), password_file: None, name: "test".into() };
        let pg =
            tokio::task::block_in_place(|| stickwarden::store::postgres::PgStore::connect(&cfg, self.s.dir.path()));
        Store::on_postgres(Arc::new(pg.unwrap()))
    }

    fn logs(&self) -> String {
        (0..self.procs.len()).map(|i| format!("--- ctl-{i}\n{}", self.log(i))).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn audit_of(store: &Store, addr: &str) -> Vec<(Event, u32, u64)> {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    tokio::task::block_in_place(|| store.audit_covering(addr))
        .unwrap()
        .iter()
        .map(|r| (r.event, r.level, r.at))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_flood_is_replaced_within_5_s_and_its_blocks_are_neither_lost_nor_doubled() {
    let (_shared, nodes) = nodes(2);
    let cs = clients(&nodes).await;
    let pg = pg();
    // Level 1 tags and lists in the ACL for 12 s; a repeat offence only tags: the ACL shows the
    // first block's release whatever the abuser does next.
    let steps = "{ action = [\"tag\", \"acl\"], duration = \"12s\" }, { action = [\"tag\"], duration = \"1h\" }";
    let mut c = Cluster::start(&nodes, &pg, "failover", "", &policy(steps), 3);
    let (first, epoch) = c.leader(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no leader\n{}", c.logs()));

    assert_eq!(flood(&nodes[0], 1, 150).await, [(200, 150)]);
    let blocked = eventually(Duration::from_secs(5), || async {
        tags(&cs, "127.0.0.2").await == [Some(1), Some(1)] && in_acl(&cs, &nodes, "127.0.0.2").await == Some(true)
    })
    .await;
    assert!(blocked, "127.0.0.2 not blocked on both nodes\n{}", c.logs());
    let store = c.store();
    let block = tokio::task::block_in_place(|| store.block_covering("127.0.0.2".parse().unwrap())).unwrap().unwrap();

    // The abuser keeps knocking on both nodes through the failover (every answer must be 403),
    // until shortly before its block ends.
    let knock_until =
        Instant::now() + Duration::from_millis(block.until.saturating_sub(stickwarden::time::now_ms()) - 3_000);
    let ports = [nodes[0].web_port, nodes[1].web_port];
    let knocking = tokio::spawn(async move {
        let mut answers = Vec::new();
        while Instant::now() < knock_until {
            for port in ports {
                answers.push(stickwarden::sandbox::http_get(stickwarden::sandbox::client_addr(1), port).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answers
    });

    c.kill(first);
    let killed = Instant::now();
    let (second, epoch2) =
        c.leader(Duration::from_secs(5)).await.unwrap_or_else(|| panic!("no new leader within 5 s\n{}", c.logs()));
    let failover = killed.elapsed();
    assert_ne!(second, first);
    assert!(epoch2 > epoch, "the new leader's epoch {epoch2} follows {epoch}");
    eprintln!("failover: {failover:?}");

    // The new leader decides: a new abuser on node 2 is blocked on both nodes.
    assert_eq!(flood(&nodes[1], 2, 150).await, [(200, 150)]);
    let second_blocked =
        eventually(Duration::from_secs(5), || async { tags(&cs, "127.0.0.3").await == [Some(1), Some(1)] }).await;
    assert!(second_blocked, "the new leader blocks nothing\n{}", c.logs());

    // The block decided before the kill is released on time, on both nodes.
    let answers = knocking.await.unwrap();
    assert!(answers.len() > 20 && answers.iter().all(|s| *s == 403), "abusers got through: {answers:?}");
    let wait = Duration::from_millis(block.until.saturating_sub(stickwarden::time::now_ms()) + 3_000);
    let released = eventually(wait, || async { in_acl(&cs, &nodes, "127.0.0.2").await == Some(false) }).await;
    assert!(released, "the first block was never released from the ACL\n{}", c.logs());

    // The audit: the block once, its release once and on time, and the takeover with both epochs.
    // A release is recorded once HAProxy confirmed it, a moment after the ACL shows it.
    let recorded = eventually(Duration::from_secs(3), || async {
        audit_of(&store, "127.0.0.2").iter().any(|(e, _, _)| *e == Event::Release)
    })
    .await;
    assert!(recorded, "the release was never recorded\n{}", c.logs());
    let log = audit_of(&store, "127.0.0.2");
    let firsts: Vec<_> = log.iter().filter(|(e, l, _)| *l == 1 && matches!(e, Event::Block | Event::Release)).collect();
    assert_eq!(
        firsts.iter().map(|(e, _, _)| *e).collect::<Vec<_>>(),
        [Event::Block, Event::Release],
        "{log:?}\n{}",
        c.logs()
    );
    let released_at = firsts[1].2;
    assert!(
        (block.until..block.until + 2_000).contains(&released_at),
        "released at {released_at}, due at {}",
        block.until
    );
    let changes: Vec<_> = tokio::task::block_in_place(|| store.audit_since(0))
        .unwrap()
        .into_iter()
        .filter(|r| r.event == Event::LeaderChanged)
        .collect();
    let last = changes.last().unwrap();
    assert_eq!(last.counters, [("previous_epoch".to_owned(), epoch), ("epoch".to_owned(), epoch2)]);
    assert_eq!(last.actor, format!("ctl-{second}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_acts_on_nothing_once_another_leads_and_steps_down() {
    let (_shared, nodes) = nodes(1);
    let cs = clients(&nodes).await;
    let pg = pg();
    // The reconciler runs every second: a paused leader that woke up and still acted would put
    // back at once the block the new leader lifted meanwhile.
    let steps = "{ action = [\"tag\", \"acl\"], duration = \"1h\" }";
    let mut c = Cluster::start(&nodes, &pg, "paused", "reconcile_interval = \"1s\"", &policy(steps), 2);
    let (first, epoch) = c.leader(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    assert_eq!(flood(&nodes[0], 1, 150).await, [(200, 150)]);
    let blocked = eventually(Duration::from_secs(5), || async {
        tags(&cs, "127.0.0.2").await == [Some(1)] && in_acl(&cs, &nodes, "127.0.0.2").await == Some(true)
    })
    .await;
    assert!(blocked, "{}", c.logs());

    c.signal(first, "-STOP");
    let other = 1 - first;
    let took = eventually(Duration::from_secs(8), || async {
        c.health(other).await.is_some_and(|h| h["ha"]["role"] == "leader")
    })
    .await;
    assert!(took, "nobody took over from a paused leader\n{}", c.logs());
    // The new leader lifts the block, confirmed by HAProxy.
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["unblock", "127.0.0.2", "--reason", "false positive", "--config", c.config(other).to_str().unwrap()])
        .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
        .env_remove("STICKWARDEN_API")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(untagged(&cs, "127.0.0.2").await, [true]);
    assert_eq!(in_acl(&cs, &nodes, "127.0.0.2").await, Some(false));

    // The old leader wakes up: it still believes 127.0.0.2 is blocked, and its reconciler runs
    // every second, but its lease is over and the database refuses its epoch.
    c.signal(first, "-CONT");
    let stepped_down = eventually(Duration::from_secs(6), || async {
        c.health(first).await.is_some_and(|h| h["ha"]["role"] == "follower" && h["ha"]["epoch"] == 0)
    })
    .await;
    assert!(stepped_down, "the paused leader did not step down\n{}", c.logs());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(untagged(&cs, "127.0.0.2").await, [true], "the old leader re-applied the block\n{}", c.logs());
        assert_eq!(in_acl(&cs, &nodes, "127.0.0.2").await, Some(false), "{}", c.logs());
    }
    assert_eq!(c.leaders().await.iter().map(|l| l.0).collect::<Vec<_>>(), [other]);
    assert!(c.leaders().await[0].1 > epoch);
    assert!(c.log(first).contains("stepping down") || c.log(first).contains("term ended"), "{}", c.log(first));
    c.kill(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_block_on_a_follower_is_carried_out_by_the_leader_and_confirmed_on_every_node() {
    let (_shared, nodes) = nodes(2);
    let cs = clients(&nodes).await;
    let pg = pg();
    let c =
        Cluster::start(&nodes, &pg, "follower", "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), 3);
    let (leader, _) = c.leader(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    let follower = (leader + 1) % 3;
    let api = c.api(follower, Some(OPERATOR_TOKEN));
    let body = serde_json::json!({ "key": "192.0.2.7", "duration": "1h", "reason": "seen in the WAF" });
    let answer: serde_json::Value = api.post("/v1/blocks", &body).await.unwrap();
    assert_eq!(answer["blocked"][0]["key"], "192.0.2.7", "{answer}");
    assert_eq!(answer["failures"], serde_json::json!([]), "{answer}");
    // Answered after HAProxy confirmed: already on every node.
    assert_eq!(tags(&cs, "192.0.2.7").await, [Some(1), Some(1)]);
    assert_eq!(in_acl(&cs, &nodes, "192.0.2.7").await, Some(true));
    // Every controller lists it (followers read the database), with the operator as its actor.
    for i in 0..3 {
        let blocks: serde_json::Value = c.api(i, Some(VIEWER_TOKEN)).get("/v1/blocks").await.unwrap();
        assert!(blocks.to_string().contains("192.0.2.7"), "ctl-{i}: {blocks}");
    }
    let log = audit_of(&c.store(), "192.0.2.7");
    assert_eq!(log.iter().filter(|(e, _, _)| *e == Event::Block).count(), 1, "{log:?}");
    // Bad input is refused by the leader with its code, and nothing changes.
    let bad = serde_json::json!({ "key": "0.0.0.0/0", "duration": "1h", "reason": "everything" });
    let e = api.post::<serde_json::Value>("/v1/blocks", &bad).await.unwrap_err().to_string();
    assert!(e.contains("too_broad"), "{e}");
    // The CLI through a follower's API says the same.
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["unblock", "192.0.2.7", "--reason", "done", "--config", c.config(follower).to_str().unwrap()])
        .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
        .env_remove("STICKWARDEN_API")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(in_acl(&cs, &nodes, "192.0.2.7").await, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_down_nobody_leads_blocks_stay_in_force_and_it_all_converges_when_it_returns() {
    let (_shared, nodes) = nodes(1);
    let cs = clients(&nodes).await;
    let mut pg = pg();
    let steps = "{ action = [\"tag\", \"acl\"], duration = \"1h\" }";
    let c = Cluster::start(&nodes, &pg, "outage", "", &policy(steps), 2);
    let (_, epoch) = c.leader(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    assert_eq!(flood(&nodes[0], 1, 150).await, [(200, 150)]);
    assert!(eventually(Duration::from_secs(5), || async { tags(&cs, "127.0.0.2").await == [Some(1)] }).await);

    // An operator block that ends during the outage.
    let (leader, _) = c.leader(Duration::from_secs(1)).await.unwrap();
    let body = serde_json::json!({ "key": "192.0.2.9", "duration": "8s", "reason": "short" });
    let answer: serde_json::Value = c.api(leader, Some(OPERATOR_TOKEN)).post("/v1/blocks", &body).await.unwrap();
    assert_eq!(answer["failures"], serde_json::json!([]), "{answer}");
    assert_eq!(in_acl(&cs, &nodes, "192.0.2.9").await, Some(true));
    let short_ends = Instant::now() + Duration::from_secs(8);

    pg.stop();
    let down = Instant::now();
    // Within the lease (3 s) and a heartbeat, nobody leads.
    let nobody = eventually(Duration::from_secs(6), || async { c.leaders().await.is_empty() }).await;
    assert!(nobody, "a controller leads without its database\n{}", c.logs());
    // A new abuser meanwhile is not blocked (nothing can be recorded), the old one stays blocked.
    assert_eq!(flood(&nodes[0], 2, 150).await, [(200, 150)]);
    // The leader cut off from its database still releases, on time, the block that ends.
    let mut statuses = Vec::new();
    let mut short_released = None;
    while down.elapsed() < Duration::from_secs(30) {
        if short_released.is_none() && in_acl(&cs, &nodes, "192.0.2.9").await == Some(false) {
            short_released = Some(Instant::now());
        }
        statuses.push(get(&nodes[0], 1).await);
        assert!(c.health(0).await.is_some() || c.health(1).await.is_some(), "the APIs still answer");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(statuses.iter().all(|s| *s == 403), "the blocked abuser got through: {statuses:?}");
    let at =
        short_released.unwrap_or_else(|| panic!("the short block was not released during the outage\n{}", c.logs()));
    assert!(
        at >= short_ends - Duration::from_millis(500) && at < short_ends + Duration::from_secs(2),
        "released {:?} after its end",
        at - short_ends
    );
    assert_eq!(untagged(&cs, "127.0.0.3").await, [true]);

    pg.start_again().unwrap();
    let (_, epoch2) =
        c.leader(Duration::from_secs(10)).await.unwrap_or_else(|| panic!("no leader after\n{}", c.logs()));
    assert!(epoch2 > epoch);
    // Deciding again: the new abuser, back, is blocked.
    assert_eq!(flood(&nodes[0], 2, 150).await, [(200, 150)]);
    assert!(eventually(Duration::from_secs(5), || async { tags(&cs, "127.0.0.3").await == [Some(1)] }).await);
    let store = c.store();
    let log = audit_of(&store, "127.0.0.2");
    assert_eq!(log.iter().filter(|(e, _, _)| *e == Event::Block).count(), 1, "{log:?}");
    // The short block's release is recorded once (by whichever controller leads now), and what
    // is in force is the first abuser's block and the new one's.
    let short_recorded = eventually(Duration::from_secs(3), || async {
        audit_of(&store, "192.0.2.9").iter().any(|(e, _, _)| *e == Event::Release)
    })
    .await;
    assert!(short_recorded, "the short block's release was never recorded\n{}", c.logs());
    let short = audit_of(&store, "192.0.2.9");
    assert_eq!(short.iter().map(|(e, _, _)| *e).collect::<Vec<_>>(), [Event::Block, Event::Release], "{short:?}");
    let keys: Vec<String> =
        tokio::task::block_in_place(|| store.blocks()).unwrap().iter().map(|b| b.key.to_string()).collect();
    assert_eq!(keys, ["127.0.0.2", "127.0.0.3"]);
}

/// The lines of the fenced blocks of `lang` in docs/ha.md.
fn doc_blocks(lang: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ha.md")).unwrap();
    let (mut out, mut inside) = (Vec::new(), false);
    let mut block = String::new();
    for line in doc.lines().map(str::trim) {
        if line.starts_with("```") {
            if inside {
                out.push(std::mem::take(&mut block));
            }
            inside = !inside && line == format!("```{lang}");
            continue;
        }
        if inside {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// docs/ha.md's walk-through: a sled controller's store backed up, its `[store]` replaced by the
/// documented one, restored into PostgreSQL and checked, then three controllers on it: one
/// leads and applies the restored block on a fresh HAProxy; every controller lists it; the
/// `/healthz` fields are the documented ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_of_docs_ha_md_takes_a_sled_store_to_three_controllers_on_postgres() {
    let sb = haproxy();
    let pg = pg();
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let sw = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args(args)
            .current_dir(s.dir.path())
            .env("STICKWARDEN_CONFIG", &s.config)
            .env_remove("STICKWARDEN_API")
            .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", out(&o));
        out(&o)
    };
    sw(&["block", "203.0.113.7", "--for", "1h", "--reason", "seen before the move"]);

    let sh: Vec<String> = doc_blocks("sh").concat().lines().map(str::to_owned).collect();
    assert_eq!(sh.len(), 3, "docs/ha.md's commands: {sh:?}");
    let backup = s.dir.path().join("before-pg.jsonl");
    let run = |line: &str| {
        let line = line.replace("/var/backups/stickwarden-before-pg.jsonl", backup.to_str().unwrap());
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "stickwarden", "{line}");
        sw(&words[1..])
    };
    run(&sh[0]);

    // The documented [store], on this database, with a password file (trust ignores it).
    let [toml] = &doc_blocks("toml")[..] else { panic!("one toml block expected in docs/ha.md") };
    let url = pg.database("migrated").unwrap();
    std::fs::write(s.dir.path().join("pg-password"), "not-needed\n").unwrap();
    let store = toml
        .replace("postgres://stickwarden@db.internal:5432/stickwarden", &url)
        .replace("/etc/stickwarden/pg-password", "pg-password")
        .replace("/var/lib/stickwarden", "state");
    let text = std::fs::read_to_string(&s.config).unwrap();
    let sled = text[text.find("[store]").unwrap()..].split("\n\n").next().unwrap().to_owned();
    std::fs::write(&s.config, text.replace(&sled, store.trim_end())).unwrap();
    run(&sh[1]);
    let checked = run(&sh[2]);
    assert!(checked.contains("schema version 1") && checked.contains("may read and write every table"), "{checked}");

    // Three controllers on a fresh HAProxy (same ACL path, as a new node of the same
    // configuration has): the leader applies the restored block there.
    let fresh = haproxy_with(&SandboxOptions { acl_file: Some(sb.block_acl().to_path_buf()), ..Default::default() });
    let c2 = admin(&fresh).await;
    let base = std::fs::read_to_string(&s.config).unwrap().replace(&sb.admin(), &fresh.admin());
    let setup2 = Setup { dir: tempfile::tempdir().unwrap(), config: s.config.clone() };
    std::fs::create_dir(setup2.dir.path().join("rules")).unwrap();
    for f in std::fs::read_dir(s.dir.path().join("rules")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), setup2.dir.path().join("rules").join(f.file_name())).unwrap();
    }
    std::fs::copy(s.dir.path().join("pg-password"), setup2.dir.path().join("pg-password")).unwrap();
    let setup2 = Setup { config: setup2.dir.path().join("stickwarden.toml"), ..setup2 };
    std::fs::write(&setup2.config, &base).unwrap();
    let mut c = Cluster::on(setup2, url);
    for name in ["ctl-a", "ctl-b", "ctl-c"] {
        c.add(&base.replace("name = \"ctl-a\"", &format!("name = \"{name}\"")));
    }
    let (leader, epoch) = c.leader(Duration::from_secs(15)).await.unwrap_or_else(|| panic!("no leader\n{}", c.logs()));
    let applied = eventually(Duration::from_secs(5), || async { acl(&c2, &fresh).await == ["203.0.113.7"] }).await;
    assert!(applied, "the restored block is not on the fresh node\n{}", c.logs());
    for i in 0..3 {
        let blocks: serde_json::Value = c.api(i, Some(VIEWER_TOKEN)).get("/v1/blocks").await.unwrap();
        assert!(blocks.to_string().contains("203.0.113.7"), "ctl-{i}: {blocks}");
    }
    // /healthz has the documented fields; the takeover is in the audit log.
    let [json] = &doc_blocks("json")[..] else { panic!("one json block expected in docs/ha.md") };
    let documented: serde_json::Value = serde_json::from_str(json).unwrap();
    // A follower reads the leader row at each of its heartbeats (every second).
    let caught_up = eventually(Duration::from_secs(3), || async {
        c.health((leader + 1) % 3).await.is_some_and(|h| h["ha"]["leader_epoch"] == epoch)
    })
    .await;
    assert!(caught_up, "the follower never saw the leader");
    let follower = c.health((leader + 1) % 3).await.unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&follower["ha"]), keys(&documented["ha"]));
    assert_eq!(follower["ha"]["leader_epoch"], epoch);
    assert_eq!(follower["ha"]["leader"], ["ctl-a", "ctl-b", "ctl-c"][leader]);
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["audit", "--event", "leader_changed", "--json", "--config", c.config(leader).to_str().unwrap()])
        .env("STICKWARDEN_TOKEN", VIEWER_TOKEN)
        .env_remove("STICKWARDEN_API")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains(&format!("ctl-{}", ["a", "b", "c"][leader])), "{}", out(&o));
}
