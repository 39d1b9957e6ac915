//! `stickwarden table` as a user runs it, against a real HAProxy: output formats, streaming of
//! a large table, and exit codes (1 for HAProxy's errors, 2 for bad input caught before sending).

mod common;

use std::process::{Command, Output};

use stickwarden::proto::{DataField, KeyType, TableKey};

fn stickwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(args)
        .env_remove("STICKWARDEN_HAPROXY")
        .output()
        .expect("run stickwarden")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

async fn seed(sb: &stickwarden::sandbox::Sandbox) {
    let c = common::admin(sb).await;
    let gpt0: DataField = "gpt0".parse().unwrap();
    let rate: DataField = "http_req_rate".parse().unwrap();
    for (ip, tag, r) in [("10.1.2.3", 1, 50), ("10.1.2.4", 0, 3), ("127.0.0.9", 1, 7)] {
        let key = TableKey::parse(KeyType::Ip, ip).unwrap();
        c.set_table("ft_web", key, &[(gpt0.clone(), tag), (rate.clone(), r)]).await.unwrap();
    }
    let key = TableKey::parse(KeyType::String { len: Some(32) }, "a b=c\\d;e").unwrap();
    c.set_table("t_str", key, &["gpc0".parse().unwrap()].map(|f: DataField| (f, 7))).await.unwrap();
}

#[tokio::test]
async fn lists_tables_in_both_formats() {
    let sb = common::haproxy();
    let out = stickwarden(&["table", "--haproxy", &sb.admin()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("TABLE "), "{text}");
    assert!(
        text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["ft_web", "ip", "1048576", "0"]),
        "{text}"
    );

    let out = stickwarden(&["table", "--haproxy", &sb.admin(), "--json"]);
    let tables = json_lines(&out);
    let ft = tables.iter().find(|t| t["table"] == "ft_web").unwrap();
    assert_eq!(ft, &serde_json::json!({"table": "ft_web", "type": "ip", "size": 1048576, "used": 0}));
    assert!(tables.iter().any(|t| t["table"] == "t_str" && t["type"] == "string"));
}

#[tokio::test]
async fn dumps_filters_and_keys() {
    let sb = common::haproxy();
    seed(&sb).await;
    let addr = sb.admin();

    let out = stickwarden(&["table", "--haproxy", &addr, "ft_web", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let entries = json_lines(&out);
    assert_eq!(entries.len(), 3);
    let e = entries.iter().find(|e| e["key"] == "10.1.2.3").unwrap();
    assert_eq!(e["table"], "ft_web");
    assert_eq!(e["data"]["gpt0"], 1);
    assert_eq!(e["data"]["http_req_rate"], serde_json::json!({"value": 50, "period_ms": 10000}));
    assert!(e["ptr"].as_str().unwrap().starts_with("0x"));
    assert!(e["exp_ms"].as_u64().unwrap() > 0);

    let out = stickwarden(&[
        "table",
        "--haproxy",
        &addr,
        "ft_web",
        "--where",
        "data.gpt0 gt 0",
        "--where",
        "data.http_req_rate ge 10",
        "--json",
    ]);
    let keys: Vec<_> = json_lines(&out).iter().map(|e| e["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(keys, ["10.1.2.3"]);

    let out = stickwarden(&["table", "--haproxy", &addr, "ft_web", "--key", "::ffff:127.0.0.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("KEY") && lines[0].contains("http_req_rate(10s)"), "{text}");
    assert!(lines[1].starts_with("127.0.0.9 "), "{text}");

    // String keys: escaped in the human view (one column), real value in JSON.
    let out = stickwarden(&["table", "--haproxy", &addr, "t_str", "--json"]);
    assert_eq!(json_lines(&out)[0]["key"], "a b=c\\d;e");
    let out = stickwarden(&["table", "--haproxy", &addr, "t_str"]);
    assert!(stdout(&out).contains("a\\ b\\=c\\\\d;e "), "{}", stdout(&out));
}

#[tokio::test]
async fn haproxy_errors_exit_1_with_what_was_asked() {
    let sb = common::haproxy();
    let addr = sb.admin();
    let out = stickwarden(&["table", "--haproxy", &addr, "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("show table nosuch") && err.contains("No such table"), "{err}");

    let out = stickwarden(&["table", "--haproxy", &addr, "ft_web", "--where", "data.gpc0 gt 0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Data type not stored in this table"), "{}", stderr(&out));

    let out = stickwarden(&["table", "--haproxy", &sb.user(), "ft_web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("insufficient privileges"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let gone = format!("unix:{}", dir.path().join("gone.sock").display());
    let out = stickwarden(&["table", "--haproxy", &gone]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach HAProxy"), "{}", stderr(&out));
}

#[test]
fn bad_input_exits_2_before_connecting() {
    // The socket does not exist: exit code 2 (not 1) proves nothing was attempted.
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("unix:{}", dir.path().join("none.sock").display());
    let cases: [(&[&str], &str); 6] = [
        (&["table", "--haproxy", "tcp:localhost", "t"], "expected tcp:host:port"),
        (&["table", "--haproxy", "ipv4@127.0.0.1:9", "t"], "unknown scheme"),
        (&["table", "--haproxy", &addr, "t", "--where", "data.gpt0 zz 1"], "unknown operator 'zz'"),
        (&["table", "--haproxy", &addr, "t", "--where", "data.gpt0 gt x"], "'x' is not an integer"),
        (&["table", "--haproxy", &addr, "--where", "data.gpt0 gt 1"], "NAME"),
        (
            &[
                "table",
                "--haproxy",
                &addr,
                "t",
                "--where",
                "gpt0 gt 1",
                "--where",
                "gpt0 gt 1",
                "--where",
                "gpt0 gt 1",
                "--where",
                "gpt0 gt 1",
                "--where",
                "gpt0 gt 1",
            ],
            "at most 4",
        ),
    ];
    for (args, message) in cases {
        let out = stickwarden(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn invalid_key_exits_2_and_changes_nothing() {
    let sb = common::haproxy();
    let out = stickwarden(&["table", "--haproxy", &sb.admin(), "ft_web", "--key", "999.1.1.1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("'999.1.1.1' is not a valid IPv4 address"), "{}", stderr(&out));
    let out = stickwarden(&["table", "--haproxy", &sb.admin(), "t_int", "--key", "abc"]);
    assert_eq!(out.status.code(), Some(2));
    let c = common::admin(&sb).await;
    assert!(c.list_tables().await.unwrap().iter().all(|t| t.used == 0));
}

#[tokio::test]
async fn streams_a_large_table() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let n = 50_000u32;
    let gpt0: DataField = "gpt0".parse().unwrap();
    let cmds: Vec<_> = (0..n)
        .map(|i| stickwarden::proto::Command::SetTable {
            table: "ft_web".into(),
            key: TableKey::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            fields: vec![(gpt0.clone(), (i % 10 == 0) as u64)],
        })
        .collect();
    assert!(c.pipeline(&cmds).await.iter().all(Result::is_ok));
    let out = stickwarden(&["table", "--haproxy", &sb.admin(), "ft_web", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), n as usize);
    let tagged = text.lines().filter(|l| l.contains("\"gpt0\":1")).count();
    assert_eq!(tagged, n as usize / 10);
    // Human output: one heading, then one aligned row per entry.
    let out = stickwarden(&["table", "--haproxy", &sb.admin(), "ft_web", "--where", "data.gpt0 eq 1"]);
    assert_eq!(stdout(&out).lines().count(), n as usize / 10 + 1);
    assert!(stderr(&out).contains(&format!("{} entries of ft_web", n / 10)));
}

/// `stickwarden demo` runs the real loop: the abuser is blocked, the two others never are.
#[test]
fn demo_blocks_the_abuser_only() {
    let o = stickwarden(&["demo", "--seconds", "6", "--hold", "false"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
    assert!(out.contains(">> block 127.0.0.2: level 1 (tag) for 8s, rule http-flood"), "{out}");
    assert!(out.contains("127.0.0.2 L1 tag"), "{out}");
    // Columns: t, 127.0.0.2, 127.0.0.3, 127.0.0.4, blocked.
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| {
            l.split_whitespace().next().is_some_and(|t| t.ends_with('s') && t[..t.len() - 1].parse::<u32>().is_ok())
        })
        .collect();
    assert!(rows.len() >= 5, "{out}");
    assert!(rows.iter().any(|r| r[6..29].contains("x403")), "the abuser was never denied:\n{out}");
    assert!(rows.iter().all(|r| !r[29..75].contains("x403")), "the normal or allowlisted client was denied:\n{out}");
}

/// `simulate` over dumps recorded from a real HAProxy, both as `stickwarden table --json` writes
/// them and as HAProxy prints them; it needs no HAProxy and no store.
#[tokio::test]
async fn simulate_runs_the_shipped_rules_over_recorded_dumps() {
    let sb = stickwarden::sandbox::Sandbox::start(&Default::default()).unwrap();
    let c = common::admin(&sb).await;
    let set = |ip: &'static str, rate: u64| {
        let c = c.clone();
        async move {
            let key = TableKey::parse(KeyType::Ip, ip).unwrap();
            c.set_table("ft_web", key, &[("http_req_rate".parse::<DataField>().unwrap(), rate)]).await.unwrap();
        }
    };
    set("10.0.0.1", 150).await;
    set("10.0.0.2", 20).await;
    let dir = tempfile::tempdir().unwrap();
    let json = stickwarden(&["table", "--haproxy", &sb.admin(), "ft_web", "--json"]);
    assert_eq!(json.status.code(), Some(0));
    std::fs::write(dir.path().join("1.jsonl"), &json.stdout).unwrap();
    let raw = c
        .execute(&stickwarden::proto::Command::ShowTable {
            table: "ft_web".into(),
            select: stickwarden::proto::TableSelect::All,
        })
        .await
        .unwrap();
    std::fs::write(dir.path().join("2.txt"), &raw).unwrap();
    drop(sb);

    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/rules");
    let (d1, d2) = (dir.path().join("1.jsonl"), dir.path().join("2.txt"));
    let o = stickwarden(&["simulate", "--rules", rules, "--json", d1.to_str().unwrap(), d2.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let d = json_lines(&o);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0]["poll"].as_u64(), d[0]["event"].as_str(), d[0]["key"].as_str()),
        (Some(1), Some("block"), Some("10.0.0.1"))
    );
    assert_eq!(
        (d[0]["rule"].as_str(), d[0]["action"].as_str(), d[0]["duration_s"].as_u64()),
        (Some("http-flood"), Some("tag"), Some(600))
    );
    let o = stickwarden(&["simulate", "--rules", rules, d1.to_str().unwrap()]);
    assert!(stdout(&o).contains("POLL") && stdout(&o).contains("http_req_rate=150"), "{}", stdout(&o));

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "hello\n").unwrap();
    let o = stickwarden(&["simulate", "--rules", rules, bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.txt:1: not a `show table` line"), "{}", stderr(&o));
    let o = stickwarden(&["simulate", "--rules", "/nonexistent", d1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(64));

    // With a whole configuration: its allowlist holds (as in `run`), so nothing is blocked.
    let cfg = dir.path().join("stickwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "rules = \"{rules}\"\n[[haproxy]]\nname = \"lb\"\nsocket = \"/nonexistent.sock\"\n\
             [block]\ntable = \"ft_web\"\nacl = \"/etc/haproxy/blocked.acl\"\n[[allow]]\ncidr = \"10.0.0.0/24\"\nreason = \"office\"\n"
        ),
    )
    .unwrap();
    let o = stickwarden(&["simulate", "--config", cfg.to_str().unwrap(), "--json", d1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(json_lines(&o).is_empty(), "{}", stdout(&o));
    let o = stickwarden(&["simulate", d1.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "--rules or --config is required");
}

/// The demo's blocks can be watched in the review console: the URL and token it prints let a
/// client in, and the abuser shows on the blocks page while the demo runs.
#[test]
fn the_demo_serves_its_blocks_in_the_console() {
    use std::io::BufRead;
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["demo", "--seconds", "8", "--hold", "false"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut console = None;
    let mut blocked = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("== review console: http://127.0.0.1:") {
            let (port, rest) = rest.split_once("/ui/").unwrap();
            let token = rest.rsplit(' ').next().unwrap().trim_end_matches(')').to_owned();
            console = Some((port.parse::<u16>().unwrap(), token));
        }
        if line.contains(">> block 127.0.0.2") {
            blocked = true;
            break;
        }
    }
    let (port, token) = console.expect("the demo prints its console's address and token");
    assert!(blocked, "the demo never blocked the abuser");
    let form = format!("token={token}");
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, head, _) =
        stickwarden::sandbox::http_exchange(port, "POST", "/ui/login", &[ct], form.as_bytes()).unwrap();
    assert_eq!(status, 303, "{head}");
    let cookie =
        head.lines().find_map(|l| l.strip_prefix("set-cookie: ")).unwrap().split(';').next().unwrap().to_owned();
    let (status, _, page) =
        stickwarden::sandbox::http_exchange(port, "GET", "/ui/blocks", &[("Cookie", &cookie)], b"").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains(">127.0.0.2</bdi>") && page.contains("http-flood"), "{page}");
    for _ in lines {} // the rest of the demo's output
    assert_eq!(demo.wait().unwrap().code(), Some(0));
}

/// `stickwarden man DIR` writes a page for the command and each subcommand, and `man` renders
/// every one without a warning.
#[test]
fn man_pages_for_every_subcommand_render() {
    let dir = tempfile::tempdir().unwrap();
    let o = stickwarden(&["man", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let help = stdout(&stickwarden(&["--help"]));
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(subcommands.len() >= 15, "{help}");
    for page in std::iter::once("stickwarden".to_owned()).chain(subcommands.iter().map(|c| format!("stickwarden-{c}")))
    {
        let path = dir.path().join(format!("{page}.1"));
        let man = Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man is installed (make test installs man-db)");
        // Without a terminal, man still makes bold by overstriking (`N\x08N`): keep the letters.
        let mut text = String::new();
        for c in String::from_utf8_lossy(&man.stdout).chars() {
            if c == '\u{8}' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(man.status.success(), "{page}: {}", String::from_utf8_lossy(&man.stderr));
        assert!(man.stderr.is_empty(), "{page}: {}", String::from_utf8_lossy(&man.stderr));
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{page}:\n{text}");
    }
    assert!(dir.path().join("stickwarden-store-backup.1").exists(), "nested subcommands get pages too");
}

/// The completion scripts: bash's loads and completes the subcommands; zsh's and fish's name them.
#[test]
fn shell_completions_load() {
    let bash = stdout(&stickwarden(&["completions", "bash"]));
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &bash).unwrap();
    let probe = format!(
        "source {} && complete -p stickwarden && COMP_WORDS=(stickwarden ex); COMP_CWORD=1; \
         _stickwarden stickwarden ex stickwarden && echo \"${{COMPREPLY[@]}}\"",
        script.path().display()
    );
    let o = Command::new("bash").args(["--norc", "--noprofile", "-c", &probe]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("-F _stickwarden stickwarden") && out.contains("explain") && out.contains("extend"), "{out}");
    for shell in ["zsh", "fish"] {
        let s = stdout(&stickwarden(&["completions", shell]));
        assert!(s.contains("haproxy-config") && s.contains("extend"), "{shell}: {s}");
    }
    assert_eq!(stickwarden(&["completions", "tcsh"]).status.code(), Some(2), "an unknown shell is bad usage");
}

/// contrib/stickwarden.service passes `systemd-analyze verify` (its man pages installed where
/// `man` finds them) and scores well in `systemd-analyze security`.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let o = stickwarden(&["man", dir.path().join("man/man1").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/stickwarden.service")).unwrap();
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nExecStart=/usr/bin/stickwarden run\n"));
    // The unit as installed, but for where this build's binary is.
    let unit = unit.replace("/usr/bin/stickwarden", env!("CARGO_BIN_EXE_stickwarden"));
    let path = dir.path().join("stickwarden.service");
    std::fs::write(&path, unit).unwrap();
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&path)
            .env("MANPATH", dir.path().join("man"))
            .output()
            .expect("systemd-analyze is installed (make test installs systemd)")
    };
    let v = analyze(&["verify"]);
    assert!(v.status.success() && v.stderr.is_empty(), "{}{}", stdout(&v), stderr(&v));
    let s = analyze(&["security", "--offline=true", "--no-pager"]);
    let text = format!("{}{}", stdout(&s), stderr(&s));
    let score: f64 = text
        .split("Overall exposure level for stickwarden.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} (documented: 1.4):\n{text}");
}

/// `scripts/package.sh` (what `make package` runs on the release binary) builds a .deb holding
/// the binary, the configuration (a conffile, starting in dry run) and rules, the unit, man pages
/// that render and completions; lintian finds no error or warning; its configuration loads.
#[test]
fn the_debian_package_holds_what_an_install_needs() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh"))
        .args([env!("CARGO_BIN_EXE_stickwarden"), out.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let deb = stdout(&o).trim().to_owned();
    let listing = stdout(&Command::new("dpkg-deb").args(["-c", &deb]).output().unwrap());
    for path in [
        "./usr/bin/stickwarden",
        "./etc/stickwarden/stickwarden.toml",
        "./etc/stickwarden/rules/http-flood.toml",
        "./etc/stickwarden/rules/policy.toml",
        "./lib/systemd/system/stickwarden.service",
        "./usr/share/man/man1/stickwarden.1.gz",
        "./usr/share/man/man1/stickwarden-run.1.gz",
        "./usr/share/bash-completion/completions/stickwarden",
        "./usr/share/zsh/vendor-completions/_stickwarden",
        "./usr/share/fish/vendor_completions.d/stickwarden.fish",
        "./usr/share/doc/stickwarden/copyright",
        "./usr/share/doc/stickwarden/console.md",
    ] {
        assert!(listing.lines().any(|l| l.ends_with(path)), "{path} missing:\n{listing}");
    }
    let info = stdout(&Command::new("dpkg-deb").args(["-I", &deb]).output().unwrap());
    assert!(info.contains("Package: stickwarden") && info.contains("Depends: adduser"), "{info}");
    let lint = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0", &deb])
        .output()
        .expect("lintian is installed (make test installs it)");
    assert!(lint.status.success(), "lintian: {}{}", stdout(&lint), stderr(&lint));
    let conffiles = stdout(&Command::new("dpkg-deb").args(["-I", &deb, "conffiles"]).output().unwrap());
    assert!(conffiles.lines().any(|l| l == "/etc/stickwarden/stickwarden.toml"), "{conffiles}");

    let root = tempfile::tempdir().unwrap();
    assert!(Command::new("dpkg-deb").args(["-x", &deb]).arg(root.path()).status().unwrap().success());
    // The packaged configuration, with its rules where they were unpacked: it loads, in dry run.
    let etc = root.path().join("etc/stickwarden");
    let cfg = std::fs::read_to_string(etc.join("stickwarden.toml")).unwrap();
    let cfg = cfg.replace("/etc/stickwarden/rules", etc.join("rules").to_str().unwrap());
    std::fs::write(etc.join("test.toml"), cfg).unwrap();
    let loaded = stickwarden::config::Config::load(&etc.join("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.dry_run, "a new install starts in dry run");
    let man = Command::new("man")
        .arg("-l")
        .arg(root.path().join("usr/share/man/man1/stickwarden-run.1.gz"))
        .output()
        .unwrap();
    assert!(man.status.success() && man.stderr.is_empty(), "{}", stderr(&man));
    // Stripped, and it runs; its bash completion loads.
    let bin = root.path().join("usr/bin/stickwarden");
    let v = Command::new(&bin).arg("--version").output().unwrap();
    assert!(stdout(&v).starts_with("stickwarden "), "{}", stdout(&v));
    let completion = root.path().join("usr/share/bash-completion/completions/stickwarden");
    let probe = format!("source {} && complete -p stickwarden", completion.display());
    let o = Command::new("bash").args(["--norc", "--noprofile", "-c", &probe]).output().unwrap();
    assert!(stdout(&o).contains("-F _stickwarden stickwarden"), "{}{}", stdout(&o), stderr(&o));
}
