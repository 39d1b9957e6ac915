//! Suspects mode (issue 14) with a real HAProxy carrying the lines `stickwarden haproxy-config`
//! prints, and real traffic from loopback clients: request floods, error floods (404 answers of
//! a server behind `ft_web`) and held connections, each on both sides of its rule's threshold.
//! A full poll of the table and the flags agree (every offender is flagged, and the suspects
//! poll's true counters find exactly the full poll's offenders); the daemon blocks through the
//! flags and clears the flag of those it tagged; and with the lines missing from HAProxy, the
//! sweep still finds the offenders and counts what was missed, and `check` says so.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use stickwarden::client::TableItem;
use stickwarden::poll;
use stickwarden::proto::{Filter, KeyType, TableSelect};
use stickwarden::sandbox::{connect_from, http_burst, Sandbox, SandboxOptions};

/// Thresholds a test's traffic crosses in a second.
const RULES: &str = r#"
[[rule]]
name = "http-flood"
table = "ft_web"
all = ["http_req_rate gt 10"]
weight = 100

[[rule]]
name = "scanner"
table = "ft_web"
all = ["http_err_rate gt 5"]
weight = 100

[[rule]]
name = "conn-flood"
table = "ft_web"
any = ["conn_rate gt 30", "conn_cur gt 4"]
weight = 100
"#;

const TABLE: &str = "[[table]]\nname = \"ft_web\"\nsuspects = \"sw_suspects\"\n";

/// The `i`-th loopback client of `group`: 127.group.0.(i+1).
fn member(group: u8, i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, group, 0, i + 1))
}

/// Writes the test's rules (and `policy`) into `dir`, replacing the shipped ones.
fn write_rules(dir: &std::path::Path, policy: &str) {
    for f in ["http-flood.toml", "scanner.toml", "conn-flood.toml"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    std::fs::write(dir.join("rules.toml"), RULES).unwrap();
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
}

/// What `stickwarden haproxy-config` prints of suspects mode for a configuration of these rules
/// whose block ACL is `acl`, split into the frontend's lines and the suspects table's section.
fn printed_lines(acl: &std::path::Path) -> stickwarden::suspects::Lines {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    write_rules(&dir.path().join("rules"), &policy("{ action = [\"tag\"], duration = \"1h\" }"));
    let cfg = dir.path().join("stickwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "rules = \"rules\"\n[[haproxy]]\nname = \"lb\"\nsocket = \"/nonexistent.sock\"\n\
             [block]\ntable = \"ft_web\"\ntag = \"gpt0\"\nacl = \"{}\"\n{TABLE}",
            acl.display()
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["haproxy-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let all = String::from_utf8(o.stdout).unwrap();
    // After the lines every configuration needs: a comment, the frontend's lines (indented), a
    // blank line, the suspects table's section.
    let text = &all[all.find("# In the frontend that tracks").expect("suspects lines printed")..];
    let (front, section) = text.split_once("\n\n").expect("a blank line before the section");
    let lines = stickwarden::suspects::Lines {
        frontend: front.lines().skip(1).map(|l| l.trim_start().to_owned()).collect(),
        section: section.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect(),
    };
    assert!(lines.frontend.len() > 5 && lines.section[0] == "backend sw_suspects", "{text}");
    lines
}

/// A sandbox whose `ft_web` carries the printed lines (only the suspects table's section when
/// `lines` is false, as a careless operator would leave it), and a setup of the test's rules
/// watching `ft_web` through `sw_suspects`.
fn suspects_sandbox(lines: bool, extra: &str) -> (Sandbox, Setup, tempfile::TempDir) {
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("block.lst");
    std::fs::write(&acl, "").unwrap();
    let mut printed = printed_lines(&acl);
    if !lines {
        printed.frontend.clear();
    }
    let sb = haproxy_with(&SandboxOptions {
        acl_file: Some(acl),
        suspects: Some(printed),
        not_found: true,
        ..Default::default()
    });
    let s = setup(&sb, "", "", &format!("{TABLE}{extra}"));
    write_rules(&s.dir.path().join("rules"), &policy("{ action = [\"tag\"], duration = \"1h\" }"));
    (sb, s, acl_dir)
}

/// Traffic on both sides of every threshold; returns the clients that must offend. Held
/// connections are returned too: they must stay open while the tables are read.
async fn traffic(sb: &Sandbox) -> (BTreeSet<IpAddr>, Vec<tokio::net::TcpStream>) {
    let mut offenders = BTreeSet::new();
    let mut set = tokio::task::JoinSet::new();
    // Requests: 3 (quiet) or 16 to 23 (over 10).
    for i in 0..16u8 {
        let n = if i % 2 == 0 { 3 } else { 16 + usize::from(i / 2) };
        if n > 10 {
            offenders.insert(member(3, i));
        }
        set.spawn(http_burst(member(3, i), sb.web_port, n, 2));
    }
    // 404s from the origin: 2 (quiet) or 9 (over 5), from clients that make few requests.
    for i in 0..8u8 {
        let n = if i % 2 == 0 { 2 } else { 9 };
        if n > 5 {
            offenders.insert(member(4, i));
        }
        let port = sb.web_port;
        set.spawn(async move {
            for _ in 0..n {
                let mut s = connect_from(member(4, i), port).await?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).await?;
                assert!(buf.starts_with(b"HTTP/1.1 404"), "{}", String::from_utf8_lossy(&buf));
            }
            Ok(vec![(404, n)])
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    // Held connections, no request: 2 (quiet) or 7 (over 4) at once.
    let mut held = Vec::new();
    for i in 0..6u8 {
        let n = if i % 2 == 0 { 2 } else { 7 };
        if n > 4 {
            offenders.insert(member(5, i));
        }
        for _ in 0..n {
            held.push(connect_from(member(5, i), sb.web_port).await.unwrap());
        }
    }
    (offenders, held)
}

/// The keys flagged in the suspects table.
async fn flagged(c: &stickwarden::Client) -> BTreeSet<IpAddr> {
    let flag = vec!["gpt0 gt 0".parse::<Filter>().unwrap()];
    let mut out = BTreeSet::new();
    c.show_table("sw_suspects", TableSelect::query(&flag))
        .await
        .unwrap()
        .for_each(|i| {
            if let TableItem::Entry(e) = i {
                out.insert(e.key_addr().unwrap());
            }
        })
        .await
        .unwrap();
    out
}

/// The replay: once the traffic has stopped (values only fall from there), a full poll of the
/// table and the flags are read; every offender the full poll finds is flagged (but one listed in
/// the block ACL before it started: HAProxy never flags a blocked client), and a suspects poll
/// (flags, then the true counters by key) finds exactly the full poll's flagged offenders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offender_a_full_poll_finds_is_flagged_and_found_again_by_key() {
    let (sb, s, _acl) = suspects_sandbox(true, "");
    let c = admin(&sb).await;
    // One request flooder is listed (its requests get 403 and still count).
    let listed = member(3, 1);
    c.add_acl(&sb.block_acl().display().to_string().parse().unwrap(), stickwarden::proto::AclPattern::addr(listed))
        .await
        .unwrap();
    let (expected, _held) = traffic(&sb).await;
    assert!(expected.contains(&listed));
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let queries = poll::plan(&c, "ft_web", &cfg.rules).await.unwrap();
    let full: BTreeSet<IpAddr> = poll::poll(&c, "ft_web", None, &queries, &cfg.rules)
        .await
        .unwrap()
        .observations
        .iter()
        .filter_map(|o| o.key.addr())
        .collect();
    assert_eq!(full, expected, "the traffic did not make the offenders it meant to");
    let flags = flagged(&c).await;
    let unflagged: Vec<&IpAddr> = full.difference(&flags).collect();
    assert_eq!(unflagged, [&listed], "offenders without a flag (flags: {flags:?})");
    let full: BTreeSet<IpAddr> = full.into_iter().filter(|a| *a != listed).collect();
    let tag = Some(&cfg.block.tag);
    let by_key = poll::poll_suspects(&c, "ft_web", "sw_suspects", KeyType::Ip, &cfg.rules, tag).await.unwrap();
    assert_eq!(by_key.flagged.iter().copied().collect::<BTreeSet<_>>(), flags);
    let found: BTreeSet<IpAddr> = by_key.polled.observations.iter().filter_map(|o| o.key.addr()).collect();
    assert_eq!(found, full, "the suspects poll must find what the full poll finds");
    // The same counters as the full poll's, read by key.
    let again = poll::poll(&c, "ft_web", None, &queries, &cfg.rules).await.unwrap();
    for o in &by_key.polled.observations {
        let twin = again.observations.iter().find(|x| x.key == o.key).unwrap();
        assert_eq!(o.rules, twin.rules, "{}", o.key);
    }
    // And the sweep that checks it in the daemon agrees: nothing missed (the listed client is
    // blocked, not missed); without the ACL to ask, it would count as missed.
    let blocked = poll::Blocked { tag, acl: cfg.block.acl.as_ref() };
    let sweep = poll::sweep(&c, "ft_web", "sw_suspects", KeyType::Ip, &queries, &cfg.rules, blocked).await.unwrap();
    assert!(sweep.missed.is_empty(), "{:?}", sweep.missed);
    let unasked = poll::Blocked { tag, acl: None };
    let blind = poll::sweep(&c, "ft_web", "sw_suspects", KeyType::Ip, &queries, &cfg.rules, unasked).await.unwrap();
    assert_eq!(blind.missed, [listed]);
    assert_eq!(sweep.flagged, flags.len());
    let o = sw(&s, &["check"]);
    assert!(out(&o).contains("suspects table 'sw_suspects' flags every offender"), "{}", out(&o));
}

/// The daemon in suspects mode blocks the offenders of each kind, and clears the flag of each
/// client it tagged: a blocked client costs the next polls nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_blocks_through_the_flags_and_clears_them() {
    let (sb, s, _acl) = suspects_sandbox(true, "");
    let c = admin(&sb).await;
    let d = Daemon::start(&s);
    // Its first poll is a sweep (a full poll), at once: let it pass before the traffic, so that
    // what follows is found through the flags (the next sweep is a minute away).
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
    let (expected, _held) = traffic(&sb).await;
    let all_blocked = eventually(Duration::from_secs(5), || async {
        let blocked: BTreeSet<IpAddr> = d.store.blocks().unwrap().iter().filter_map(|b| b.key.addr()).collect();
        blocked == expected
    })
    .await;
    assert!(all_blocked, "{:?} blocked, {expected:?} expected", d.store.blocks().unwrap());
    assert!(eventually(Duration::from_secs(3), || async { flagged(&c).await.is_empty() }).await, "flags left");
    for a in &expected {
        assert_eq!(gpt0(&c, &a.to_string()).await, Some(1), "{a}");
    }
    d.stop().await;
}

/// HAProxy without the lines (the suspects table alone): nothing is ever flagged, but the sweep
/// (every second here) still finds the offenders, the daemon blocks them, counts them in
/// `stickwarden_suspects_missed_total`, and `check` fails with what to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lines_the_sweep_still_blocks_and_says_what_was_missed() {
    let (sb, s, _acl) = suspects_sandbox(false, "sweep_interval = \"1s\"\n");
    let c = admin(&sb).await;
    let (expected, held) = traffic(&sb).await;
    let o = sw(&s, &["check"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("{} offender(s) a full poll of 'ft_web' finds are not flagged", expected.len())),
        "{}",
        out(&o)
    );
    drop(held);
    let (d, sock) = running_daemon(&s).await;
    let api = stickwarden::api::client::ApiClient::new(sock.parse().unwrap(), Some(VIEWER_TOKEN.into()));
    // The held connections have closed: the request flooders and scanners are found by the sweep.
    let flooders: Vec<IpAddr> =
        expected.iter().copied().filter(|a| !matches!(a, IpAddr::V4(v) if v.octets()[1] == 5)).collect();
    assert_eq!(flooders.len(), 12);
    let all_tagged = eventually(Duration::from_secs(5), || async {
        for a in &flooders {
            if gpt0(&c, &a.to_string()).await != Some(1) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_tagged, "the sweep did not block the request flooders");
    let mut metrics = Vec::new();
    api.get_lines("/metrics", &mut metrics).await.unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    let missed = metrics.lines().find(|l| l.starts_with("stickwarden_suspects_missed_total")).unwrap_or_default();
    let n: u64 = missed.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(n >= flooders.len() as u64, "missed counted: {missed:?}");
    stop_daemon(d);
}
