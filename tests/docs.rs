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
    for line in doc.lines() {
        if line.starts_with("```") {
            inside = !inside && line == format!("```{lang}");
            continue;
        }
        if inside && !line.trim().is_empty() {
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
