//! `simulate`: a rule set run offline over recorded `show table` dumps, taken in order as
//! successive polls `interval` apart, on a simulated clock. Every decision (scoring, ladder,
//! dry-run, breaker, aggregation, release) is the daemon's own [`crate::decide::Decider`]'s;
//! nothing contacts HAProxy and no store is written. A dump is HAProxy's text (as `socat` prints
//! it, `# table:` headers included) or the JSON Lines of `stickwarden table NAME --json`; each entry is evaluated against the rules of its
//! table. This is how a team tunes rules before enforcing them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::decide::{Decider, Effects, Input, JobOutcome};
use crate::poll::Observation;
use crate::proto::table::{lines, EntryParser, Line};
use crate::rules::RuleSet;
use crate::store::{Event, Offender, Write};
use crate::time::{ms, Millis};

/// One decision of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimDecision {
    /// 1-based number of the dump (poll).
    pub poll: usize,
    /// Seconds since the first poll.
    pub at_s: u64,
    /// `block`, `would_block` (dry run), `release`, `would_release`, or the circuit breaker's
    /// `breaker_open` and `breaker_closed` (no key).
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

/// Runs `rules` over the dumps, in order, through the daemon's own [`Decider`] on every default of
/// the configuration (breaker, ladder, dry-run), as [`simulate_with`] does.
pub fn simulate(rules: &RuleSet, dumps: &[impl AsRef<Path>], interval: Duration) -> Result<Vec<SimDecision>, SimError> {
    simulate_with(Arc::new(Config::offline(rules.clone())), dumps, interval)
}

/// Runs the rules of `cfg` over the dumps, in order, through the daemon's [`Decider`]: at each
/// dump's time the clock ticks first (a block that has ended is released, and HAProxy confirms at
/// once), then the dump is read as a poll that started just after the tick. The population the breaker
/// weighs is the dump's largest table. Nothing is written and nothing contacts HAProxy: the
/// history the daemon would read from its store is kept here.
pub fn simulate_with(
    cfg: Arc<Config>,
    dumps: &[impl AsRef<Path>],
    interval: Duration,
) -> Result<Vec<SimDecision>, SimError> {
    let mut decider = Decider::new(cfg.clone(), Vec::new());
    let mut offenders: HashMap<crate::key::Key, Offender> = HashMap::new();
    let mut out = Vec::new();
    let mut parser = EntryParser::new();
    for (i, path) in dumps.iter().enumerate() {
        let now = ms(interval) * i as u64;
        let poll = i + 1;
        let record = |fx: Effects, offenders: &mut HashMap<crate::key::Key, Offender>, out: &mut Vec<SimDecision>| {
            for w in fx.writes {
                if let Some(d) = SimDecision::of(&w, poll, now) {
                    out.push(d);
                }
                match w {
                    Write::Offender(k, o) | Write::Decide { offender: Some((k, o)), .. } => {
                        offenders.insert(k, o);
                    }
                    _ => {}
                }
            }
            fx.jobs
        };
        let samples = read_dump(path.as_ref())?;
        let mut used: HashMap<&str, u64> = HashMap::new();
        for s in &samples {
            *used.entry(s.table.as_str()).or_default() += 1;
        }
        let population = Some(used.values().copied().max().unwrap_or(0));
        // Releases first: a block whose time has come lets its address be scored again.
        let jobs = record(decider.step(Input::Tick { population }, now).expect("a tick"), &mut offenders, &mut out);
        for d in jobs.into_iter().filter(|d| matches!(d.job, crate::actuator::Job::Release { .. })) {
            let outcome = JobOutcome {
                what: "release",
                release: true,
                failures: Vec::new(),
                refused: Vec::new(),
                polled_at: None,
            };
            let fx = decider.step(Input::Done { block: d.block, outcome }, now).expect("an outcome");
            record(fx, &mut offenders, &mut out);
        }
        // The poll started just after the tick: a key released by it is scored again at once.
        let polled_at = now + 1;
        let mut batch = Vec::new();
        for s in &samples {
            let Line::Entry(e) = parser.parse_line(&s.line) else { continue };
            let key = || Some(crate::key::Key::host(s.addr));
            batch.extend(Observation::of(key, &cfg.rules, &s.table, |c| c.read(&e)));
        }
        let candidates = decider.candidates(polled_at, batch, now);
        let scored = candidates.into_iter().map(|o| {
            let history = offenders.get(&o.key).cloned();
            (o, history)
        });
        let input = Input::Scored { polled_at, scored: scored.collect(), population };
        record(decider.step(input, now).expect("a poll"), &mut offenders, &mut out);
    }
    Ok(out)
}

impl SimDecision {
    /// The decision a store write records, if it records one.
    fn of(w: &Write, poll: usize, now: Millis) -> Option<SimDecision> {
        let (rec, block) = match w {
            Write::Decide { block, rec, .. } => (rec, Some(block.as_ref())),
            Write::Release { rec, .. } => (rec, None),
            Write::Audit(rec) if matches!(rec.event, Event::BreakerOpen | Event::BreakerClosed) => (rec, None),
            _ => return None,
        };
        Some(SimDecision {
            poll,
            at_s: now / 1000,
            event: rec.event.as_str().to_owned(),
            key: rec.key.as_ref().map(|k| k.text()).unwrap_or_default(),
            rule: rec.rule.clone(),
            level: rec.level,
            action: rec.actions.to_string(),
            duration_s: rec.duration_ms / 1000,
            counters: block.map(|b| b.counters.clone()).unwrap_or_default(),
        })
    }
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
                // A dry-run block ends at the tick; a real one once HAProxy confirmed its release.
                (3, "would_release", "10.0.0.2", 1),
                (3, "release", "10.0.0.1", 1),
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
