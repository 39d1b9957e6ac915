//! The examples of `docs/cli.md` run against a real HAProxy: every `stickwarden ...` line of its
//! `sh` blocks must succeed, and every JSON example must have the shape real output has.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use stickwarden::proto::{DataField, KeyType, TableKey};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap()
}

/// The lines of the fenced blocks of `lang` in the document.
fn blocks(doc: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in doc.lines().map(str::trim) {
        if line.starts_with("```") {
            inside = !inside && line == format!("```{lang}");
            continue;
        }
        if inside && !line.is_empty() {
            out.push(line.to_owned());
        }
    }
    out
}

/// Splits a shell line on spaces, honouring single quotes (all the docs use).
fn words(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.retain(|w| !w.is_empty());
    out
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn cli_examples_run_and_json_examples_match_real_output() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let fields: Vec<(DataField, u64)> = vec![("gpt0".parse().unwrap(), 1), ("http_req_rate".parse().unwrap(), 50)];
    c.set_table("ft_web", TableKey::parse(KeyType::Ip, "10.1.2.3").unwrap(), &fields).await.unwrap();

    let commands = blocks(&doc(), "sh");
    assert!(commands.len() >= 5, "docs/cli.md lost its examples");
    let mut entry_json = None;
    for line in &commands {
        let line = line.replace("unix:/run/haproxy/admin.sock", &sb.admin());
        let w = words(&line);
        assert_eq!(w[0], "stickwarden", "{line}");
        let out = Command::new(env!("CARGO_BIN_EXE_stickwarden")).args(&w[1..]).output().unwrap();
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        if line.contains("--key 10.1.2.3 --json") {
            entry_json = Some(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap());
        }
    }

    let examples = blocks(&doc(), "json");
    let table: serde_json::Value = serde_json::from_str(&examples[0]).unwrap();
    let entry: serde_json::Value = serde_json::from_str(&examples[1]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["table", "--haproxy", &sb.admin(), "--json"])
        .output()
        .unwrap();
    let real_table: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(keys(&table), keys(&real_table));
    let real = entry_json.expect("the --key example ran");
    assert_eq!(keys(&entry), keys(&real));
    assert_eq!(entry["data"]["http_req_rate"], real["data"]["http_req_rate"]);
    assert_eq!(entry["key"], real["key"]);
    assert_eq!(entry["data"]["gpt0"], real["data"]["gpt0"]);
}

fn read_doc(name: &str) -> String {
    std::fs::read_to_string(format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Each fenced block of `lang` in the document, as its own text.
fn fenced(doc: &str, lang: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        if line.starts_with("```") {
            inside = !inside && line == format!("```{lang}");
            if inside {
                out.push(String::new());
            }
            continue;
        }
        if inside {
            let block = out.last_mut().unwrap();
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

#[test]
fn rules_reference_examples_load_and_its_filters_are_the_real_ones() {
    let doc = read_doc("rules.md");
    let dir = tempfile::tempdir().unwrap();
    let examples = fenced(&doc, "toml");
    assert_eq!(examples.len(), 3);
    for (i, text) in examples.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.toml")), text).unwrap();
    }
    let set = stickwarden::rules::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        set.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["http-flood", "conn-flood", "tagged-by-haproxy"]
    );
    assert_eq!(set.policy, stickwarden::rules::Policy::default(), "the doc says its policy is the default");

    // The shipped rules, their policy the documented one, and the queries the doc lists.
    let shipped =
        stickwarden::rules::load_dir(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap();
    assert_eq!(shipped.policy, stickwarden::rules::Policy::default());
    let queries: Vec<String> = stickwarden::rules::filters::queries(shipped.for_table("ft_web").map(|(_, r)| r))
        .iter()
        .map(|q| format!("show table ft_web {}", q.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ")))
        .collect();
    assert_eq!(blocks(&doc, "text"), queries);
}

/// The HAProxy config of docs/haproxy.md runs, and `check` passes on it with the example
/// `stickwarden.toml` of docs/configuration.md and the shipped rules.
#[tokio::test]
async fn documented_haproxy_and_stickwarden_configs_work_together() {
    let (_dir, _sb, cfg) = documented(false);
    assert_eq!(cfg.allow.len(), 2);
    assert_eq!(cfg.api.as_ref().map(|a| a.listen.len()), Some(2));
    let findings = stickwarden::check::check_all(&cfg).await;
    let failed: Vec<_> = findings.iter().filter(|(_, f)| !f.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(findings.len(), 4, "{findings:?}"); // connected, table, ACL, level
}

/// Suspects mode as docs/haproxy.md shows it: its lines are what `stickwarden haproxy-config`
/// prints last for the example configuration, HAProxy runs them in the documented frontend, and
/// `check` passes, the suspects table's comparison with a full poll included.
#[tokio::test]
async fn documented_suspects_mode_is_what_haproxy_config_prints_and_works() {
    let [lines] = &fenced(&read_doc("haproxy.md"), "haproxy-suspects")[..] else {
        panic!("one suspects block expected")
    };
    let (dir, _sb, cfg) = documented(true);
    // Printed for the configuration as documented (the paths of /etc, not the test's).
    let documented_cfg = std::fs::read_to_string(dir.join("stickwarden.toml"))
        .unwrap()
        .replace(&format!("{}/stickwarden-block.lst", dir.display()), "/etc/haproxy/stickwarden-block.lst");
    std::fs::write(dir.join("as-documented.toml"), documented_cfg).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["haproxy-config", "--config", dir.join("as-documented.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The suspects part comes last, after the lines every configuration needs.
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(
        printed.trim_end().ends_with(&format!("\n\n{}", lines.trim_end())),
        "docs/haproxy.md is not what haproxy-config prints:\n{printed}"
    );
    let findings = stickwarden::check::check_all(&cfg).await;
    let failed: Vec<_> = findings.iter().filter(|(_, f)| !f.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        findings.iter().any(|(_, f)| f.what.starts_with("suspects table 'sw_suspects' flags every offender")),
        "{findings:?}"
    );
}

/// The example `stickwarden.toml` of docs/configuration.md with its paths in the directory `d`
/// (its tokens file written there) and the block ACL `acl`.
fn documented_config(d: &str, acl: &str) -> String {
    let conf_doc = read_doc("configuration.md");
    let [cfg, tokens] = &fenced(&conf_doc, "toml")[..] else { panic!("two toml blocks expected") };
    std::fs::write(format!("{d}/tokens.toml"), tokens).unwrap();
    common::private(format!("{d}/tokens.toml"));
    cfg.replace("/etc/stickwarden/tokens.toml", &format!("{d}/tokens.toml"))
        .replace("/run/stickwarden/api.sock", &format!("{d}/api.sock"))
        .replace("/run/haproxy/admin.sock", &format!("{d}/admin.sock"))
        .replace("/etc/haproxy/stickwarden-block.lst", acl)
        .replace("/etc/stickwarden/rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
        .replace("/var/lib/stickwarden", &format!("{d}/store"))
}

/// A temp dir holding the HAProxy config of docs/haproxy.md (with the lines of its suspects block
/// in its frontend when `suspects`) running, and the example `stickwarden.toml` of
/// docs/configuration.md (watching `ft_web` through `sw_suspects` when `suspects`), loaded.
/// The sandbox owns the temp dir (deleted with it); its path is returned first.
fn documented(suspects: bool) -> (std::path::PathBuf, stickwarden::sandbox::Sandbox, stickwarden::config::Config) {
    let dir = tempfile::Builder::new().prefix("stickwarden-docs-").tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let acl = format!("{d}/stickwarden-block.lst");
    std::fs::write(&acl, "").unwrap();
    let doc = read_doc("haproxy.md");
    let [hap] = &fenced(&doc, "haproxy")[..] else { panic!("one haproxy block expected") };
    let mut hap = hap.clone();
    if suspects {
        let [lines] = &fenced(&doc, "haproxy-suspects")[..] else { panic!("one suspects block expected") };
        // The frontend's lines, a blank line, the suspects table's section.
        let (front, section) = lines.split_once("\n\n").expect("a blank line before the section");
        let track = "    tcp-request connection track-sc0 src\n";
        assert!(hap.contains(track), "the documented frontend no longer tracks at connection time");
        hap = hap.replace(track, &format!("{track}{front}\n"));
        hap.push_str(&format!("\n{section}\n"));
    }
    let hap = hap
        .replace("/run/haproxy/admin.sock", &format!("{d}/admin.sock"))
        .replace("/etc/haproxy/stickwarden-block.lst", &acl)
        .replace("bind :80", &format!("bind 127.0.0.1:{port}"));
    let dir_path = dir.path().to_owned();
    let sb = stickwarden::sandbox::Sandbox::start_with(dir, &hap, port, 0).unwrap_or_else(|e| panic!("{e}"));

    let mut cfg = documented_config(&d, &acl);
    if suspects {
        let table = "[[table]]\nname = \"ft_web\"\ninterval = \"1s\"\n";
        assert!(cfg.contains(table), "the documented [[table]] changed");
        cfg = cfg.replace(table, &format!("{table}suspects = \"sw_suspects\"\n"));
    }
    let path = dir_path.join("stickwarden.toml");
    std::fs::write(&path, cfg).unwrap();
    let cfg = stickwarden::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (dir_path, sb, cfg)
}

/// The commands of docs/operations.md, run in order without a daemon (the CLI then works on the
/// store and the sandbox HAProxy directly), each must succeed; `> FILE` writes its output.
#[tokio::test]
async fn operations_guide_commands_run_in_order() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let s = common::setup(&sb, "", &common::policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let dir = s.dir.path().to_owned();
    std::fs::write(dir.join("feed.txt"), "# feed\n203.0.113.7\n203.0.113.9\n").unwrap();
    // The address the review looks at has a block to explain.
    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["block", "203.0.113.7", "--for", "10m", "--reason", "seed"])
        .env("STICKWARDEN_CONFIG", &s.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let commands = blocks(&read_doc("operations.md"), "sh");
    assert!(commands.len() >= 12, "docs/operations.md lost its examples");
    for line in &commands {
        let line = line
            .replace("unix:/run/haproxy/admin.sock", &sb.admin())
            .replace("/etc/stickwarden/rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        let mut w = words(&line);
        assert_eq!(w[0], "stickwarden", "{line}");
        let redirect = w.iter().position(|x| x == ">").map(|i| {
            let file = w[i + 1].clone();
            w.truncate(i);
            file
        });
        let out = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
            .args(&w[1..])
            .current_dir(&dir)
            .env("STICKWARDEN_CONFIG", &s.config)
            .env_remove("STICKWARDEN_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
        if let Some(f) = redirect {
            std::fs::write(dir.join(f), &out.stdout).unwrap();
        }
    }
    // What the runbook did is in HAProxy: the network, the feed and the seed; not the released
    // false positive.
    let patterns = common::acl(&c, &sb).await;
    assert_eq!(patterns, ["203.0.113.0/24", "203.0.113.7", "203.0.113.9"]);
}

/// The fleet example of docs/fleet.md loads: three targets (tcp and master forms), merging on,
/// its column override in force.
#[test]
fn fleet_guide_example_loads() {
    use stickwarden::fleet::MergeMode;
    let dir = tempfile::tempdir().unwrap();
    let [cfg] = &fenced(&read_doc("fleet.md"), "toml")[..] else { panic!("one toml block expected") };
    let cfg = cfg.replace("/etc/stickwarden/rules", concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
    let path = dir.path().join("stickwarden.toml");
    std::fs::write(&path, format!("{cfg}\n[store]\npath = \"store\"\n")).unwrap();
    let cfg = stickwarden::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let targets: Vec<String> = cfg.targets.iter().map(|t| t.target.to_string()).collect();
    assert_eq!(targets, ["tcp:10.0.1.11:9999", "tcp:10.0.1.12:9999", "master:/run/haproxy-master.sock"]);
    assert!(cfg.merge.enabled);
    assert_eq!(cfg.merge.mode(&"conn_cur".parse().unwrap()), MergeMode::Sum);
    assert_eq!(cfg.merge.mode(&"gpt0".parse().unwrap()), MergeMode::Max);
}

/// `stickwarden haproxy-config` for the example configuration of docs/configuration.md: its lines,
/// pasted into a minimal HAProxy configuration, pass `haproxy -c`, run, satisfy `stickwarden
/// check`, and block a real flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_config_prints_lines_that_run_and_block() {
    let dir = tempfile::Builder::new().prefix("stickwarden-generated-").tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let acl = format!("{d}/block.lst");
    std::fs::write(&acl, "").unwrap();
    // The API on its Unix socket only: the daemon runs, and 9180 may be taken.
    let cfg = documented_config(&d, &acl).replace("\"127.0.0.1:9180\", ", "");
    let cfg_path = dir.path().join("stickwarden.toml");
    std::fs::write(&cfg_path, cfg).unwrap();

    let o = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["haproxy-config", "--config", cfg_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let part = |heading: &str| {
        let start = text.find(heading).unwrap_or_else(|| panic!("no '{heading}' in:\n{text}"));
        let body = &text[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("\n\n").unwrap_or(body.len())].to_owned()
    };
    let hap = format!(
        "global\n{}\n    stats timeout 2m\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n\nfrontend fe_main\n    bind 127.0.0.1:{port}\n{}\n    \
         http-request return status 200 content-type text/plain string ok\n\n{}\n",
        part("# == in the global section"),
        part("# == in the frontend"),
        part("# == sections of their own"),
    );
    let bin = stickwarden::sandbox::haproxy_binary().unwrap();
    std::fs::write(dir.path().join("check.cfg"), &hap).unwrap();
    let checked = Command::new(&bin).args(["-c", "-f"]).arg(dir.path().join("check.cfg")).output().unwrap();
    assert!(checked.status.success(), "haproxy -c refused:\n{hap}\n{}", String::from_utf8_lossy(&checked.stderr));
    let sb = stickwarden::sandbox::Sandbox::start_with(dir, &hap, port, 0).unwrap_or_else(|e| panic!("{e}"));

    let loaded = stickwarden::config::Config::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let findings = stickwarden::check::check_all(&loaded).await;
    let failed: Vec<_> = findings.iter().filter(|(_, f)| !f.ok).collect();
    assert!(failed.is_empty(), "{failed:?}\n{hap}");

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", cfg_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (abuser, normal) = (stickwarden::sandbox::client_addr(1), stickwarden::sandbox::client_addr(2));
    stickwarden::sandbox::http_burst(abuser, sb.web_port, 150, 10).await.unwrap();
    let blocked = common::eventually(std::time::Duration::from_secs(10), || async {
        stickwarden::sandbox::http_get(abuser, sb.web_port).await.unwrap_or(0) == 403
    })
    .await;
    let normal_status = stickwarden::sandbox::http_get(normal, sb.web_port).await.unwrap();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(blocked, "the generated lines did not deny the flooder");
    assert_eq!(normal_status, 200);
}

/// The graduated responses of docs/haproxy.md are the lines `haproxy-config` prints for them (the
/// lines tests/responses.rs proves with real HTTP).
#[test]
fn documented_responses_are_the_generated_lines() {
    use stickwarden::rules::MapClass;
    let lines = stickwarden::haproxy_side::map_lines("/etc/haproxy/stickwarden.map", &MapClass::ALL);
    let [block] = &fenced(&read_doc("haproxy.md"), "haproxy-responses")[..] else {
        panic!("one haproxy-responses block expected; it is:\n{}", lines.join("\n"))
    };
    assert_eq!(block.trim_end(), lines.join("\n").trim_end(), "docs/haproxy.md is not what haproxy-config prints");
}
