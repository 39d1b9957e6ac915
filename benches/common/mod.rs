//! What the end-to-end benches share: a `stickwarden.toml` for the real `stickwarden run` against
//! the sandbox, and the detection-to-403 measurement of live loopback offenders.

#![allow(dead_code)] // each bench uses its own part

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stickwarden::sandbox::{http_get, Sandbox};

/// The operator token of the benches' API.
pub const TOKEN: &str = "bench-operator-token-0123456789";

/// What a bench's configuration holds beyond the sandbox target and its `[block]`.
pub struct BenchConfig<'a> {
    /// The rule files of `rules/` to use.
    pub rules: &'a [&'a str],
    /// The ladder's one step, e.g. `["tag", "acl"]`.
    pub step: &'a str,
    pub interval_ms: u64,
    /// Lines of `[store]` beyond its path.
    pub store: String,
    /// Lines of `[safety]`.
    pub safety: String,
    /// `[[table]]` entries.
    pub tables: &'a str,
    /// An API on `DIR/api.sock` with the operator [`TOKEN`].
    pub api: bool,
}

/// Writes the rules, the tokens (when `api`) and `stickwarden.toml` into `dir`; returns the
/// configuration's path.
pub fn write_config(dir: &Path, sb: &Sandbox, c: &BenchConfig<'_>) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    for f in c.rules {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules").join(f), rules.join(f)).unwrap();
    }
    std::fs::write(
        rules.join("policy.toml"),
        format!(
            "[score]\nthreshold = 100\nhalf_life = \"10m\"\n[ladder]\nforgiveness = \"1h\"\nsteps = [{{ action = {}, duration = \"2h\" }}]\n",
            c.step
        ),
    )
    .unwrap();
    let mut api = String::new();
    if c.api {
        let tokens = dir.join("tokens.toml");
        std::fs::write(&tokens, format!("[[token]]\nname = \"bench\"\nrole = \"operator\"\ntoken = \"{TOKEN}\"\n"))
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        api = format!("[api]\nlisten = [\"unix:{}\"]\ntokens = \"tokens.toml\"\n", dir.join("api.sock").display());
    }
    let cfg = dir.join("stickwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "rules = \"rules\"\npoll_interval = \"{}ms\"\n\n[store]\npath = \"store\"\n{}\n\n\
             [[haproxy]]\nname = \"sandbox\"\nsocket = \"{}\"\n\n[block]\ntable = \"ft_web\"\ntag = \"gpt0\"\nacl = \"{}\"\n\n\
             [safety]\n{}\n\n{}\n{api}",
            c.interval_ms,
            c.store,
            sb.admin(),
            sb.block_acl().display(),
            c.safety,
            c.tables,
        ),
    )
    .unwrap();
    cfg
}

/// `BIN run --config CFG`, its log in `DIR/daemon.log`.
pub fn spawn_daemon(bin: &Path, cfg: &Path, dir: &Path) -> std::process::Child {
    std::process::Command::new(bin)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap()
}

/// `n` offenders 127.0.`group`.1 to n, started 97 ms apart (so that they cross at every phase of
/// a poll interval up to 9.7 s): for each, the time from the request that takes its rate over 100
/// (the 101st within 10 s) to its first 403, probed every 10 ms. Sorted.
pub async fn detection(sb: &Sandbox, group: u8, n: u8, alive: impl Fn() -> bool) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 1..=n {
        let port = sb.web_port;
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(97 * u64::from(i))).await;
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, group, i));
            for _ in 0..100 {
                assert_eq!(http_get(src, port).await.unwrap(), 200, "{src} denied before crossing");
            }
            http_get(src, port).await.unwrap();
            let crossed = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if http_get(src, port).await.unwrap() == 403 {
                    return crossed.elapsed();
                }
                assert!(crossed.elapsed() < Duration::from_secs(10), "{src} never blocked");
            }
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.push(r.unwrap());
        assert!(alive(), "the daemon exited");
    }
    lat.sort();
    lat
}

/// The `p`-th percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}
