//! Tables keyed by something else than addresses, as docs/api-keys.md sets them up (its HAProxy
//! lines, its `[[table]]` and its rule, read from the document): a real HAProxy tracks
//! `req.hdr(x-api-key)` in a `type string` table, real HTTP floods with one key, and the key is
//! blocked (first with the map's 429, then with the tag's 403) while the other keys of the same
//! address are served. By hand, through the daemon's API, a hostile key (spaces, `;`, a backslash)
//! is blocked exactly, and keys that do not fit are refused with nothing changed.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use stickwarden::key::Key;
use stickwarden::sandbox::{client_addr, Sandbox, SandboxOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TABLE: &str = "st_apikey";

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api-keys.md")).unwrap()
}

/// The one fenced block of `lang` in docs/api-keys.md.
fn fenced(lang: &str) -> String {
    let (mut out, mut inside, mut found) = (String::new(), false, 0);
    for line in doc().lines() {
        if line.starts_with("```") {
            inside = !inside && line == format!("```{lang}");
            found += usize::from(inside);
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(found, 1, "one ```{lang} block expected in docs/api-keys.md");
    out
}

/// A sandbox running the documented lines (the map in its own temp dir), and the configuration
/// with the documented `[[table]]` and rule.
fn sandbox() -> (Sandbox, Setup, std::path::PathBuf) {
    let maps = tempfile::tempdir().unwrap().keep();
    let map = maps.join("apikeys.map");
    std::fs::write(&map, "").unwrap();
    let lines = fenced("haproxy-keys").replace("/etc/haproxy/stickwarden-apikeys.map", &map.display().to_string());
    let (front, section) = lines.split_once("\n\n").expect("the frontend's lines, then the table's backend");
    let opts = SandboxOptions {
        map_lines: front.lines().map(str::to_owned).collect(),
        sections: format!("{section}\n"),
        ..Default::default()
    };
    let sb = haproxy_with(&opts);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/api-keys.toml"), fenced("toml-keys-rules")).unwrap();
    let table = fenced("toml-keys").replace("/etc/haproxy/stickwarden-apikeys.map", &map.display().to_string());
    let config = dir.path().join("stickwarden.toml");
    std::fs::write(
        &config,
        format!(
            "rules = \"rules\"\npoll_interval = \"{INTERVAL_MS}ms\"\n\n[store]\npath = \"store\"\ncache_mb = 8\n\n\
             [[haproxy]]\nname = \"sandbox\"\nsocket = \"{}\"\n\n[block]\ntable = \"ft_web\"\nacl = \"{}\"\n\n{table}",
            sb.admin(),
            sb.block_acl().display()
        ),
    )
    .unwrap();
    (sb, Setup { dir, config }, map)
}

/// One `GET /` from `src` with the API key `key`: the status.
async fn get_with(sb: &Sandbox, src: IpAddr, key: Option<&str>) -> u16 {
    let mut s = stickwarden::sandbox::connect_from(src, sb.web_port).await.unwrap();
    let header = key.map(|k| format!("X-Api-Key: {k}\r\n")).unwrap_or_default();
    let req = format!("GET / HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n{header}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// What the table holds for `key`: its tag (`gpt0`), if it has an entry.
async fn tag_of(sb: &Sandbox, key: &str) -> Option<u64> {
    use stickwarden::proto::{KeyType, TableKey};
    gpt0_in(&admin(sb).await, TABLE, TableKey::parse(KeyType::String { len: Some(64) }, key).unwrap()).await
}

/// The entries of the table, to see that a refused request changed nothing.
async fn entries(sb: &Sandbox) -> u64 {
    let c = admin(sb).await;
    c.list_tables().await.unwrap().into_iter().find(|t| t.name == TABLE).map_or(0, |t| t.used)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abused_api_key_is_throttled_then_denied_while_other_keys_of_its_address_are_served() {
    let (sb, s, map) = sandbox();
    let d = Daemon::start(&s);
    let abuser = client_addr(1);
    assert_eq!(get_with(&sb, abuser, Some("k-abuser")).await, 200);

    // 60 requests in well under 10 s with one key: over the documented rule's 50.
    for _ in 0..60 {
        get_with(&sb, abuser, Some("k-abuser")).await;
    }
    let throttled =
        eventually(Duration::from_secs(5), || async { get_with(&sb, abuser, Some("k-abuser")).await == 429 }).await;
    assert!(throttled, "the key was never throttled");
    // The key is blocked, not the address: its other key and its requests without one are served.
    assert_eq!(get_with(&sb, abuser, Some("k-other")).await, 200);
    assert_eq!(get_with(&sb, abuser, None).await, 200);
    assert_eq!(get_with(&sb, client_addr(2), Some("k-good")).await, 200);
    let blocks = d.store.blocks().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let key = Key::named(TABLE, "k-abuser");
    assert_eq!((blocks[0].key.clone(), blocks[0].actions.to_string()), (key.clone(), "map:throttle".into()));
    assert_eq!(std::fs::read_to_string(&map).unwrap(), "", "runtime entries are never written to the file");
    let c = admin(&sb).await;
    let map_ref = map.display().to_string().parse().unwrap();
    let held: Vec<(String, String)> =
        c.show_map(&map_ref).await.unwrap().into_iter().map(|e| (e.key, e.value)).collect();
    assert_eq!(held, [("k-abuser".to_owned(), "throttle".to_owned())]);

    // Ten minutes later (skipped): released; the key is still flooding, so it is blocked again at
    // once at the hard step: the tag in its own table, 403.
    d.clock.skip(Duration::from_secs(600));
    let denied =
        eventually(Duration::from_secs(5), || async { get_with(&sb, abuser, Some("k-abuser")).await == 403 }).await;
    assert!(denied, "the key was never escalated to the tag");
    assert_eq!(tag_of(&sb, "k-abuser").await, Some(1));
    assert!(c.show_map(&map_ref).await.unwrap().is_empty(), "the map entry went with the first block");
    assert_eq!(get_with(&sb, abuser, Some("k-other")).await, 200);
    let store = d.stop().await;
    let b = store.block(&key).unwrap().unwrap();
    assert_eq!((b.level, b.actions.to_string(), b.scope()), (2, "tag".into(), "key"));
    let events: Vec<String> =
        store.audit_about(std::slice::from_ref(&key)).unwrap().iter().map(|r| r.event.as_str().to_owned()).collect();
    assert_eq!(events, ["block", "release", "block"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_by_hand_are_sent_exactly_and_keys_that_do_not_fit_change_nothing() {
    let (sb, s, _map) = sandbox();
    let (daemon, _sock) = running_daemon(&s).await;
    let hostile = r"k 1;show info\x";
    let ok = |o: &std::process::Output| assert_eq!(o.status.code(), Some(0), "{}", out(o));
    ok(&sw(&s, &["block", "--table", TABLE, hostile, "--for", "1h", "--reason", "leaked"]));
    // HAProxy holds that exact key (one argument, nothing else run), and denies it.
    assert_eq!(tag_of(&sb, hostile).await, Some(1));
    assert_eq!(get_with(&sb, client_addr(3), Some(hostile)).await, 403);
    assert_eq!(get_with(&sb, client_addr(3), Some("k 1")).await, 200, "only the whole key is blocked");
    let listed = sw(&s, &["blocks", "--json"]);
    ok(&listed);
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&listed.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["key"].as_str(), v["table"].as_str(), v["scope"].as_str()),
        (Some(hostile), Some(TABLE), Some("key"))
    );

    // What does not fit the table is refused before anything is recorded or sent: exit 2.
    let before = entries(&sb).await;
    let long = "k".repeat(65);
    for (table, key, says) in [
        (TABLE, "a\nb", "line feed"),
        (TABLE, long.as_str(), "at most 64 bytes"),
        ("st_nope", "k-1", "no rule watches a table 'st_nope'"),
        ("ft_web", "k-1", "no rule watches a table 'ft_web'"),
    ] {
        let o = sw(&s, &["block", "--table", table, key, "--for", "1h", "--reason", "r"]);
        assert_eq!(o.status.code(), Some(2), "{key:?} in {table}: {}", out(&o));
        assert!(out(&o).contains(says), "{key:?} in {table}: {}", out(&o));
    }
    assert_eq!(entries(&sb).await, before);
    let o = sw(&s, &["blocks", "--json"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1, "nothing recorded: {}", out(&o));

    // Its history and audit, by table and key; then unblocked: served again.
    let h = sw(&s, &["history", "--table", TABLE, hostile, "--json"]);
    ok(&h);
    let h: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    assert_eq!((h["key"].as_str(), h["table"].as_str()), (Some(hostile), Some(TABLE)));
    assert_eq!(h["events"][0]["event"], "block");
    let x = sw(&s, &["explain", "--table", TABLE, hostile, "--json"]);
    ok(&x);
    let x: serde_json::Value = serde_json::from_slice(&x.stdout).unwrap();
    assert_eq!(
        (x["key"].as_str(), x["table"].as_str(), x["verdict"].as_str()),
        (Some(hostile), Some(TABLE), Some("blocked"))
    );
    assert_eq!(x["next_action"], "map:throttle", "a key's next step as the decider applies it");
    assert_eq!(x["tables"].as_array().map(|t| t.len()), Some(1), "{x}");
    assert_eq!(x["tables"][0]["table"], TABLE);
    ok(&sw(&s, &["extend", "--table", TABLE, hostile, "--for", "2h", "--reason", "longer"]));
    let b = sw(&s, &["blocks", "--json"]);
    let b: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&b.stdout).lines().next().unwrap()).unwrap();
    assert!(b["remaining_s"].as_u64().unwrap() > 3_600, "{b}");
    let a = sw(&s, &["audit", "--key", hostile, "--table", TABLE, "--json"]);
    ok(&a);
    assert!(String::from_utf8_lossy(&a.stdout).contains("leaked"), "{}", out(&a));
    ok(&sw(&s, &["unblock", "--table", TABLE, hostile, "--reason", "rotated"]));
    assert!(eventually(Duration::from_secs(3), || async { tag_of(&sb, hostile).await != Some(1) }).await);
    assert_eq!(get_with(&sb, client_addr(3), Some(hostile)).await, 200);

    // The commands of the document, as written: each succeeds, and the key is blocked in between.
    let commands: Vec<Vec<String>> = fenced("sh").lines().filter(|l| !l.trim().is_empty()).map(words).collect();
    assert_eq!(commands.len(), 4, "docs/api-keys.md lost its commands");
    for (i, c) in commands.iter().enumerate() {
        assert_eq!(c[0], "stickwarden");
        let args: Vec<&str> = c[1..].iter().map(String::as_str).collect();
        ok(&sw(&s, &args));
        if i == 0 {
            assert_eq!(tag_of(&sb, "k-7f3a9c").await, Some(1), "the documented block is applied");
        }
    }
    assert!(eventually(Duration::from_secs(3), || async { tag_of(&sb, "k-7f3a9c").await != Some(1) }).await);
    stop_daemon(daemon);
}

/// A shell line split on spaces, single quotes honoured (all the document uses).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in line.trim().chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
