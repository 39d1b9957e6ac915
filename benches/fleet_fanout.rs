//! Fan-out to a fleet (issue 7): 10,000 blocks recorded by the controller and applied to every
//! HAProxy node, timed until every node has confirmed them, on 1 node and on 20 real HAProxy
//! processes in the same run. The path is the operator's bulk block (`stickwarden import`):
//! validated, recorded in the store, then one atomic ACL version per node (`prepare acl`,
//! pipelined `add acl @v`, `commit acl`), the nodes served concurrently by their own actuators.
//! `cargo bench --bench fleet_fanout`; needs `haproxy` (`make haproxy`).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use stickwarden::config::Config;
use stickwarden::ops::Manual;
use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::store::Store;

const NODES: usize = 20;
const BLOCKS: u32 = 10_000;

/// A configuration whose targets are `nodes`, in `dir`, with the shipped rules.
fn config(dir: &std::path::Path, nodes: &[Sandbox], name: &str) -> std::path::PathBuf {
    let mut text = format!(
        "rules = \"{}/rules\"\n[store]\npath = \"store\"\ncache_mb = 16\n[block]\ntable = \"ft_web\"\ntag = \"gpt0\"\nacl = \"{}\"\n",
        env!("CARGO_MANIFEST_DIR"),
        nodes[0].block_acl().display()
    );
    for (i, sb) in nodes.iter().enumerate() {
        // No rate limit to speak of: this measures the machinery, not the governor.
        text.push_str(&format!(
            "[[haproxy]]\nname = \"n{i}\"\nsocket = \"{}\"\ncommands_per_second = 10000000\n",
            sb.admin()
        ));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let shared = tempfile::tempdir().unwrap();
    let opts = SandboxOptions { acl_file: Some(shared.path().join("block.lst")), ..Default::default() };
    let nodes: Vec<Sandbox> = (0..NODES).map(|_| Sandbox::start(&opts).expect("haproxy (make haproxy)")).collect();
    let one = config(shared.path(), &nodes[..1], "one.toml");
    let all = config(shared.path(), &nodes, "all.toml");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let clients: Vec<stickwarden::Client> = rt.block_on(async {
        let mut v = Vec::new();
        for sb in &nodes {
            v.push(stickwarden::Client::connect(sb.admin().parse().unwrap(), Default::default()).await.unwrap());
        }
        v
    });
    let acl: stickwarden::proto::AclRef = nodes[0].block_acl().display().to_string().parse().unwrap();
    // Empties every node's ACL (an empty version committed), untimed: an import copies the ACL's
    // current patterns into its new version, so a growing ACL would slow each round down.
    let empty_acls = || {
        rt.block_on(async {
            for c in &clients {
                let v = c.prepare_acl(&acl).await.unwrap();
                c.commit_acl(&acl, v).await.unwrap();
            }
        })
    };
    let mut round = 0u32;

    let mut g = c.benchmark_group("fanout_10k_blocks");
    g.sample_size(10);
    for (label, path) in [("1_node", &one), (&*format!("{NODES}_nodes"), &all)] {
        g.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Fresh keys and a fresh store each time: every block is new on every node.
                    round += 1;
                    let base = 0x0b00_0000 + round * BLOCKS;
                    let keys = (0..BLOCKS)
                        .map(|i| std::net::Ipv4Addr::from(base + i).into())
                        .map(stickwarden::net::host_net)
                        .collect();
                    let cfg = Config::load(path).unwrap();
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::open(dir.path(), cfg.store.cache_bytes).unwrap();
                    empty_acls();
                    let op = Manual::Import {
                        keys,
                        duration: Duration::from_secs(3600),
                        reason: "bench".into(),
                        allow_broad: false,
                    };
                    let t0 = Instant::now();
                    let out = rt
                        .block_on(stickwarden::daemon::run_once(cfg, store, op, "bench", Duration::from_secs(120)))
                        .unwrap();
                    total += t0.elapsed();
                    assert_eq!(out.blocked.len(), BLOCKS as usize);
                    assert!(out.failures.is_empty(), "not confirmed everywhere: {:?}", out.failures);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
