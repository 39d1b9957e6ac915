//! Fuzz targets for every parser and for the configuration and rules loaders, with a small
//! mutation fuzzer that runs on stable Rust (cargo-fuzz needs a nightly toolchain, which this
//! project does not use). Seeds are the captured HAProxy answers (`tests/fixtures`), the shipped
//! rules and the documented configuration; each round mutates one (bit flips, byte insertions and
//! deletions, splices with another seed, repeats, truncation) and hands it to the target, which
//! must return (an error is fine) and never panic. Not coverage-guided: it finds crashes on inputs
//! near real ones, which is where the parsers live.
//!
//! `make test` runs a short, bounded pass (`FUZZ_SECONDS`, default 2 seconds per target). A longer
//! run: `FUZZ_SECONDS=300 cargo test --release --test fuzz -- --nocapture` (`make fuzz`). A failing
//! input is written to `target/fuzz-failure-<target>.bin` and its seed printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stickwarden::proto::table::{lines, EntryParser, Line};
use stickwarden::proto::{acl, error, frame, info, sess};

/// xorshift64*: deterministic from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\n",
    b"\n\n",
    b" ",
    b"=",
    b"\\",
    b"(",
    b")",
    b":",
    b"#",
    b"0x",
    b"[3]: ",
    b"> ",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"\xff",
    b"\x00",
    b"key=",
    b"use=",
    b"exp=",
    b"shard=",
    b"gpc0_rate(",
    b"::ffff:",
    b"[",
    b"]",
    b"\"",
    b"=\"\"",
    b"[[rule]]\n",
    b"steps = [",
    b"1e999",
    b"nan",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(len + 1);
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(at..at, piece.iter().copied());
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                input.drain(at..at + n);
            }
            3 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let to = from + rng.below(other.len() - from + 1);
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let chunk = input[at..at + n].to_vec();
                for _ in 0..1 + rng.below(8) {
                    input.splice(at..at, chunk.iter().copied());
                }
            }
            5 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
        }
    }
    input.truncate(1 << 16);
}

fn budget() -> Duration {
    Duration::from_secs_f64(std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0))
}

/// Runs `target` on mutations of `seeds` for the budget; a panic is reported with its input.
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, target: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64 ^ name.len() as u64);
    let mut rng = Rng(seed | 1);
    let (deadline, mut runs) = (Instant::now() + budget(), 0u64);
    for s in &seeds {
        target(s);
    }
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        if std::panic::catch_unwind(|| target(&input)).is_err() {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-failure-{name}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!("{name}: panic on the input saved in {} (FUZZ_SEED={seed}, run {runs})", path.display());
        }
        runs += 1;
    }
    eprintln!("fuzz {name}: {runs} inputs in {:?}, no panic", budget());
}

fn fixtures() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out = Vec::new();
    for v in ["haproxy-2.6.12", "haproxy-3.4.0"] {
        for e in std::fs::read_dir(root.join(v)).unwrap() {
            out.push(std::fs::read(e.unwrap().path()).unwrap());
        }
    }
    out
}

#[test]
fn fuzz_show_table() {
    fuzz("show_table", fixtures(), |data| {
        let mut p = EntryParser::new();
        for line in lines(data) {
            if let Line::Entry(e) = p.parse_line(line) {
                let _ = (e.key_bytes(), e.key_addr());
                for c in e.columns() {
                    let _ = c.value.as_i128();
                }
            }
        }
    });
}

#[test]
fn fuzz_framing_and_errors() {
    fuzz("frame", fixtures(), |data| {
        let _ = frame::step(data, true);
        let _ = frame::step(data, false);
        for a in frame::split_answers(data) {
            let _ = error::check_answer(a);
        }
        let _ = error::HaproxyError::classify(&String::from_utf8_lossy(data));
    });
}

#[test]
fn fuzz_info_acl_sess() {
    fuzz("info_acl_sess", fixtures(), |data| {
        let _ = info::Info::parse(data).pid();
        let _ = acl::parse_acl_list(data);
        let _ = acl::parse_acl_entries(data);
        let _ = acl::parse_get_acl(data);
        if let Ok(s) = sess::parse_sessions(data) {
            for x in s {
                let _ = x.client_ip();
            }
        }
    });
}

fn text_seeds(files: &[PathBuf]) -> Vec<Vec<u8>> {
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

#[test]
fn fuzz_rules_loader() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let seeds = text_seeds(&std::fs::read_dir(&rules).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.toml");
    fuzz("rules", seeds, |data| {
        std::fs::write(&file, data).unwrap();
        let _ = stickwarden::rules::load_dir(dir.path());
    });
}

#[test]
fn fuzz_config_loader() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")).unwrap();
    let example = doc.split("```toml\n").nth(1).unwrap().split("```").next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let seeds = vec![example.replace("/etc/stickwarden/rules", rules.to_str().unwrap()).into_bytes()];
    let file = dir.path().join("stickwarden.toml");
    fuzz("config", seeds, |data| {
        std::fs::write(&file, data).unwrap();
        let _ = stickwarden::config::Config::load(&file);
    });
}

#[test]
fn fuzz_simulate_dumps() {
    let mut seeds = fixtures();
    seeds.push(br#"{"table":"ft_web","key":"10.1.2.3","ptr":"0x7f06c8039b58","use":0,"exp_ms":899986,"shard":null,"data":{"gpt0":1,"conn_cur":0,"http_req_rate":{"value":50,"period_ms":10000}}}"#.to_vec());
    let rules = stickwarden::rules::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.txt");
    fuzz("simulate", seeds, |data| {
        std::fs::write(&file, data).unwrap();
        let _ = stickwarden::simulate::simulate(&rules, &[&file], Duration::from_secs(1));
    });
}

/// The harness itself: a target that panics on any mutated input is caught and reported.
#[test]
#[should_panic(expected = "selftest: panic on the input saved in")]
fn the_harness_reports_a_panicking_target() {
    fuzz("selftest", vec![b"seed".to_vec()], |d| assert_eq!(d, b"seed", "mutated"));
}
