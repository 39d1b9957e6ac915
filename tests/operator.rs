//! The operator CLI end to end: `stickwarden run` (the real binary, with its API on a Unix
//! socket) and the `block`, `blocks`, `explain`, `unblock`, `audit`, `allow`, `import` commands,
//! each checked in HAProxy; the same commands with no daemon running, straight on the store; and
//! bad input on every subcommand (exit 2, nothing changed).

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_through_the_daemon_block_list_explain_unblock_audit() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let (d, sock) = running_daemon(&s).await;
    let sock_path = sock.trim_start_matches("unix:").to_owned();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock_path).unwrap().permissions().mode() & 0o777, 0o600, "the API socket is private");

    let o = sw_with(&s, &["block", "10.3.0.1", "--for", "2h", "--reason", "incident 7"], Some(OPERATOR_TOKEN));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("blocked 10.3.0.1 (tag+acl) until"), "{}", out(&o));
    assert_eq!(gpt0(&c, "10.3.0.1").await, Some(1));
    assert_eq!(acl(&c, &sb).await, ["10.3.0.1"]);

    // A viewer may read, not act; no token at all is refused with a hint.
    let o = sw_with(&s, &["blocks", "--json"], Some(VIEWER_TOKEN));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let list = json_lines(&o);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0]["key"].as_str(), list[0]["actor"].as_str(), list[0]["source"].as_str()),
        (Some("10.3.0.1"), Some("ops"), Some("manual"))
    );
    let o = sw_with(&s, &["blocks"], Some(VIEWER_TOKEN));
    assert!(out(&o).contains("KEY") && out(&o).contains("in 2h") && out(&o).contains("incident 7"), "{}", out(&o));
    let o = sw_with(&s, &["unblock", "10.3.0.1", "--reason", "x"], Some(VIEWER_TOKEN));
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("forbidden"), "{}", out(&o));
    let o = sw_with(&s, &["blocks"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(out(&o).contains("set STICKWARDEN_TOKEN"), "{}", out(&o));

    let o = sw_with(&s, &["explain", "10.3.0.1"], Some(VIEWER_TOKEN));
    assert!(out(&o).starts_with("10.3.0.1: blocked"), "{}", out(&o));
    assert!(out(&o).contains("sandbox ft_web: ") && out(&o).contains(" gpt0=1 "), "{}", out(&o));
    assert!(out(&o).contains("no    http-flood: http_req_rate gt 100 [0: no]"), "{}", out(&o));

    let o = sw_with(&s, &["unblock", "10.3.0.1", "--reason", "resolved"], Some(OPERATOR_TOKEN));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(acl(&c, &sb).await.is_empty());
    assert_eq!(gpt0(&c, "10.3.0.1").await, None);

    let o = sw_with(&s, &["audit", "--since", "1h", "--json"], Some(VIEWER_TOKEN));
    let ev: Vec<(String, String, String)> = json_lines(&o)
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().into(),
                r["actor"].as_str().unwrap().into(),
                r["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        ev,
        [
            ("block".into(), "ops".into(), "incident 7".into()),
            ("release".into(), "ops".into(), "unblocked: resolved".into())
        ]
    );
    stop_daemon(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_without_a_daemon_works_on_the_store_and_haproxy_directly() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    with_api(&s); // configured, but nothing listens: the CLI falls back to the store

    let o = sw_with(&s, &["block", "10.4.0.1", "--for", "30m", "--reason", "daemon down"], None);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(gpt0(&c, "10.4.0.1").await, Some(1));
    assert_eq!(acl(&c, &sb).await, ["10.4.0.1"]);
    let list = json_lines(&sw_with(&s, &["blocks", "--json"], None));
    assert_eq!(list.len(), 1);
    assert!(list[0]["actor"].as_str().unwrap().starts_with("cli:"), "{}", list[0]);

    let file = s.dir.path().join("list.txt");
    std::fs::write(&file, "# feed\n10.5.0.1\n10.6.0.0/16\n\n10.5.0.1\n").unwrap();
    let o = sw_with(&s, &["import", file.to_str().unwrap(), "--for", "1h", "--reason", "feed"], None);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("imported 2 of 2"), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await, ["10.4.0.1", "10.5.0.1", "10.6.0.0/16"]);

    let o = sw_with(&s, &["allow", "10.6.0.0/16", "--reason", "partner"], None);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("released 10.6.0.0/16"), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await, ["10.4.0.1", "10.5.0.1"]);

    let o = sw_with(&s, &["unblock", "10.4.0.1", "--reason", "ok"], None);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await, ["10.5.0.1"]);
    assert_eq!(gpt0(&c, "10.4.0.1").await, None);
    let o = sw_with(&s, &["history", "10.4.0.1", "--json"], None);
    let h = &json_lines(&o)[0];
    let ev: Vec<&str> = h["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(ev, ["block", "release"]);

    // The daemon, started now, owns the store the CLI wrote: the same blocks, through its API.
    let sock = s.dir.path().join("api.sock");
    let d = spawn_daemon(&s);
    assert!(
        eventually(Duration::from_secs(5), || {
            let p = sock.clone();
            async move { p.exists() }
        })
        .await
    );
    let list = json_lines(&sw_with(&s, &["blocks", "--json"], Some(VIEWER_TOKEN)));
    let keys: Vec<&str> = list.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["10.5.0.1"]);
    // Without the API, the CLI cannot open the store behind the daemon's back: it says why.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let no_api = s.dir.path().join("no-api.toml");
    std::fs::write(&no_api, &text[..text.find("[api]").unwrap()]).unwrap();
    let o = sw_with(&s, &["blocks", "--config", no_api.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("is `stickwarden run` running?"), "{}", out(&o));
    stop_daemon(d);
    assert_eq!(acl(&c, &sb).await, ["10.5.0.1"]);
}

#[tokio::test]
async fn bad_input_on_every_subcommand_exits_2_and_changes_nothing() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let bad_file = s.dir.path().join("bad.txt");
    std::fs::write(&bad_file, "10.0.0.1\n10.0.0.2\n10.0.0.1/24\n").unwrap();
    let f = bad_file.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["block", "10.0.0.256", "--for", "1h", "--reason", "r"], "is not an IPv4 or IPv6 address"),
        (vec!["block", "10.0.0.1/24", "--for", "1h", "--reason", "r"], "has host bits set"),
        (vec!["block", "10.0.0.1", "--for", "0s", "--reason", "r"], "greater than zero"),
        (vec!["block", "10.0.0.1", "--for=-3m", "--reason", "r"], "is not a duration"),
        (vec!["block", "10.0.0.1", "--for", "100y", "--reason", "r"], "at most"),
        (vec!["block", "10.0.0.1", "--for", "1h", "--reason", " "], "a reason is required"),
        (vec!["block", "10.0.0.1", "--for", "1h"], "--reason"),
        (vec!["unblock", "nope", "--reason", "r"], "not an IPv4"),
        (vec!["unblock", "10.0.0.1", "--reason", "r", "--grace", "soon"], "is not a duration"),
        (vec!["allow", "10.0.0.0/33", "--reason", "r"], "too long"),
        (vec!["allow", "10.0.0.0/8", "--reason", "r", "--remove", "--for", "1h"], "cannot be used with"),
        (vec!["import", f, "--for", "1h", "--reason", "r"], "line 3: '10.0.0.1/24' has host bits set"),
        (vec!["import", "/nonexistent", "--for", "1h", "--reason", "r"], "cannot read"),
        (vec!["history", "10.0.0.0/24"], "expected one address"),
        (vec!["explain", "x"], "not an IPv4"),
        (vec!["audit", "--since", "soon"], "neither a duration nor an RFC 3339 time"),
        (vec!["audit", "--event", "explode"], "unknown event"),
        (vec!["blocks", "--api", "ftp://x"], "expected host:port"),
    ];
    for (args, want) in cases {
        let o = sw_with(&s, &args, None);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out(&o));
        assert!(out(&o).contains(want), "{args:?}: {}", out(&o));
    }
    assert!(!s.store_path().exists(), "bad input opened the store");
    assert!(acl(&c, &sb).await.is_empty());
    assert_eq!(gpt0(&c, "10.0.0.1").await, None);
}
