//! The safety promises, tried as a careless operator and a hostile client would, against the real
//! `stickwarden run` and a real HAProxy: no block may reach every IPv4 client through an IPv6
//! network (`::/0` holds `::ffff:0:0/96`), blocks broader than `[safety]` allows need an explicit
//! override, this host's loopback is protected with nothing configured, and a stored block that
//! reaches a protected address is released, never re-applied. The circuit breaker tells a botnet
//! (many new clients, a small share of those tracked) from a broken rule (a large share of them).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_block_reaches_every_ipv4_client_through_ipv6_and_broad_blocks_need_an_override() {
    let sb = haproxy();
    let c = admin(&sb).await;
    // No allowlist, no never_block: the protection must come from the containment rule itself.
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let (d, _sock) = running_daemon(&s).await;
    assert_eq!(get(&sb, 1).await, 200);

    for wide in ["::/0", "::/1", "::/64", "::/80", "::ffff:0:0/96", "0.0.0.0/0"] {
        for args in [
            vec!["block", wide, "--for", "1h", "--reason", "careless"],
            vec!["block", wide, "--for", "1h", "--reason", "careless", "--allow-broad"],
        ] {
            let o = sw(&s, &args);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
            assert!(out(&o).contains("never allowed") || out(&o).contains("loopback"), "{args:?}: {}", out(&o));
        }
    }
    // The same through an import file: one bad line refuses the whole file.
    let list = s.dir.path().join("list.txt");
    std::fs::write(&list, "10.20.0.1\n::/0\n10.20.0.2\n").unwrap();
    let o = sw(&s, &["import", list.to_str().unwrap(), "--for", "1h", "--reason", "feed"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("never allowed"), "{}", out(&o));

    // Nothing reached HAProxy or the store; the loopback client still passes.
    assert!(acl(&c, &sb).await.is_empty());
    let o = sw(&s, &["blocks", "--json"]);
    assert_eq!((o.status.code(), o.stdout.len()), (Some(0), 0), "{}", out(&o));
    assert_eq!(get(&sb, 1).await, 200, "a refused block must not deny anyone");

    // Broader than max_prefix_v4 (16 by default): refused without the override, taken with it.
    let o = sw(&s, &["block", "10.0.0.0/8", "--for", "1h", "--reason", "broad"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("max_prefix_v4 = 16"), "{}", out(&o));
    let o = sw(&s, &["block", "2001:d00::/24", "--for", "1h", "--reason", "broad"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("max_prefix_v6 = 32"), "{}", out(&o));
    assert!(acl(&c, &sb).await.is_empty());
    let o = sw(&s, &["block", "10.0.0.0/8", "--for", "1h", "--reason", "broad", "--allow-broad"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await, ["10.0.0.0/8"]);
    // The loopback is protected with nothing configured: neither it nor a network holding it.
    for protected in ["127.0.0.1", "127.0.0.0/24", "::1", "::ffff:127.0.0.1"] {
        let o = sw(&s, &["block", protected, "--for", "1h", "--reason", "oops"]);
        assert_eq!(o.status.code(), Some(1), "{protected}: {}", out(&o));
        assert!(out(&o).contains("loopback"), "{protected}: {}", out(&o));
    }
    assert_eq!(acl(&c, &sb).await, ["10.0.0.0/8"]);
    stop_daemon(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_block_that_reaches_a_protected_address_is_released_not_reapplied() {
    use stickwarden::store::Event;
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let store = stickwarden::store::Store::open(&cfg.store.path, cfg.store.cache_bytes).unwrap();
    // A block of ::/0 as an older version could record it, and a legitimate one beside it.
    for key in ["::/0", "10.30.0.0/24"] {
        store_acl_block(&store, key);
    }
    let d = Daemon::start_on(&s, store);
    assert!(
        eventually(Duration::from_secs(10), || async { d.store.blocks().unwrap().len() == 1 }).await,
        "the ::/0 block was not released"
    );
    assert!(eventually(Duration::from_secs(5), || async { acl(&c, &sb).await == ["10.30.0.0/24"] }).await);
    assert_eq!(get(&sb, 2).await, 200, "the loopback clients must still pass");
    let released = d.store.audit_since(0).unwrap().into_iter().find(|r| r.event == Event::Release).unwrap();
    assert!(released.reason.contains("every IPv4 client"), "{}", released.reason);
    d.stop().await;
}

/// Bounded values and clean output: a bidi override in a reason is shown escaped, times carry
/// milliseconds, a reader closing the pipe ends a listing quietly, the log has no colour codes
/// off a terminal, an error says its cause once, and an absurd duration is refused with its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_clean_and_values_are_bounded() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let sock = with_api(&s);
    let log = s.dir.path().join("daemon.log");
    let d = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .env("STICKWARDEN_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(api_socket_appears(&sock).await, "the daemon's API never listened");

    let o = sw(&s, &["block", "10.60.0.1", "--for", "90m", "--reason", "ticket \u{202e}kcolb\u{202c} 42"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    for listing in [vec!["blocks"], vec!["audit"], vec!["history", "10.60.0.1"]] {
        let o = sw(&s, &listing);
        assert_eq!(o.status.code(), Some(0), "{}", out(&o));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(!text.contains('\u{202e}'), "{listing:?}: raw override shown: {text}");
        assert!(text.contains("ticket \\u{202e}kcolb\\u{202c} 42") || listing[0] == "history", "{listing:?}: {text}");
    }
    let o = sw(&s, &["blocks", "--json"]);
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for field in ["since", "until"] {
        let t = b[field].as_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z') && t.as_bytes()[19] == b'.', "{field}: {t}");
    }
    // JSON keeps the reason as it was given.
    assert_eq!(b["reason"], "ticket \u{202e}kcolb\u{202c} 42");

    // The reader goes away before the listing is written: exit 0, nothing on stderr.
    for listing in [vec!["blocks"], vec!["blocks", "--json"], vec!["audit", "--json"]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args(&listing)
            .env("STICKWARDEN_CONFIG", &s.config)
            .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{listing:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty(), "{listing:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    // Durations past their ceiling: 400 through the API, exit 2 on the command line.
    let o = sw(&s, &["block", "10.60.0.2", "--for", "20000y", "--reason", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("at most"), "{}", out(&o));
    stop_daemon(d);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("manual block"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a log file: {text:?}");

    // A cause said once.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["check", "--config", "/nonexistent/stickwarden.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    // A ladder step of 20000 years is refused where it is written.
    std::fs::write(s.dir.path().join("rules/policy.toml"), policy("{ action = [\"tag\"], duration = \"20000y\" }"))
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["check", "--config", s.config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64), "{}", out(&o));
    assert!(out(&o).contains("policy.toml:6:") && out(&o).contains("at most 3650d"), "{}", out(&o));
}

/// The loopback address of the `i`-th client of a group (`group` 1: 127.1.x.y, 2: 127.2.x.y).
fn member(group: u8, i: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be_bytes([127, group, 0, 0]) + i + 1))
}

/// `per_client` requests from each of `clients` members of `group`, 64 at a time.
async fn crowd(sb: &stickwarden::sandbox::Sandbox, group: u8, clients: u32, per_client: usize) {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let port = sb.web_port;
        set.spawn(async move { stickwarden::sandbox::http_burst(member(group, i), port, per_client, 1).await });
        if set.len() >= 64 {
            set.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
}

/// A rule file for these tests: every address with more than `min` requests in 10 s offends.
fn rate_rule(s: &Setup, min: u32) {
    let rule =
        format!("[[rule]]\nname = \"burst\"\ntable = \"ft_web\"\nall = [\"http_req_rate gt {min}\"]\nweight = 100\n");
    std::fs::write(s.dir.path().join("rules").join("burst.toml"), rule).unwrap();
}

/// 1,000 new clients flooding at once among 25,000 tracked ones are a botnet: 4% of the clients,
/// under the default share (5%). Every one is blocked with the default `[safety]`; the breaker
/// never opens. (The 25,000 established clients are entries set through the Runtime API, as
/// HAProxy's table would hold them: real traffic from that many addresses is beyond a test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_botnet_of_a_thousand_is_blocked_in_full_with_the_defaults() {
    let sb = haproxy();
    let c = admin(&sb).await;
    stickwarden::sandbox::fill_table(&c, "ft_web", 25_000, 0).await.unwrap();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    rate_rule(&s, 2);
    let d = Daemon::start(&s);
    crowd(&sb, 1, 1_000, 3).await;
    let all_tagged = eventually(Duration::from_secs(30), || async {
        d.store.blocks().unwrap().len() == 1_000 && tagged(&c).await == 1_000
    })
    .await;
    let store = d.stop().await;
    let audit = store.audit_since(0).unwrap();
    let opened: Vec<_> = audit.iter().filter(|r| r.event == stickwarden::store::Event::BreakerOpen).collect();
    assert!(opened.is_empty(), "the breaker opened on a botnet: {opened:?}");
    assert!(all_tagged, "{} of 1,000 blocked, {} tagged", store.blocks().unwrap().len(), tagged(&c).await);
    let sample = stickwarden::sandbox::http_get(member(1, 999), sb.web_port).await.unwrap();
    assert_eq!(sample, 403);
}

/// A rule whose threshold is below normal traffic matches every client: the breaker opens before
/// it has blocked more than the configured share of them (25% of 40, above a floor of 5), says
/// why in the audit log, `/healthz` and `explain`, and the other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_below_normal_traffic_opens_the_breaker_at_its_share_of_clients() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(
        &sb,
        "",
        &policy("{ action = [\"tag\"], duration = \"1h\" }"),
        "[safety]\nbreaker_share = 0.25\nbreaker_floor = 5\n",
    );
    rate_rule(&s, 0);
    // 40 ordinary clients, two requests each: the rule's `gt 0` matches them all.
    crowd(&sb, 2, 40, 2).await;
    let (d, sock) = running_daemon(&s).await;
    let opened = eventually(Duration::from_secs(10), || async {
        sw(&s, &["audit", "--json"]).stdout.windows(12).any(|w| w == b"breaker_open") && tagged(&c).await >= 5
    })
    .await;
    assert!(opened, "the breaker never opened, or its blocks were never applied");
    // A few more polls: every client still matches, and none more may be blocked.
    tokio::time::sleep(Duration::from_millis(4 * INTERVAL_MS)).await;
    let blocked = tagged(&c).await;
    assert!((5..=10).contains(&blocked), "{blocked} of 40 normal clients blocked; at most 25% may be");
    let api = stickwarden::api::client::ApiClient::new(sock.parse().unwrap(), None);
    let health: serde_json::Value = api.get("/healthz").await.unwrap();
    assert_eq!(health["breaker"]["open"], true, "{health}");
    let reason = health["breaker"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("25% of the 40 clients"), "{reason}");
    // The clients not blocked are still served, and explain says why they are not blocked.
    let mut served = 0;
    for i in 0..40 {
        if stickwarden::sandbox::http_get(member(2, i), sb.web_port).await.unwrap() == 200 {
            served += 1;
            let o = sw(&s, &["explain", &member(2, i).to_string()]);
            assert!(out(&o).contains("circuit breaker open since"), "{}", out(&o));
        }
    }
    assert!(served >= 30, "{served} of 40 served");
    stop_daemon(d);
}

/// How many ft_web entries carry the tag.
async fn tagged(c: &stickwarden::Client) -> usize {
    use stickwarden::client::TableItem;
    let filter = vec!["gpt0 gt 0".parse::<stickwarden::proto::Filter>().unwrap()];
    let dump = c.show_table("ft_web", stickwarden::proto::TableSelect::query(&filter)).await.unwrap();
    let mut n = 0;
    dump.for_each(|i| n += usize::from(matches!(i, TableItem::Entry(_)))).await.unwrap();
    n
}
