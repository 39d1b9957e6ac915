//! Issue 14, item 1: what a poll costs HAProxy, and how fast offenders are found, today's way (a
//! filtered `show table` of the whole table per query of the rules) against suspects mode (the
//! flags of a small table, then the flagged clients' counters by key), in the same run, on one
//! HAProxy carrying the lines `stickwarden haproxy-config` prints for the shipped rules.
//!
//! 1. HAProxy's CPU time per poll (utime + stime of its process, `/proc/PID/stat`, over as many
//!    polls as fit in a few seconds), with 10,000, 100,000 and 1,000,000 tracked clients, 1% of
//!    them offending (`http_req_rate` 500) and 1% of them in the suspects table:
//!    - `today`: the daemon's poll function with its plan (three filtered queries);
//!    - `suspects, steady`: 100 of the suspects flagged (the new offenders of one poll; the rest
//!      were dealt with, their flags cleared);
//!    - `suspects, burst`: every suspect flagged at once (1% of the clients new offenders in
//!      one poll, the first poll of a flood).
//! 2. Detection to 403 on the 1,000,000-client table, with the real `stickwarden run`: 100 live
//!    offenders from 127.0.x.1-100 started 97 ms apart (so they cross at every phase of the
//!    interval), each time from the request that takes its rate over 100 (the 101st within 10 s)
//!    to its first 403, probed every 10 ms; suspects mode at 100 ms and 1 s, today's way at the
//!    same intervals.
//!
//! Not criterion: one-shot figures printed as a report. `cargo bench --bench poll_cost` (about
//! five minutes; needs `haproxy`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stickwarden::poll;
use stickwarden::proto::{Command as Cmd, DataField, KeyType, TableKey};
use stickwarden::sandbox::{fill_table, nth_addr, Sandbox, SandboxOptions};
use stickwarden::Client;

const SIZES: [u32; 3] = [10_000, 100_000, 1_000_000];
const LIVE_OFFENDERS: u8 = 100;
const MEASURE: Duration = Duration::from_secs(4);

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// The shipped rules, as a loaded rule set, and the directory they were loaded from.
fn shipped_rules() -> stickwarden::rules::RuleSet {
    stickwarden::rules::load_dir(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))).unwrap()
}

async fn run() {
    let rules = shipped_rules();
    let acl_dir = tempfile::tempdir().unwrap();
    let acl = acl_dir.path().join("block.lst");
    std::fs::write(&acl, "").unwrap();
    let (tag, acl_ref) = ("gpt0".parse().unwrap(), acl.display().to_string().parse().unwrap());
    let blocked = stickwarden::suspects::Blocked { tag: Some(&tag), acl: Some(&acl_ref) };
    let lines =
        stickwarden::suspects::lines("ft_web", "sw_suspects", rules.for_table("ft_web").map(|(_, r)| r), blocked);
    let mut sb =
        Sandbox::start(&SandboxOptions { acl_file: Some(acl.clone()), suspects: Some(lines), ..Default::default() })
            .expect("haproxy");
    let hz: f64 = String::from_utf8(Command::new("getconf").arg("CLK_TCK").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(100.0);
    let rate: DataField = "http_req_rate".parse().unwrap();
    let gpt0: DataField = "gpt0".parse().unwrap();

    println!(
        "HAProxy {} CPU per poll (utime+stime of its process; the shipped rules: three queries today)",
        sb.version
    );
    for n in SIZES {
        sb.restart().unwrap();
        let c = connect(&sb).await;
        fill_table(&c, "ft_web", n, 0).await.unwrap();
        let suspects: Vec<u32> = (0..n).step_by(100).collect();
        // 1% offend, and are in the suspects table, their flags cleared (dealt with).
        let set = |table: &str, field: &DataField, v: u64| -> Vec<Cmd> {
            suspects
                .iter()
                .map(|&i| Cmd::SetTable {
                    table: table.into(),
                    key: TableKey::Ip(nth_addr(i)),
                    fields: vec![(field.clone(), v)],
                })
                .collect()
        };
        for chunk in set("sw_suspects", &gpt0, 0).chunks(8192) {
            assert!(c.pipeline(chunk).await.iter().all(Result::is_ok));
        }
        let refresh = set("ft_web", &rate, 500);
        let offend = || async {
            for chunk in refresh.chunks(8192) {
                assert!(c.pipeline(chunk).await.iter().all(Result::is_ok));
            }
        };
        let queries = poll::plan(&c, "ft_web", &rules).await.unwrap();
        let pid = sb.pid();

        offend().await;
        let today = per_poll(pid, hz, || async {
            let p = poll::poll(&c, "ft_web", None, &queries, &rules).await.unwrap();
            assert_eq!(p.observations.len(), suspects.len());
        })
        .await;

        // Steady: 100 flagged.
        let flag_100: Vec<Cmd> = set("sw_suspects", &gpt0, 1).into_iter().take(100).collect();
        assert!(c.pipeline(&flag_100).await.iter().all(Result::is_ok));
        offend().await;
        let steady = per_poll(pid, hz, || async {
            let p = poll::poll_suspects(&c, "ft_web", "sw_suspects", KeyType::Ip, &rules, None).await.unwrap();
            assert_eq!(p.polled.observations.len(), 100);
        })
        .await;

        // Burst: every suspect flagged.
        for chunk in set("sw_suspects", &gpt0, 1).chunks(8192) {
            assert!(c.pipeline(chunk).await.iter().all(Result::is_ok));
        }
        offend().await;
        let burst = per_poll(pid, hz, || async {
            let p = poll::poll_suspects(&c, "ft_web", "sw_suspects", KeyType::Ip, &rules, None).await.unwrap();
            assert_eq!(p.polled.observations.len(), suspects.len());
        })
        .await;
        println!(
            "{n:>9} clients, {} suspects: today {:.2} ms ({} polls, {:.1} ms wall each) | suspects steady (100 flagged) {:.3} ms ({} polls, {:.2} ms wall) | burst (all {} flagged) {:.2} ms ({} polls, {:.1} ms wall) | today / steady = {:.0}x",
            suspects.len(),
            today.cpu_ms,
            today.polls,
            today.wall_ms,
            steady.cpu_ms,
            steady.polls,
            steady.wall_ms,
            suspects.len(),
            burst.cpu_ms,
            burst.polls,
            burst.wall_ms,
            today.cpu_ms / steady.cpu_ms.max(1e-9)
        );
    }

    // 2. Detection to 403 on the 1,000,000-client table.
    sb.restart().unwrap();
    let c = connect(&sb).await;
    fill_table(&c, "ft_web", 1_000_000, 0).await.unwrap();
    println!("detection to 403, {LIVE_OFFENDERS} offenders, 1,000,000 tracked clients (probed every 10 ms)");
    let runs = [(true, 100u64), (true, 1000), (false, 1000), (false, 100)];
    for (round, (suspects, interval)) in runs.into_iter().enumerate() {
        let work = tempfile::tempdir().unwrap();
        let cfg = write_config(work.path(), &sb, suspects, interval);
        let mut daemon = common::spawn_daemon(env!("CARGO_BIN_EXE_stickwarden").as_ref(), &cfg, work.path());
        // Past the first poll (in suspects mode, the start-up sweep).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = daemon.id();
        let lat =
            common::detection(&sb, round as u8 + 1, LIVE_OFFENDERS, || Path::new(&format!("/proc/{pid}")).exists())
                .await;
        let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
        let _ = daemon.wait();
        let pct = |p: usize| common::percentile(&lat, p).as_secs_f64() * 1e3;
        println!(
            "  {} at {interval} ms: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            if suspects { "suspects mode" } else { "today's poll  " },
            pct(50),
            pct(90),
            pct(99),
            lat[lat.len() - 1].as_secs_f64() * 1e3
        );
    }
}

/// A client of the (re)started sandbox, once it answers.
async fn connect(sb: &Sandbox) -> Client {
    let t = Instant::now();
    loop {
        if let Ok(c) = Client::connect(sb.admin().parse().unwrap(), Default::default()).await {
            if c.show_info().await.is_ok() {
                return c;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "HAProxy did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Cost {
    cpu_ms: f64,
    wall_ms: f64,
    polls: u32,
}

/// HAProxy's CPU time (`pid`'s utime + stime) per call of `poll`, over [`MEASURE`] (at least 5).
async fn per_poll<F, Fut>(pid: u32, hz: f64, mut poll: F) -> Cost
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The fields after the command name (which may hold spaces) start after its ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    poll().await; // warm
    let (t0, c0) = (Instant::now(), ticks());
    let mut polls = 0;
    while polls < 5 || t0.elapsed() < MEASURE {
        poll().await;
        polls += 1;
    }
    let (wall, cpu) = (t0.elapsed(), ticks() - c0);
    Cost {
        cpu_ms: cpu as f64 * 1e3 / hz / f64::from(polls),
        wall_ms: wall.as_secs_f64() * 1e3 / f64::from(polls),
        polls,
    }
}

fn write_config(dir: &Path, sb: &Sandbox, suspects: bool, interval_ms: u64) -> std::path::PathBuf {
    let c = common::BenchConfig {
        rules: &["http-flood.toml", "scanner.toml", "conn-flood.toml"],
        step: "[\"tag\"]",
        interval_ms,
        store: String::new(),
        safety: String::new(),
        tables: if suspects { "[[table]]\nname = \"ft_web\"\nsuspects = \"sw_suspects\"\n" } else { "" },
        api: false,
    };
    common::write_config(dir, sb, &c)
}
