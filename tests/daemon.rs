//! The `stickwarden run` and `stickwarden check` binaries against a real HAProxy: what `check`
//! verifies and reports, bad configuration (exit 64, nothing touched), and a controller killed
//! with SIGKILL in the middle of a block.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn stickwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stickwarden")).args(args).env_remove("STICKWARDEN_CONFIG").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn check(s: &Setup) -> Output {
    stickwarden(&["check", "--config", s.config.to_str().unwrap()])
}

const LADDER: &str =
    "{ action = [\"tag\"], duration = \"1h\" }, { action = [\"tag\", \"acl\", \"kill\"], duration = \"1h\" }";

#[test]
fn check_passes_and_says_what_it_verified() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok   config"), "{out}");
    assert!(out.contains("ok   sandbox: connected to unix:"), "{out}");
    assert!(
        out.contains(
            "ok   sandbox: table 'ft_web' (ip) stores conn_cur, conn_rate, gpt0, http_err_rate, http_req_rate"
        ),
        "{out}"
    );
    assert!(out.contains(&format!("ok   sandbox: ACL {} is loaded", sb.block_acl().display())), "{out}");
    assert!(out.contains("ok   sandbox: socket level admin"), "{out}");
}

#[test]
fn check_notes_array_elements_it_cannot_verify() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let rules = "[[rule]]\nname = \"arr\"\ntable = \"t_arr\"\nall = [\"gpc0 gt 5\", \"gpt1 ge 1\", \"gpc2_rate gt 1\"]\nweight = 1\n";
    std::fs::write(s.dir.path().join("rules/arrays.toml"), rules).unwrap();
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("ok   sandbox: table 't_arr' (ip) stores gpc0"), "{out}");
    if version(&sb) < (3, 2) {
        assert!(out.contains("note: table 't_arr': gpc2_rate, gpt1 cannot be filtered on"), "{out}");
    } else {
        assert!(out.contains("stores gpc0, gpc2_rate, gpt1"), "{out}");
    }
}

#[test]
fn check_names_the_socket_line_to_change_when_the_level_is_too_low() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(&sb.admin(), &sb.operator());
    std::fs::write(&s.config, cfg).unwrap();
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let line = format!("stats socket {}/oper.sock mode 600 level admin", sb.dir().display());
    let fail = "FAIL sandbox: the socket is below level admin, which the ladder's \"kill\" step";
    assert!(out.contains(fail) && out.contains(&format!("need: change its line to `{line}`")), "{out}");
    // Without a kill step, operator is enough where HAProxy allows ACL commands at that level
    // (up to 3.3); 3.4 and later refuse them, and check says so by asking, with the same line.
    let s2 = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s2.config).unwrap().replace(&sb.admin(), &sb.operator());
    std::fs::write(&s2.config, cfg).unwrap();
    let o = check(&s2);
    if version(&sb) < (3, 4) {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains("ok   sandbox: socket level operator (enough: no kill step"), "{}", text(&o));
    } else {
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let want = "FAIL sandbox: the socket is below level admin, which ACL commands on this HAProxy";
        assert!(text(&o).contains(want) && text(&o).contains(&line), "{}", text(&o));
    }
    // The level line is there in every case: at admin too.
    let o = check(&setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), ""));
    assert!(text(&o).contains("ok   sandbox: socket level admin"), "{}", text(&o));
    // At level user, table contents cannot be read at all.
    let cfg = std::fs::read_to_string(&s2.config).unwrap().replace(&sb.operator(), &sb.user());
    std::fs::write(&s2.config, cfg).unwrap();
    let o = check(&s2);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("FAIL sandbox: the socket is at level user"), "{}", text(&o));
}

#[test]
fn check_reports_missing_columns_missing_tables_and_an_unloaded_acl() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let extra = "[[rule]]\nname = \"bytes\"\ntable = \"ft_web\"\nall = [\"bytes_in_rate gt 1000000\"]\nweight = 10\n\n\
                 [[rule]]\nname = \"api\"\ntable = \"ft_api\"\nall = [\"http_req_rate gt 10\"]\nweight = 10\n";
    std::fs::write(s.dir.path().join("rules/extra.toml"), extra).unwrap();
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&sb.block_acl().display().to_string(), "/etc/haproxy/other.lst");
    std::fs::write(&s.config, cfg.replace("[block]", "[block]\n")).unwrap();
    let o = check(&s);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL sandbox: table 'ft_web' does not store bytes_in_rate"), "{out}");
    assert!(out.contains("FAIL sandbox: table 'ft_api' does not exist (tables: ") && out.contains("ft_web;"), "{out}");
    assert!(out.contains("`stickwarden haproxy-config` prints"), "check points at the lines to add: {out}");
    assert!(out.contains("FAIL sandbox: ACL file /etc/haproxy/other.lst is not loaded by HAProxy"), "{out}");
    assert!(out.contains("stickwarden: 3 check(s) failed"), "{out}");
}

#[test]
fn bad_configuration_exits_64_with_its_location_and_touches_nothing() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "[safety]\nmax_blocks_per_minute = 0\n");
    for cmd in ["run", "check"] {
        let o = stickwarden(&[cmd, "--config", s.config.to_str().unwrap()]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(64), "{cmd}: {out}");
        assert!(out.contains(&format!("{}:", s.config.display())) && out.contains("max_blocks_per_minute"), "{out}");
    }
    std::fs::write(
        s.dir.path().join("rules/bad.toml"),
        "[[rule]]\nname = \"b\"\ntable = \"ft_web\"\nall = [\"gpt0 >> 1\"]\nweight = 1\n",
    )
    .unwrap();
    let o = stickwarden(&["run", "--config", s.config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).contains("rules/bad.toml:4:7: condition 'gpt0 >> 1': unknown operator '>>'"), "{}", text(&o));
    assert!(!s.store_path().exists(), "the store was created");
    let o = stickwarden(&["run", "--config", "/nonexistent/stickwarden.toml"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(text(&o).contains("/nonexistent/stickwarden.toml: cannot read"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_block_keeps_it_across_a_haproxy_restart_and_ends_it_on_time() {
    let mut sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"8s\" }"), "");
    let mut daemon = spawn_daemon(&s);

    flood(&sb, 1, 150).await;
    let c = admin(&sb).await;
    assert!(eventually(Duration::from_secs(5), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    assert!(eventually(Duration::from_secs(1), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    daemon.kill().unwrap(); // SIGKILL: no chance to flush or say goodbye
    daemon.wait().unwrap();

    // HAProxy restarts meanwhile: every tag and runtime ACL entry is gone.
    sb.restart().unwrap();
    let c = admin(&sb).await;
    assert_eq!(get(&sb, 1).await, 200);
    assert!(acl(&c, &sb).await.is_empty());

    // The new controller finds the block in its store and puts it back at once.
    let daemon = spawn_daemon(&s);
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    assert_eq!(acl(&c, &sb).await, ["127.0.0.2"], "re-applied exactly once");
    assert_eq!(get(&sb, 1).await, 403);

    // ...and ends it on time: at the store's `until` (checked against the audit log below).
    assert!(eventually(Duration::from_secs(10), || async { acl(&c, &sb).await.is_empty() }).await, "never released");
    assert!(
        eventually(Duration::from_secs(1), || async { gpt0(&c, "127.0.0.2").await.is_none() }).await,
        "entry not cleared"
    );
    assert_eq!(get(&sb, 1).await, 200);

    // SIGTERM: a clean exit, status 0.
    stop_daemon(daemon);

    let store = stickwarden::store::Store::open(&s.store_path(), 1 << 20).unwrap();
    let log = store.audit_since(0).unwrap();
    let ev: Vec<_> = log.iter().map(|r| r.event).collect();
    assert_eq!(ev, [stickwarden::store::Event::Block, stickwarden::store::Event::Release], "one block, one release");
    let (block, release) = (&log[0], &log[1]);
    let until = block.at + block.duration_ms;
    assert!(release.at >= until, "released {} ms early", until - release.at);
    assert!(release.at <= until + 1_000, "released {} ms late", release.at - until);
}

/// SIGKILL of the daemon in the middle of a 10,000-entry import, at several moments: after the
/// next start, the ACL in HAProxy and the blocks in the store agree exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_import_leaves_store_and_haproxy_in_agreement_after_restart() {
    use std::collections::BTreeSet;
    for delay_ms in [150u64, 450, 700, 1000] {
        let sb = haproxy();
        let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
        let sock = with_api(&s);
        let list = s.dir.path().join("list.txt");
        let text: String =
            (0..10_000u32).map(|i| format!("10.{}.{}.{}\n", 30 + i / 65536, (i / 256) % 256, i % 256)).collect();
        std::fs::write(&list, text).unwrap();
        let mut daemon = spawn_daemon(&s);
        let sock_path = std::path::PathBuf::from(sock.trim_start_matches("unix:"));
        assert!(
            eventually(Duration::from_secs(5), || {
                let p = sock_path.clone();
                async move { p.exists() }
            })
            .await
        );

        let mut import = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args([
                "import",
                list.to_str().unwrap(),
                "--for",
                "1h",
                "--reason",
                "feed",
                "--config",
                s.config.to_str().unwrap(),
            ])
            .env("STICKWARDEN_TOKEN", OPERATOR_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        let _ = import.wait();
        std::fs::remove_file(&sock_path).unwrap(); // left behind by SIGKILL: wait for the new one

        let daemon = spawn_daemon(&s);
        assert!(
            eventually(Duration::from_secs(5), || {
                let p = sock_path.clone();
                async move { p.exists() }
            })
            .await
        );
        let c = admin(&sb).await;
        let stored = || {
            let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
                .args(["blocks", "--json", "--config", s.config.to_str().unwrap()])
                .env("STICKWARDEN_TOKEN", VIEWER_TOKEN)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<String>>()
        };
        let agree = eventually(Duration::from_secs(10), || {
            let (c, want) = (c.clone(), stored());
            let acl_path = sb.block_acl().display().to_string();
            async move {
                let have: BTreeSet<String> =
                    c.show_acl(&acl_path.parse().unwrap()).await.unwrap().into_iter().map(|e| e.pattern).collect();
                have == want
            }
        })
        .await;
        let n = stored().len();
        stop_daemon(daemon);
        assert!(agree, "killed after {delay_ms} ms: store and HAProxy disagree");
        assert!(n == 0 || n == 5_000 || n == 10_000, "killed after {delay_ms} ms: {n} blocks, not whole batches");
        eprintln!("killed after {delay_ms} ms: {n} blocks recorded, all in HAProxy");
    }
}

/// `run` says at start what `check` would: here a socket below the level the kill step needs,
/// with the exact line to change; and it keeps running.
#[tokio::test]
async fn run_reports_a_socket_level_too_low_at_start() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(&sb.admin(), &sb.operator());
    std::fs::write(&s.config, cfg).unwrap();
    let mut d = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every line is read (a closed pipe would fail the daemon's next write), the ERROR ones sent on.
    let stderr = d.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if l.contains("ERROR") {
                let _ = tx.send(l);
            }
        }
    });
    let line = format!("stats socket {}/oper.sock mode 600 level admin", sb.dir().display());
    let found = rx.recv_timeout(Duration::from_secs(5)).ok();
    stop_daemon(d);
    reader.join().unwrap();
    let found = found.expect("an error line");
    assert!(found.contains("below level admin") && found.contains(&line), "{found}");
}

/// The log pipe going away (a journal restarted, a `| head`) does not take the daemon down.
#[tokio::test]
async fn run_survives_a_closed_stderr() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(LADDER), "");
    let mut d = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .env("STICKWARDEN_LOG", "debug") // a line every poll: writes after the close are certain
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Read;
        let mut first = [0u8; 64];
        d.stderr.take().unwrap().read_exact(&mut first).unwrap();
    } // the read end is closed here
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(d.try_wait().unwrap().is_none(), "the daemon died when its stderr closed");
    stop_daemon(d);
}

/// Under systemd (`Type=notify`): `READY=1` once every target answers, `STOPPING=1` at SIGTERM,
/// sent to the datagram socket `NOTIFY_SOCKET` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_when_it_is_ready_and_when_it_stops() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let path = s.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let d = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1\n") && msg.contains("STATUS=enforcing on 1 target(s)"), "{msg}");
    stop_daemon(d);
    let n = sock.recv(&mut buf).expect("STOPPING=1 at SIGTERM");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
}

/// contrib/: the alert rules pass `promtool check rules`, the dashboard's queries are valid PromQL
/// (checked the same way, as recording rules), and every stickwarden metric either names is one a
/// running daemon exposes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_use_real_metrics() {
    use std::io::{Read, Write};
    let contrib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let alerts = std::fs::read_to_string(contrib.join("prometheus-alerts.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib.join("grafana-dashboard.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 9);

    let dir = tempfile::tempdir().unwrap();
    let recording: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| format!("      - record: dashboard_query_{i}\n        expr: '{}'\n", e.replace('\'', "''")))
        .collect();
    std::fs::write(dir.path().join("dashboard.yml"), format!("groups:\n  - name: dashboard\n    rules:\n{recording}"))
        .unwrap();
    for file in [contrib.join("prometheus-alerts.yml"), dir.path().join("dashboard.yml")] {
        let o = std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("promtool is installed (make test installs Debian's prometheus)");
        assert!(o.status.success(), "{}: {}", file.display(), out(&o));
    }

    // What a running daemon exposes.
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let (d, sock) = running_daemon(&s).await;
    let mut c = std::os::unix::net::UnixStream::connect(sock.trim_start_matches("unix:")).unwrap();
    write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    stop_daemon(d);
    let mut exposed = std::collections::BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut w = line.split_whitespace();
        let (name, kind) = (w.next().unwrap().to_owned(), w.next().unwrap_or(""));
        match kind {
            "counter" => {
                exposed.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exposed.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
        exposed.insert(name);
    }
    assert!(exposed.contains("stickwarden_target_up"), "{text}");
    let used = exprs.iter().map(String::as_str).chain(std::iter::once(alerts.as_str())).flat_map(|t| {
        t.match_indices("stickwarden_")
            .map(move |(i, _)| t[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>())
    });
    let unknown: std::collections::BTreeSet<String> = used.filter(|m| !exposed.contains(m)).collect();
    assert!(unknown.is_empty(), "not exposed by the daemon: {unknown:?}\n{exposed:?}");
}
