//! The daemon's poll of a real 1,048,576-entry table (issue 6, items 1 and 2), against the raw
//! `socat` dump of the same table in the same run:
//!
//! - `socat_raw_dump`: `echo 'show table ft_web' | socat - UNIX-CONNECT:...` into /dev/null, the
//!   floor set by HAProxy's own dump speed;
//! - `daemon_full_poll`: the daemon's poll function (`stickwarden::poll::poll`) asking for the whole
//!   table (what it does when a rule reads a column HAProxy cannot filter on), every rule
//!   evaluated on every entry;
//! - `daemon_filtered_poll`: the same function with the daemon's own plan (server-side filters
//!   from the rules), 1% of the entries offending: only they travel.
//!
//! - `socat_filtered_dump`: the same filtered queries through socat (one prompt-mode session),
//!   the floor of the filtered poll: HAProxy walks the whole table for each query either way.
//!
//! The runtime is single-threaded, as in `stickwarden run`. The byte counts of both polls are
//! printed first; after criterion's groups, the full poll and socat are run alternately
//! (`ALTERNATE` times each) and their medians and ratio printed: the VM this was written on drifts
//! more between criterion's groups than the gap being measured. `cargo bench --bench poll_1m`
//! (needs `haproxy` and `socat`: `make haproxy` and `scripts/ensure-haproxy.sh --socat`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use stickwarden::client::TableItem;
use stickwarden::poll;
use stickwarden::proto::{Filter, TableSelect};
use stickwarden::sandbox::{fill_table, Sandbox, SandboxOptions};
use stickwarden::Client;

const ENTRIES: u32 = 1 << 20;
/// One entry in a hundred is flagged (`gpt0 = 1`).
const FLAG_EVERY: u32 = 100;

const RULES: &str = r#"
[[rule]]
name = "flagged"
description = "HAProxy's own rules set gpt0"
table = "ft_web"
all = ["gpt0 gt 0"]
weight = 100

[[rule]]
name = "flood"
table = "ft_web"
all = ["http_req_rate gt 100"]
weight = 100

[[rule]]
name = "errors"
table = "ft_web"
all = ["http_err_rate gt 20"]
weight = 50
"#;

/// Alternating runs of the full poll and of socat, for the ratio.
const ALTERNATE: usize = 11;

/// Sends `input` through socat and throws the answer away.
fn socat(sock: &str, input: &[u8]) {
    let mut child = Command::new("socat")
        .args(["-t", "60", "-", &format!("UNIX-CONNECT:{sock}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("socat (scripts/ensure-haproxy.sh --socat)");
    child.stdin.take().unwrap().write_all(input).unwrap();
    assert!(child.wait().unwrap().success());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bytes and entries that one set of queries brings over.
async fn traffic(client: &Client, queries: &[Vec<Filter>]) -> (u64, u64) {
    let (mut bytes, mut entries) = (0, 0);
    for q in queries {
        let select = TableSelect::query(q);
        let stats = client.show_table("ft_web", select).await.unwrap().for_each(|_: TableItem<'_>| {}).await.unwrap();
        (bytes, entries) = (bytes + stats.bytes, entries + stats.entries);
    }
    (bytes, entries)
}

fn bench(c: &mut Criterion) {
    let sb = Sandbox::start(&SandboxOptions::default()).expect("haproxy (make haproxy)");
    let sock = sb.admin().trim_start_matches("unix:").to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(Client::connect(sb.admin().parse().unwrap(), Default::default())).unwrap();
    rt.block_on(fill_table(&client, "ft_web", ENTRIES, FLAG_EVERY)).unwrap();
    let used = rt.block_on(client.list_tables()).unwrap().into_iter().find(|t| t.name == "ft_web").unwrap().used;
    assert_eq!(used, u64::from(ENTRIES), "the table is full");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.toml"), RULES).unwrap();
    let rules = stickwarden::rules::load_dir(dir.path()).unwrap();
    let full: Vec<Vec<Filter>> = vec![Vec::new()];
    let planned = rt.block_on(poll::plan(&client, "ft_web", &rules)).unwrap();
    let offending = (ENTRIES / FLAG_EVERY + 1) as usize;

    let (fb, fe) = rt.block_on(traffic(&client, &full));
    let (pb, pe) = rt.block_on(traffic(&client, &planned));
    let shown: Vec<String> =
        planned.iter().map(|q| q.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ")).collect();
    eprintln!("full poll:     {fe} entries, {fb} bytes");
    eprintln!(
        "filtered poll: {pe} entries, {pb} bytes ({:.2}% of the bytes), queries: {shown:?}",
        100.0 * pb as f64 / fb as f64
    );

    let mut g = c.benchmark_group("poll_1M");
    g.sample_size(10);
    g.bench_function("socat_raw_dump", |b| b.iter(|| socat(&sock, b"show table ft_web\n")));
    g.bench_function("daemon_full_poll", |b| {
        b.iter(|| {
            let p = rt.block_on(poll::poll(&client, "ft_web", None, &full, &rules)).unwrap();
            assert_eq!((p.observations.len(), p.scanned), (offending, u64::from(ENTRIES)));
        })
    });
    let mut filtered_input = b"prompt\n".to_vec();
    for q in &shown {
        filtered_input.extend_from_slice(format!("show table ft_web {q}\n").as_bytes());
    }
    filtered_input.extend_from_slice(b"quit\n");
    g.bench_function("socat_filtered_dump", |b| b.iter(|| socat(&sock, &filtered_input)));
    g.bench_function("daemon_filtered_poll", |b| {
        b.iter(|| {
            let p = rt.block_on(poll::poll(&client, "ft_web", None, &planned, &rules)).unwrap();
            assert_eq!(p.observations.len(), offending);
        })
    });
    g.finish();

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ALTERNATE {
        let t = Instant::now();
        socat(&sock, b"show table ft_web\n");
        theirs.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(poll::poll(&client, "ft_web", None, &full, &rules)).unwrap();
        ours.push(t.elapsed());
    }
    let (o, t) = (median(ours), median(theirs));
    eprintln!(
        "alternating, {ALTERNATE} runs each: daemon full poll median {o:.3?}, socat dump median {t:.3?}, ratio {:.3} (target <= 1.05)",
        o.as_secs_f64() / t.as_secs_f64()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
