//! `simulate`: a rule set run offline over recorded `show table` dumps, taken in order as
//! successive polls `interval` apart, on a simulated clock. The scoring, ladder, dry-run and
//! release logic are the daemon's own ([`crate::engine`]); nothing contacts HAProxy and no store is
//! written. A dump is HAProxy's text (as `socat` prints it, `# table:` headers included) or the
//! JSON Lines of `stickwarden table NAME --json`; each entry is evaluated against the rules of its
//! table. This is how a team tunes rules before enforcing them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use crate::proto::table::{lines, EntryParser, Line};
use crate::rules::{Rule, RuleSet};
use crate::store::Offender;
use crate::time::{ms, Millis};

/// One decision of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimDecision {
    /// 1-based number of the dump (poll).
    pub poll: usize,
    /// Seconds since the first poll.
    pub at_s: u64,
    /// `block`, `would_block` (dry run), `release` or `would_release`.
    pub event: String,
    pub key: String,
    pub rule: String,
    pub level: u32,
    pub action: String,
    pub duration_s: u64,
    pub counters: Vec<(String, i64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Format { path: String, line: usize, message: String },
}

/// One entry of a dump, as (table, address, raw HAProxy entry line).
struct Sample {
    table: String,
    addr: IpAddr,
    line: Vec<u8>,
}

/// Runs `rules` over the dumps, in order.
pub fn simulate(rules: &RuleSet, dumps: &[impl AsRef<Path>], interval: Duration) -> Result<Vec<SimDecision>, SimError> {
    let mut offenders: HashMap<IpAddr, Offender> = HashMap::new();
    let mut blocks: HashMap<IpNet, (Millis, SimDecision)> = HashMap::new();
    let mut out = Vec::new();
    let mut parser = EntryParser::new();
    for (i, path) in dumps.iter().enumerate() {
        let now = ms(interval) * i as u64;
        let poll = i + 1;
        // Releases first: a block whose time has come lets its address be scored again.
        let mut due: Vec<IpNet> = blocks.iter().filter(|(_, (until, _))| *until <= now).map(|(k, _)| *k).collect();
        due.sort();
        for k in due {
            let (_, d) = blocks.remove(&k).expect("listed");
            let event = if d.event == "would_block" { "would_release" } else { "release" };
            out.push(SimDecision { poll, at_s: now / 1000, event: event.into(), counters: Vec::new(), ..d });
        }
        for s in read_dump(path.as_ref())? {
            let Line::Entry(e) = parser.parse_line(&s.line) else { continue };
            let key = crate::net::host_net(s.addr);
            if blocks.contains_key(&key) {
                continue;
            }
            let matched: Vec<&Rule> =
                rules.for_table(&s.table).filter(|(_, r)| r.matches(&e)).map(|(_, r)| r).collect();
            if matched.is_empty() {
                continue;
            }
            let o = offenders.entry(s.addr).or_default();
            let Some(v) = crate::engine::assess(&rules.policy, o, &matched, now, false, usize::MAX) else { continue };
            let mut counters: Vec<(String, i64)> = Vec::new();
            for c in matched.iter().flat_map(|r| r.conditions()) {
                if let (Some(v), false) = (c.read(&e), counters.iter().any(|(n, _)| n == c.column.as_str())) {
                    counters.push((c.column.to_string(), v.clamp(i64::MIN.into(), i64::MAX.into()) as i64));
                }
            }
            let d = SimDecision {
                poll,
                at_s: now / 1000,
                event: if v.dry_run { "would_block" } else { "block" }.into(),
                key: s.addr.to_string(),
                rule: v.rule,
                level: v.level,
                action: v.actions.to_string(),
                duration_s: v.duration.as_secs(),
                counters,
            };
            blocks.insert(key, (now + ms(v.duration), d.clone()));
            out.push(d);
        }
    }
    Ok(out)
}

/// The entries of one dump file, in either format, as raw HAProxy entry lines.
fn read_dump(path: &Path) -> Result<Vec<Sample>, SimError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| SimError::Read { path: p.clone(), source })?;
    let bad = |line: usize, message: String| SimError::Format { path: p.clone(), line, message };
    let mut out = Vec::new();
    let mut table: Option<String> = None;
    let mut parser = EntryParser::new();
    for (n, raw) in lines(&text).enumerate() {
        let n = n + 1;
        let trimmed = raw.trim_ascii();
        if trimmed.is_empty() || trimmed.starts_with(b"> ") || trimmed == b">" {
            continue;
        }
        if trimmed.starts_with(b"{") {
            out.push(json_sample(trimmed).map_err(|m| bad(n, m))?);
            continue;
        }
        match parser.parse_line(trimmed) {
            Line::Header(h) => table = Some(h.name.to_owned()),
            Line::Entry(e) => {
                let Some(t) = &table else {
                    return Err(bad(n, "an entry before any '# table:' header: record dumps with their header".into()));
                };
                let Some(addr) = e.key_addr() else { continue };
                out.push(Sample { table: t.clone(), addr, line: trimmed.to_vec() });
            }
            Line::Denied => return Err(bad(n, "this dump was taken at level user: it holds no entries".into())),
            Line::Invalid(_, why) => {
                return Err(bad(
                    n,
                    format!("not a `show table` line ({why}); expected HAProxy's text or `stickwarden table --json`"),
                ))
            }
        }
    }
    Ok(out)
}

/// A line of `stickwarden table --json`, rewritten as the HAProxy entry line it came from.
fn json_sample(line: &[u8]) -> Result<Sample, String> {
    let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let table = v["table"].as_str().ok_or("no \"table\"")?.to_owned();
    let Some(key) = v["key"].as_str() else {
        return Err("a table line, not an entry: dump one table (`stickwarden table NAME --json`)".into());
    };
    let addr: IpAddr = key.parse::<IpAddr>().map_err(|_| format!("key '{key}' is not an address"))?.to_canonical();
    let mut raw =
        format!("0x0: key={key} use={} exp={}", v["use"].as_u64().unwrap_or(0), v["exp_ms"].as_u64().unwrap_or(0));
    if let Some(data) = v["data"].as_object() {
        for (name, val) in data {
            match val {
                serde_json::Value::Number(n) => raw.push_str(&format!(" {name}={n}")),
                serde_json::Value::Object(r) => {
                    let (value, period) =
                        (r.get("value").and_then(|x| x.as_i64()), r.get("period_ms").and_then(|x| x.as_u64()));
                    if let (Some(value), Some(period)) = (value, period) {
                        raw.push_str(&format!(" {name}({period})={value}"));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Sample { table, addr, line: raw.into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.toml"),
            "[[rule]]\nname = \"flood\"\ntable = \"ft_web\"\nall = [\"http_req_rate gt 100\"]\nweight = 100\n\n\
             [[rule]]\nname = \"errors\"\ntable = \"ft_web\"\nall = [\"http_err_rate gt 20\"]\nweight = 100\ndry_run = true\n\n\
             [ladder]\nforgiveness = \"1h\"\nsteps = [{ action = [\"tag\"], duration = \"2s\" }, { action = [\"tag\", \"acl\"], duration = \"10s\" }]\n",
        )
        .unwrap();
        crate::rules::load_dir(dir.path()).unwrap()
    }

    #[test]
    fn successive_dumps_are_successive_polls() {
        let dir = tempfile::tempdir().unwrap();
        let head = "# table: ft_web, type: ip, size:1024, used:2\n";
        let flood = "0x1: key=10.0.0.1 use=0 exp=1000 http_req_rate(10000)=150 http_err_rate(10000)=0\n";
        let calm = "0x2: key=10.0.0.2 use=0 exp=1000 http_req_rate(10000)=5 http_err_rate(10000)=30\n";
        let json = r#"{"table":"ft_web","key":"10.0.0.1","ptr":"0x1","use":0,"exp_ms":1000,"shard":null,"data":{"http_req_rate":{"value":150,"period_ms":10000}}}"#;
        let paths: Vec<_> =
            [format!("{head}{flood}{calm}"), format!("{head}{flood}"), format!("{head}{flood}"), format!("{json}\n")]
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let p = dir.path().join(format!("{i}.txt"));
                    std::fs::write(&p, t).unwrap();
                    p
                })
                .collect();
        let d = simulate(&rules(), &paths, Duration::from_secs(1)).unwrap();
        let got: Vec<(usize, &str, &str, u32)> =
            d.iter().map(|d| (d.poll, d.event.as_str(), d.key.as_str(), d.level)).collect();
        // Poll 1: 10.0.0.1 blocked (2 s), 10.0.0.2 only by a dry-run rule. Poll 3: both released,
        // 10.0.0.1 blocked again at level 2. Poll 4 (JSON Lines): still blocked, nothing new.
        assert_eq!(
            got,
            [
                (1, "block", "10.0.0.1", 1),
                (1, "would_block", "10.0.0.2", 1),
                (3, "release", "10.0.0.1", 1),
                (3, "would_release", "10.0.0.2", 1),
                (3, "block", "10.0.0.1", 2)
            ]
        );
        assert_eq!(d[0].counters, [("http_req_rate".to_owned(), 150)]);
    }

    #[test]
    fn bad_dumps_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.txt");
        std::fs::write(&p, "0x1: key=10.0.0.1 use=0 exp=0 gpt0=1\n").unwrap();
        let e = simulate(&rules(), &[&p], Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.ends_with("d.txt:1: an entry before any '# table:' header: record dumps with their header"), "{e}");
        std::fs::write(&p, "KEY USE EXPIRES gpt0\n").unwrap();
        let e = simulate(&rules(), &[&p], Duration::from_secs(1)).unwrap_err().to_string();
        assert!(e.contains("d.txt:1: not a `show table` line"), "{e}");
    }
}
