//! Actuation at scale (issue 6, item 3): 100,000 blocks, each a tag (`set table ... data.gpt0 1`)
//! and an ACL entry (`add acl FILE ADDR`), applied to a real HAProxy, in the same run as:
//!
//! - `socat_pipelined_feed`: the same 200,000 command lines fed through one prompt-mode socat
//!   session, the fastest a script can go;
//! - `actuator_apply_many`: the daemon's actuator applying them as one job (the path that puts
//!   every active block back after a restart): `show acl` first (no duplicates), then pipelined
//!   batches, every answer checked;
//! - `one_connection_per_command_2k`: the naive way, one connection (non-interactive mode) per
//!   command, on 2,000 commands (multiply by 100 for 200,000).
//!
//! Between rounds, untimed, the table and the ACL are emptied (`clear table`, `clear acl`). The
//! actuator's rate limit is raised out of the way: this measures the machinery (the default,
//! `commands_per_second = 20000`, would hold 200,000 commands to 10 s on purpose). The runtime is
//! single-threaded, as in `stickwarden run`. `cargo bench --bench actuate_100k`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use stickwarden::actuator::{Actuator, Job};
use stickwarden::config::{BlockConfig, TargetConfig};
use stickwarden::metrics::Metrics;
use stickwarden::rules::{Action, Actions};
use stickwarden::sandbox::{nth_addr, Sandbox, SandboxOptions};
use stickwarden::Client;

const BLOCKS: u32 = 100_000;
const NAIVE: u32 = 2_000;

/// Feeds `input` to HAProxy through one socat session and waits for it to end.
fn socat(sock: &str, input: &[u8]) {
    let mut child = Command::new("socat")
        .args(["-t", "120", "-", &format!("UNIX-CONNECT:{sock}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("socat (scripts/ensure-haproxy.sh --socat)");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    // Every command succeeded: in prompt mode each answers an empty line after its prompt.
    let answer = String::from_utf8_lossy(&out);
    assert!(!answer.contains("Unknown") && !answer.contains("Invalid"), "{}", &answer[..answer.len().min(300)]);
}

fn reset(sock: &str, acl: &str) {
    socat(sock, format!("prompt\nclear table ft_web\nclear acl {acl}\nquit\n").as_bytes());
}

fn bench(c: &mut Criterion) {
    let sb = Sandbox::start(&SandboxOptions::default()).expect("haproxy (make haproxy)");
    let sock = sb.admin().trim_start_matches("unix:").to_owned();
    let acl = sb.block_acl().display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = rt.block_on(Client::connect(sb.admin().parse().unwrap(), Default::default())).unwrap();

    let mut feed = b"prompt\n".to_vec();
    for i in 0..BLOCKS {
        let a = nth_addr(i);
        feed.extend_from_slice(format!("set table ft_web key {a} data.gpt0 1\nadd acl {acl} {a}\n").as_bytes());
    }
    feed.extend_from_slice(b"quit\n");
    let blocks: Vec<_> = (0..BLOCKS)
        .map(|i| (stickwarden::key::Key::host(nth_addr(i).into()), Actions::new(vec![Action::Tag, Action::Acl])))
        .collect();
    let target =
        TargetConfig { name: "bench".into(), target: sb.admin().parse().unwrap(), commands_per_second: 100_000_000 };
    let block = BlockConfig {
        table: Some("ft_web".into()),
        tag: "gpt0".parse().unwrap(),
        tag_value: 1,
        acl: Some(acl.parse().unwrap()),
        map: None,
    };
    let place = Arc::new(stickwarden::store::Place::of(&block, &Actions::new(vec![Action::Tag, Action::Acl])));
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let actuator = rt.block_on(async { Actuator::spawn(&target, client.clone(), stop_rx, Arc::new(Metrics::new())) });
    let check = |rt: &tokio::runtime::Runtime| {
        let used = rt.block_on(client.list_tables()).unwrap().into_iter().find(|t| t.name == "ft_web").unwrap().used;
        let acl_len = rt.block_on(client.show_acl(&acl.parse().unwrap())).unwrap().len();
        assert_eq!((used, acl_len), (u64::from(BLOCKS), BLOCKS as usize), "every block applied");
    };

    let mut g = c.benchmark_group("apply_100k_blocks");
    g.sample_size(10);
    // Every round: the table and ACL emptied and `before` (untimed), the work (timed), a check
    // (untimed).
    let rounds = |iters: u64, before: &dyn Fn(), work: &mut dyn FnMut(), check: &dyn Fn()| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            reset(&sock, &acl);
            before();
            let t = Instant::now();
            work();
            total += t.elapsed();
            check();
        }
        total
    };
    let full = || check(&rt);
    g.bench_function("socat_pipelined_feed", |b| {
        b.iter_custom(|iters| rounds(iters, &|| {}, &mut || socat(&sock, &feed), &full))
    });
    g.bench_function("actuator_apply_many", |b| {
        b.iter_custom(|iters| {
            // A fresh actuator state: what it knows of the ACL is from before the reset.
            let forget = || rt.block_on(actuator.run(Job::Forget)).unwrap();
            let mut apply = || {
                rt.block_on(actuator.run(Job::ApplyMany { blocks: blocks.clone(), place: place.clone(), fresh: false }))
                    .unwrap()
            };
            rounds(iters, &forget, &mut apply, &full)
        })
    });
    g.bench_function("one_connection_per_command_2k", |b| {
        let mut naive = || {
            for i in 0..NAIVE / 2 {
                let a = nth_addr(i);
                for line in [format!("set table ft_web key {a} data.gpt0 1\n"), format!("add acl {acl} {a}\n")] {
                    let mut s = UnixStream::connect(&sock).unwrap();
                    s.write_all(line.as_bytes()).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).unwrap();
                    assert_eq!(out, b"\n");
                }
            }
        };
        b.iter_custom(|iters| rounds(iters, &|| {}, &mut naive, &|| {}))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
