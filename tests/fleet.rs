//! One controller for a fleet of five real HAProxy processes: an abuser spread over the nodes is
//! scored on its whole traffic and blocked on every node; manual blocks and unblocks reach every
//! node; a node that was down gets every active block when it returns, and meanwhile the API,
//! the metrics and `check` say what it has not confirmed.

mod common;

use std::time::Duration;

use common::*;
use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::Client;

const NODES: usize = 5;

/// `n` sandboxes sharing one block ACL file, as nodes deployed from one configuration do.
fn fleet(n: usize) -> (tempfile::TempDir, Vec<Sandbox>) {
    let shared = tempfile::tempdir().unwrap();
    let opts = SandboxOptions { acl_file: Some(shared.path().join("block.lst")), ..Default::default() };
    (shared, (0..n).map(|_| haproxy_with(&opts)).collect())
}

/// The standard setup on node 1 (named `sandbox`), plus `node2`... for the others.
fn fleet_setup(nodes: &[Sandbox], policy: &str, extra: &str) -> Setup {
    let mut targets = String::new();
    for (i, sb) in nodes.iter().enumerate().skip(1) {
        targets.push_str(&format!("[[haproxy]]\nname = \"node{}\"\nsocket = \"{}\"\n\n", i + 1, sb.admin()));
    }
    setup(&nodes[0], "", policy, &format!("{targets}{extra}"))
}

async fn clients(nodes: &[Sandbox]) -> Vec<Client> {
    let mut out = Vec::new();
    for sb in nodes {
        out.push(admin(sb).await);
    }
    out
}

/// The `gpt0` of `addr` on every node.
async fn tags(clients: &[Client], addr: &str) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for c in clients {
        out.push(gpt0(c, addr).await);
    }
    out
}

/// Whether every node's block ACL is exactly `want`.
async fn acls_are(clients: &[Client], nodes: &[Sandbox], want: &[&str]) -> bool {
    for (c, sb) in clients.iter().zip(nodes) {
        if acl(c, sb).await != want {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abuser_under_the_threshold_on_each_node_but_over_it_in_total_is_blocked_on_all_five() {
    let (_shared, nodes) = fleet(NODES);
    let cs = clients(&nodes).await;
    let tag_acl = policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");

    // Not merged, each node is scored on its own share: 30 requests each, under 100: no block.
    let s = fleet_setup(&nodes, &tag_acl, "[fleet]\nmerge = false\n");
    let d = Daemon::start(&s);
    for sb in &nodes {
        assert_eq!(flood(sb, 1, 30).await, [(200, 30)]);
        assert_eq!(flood(sb, 2, 12).await, [(200, 12)]);
    }
    tokio::time::sleep(Duration::from_millis(6 * INTERVAL_MS)).await;
    assert_eq!(tags(&cs, "127.0.0.2").await, [Some(0); NODES], "blocked without merging?");
    let store = d.stop().await;

    // Merged: the same traffic is 150 requests (plus the 403 probes) from 127.0.0.2 across the fleet.
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace("merge = false", "merge = true");
    std::fs::write(&s.config, cfg).unwrap();
    let d = Daemon::start_on(&s, store);
    let all_tagged = eventually(Duration::from_secs(3), || {
        let cs = &cs;
        async move { tags(cs, "127.0.0.2").await == [Some(1); NODES] }
    })
    .await;
    assert!(all_tagged, "not tagged on every node: {:?}", tags(&cs, "127.0.0.2").await);
    assert!(acls_are(&cs, &nodes, &["127.0.0.2"]).await);
    for sb in &nodes {
        assert_eq!(get(sb, 1).await, 403, "the abuser is denied on every node");
        assert_eq!(get(sb, 2).await, 200, "60 requests in all is not abuse");
    }
    assert_eq!(tags(&cs, "127.0.0.3").await, [Some(0); NODES]);
    let b = d.store.blocks().unwrap().into_iter().find(|b| b.key.to_string() == "127.0.0.2").unwrap();
    let rate = b.counters.iter().find(|(n, _)| n == "http_req_rate").map(|(_, v)| *v).unwrap();
    assert!((150..=160).contains(&rate), "the decision saw the fleet-wide rate: {rate}");
    // And the evidence keeps each node's share of it.
    assert_eq!(b.nodes.len(), NODES, "{:?}", b.nodes);
    let shares: Vec<i64> =
        b.nodes.iter().map(|n| n.counters.iter().find(|(c, _)| c == "http_req_rate").unwrap().1).collect();
    assert!(shares.iter().all(|v| (30..=32).contains(v)), "{shares:?}");
    assert_eq!(shares.iter().sum::<i64>(), rate);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_reach_every_node_and_a_node_that_was_down_gets_them_all_back() {
    let (_shared, mut nodes) = fleet(NODES);
    let cs = clients(&nodes).await;
    let s = fleet_setup(&nodes, &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let (d, _sock) = running_daemon(&s).await;

    let o = sw(&s, &["block", "10.9.0.1", "--for", "2h", "--reason", "fleet test"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(tags(&cs, "10.9.0.1").await, [Some(1); NODES]);
    assert!(acls_are(&cs, &nodes, &["10.9.0.1"]).await);
    let o = sw(&s, &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("ok   fleet: 5 targets; observations merged"), "{}", out(&o));
    assert!(out(&o).contains("ok   fleet: node5: up, every block and release confirmed"), "{}", out(&o));

    // Node 5 goes down; an abuser of the other four is blocked meanwhile.
    nodes[4].stop();
    for sb in &nodes[..4] {
        flood(sb, 3, 40).await;
    }
    let others_tagged = eventually(Duration::from_secs(3), || {
        let cs = &cs[..4];
        async move { tags(cs, "127.0.0.4").await == [Some(1); 4] }
    })
    .await;
    assert!(others_tagged, "not blocked on the nodes that are up");
    // The daemon says what node5 lacks: /healthz and `blocks --json` through the API, and check.
    let lagging = eventually(Duration::from_secs(3), || async {
        let o = sw(&s, &["blocks", "--json"]);
        let list: Vec<serde_json::Value> =
            String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        list.iter().any(|b| b["key"] == "127.0.0.4" && b["unconfirmed_on"] == serde_json::json!(["node5"]))
            && list.iter().any(|b| b["key"] == "10.9.0.1" && b.get("unconfirmed_on").is_none())
    })
    .await;
    assert!(lagging, "{}", out(&sw(&s, &["blocks", "--json"])));
    let o = sw(&s, &["blocks"]);
    assert!(out(&o).contains("tag+acl (not yet on node5)"), "{}", out(&o));
    assert!(out(&o).contains("2 active block(s), 1 not yet confirmed by every target"), "{}", out(&o));
    let o = sw(&s, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("FAIL fleet: node5: DOWN for the daemon, 1 key(s) waiting"), "{}", out(&o));

    // Back (a new process: no tags, no ACL entries): it gets both active blocks.
    nodes[4].restart().unwrap();
    let c5 = admin(&nodes[4]).await;
    let caught_up = eventually(Duration::from_secs(5), || async {
        gpt0(&c5, "10.9.0.1").await == Some(1)
            && gpt0(&c5, "127.0.0.4").await == Some(1)
            && acl(&c5, &nodes[4]).await == ["10.9.0.1", "127.0.0.4"]
    })
    .await;
    assert!(caught_up, "node5 did not get the active blocks back");
    let confirmed = eventually(Duration::from_secs(3), || async {
        out(&sw(&s, &["check"])).contains("ok   fleet: node5: up, every block and release confirmed")
    })
    .await;
    assert!(confirmed, "{}", out(&sw(&s, &["check"])));

    // An unblock reaches all five.
    let cs = clients(&nodes).await;
    let o = sw(&s, &["unblock", "10.9.0.1", "--reason", "done"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(tags(&cs, "10.9.0.1").await, [None; NODES]);
    assert!(acls_are(&cs, &nodes, &["127.0.0.4"]).await);
    stop_daemon(d);
}

/// A `master:` target: every command reaches the current worker through the master CLI (`@1`),
/// errors are told apart without severity prefixes, and after a reload (the master drops its
/// connections as it re-executes) the same client reaches the new worker, which gets the active
/// blocks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cli_target_reaches_the_current_worker_across_a_reload() {
    use stickwarden::proto::{ErrorKind, KeyType, TableKey, TableSelect};
    let sb = haproxy_with(&SandboxOptions { master_worker: true, ..Default::default() });
    let master = format!("master:{}", sb.dir().join("master.sock").display());
    // The master listens a moment after the worker answers.
    let mut m = None;
    for _ in 0..50 {
        match Client::connect(master.parse().unwrap(), stickwarden::ClientOptions::default()).await {
            Ok(c) => {
                m = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let m = m.expect("the master CLI answers");
    let c = admin(&sb).await;
    let worker = c.show_info().await.unwrap().pid().unwrap();
    assert_eq!(m.show_info().await.unwrap().pid(), Some(worker), "@1 is the worker");

    let key = TableKey::parse(KeyType::Ip, "10.8.0.1").unwrap();
    m.set_table("ft_web", key.clone(), &[("gpt0".parse().unwrap(), 1)]).await.unwrap();
    assert_eq!(gpt0(&c, "10.8.0.1").await, Some(1));
    let kind = |e: stickwarden::ClientError| e.haproxy().map(|h| h.kind);
    let e = m.show_table("nosuch", TableSelect::All).await.unwrap().for_each(|_| {}).await.unwrap_err();
    assert_eq!(kind(e), Some(ErrorKind::NoSuchTable));
    let e = m.set_table("nosuch", key, &[("gpt0".parse().unwrap(), 1)]).await.unwrap_err();
    assert_eq!(kind(e), Some(ErrorKind::NoSuchTable));
    let e = m.add_acl(&"/nonexistent.lst".parse().unwrap(), "10.8.0.2".parse().unwrap()).await.unwrap_err();
    assert_eq!(kind(e), Some(ErrorKind::UnknownAcl));

    // The daemon on the master target: a flooder is blocked, and still blocked after a reload.
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(&sb.admin(), &master);
    std::fs::write(&s.config, cfg).unwrap();
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { get(&sb, 1).await == 403 }).await, "not blocked");
    sb.reload(worker).unwrap();
    let c = admin(&sb).await;
    let new_worker = c.show_info().await.unwrap().pid().unwrap();
    assert_ne!(new_worker, worker);
    // The master re-executes itself on a reload and drops its CLI connections; the same client
    // reconnects, and `@1` is now the new worker.
    let m_reaches_new = eventually(Duration::from_secs(3), || async {
        m.show_info().await.ok().and_then(|i| i.pid()) == Some(new_worker)
    })
    .await;
    assert!(m_reaches_new, "the master target does not reach the new worker");
    assert!(
        eventually(Duration::from_secs(3), || async {
            acl(&c, &sb).await == ["127.0.0.2"] && gpt0(&c, "127.0.0.2").await == Some(1)
        })
        .await,
        "blocks not back on the new worker"
    );
    assert_eq!(get(&sb, 1).await, 403);
    d.stop().await;
}
