//! Issue 14, item 2: 1,000 new offenders crossing in the same poll, with the real `stickwarden run`
//! process against a real HAProxy. Each round:
//!
//! 1. waits for a poll to end (its `stickwarden_poll_duration_seconds` count moves, read from
//!    `/metrics`), which gives the start of the next poll: the previous start plus the interval;
//! 2. makes 1,000 fresh addresses offenders at once (`set table ... data.http_req_rate 500`,
//!    pipelined, well before that next poll);
//! 3. probes HAProxy every millisecond with `get acl` for the highest of them, the last command
//!    the daemon sends for the batch (tags first, then the ACL patterns in address order, on one
//!    connection), until it is there.
//!
//! The figure is the time from the start of the poll that saw them to that moment: decision,
//! store commit (fsync'd) and every `set table` and `add acl` confirmed. After each round, untimed,
//! all 1,000 tags and ACL entries are counted in HAProxy. The ladder's step is `tag` + `acl`, the
//! breaker is out of the way (`breaker_floor`), and the metric the daemon itself keeps
//! (`stickwarden_detection_to_block_seconds`, from the same poll start to every target's
//! confirmation) is printed beside it.
//!
//! Not criterion: one-shot end-to-end figures. `cargo bench --bench burst` (about a minute; needs
//! `haproxy`). To measure an older commit the same way, build it and point `BURST_STICKWARDEN` at
//! its binary (and `BURST_SAFETY` at its `[safety]` lines when it lacks `breaker_floor`).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stickwarden::api::client::ApiClient;
use stickwarden::client::TableItem;
use stickwarden::proto::{AclRef, Command as Cmd, DataField, TableKey, TableSelect};
use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::Client;

const OFFENDERS: u32 = 1_000;
const ROUNDS: u32 = 10;
const INTERVAL: Duration = Duration::from_secs(1);
use common::TOKEN;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// The `i`-th offender of round `r`: 10.r.x.y.
fn offender(r: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + ((r + 1) << 16) + i + 1)
}

async fn run() {
    let sb = Sandbox::start(&SandboxOptions::default()).expect("haproxy");
    let c = Client::connect(sb.admin().parse().unwrap(), Default::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let cfg = write_config(work.path(), &sb);
    let bin = std::env::var("BURST_STICKWARDEN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stickwarden").to_owned());
    let mut daemon = common::spawn_daemon(bin.as_ref(), &cfg, work.path());
    let api =
        ApiClient::new(format!("unix:{}", work.path().join("api.sock").display()).parse().unwrap(), Some(TOKEN.into()));
    let sock = work.path().join("api.sock");
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "the daemon's API never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acl: AclRef = sb.block_acl().display().to_string().parse().unwrap();
    let rate: DataField = "http_req_rate".parse().unwrap();

    let mut figures = Vec::new();
    let mut own = Vec::new();
    for r in 0..ROUNDS {
        // 1. A poll has just ended: the next one starts one interval after it started.
        let before = poll_stats(&api).await;
        let (ended, after) = loop {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = poll_stats(&api).await;
            if now.count > before.count {
                break (Instant::now(), now);
            }
            assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited; see its log");
        };
        let took = Duration::from_secs_f64((after.sum - before.sum).max(0.0));
        let next_poll = ended - took + INTERVAL;
        // 2. 1,000 offenders at once.
        let cmds: Vec<Cmd> = (0..OFFENDERS)
            .map(|i| Cmd::SetTable {
                table: "ft_web".into(),
                key: TableKey::Ip(offender(r, i)),
                fields: vec![(rate.clone(), 500)],
            })
            .collect();
        assert!(c.pipeline(&cmds).await.iter().all(Result::is_ok));
        assert!(Instant::now() + Duration::from_millis(100) < next_poll, "the offenders were set too late");
        let own_before = detection_stats(&api).await;
        // 3. Until the last command of the batch is in HAProxy.
        let last = IpAddr::V4(offender(r, OFFENDERS - 1));
        while !c.get_acl(&acl, last).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let seen = Instant::now();
        let latency = seen.saturating_duration_since(next_poll);
        figures.push(latency);
        // Untimed: every one of them is tagged and listed.
        let tagged = count(&c, TableSelect::Filters(vec!["data.gpt0 gt 0".parse().unwrap()])).await;
        let listed = c.show_acl(&acl).await.unwrap().len();
        let want = ((r + 1) * OFFENDERS) as usize;
        assert_eq!((tagged, listed), (want, want), "round {r}: tagged and listed");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let own_after = detection_stats(&api).await;
        let batches = own_after.count - own_before.count;
        let mean = if batches > 0 { (own_after.sum - own_before.sum) / batches as f64 } else { f64::NAN };
        own.push((batches, mean));
        eprintln!(
            "round {r}: {OFFENDERS} offenders, poll start to the last of them in HAProxy: {latency:.1?}; the daemon's own figure: {} batch(es), {:.1} ms",
            batches,
            mean * 1000.0
        );
    }
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    let _ = daemon.wait();
    figures.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    eprintln!(
        "{ROUNDS} rounds of {OFFENDERS} new offenders in one poll, poll start to all confirmed in HAProxy: median {:.1} ms, min {:.1} ms, max {:.1} ms (target < 100 ms)",
        ms(figures[figures.len() / 2]),
        ms(figures[0]),
        ms(figures[figures.len() - 1])
    );
}

struct Stats {
    count: u64,
    sum: f64,
}

/// Count and sum of a histogram of the daemon's `/metrics` (summed over its label sets).
async fn histogram(api: &ApiClient, name: &str) -> Stats {
    let mut text = Vec::new();
    api.get_lines("/metrics", &mut text).await.unwrap();
    let text = String::from_utf8(text).unwrap();
    let mut s = Stats { count: 0, sum: 0.0 };
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let series = series.split('{').next().unwrap_or_default();
        if series == format!("{name}_count") {
            s.count += value.parse::<u64>().unwrap_or(0);
        } else if series == format!("{name}_sum") {
            s.sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    s
}

async fn poll_stats(api: &ApiClient) -> Stats {
    histogram(api, "stickwarden_poll_duration_seconds").await
}

async fn detection_stats(api: &ApiClient) -> Stats {
    histogram(api, "stickwarden_detection_to_block_seconds").await
}

async fn count(c: &Client, select: TableSelect) -> usize {
    let mut n = 0;
    c.show_table("ft_web", select)
        .await
        .unwrap()
        .for_each(|i| n += usize::from(matches!(i, TableItem::Entry(_))))
        .await
        .unwrap();
    n
}

fn write_config(dir: &Path, sb: &Sandbox) -> std::path::PathBuf {
    let c = common::BenchConfig {
        rules: &["http-flood.toml"],
        step: "[\"tag\", \"acl\"]",
        interval_ms: INTERVAL.as_millis() as u64,
        store: String::new(),
        safety: std::env::var("BURST_SAFETY").unwrap_or_else(|_| "breaker_floor = 1000000".into()),
        tables: "",
        api: true,
    };
    common::write_config(dir, sb, &c)
}
