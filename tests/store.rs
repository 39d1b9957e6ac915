//! The store's memory, tried on real files with the real `stickwarden` and a real HAProxy: a
//! damaged, truncated, deleted or rolled-back database stops `run` with what to do (never an
//! empty start), `store verify` says what is wrong, `store recover` brings back what HAProxy
//! held and releases it on time, a backup taken during an import restores consistently, a
//! configuration change between block and release leaves nothing behind, and a job the actuator
//! cannot do stays unconfirmed while the next ones go through.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `stickwarden ARGS` on the setup, killed (and the test failed) if it runs past `limit`.
fn within(s: &Setup, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(args)
        .env("STICKWARDEN_CONFIG", &s.config)
        .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
        .env_remove("STICKWARDEN_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("stickwarden {args:?} still running after {limit:?}: it must refuse a damaged store at once");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    stickwarden::store::copy_dir(from, to).unwrap();
}

fn replace_store(s: &Setup, with: &Path) {
    let _ = std::fs::remove_dir_all(s.store_path());
    copy_dir(with, &s.store_path());
}

/// Waits until no process holds the store (a daemon that just stopped, or this process's own
/// handle, released asynchronously by sled).
async fn released(s: &Setup) {
    let p = s.store_path();
    assert!(
        eventually(Duration::from_secs(10), || {
            let p = p.clone();
            async move { !stickwarden::store::in_use(&p) }
        })
        .await,
        "the store stayed locked"
    );
}

fn addresses(n: u32, base: u32) -> String {
    (0..n).map(|i| format!("{}\n", stickwarden::sandbox::nth_addr(base + i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_truncated_deleted_or_rolled_back_store_never_starts_empty() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let (d, sock) = daemon_with_import(&s, 50, 30 << 16).await;
    stop_daemon(d);
    let good = s.dir.path().join("good");
    copy_dir(&s.store_path(), &good);

    // One decision more, then the database of before put back under the newer manifest.
    let d = spawn_daemon(&s);
    assert!(api_socket_appears(&sock).await);
    let o = sw(&s, &["block", "10.80.0.1", "--for", "1h", "--reason", "later"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    stop_daemon(d);
    let newer = s.dir.path().join("newer");
    copy_dir(&s.store_path(), &newer);
    let rolled_back = s.dir.path().join("rolled-back");
    copy_dir(&good, &rolled_back);
    std::fs::copy(newer.join("stickwarden-manifest.json"), rolled_back.join("stickwarden-manifest.json")).unwrap();

    let size = std::fs::metadata(good.join("db")).unwrap().len();
    let mut cases: Vec<(String, std::path::PathBuf)> = vec![("rolled back to an older copy".into(), rolled_back)];
    for pct in [25u64, 50, 75, 90] {
        let p = s.dir.path().join(format!("flip{pct}"));
        copy_dir(&good, &p);
        let mut bytes = std::fs::read(p.join("db")).unwrap();
        bytes[(size * pct / 100) as usize] ^= 0xff;
        std::fs::write(p.join("db"), bytes).unwrap();
        cases.push((format!("a byte flipped at {pct}%"), p));
    }
    let cut = s.dir.path().join("cut");
    copy_dir(&good, &cut);
    std::fs::OpenOptions::new().write(true).open(cut.join("db")).unwrap().set_len(size / 2).unwrap();
    cases.push(("truncated to half".into(), cut));
    let deleted = s.dir.path().join("deleted");
    copy_dir(&good, &deleted);
    std::fs::remove_file(deleted.join("db")).unwrap();
    cases.push(("its database deleted".into(), deleted));

    for (what, damaged) in &cases {
        replace_store(&s, damaged);
        let o = within(&s, &["run", "--config", s.config.to_str().unwrap()], Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(1), "{what}: {}", out(&o));
        assert!(out(&o).contains("is damaged or was rolled back"), "{what}: {}", out(&o));
        assert!(out(&o).contains("stickwarden store recover"), "{what}: {}", out(&o));
        let o = within(&s, &["store", "verify"], Duration::from_secs(20));
        assert_eq!(o.status.code(), Some(1), "{what}: {}", out(&o));
        assert!(out(&o).contains("FAIL"), "{what}: {}", out(&o));
    }
    // HAProxy kept every block all along: nothing was started that could forget them.
    assert_eq!(acl(&c, &sb).await.len(), 51);
    // The good store verifies, and starts.
    replace_store(&s, &newer);
    let o = within(&s, &["store", "verify"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("51 blocks"), "{}", out(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_takes_back_what_haproxy_held_and_releases_it_on_time() {
    use stickwarden::store::Event;
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let (d, _sock) = daemon_with_import(&s, 20, 31 << 16).await;
    let backup = s.dir.path().join("backup.jsonl");
    let o = sw(&s, &["store", "backup", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("20 blocks"), "{}", out(&o));
    // Blocked after the backup was taken: only HAProxy and the (soon damaged) store know it.
    assert_eq!(sw(&s, &["block", "10.90.0.1", "--for", "1h", "--reason", "late"]).status.code(), Some(0));
    stop_daemon(d);
    let mut bytes = std::fs::read(s.store_path().join("db")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(s.store_path().join("db"), bytes).unwrap();
    let damaged = s.dir.path().join("damaged");
    copy_dir(&s.store_path(), &damaged);

    // With the backup: its 20 blocks come back as they were; the late one is reported, not taken.
    let o =
        within(&s, &["store", "recover", "--backup", backup.to_str().unwrap(), "--for", "3s"], Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("left alone") && out(&o).contains("10.90.0.1"), "{}", out(&o));
    let o = within(&s, &["store", "verify"], Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("20 blocks"), "{}", out(&o));

    // Without one, --adopt takes every entry HAProxy holds, for 3 s, and they end on time.
    replace_store(&s, &damaged);
    let o = within(&s, &["store", "recover", "--adopt", "--for", "3s"], Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains("from HAProxy: 21 block(s)"), "{}", out(&o));
    assert_eq!(acl(&c, &sb).await.len(), 21);
    assert_eq!(gpt0(&c, "10.90.0.1").await, Some(1));
    released(&s).await;
    let store = stickwarden::store::Store::open(&s.store_path(), 8 << 20).unwrap();
    let log = store.audit_since(0).unwrap();
    assert_eq!(log.iter().filter(|r| r.event == Event::Recovered && r.key.is_some()).count(), 21);
    let d = Daemon::start_on(&s, store);
    assert!(
        eventually(Duration::from_secs(10), || async { acl(&c, &sb).await.is_empty() }).await,
        "recovered blocks were not released on time"
    );
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "10.90.0.1").await != Some(1) }).await);
    let store = d.stop().await;
    assert!(store.blocks().unwrap().is_empty());
    assert_eq!(store.audit_since(0).unwrap().iter().filter(|r| r.event == Event::Release).count(), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_large_import_restores_consistently() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let line = format!("socket = \"{}\"\n", sb.admin());
    std::fs::write(&s.config, cfg.replace(&line, &format!("{line}commands_per_second = 1000000\n"))).unwrap();
    let (d, _sock) = running_daemon(&s).await;
    let list = s.dir.path().join("list.txt");
    std::fs::write(&list, addresses(10_000, 32 << 16)).unwrap();
    let mut import = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["import", list.to_str().unwrap(), "--for", "1h", "--reason", "feed"])
        .env("STICKWARDEN_CONFIG", &s.config)
        .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let backup = s.dir.path().join("during.jsonl");
    std::thread::sleep(Duration::from_millis(150));
    let o = sw(&s, &["store", "backup", backup.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(import.wait().unwrap().code(), Some(0));
    stop_daemon(d);

    // The copy is of one moment: every block with its audit record and its owned key, or none.
    let text = std::fs::read_to_string(&backup).unwrap();
    let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
    let blocks = count("{\"block\":");
    let audited = text.lines().filter(|l| l.starts_with("{\"audit\":") && l.contains("\"event\":\"block\"")).count();
    assert!(blocks == 0 || blocks == 10_000, "a backup of half an import: {blocks} blocks");
    assert_eq!((audited, count("{\"owned\":")), (blocks, blocks));

    let o = within(&s, &["store", "restore", backup.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "a store is there: --force needed: {}", out(&o));
    let o = within(&s, &["store", "restore", backup.to_str().unwrap(), "--force"], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    let o = within(&s, &["store", "verify"], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(out(&o).contains(&format!("{blocks} blocks")), "{}", out(&o));
    // A damaged backup is refused whole, and the store stays as it was.
    std::fs::write(&backup, &text[..text.len() / 2]).unwrap();
    let o = within(&s, &["store", "restore", backup.to_str().unwrap(), "--force"], Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    assert!(out(&o).contains("truncated") || out(&o).contains("line"), "{}", out(&o));
    assert_eq!(within(&s, &["store", "verify"], Duration::from_secs(60)).status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_change_between_block_and_release_leaves_nothing_behind() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let (d, sock) = running_daemon(&s).await;
    assert_eq!(sw(&s, &["block", "10.91.0.1", "--for", "1h", "--reason", "x"]).status.code(), Some(0));
    assert_eq!((gpt0(&c, "10.91.0.1").await, acl(&c, &sb).await), (Some(1), vec!["10.91.0.1".to_owned()]));
    stop_daemon(d);

    // [block] loses its ACL, the ladder its acl step: the block's own record says where it is.
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let acl_line = format!("acl = \"{}\"\n", sb.block_acl().display());
    std::fs::write(&s.config, cfg.replace(&acl_line, "")).unwrap();
    std::fs::write(s.dir.path().join("rules/policy.toml"), policy("{ action = [\"tag\"], duration = \"1h\" }"))
        .unwrap();
    let d = spawn_daemon(&s);
    assert!(api_socket_appears(&sock).await);
    let o = sw(&s, &["unblock", "10.91.0.1", "--reason", "done"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert!(acl(&c, &sb).await.is_empty(), "the ACL entry was left behind");
    assert_ne!(gpt0(&c, "10.91.0.1").await, Some(1), "the tag was left behind");
    stop_daemon(d);
}

/// One GET on the API's Unix socket with the viewer token: the body.
async fn api_get(sock: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sock.trim_start_matches("unix:")).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_actuator_cannot_do_stays_unconfirmed_and_the_next_ones_go_through() {
    let sb = haproxy();
    let c = admin(&sb).await;
    // A configuration without [block] acl, and a block of the ACL recorded by an older version
    // (no place): nowhere to apply it.
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, cfg.replace(&format!("acl = \"{}\"\n", sb.block_acl().display()), "")).unwrap();
    let sock = with_api(&s);
    {
        let config = stickwarden::config::Config::load(&s.config).unwrap();
        let store = stickwarden::store::Store::open(&config.store.path, 8 << 20).unwrap();
        store_acl_block(&store, "10.92.0.1");
        store.flush().unwrap();
    }
    released(&s).await;
    let d = spawn_daemon(&s);
    assert!(api_socket_appears(&sock).await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            api_get(&sock, "/healthz").await.contains("\"unconfirmed\":1")
        })
        .await,
        "the job that could not be done was taken for done: {}",
        api_get(&sock, "/healthz").await
    );
    let o = sw(&s, &["blocks"]);
    assert!(out(&o).contains("not yet on sandbox"), "{}", out(&o));
    assert!(api_get(&sock, "/metrics").await.contains("stickwarden_unconfirmed{target=\"sandbox\"} 1"));
    // The actuator goes on with the next jobs.
    let o = sw(&s, &["block", "10.92.0.2", "--for", "1h", "--reason", "next"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(gpt0(&c, "10.92.0.2").await, Some(1));
    assert!(acl(&c, &sb).await.is_empty());
    stop_daemon(d);
}
