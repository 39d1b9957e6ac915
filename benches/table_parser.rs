//! Throughput of the `show table` entry parser, and of parsing plus JSON formatting, on a
//! generated dump shaped like a real `ft_web` table (ip keys, gpt0, conn_cur, a rate).
//! Target (issue 2): at least 1 GB/s on one core for the parser. `cargo bench --bench table_parser`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stickwarden::output::json;
use stickwarden::proto::table::{lines, EntryParser, Line};

/// A dump of `n` entries as HAProxy 2.6 prints it.
fn dump(n: u32) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(n as usize * 100);
    writeln!(out, "# table: ft_web, type: ip, size:1048576, used:{n}").unwrap();
    for i in 0..n {
        let [a, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        writeln!(
            out,
            "0x{:012x}: key={a}.{b}.{c}.{d} use=0 exp={} gpt0={} conn_cur={} http_req_rate(10000)={}",
            0x55d0_0000_0000u64 + i as u64 * 0x88,
            900_000 - (i % 900_000),
            (i % 97 == 0) as u32,
            i % 3,
            i % 1000
        )
        .unwrap();
    }
    out
}

fn parse_all(buf: &[u8], p: &mut EntryParser) -> u64 {
    let mut sum = 0u64;
    for line in lines(buf) {
        if let Line::Entry(e) = p.parse_line(line) {
            sum += e.exp_ms;
            for c in e.columns() {
                sum += c.value.as_i128().unwrap_or(0) as u64;
            }
        }
    }
    sum
}

fn bench(c: &mut Criterion) {
    let buf = dump(1 << 20);
    let mut g = c.benchmark_group("show_table_1M");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.bench_function("parse", |b| {
        let mut p = EntryParser::new();
        b.iter(|| black_box(parse_all(black_box(&buf), &mut p)))
    });
    // What the daemon's poll does with each entry of a full dump: the key as an address and every
    // rule evaluated (the shipped http-flood, scanner and conn-flood rules).
    let rules = stickwarden::rules::load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/rules").as_ref()).unwrap();
    g.bench_function("parse_and_rules", |b| {
        let mut p = EntryParser::new();
        b.iter(|| {
            let mut matched = 0usize;
            for line in lines(&buf) {
                if let Line::Entry(e) = p.parse_line(line) {
                    let Some(_addr) = e.key_addr() else { continue };
                    matched += rules.for_table("ft_web").filter(|(_, r)| r.matches(&e)).count();
                }
            }
            black_box(matched)
        })
    });
    g.bench_function("parse_and_json", |b| {
        let mut p = EntryParser::new();
        let mut out = Vec::with_capacity(256 * 1024);
        b.iter(|| {
            let mut written = 0usize;
            for line in lines(&buf) {
                if let Line::Entry(e) = p.parse_line(line) {
                    json::entry_line(&mut out, "ft_web", &e);
                    if out.len() > 192 * 1024 {
                        written += out.len();
                        out.clear();
                    }
                }
            }
            black_box(written + out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
