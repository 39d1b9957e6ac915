//! `stickwarden demo`: the whole loop, local, nothing to configure. A sandbox HAProxy on loopback,
//! the controller with the shipped rules (embedded in the binary, with a fast demo ladder), its
//! sled store in a temp dir, and three loopback clients sending real HTTP: an abuser (127.0.0.2),
//! a normal client (127.0.0.3) and an allowlisted abuser (127.0.0.4). Every second a line shows
//! what each client got from HAProxy and what is blocked; every decision is printed from the
//! store's audit log as it is written, and the review console shows it all on a loopback port
//! with a token made for the run. Nothing here is canned: it is `stickwarden run` at work.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::sandbox::{self, Sandbox, SandboxOptions};
use crate::store::{AuditRecord, Store};
use crate::time::now_ms;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the clients send traffic, in seconds.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Requests per second of each abusive client.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// Keep HAProxy and the controller running afterwards until Ctrl-C, to query them by hand
    /// (default: when on a terminal).
    #[arg(long)]
    hold: Option<bool>,
}

/// The shipped rule files, embedded so that the demo runs from anywhere.
const SHIPPED_RULES: [(&str, &str); 3] = [
    ("http-flood.toml", include_str!("../../rules/http-flood.toml")),
    ("scanner.toml", include_str!("../../rules/scanner.toml")),
    ("conn-flood.toml", include_str!("../../rules/conn-flood.toml")),
];

/// The shipped policy's ladder with durations short enough to watch.
const DEMO_POLICY: &str = r#"[score]
threshold = 100
half_life = "10m"

[ladder]
forgiveness = "1h"
growth = 2.0
steps = [
  { action = ["tag"], duration = "8s" },
  { action = ["tag", "acl"], duration = "12s" },
  { action = ["tag", "acl", "kill"], duration = "20s" },
]
"#;

const ABUSER: u8 = 1;
const NORMAL: u8 = 2;
const ALLOWED: u8 = 3;

pub async fn run(a: DemoArgs) -> Result<(), Failure> {
    let sb = Sandbox::start(&SandboxOptions::default())
        .context("cannot start the sandbox HAProxy")
        .map_err(Failure::runtime)?;
    let work = tempfile::Builder::new().prefix("stickwarden-demo-").tempdir().map_err(Failure::runtime)?;
    let cfg = write_config(work.path(), &sb).map_err(Failure::runtime)?;
    let cfg = Config::load(&cfg).map_err(Failure::runtime)?;
    let store = Store::open(&cfg.store.path, cfg.store.cache_bytes).map_err(Failure::runtime)?;

    say!("== sandbox HAProxy {} (pid {}) on 127.0.0.1:{}", sb.version, sb.pid(), sb.web_port)?;
    say!("   Runtime API: {}", sb.admin())?;
    say!("== controller: rules {}", cfg.rules.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "))?;
    say!("   ladder: tag 8s -> tag+acl 12s -> tag+acl+kill 20s, doubling after; poll every 500ms")?;
    say!("   store: {}", cfg.store.path.display())?;
    let (abuser, normal, allowed) =
        (sandbox::client_addr(ABUSER), sandbox::client_addr(NORMAL), sandbox::client_addr(ALLOWED));
    say!(
        "== clients: {abuser} abusive ({} req/s), {normal} normal (2 req/s), {allowed} abusive but allowlisted",
        a.rate
    )?;
    say!()?;

    if let Some(port) = console_port(&cfg) {
        let token = std::fs::read_to_string(work.path().join("token")).map_err(Failure::runtime)?;
        say!("== review console: http://127.0.0.1:{port}/ui/ (this run's operator token: {})", token.trim())?;
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(super::run::serve(cfg, store.clone(), async move {
        let _ = stop_rx.await;
    }));

    let counts: Arc<Mutex<BTreeMap<(u8, u16), usize>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    for (n, rate) in [(ABUSER, a.rate), (NORMAL, 2), (ALLOWED, a.rate)] {
        tokio::spawn(client(sb.web_port, n, rate.max(1), deadline, counts.clone()));
    }

    say!("{:>4}  {:<22} {:<22} {:<22} blocked", "t", abuser.to_string(), normal.to_string(), allowed.to_string())?;
    let started = Instant::now();
    let mut last_id = None;
    let held = tokio::spawn(hold_connection(sb.tcp_port, started));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < deadline + Duration::from_millis(500) {
        tick.tick().await;
        last_id = print_decisions(&store, last_id, started).map_err(Failure::runtime)?;
        let seen = std::mem::take(&mut *counts.lock().expect("counts"));
        let col = |n: u8| -> String {
            let parts: Vec<String> =
                seen.iter().filter(|((c, _), _)| *c == n).map(|((_, s), k)| format!("{k}x{s}")).collect();
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(" ")
            }
        };
        say!(
            "{:>3}s  {:<22} {:<22} {:<22} {}",
            started.elapsed().as_secs(),
            col(ABUSER),
            col(NORMAL),
            col(ALLOWED),
            blocked(&store)
        )?;
    }
    print_decisions(&store, last_id, started).map_err(Failure::runtime)?;
    let closed_at = if held.is_finished() {
        held.await.ok().flatten()
    } else {
        held.abort();
        None
    };
    match closed_at {
        Some(at) => say!("\n{abuser}'s held connection through ft_tcp was closed by the kill step at {at}s")?,
        None => say!("\n{abuser}'s held connection through ft_tcp is still open (no kill step reached)")?,
    }

    if a.hold.unwrap_or_else(|| std::io::stdout().is_terminal()) {
        say!("\nHAProxy and the controller keep running until Ctrl-C. Try, in another terminal:")?;
        if let Some(port) =
            console_port(&Config::load(&work.path().join("stickwarden.toml")).map_err(Failure::runtime)?)
        {
            say!("   the review console at http://127.0.0.1:{port}/ui/ (the token is printed above)")?;
        }
        say!("   cargo run -q -- table --haproxy {} ft_web", sb.admin())?;
        say!(
            "   echo 'show acl {}' | socat stdio {}",
            sb.block_acl().display(),
            sb.admin().trim_start_matches("unix:")
        )?;
        tokio::signal::ctrl_c().await.map_err(Failure::runtime)?;
    }
    let _ = stop_tx.send(());
    daemon.await.map_err(Failure::runtime)??;
    say!("\ndemo done.")?;
    Ok(())
}

/// The loopback port of the demo's console.
fn console_port(cfg: &Config) -> Option<u16> {
    cfg.api.as_ref()?.listen.iter().find_map(|l| match l {
        crate::config::Listen::Tcp(a) => Some(a.port()),
        crate::config::Listen::Unix(_) => None,
    })
}

fn write_config(dir: &std::path::Path, sb: &Sandbox) -> std::io::Result<std::path::PathBuf> {
    let rules = dir.join("rules");
    std::fs::create_dir(&rules)?;
    for (name, text) in SHIPPED_RULES {
        std::fs::write(rules.join(name), text)?;
    }
    std::fs::write(rules.join("policy.toml"), DEMO_POLICY)?;
    // An operator token for this run only, for the review console.
    let token = crate::api::auth::new_nonce()?;
    std::fs::write(dir.join("token"), &token)?;
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, format!("[[token]]\nname = \"demo\"\nrole = \"operator\"\ntoken = \"{token}\"\n"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))?;
    let port = sandbox::free_port()?;
    let path = dir.join("stickwarden.toml");
    let text = format!(
        "rules = \"rules\"\npoll_interval = \"500ms\"\n\n[[haproxy]]\nname = \"sandbox\"\nsocket = \"{}\"\n\n\
         [block]\ntable = \"ft_web\"\ntag = \"gpt0\"\nacl = \"{}\"\n\n[store]\npath = \"store\"\ncache_mb = 16\n\n\
         [[allow]]\ncidr = \"{}\"\nreason = \"demo: allowlisted load tester\"\n\n\
         [api]\nlisten = [\"127.0.0.1:{port}\"]\ntokens = \"tokens.toml\"\n",
        sb.admin(),
        sb.block_acl().display(),
        sandbox::client_addr(ALLOWED)
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// One loopback client sending `rate` requests a second until `deadline`, counting statuses.
async fn client(port: u16, n: u8, rate: u32, deadline: Instant, counts: Arc<Mutex<BTreeMap<(u8, u16), usize>>>) {
    let src: IpAddr = sandbox::client_addr(n);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        tick.tick().await;
        let counts = counts.clone();
        tokio::spawn(async move {
            // A refused connection (the ACL step) counts as status 0.
            let status = sandbox::http_get(src, port).await.unwrap_or(0);
            *counts.lock().expect("counts").entry((n, status)).or_default() += 1;
        });
    }
}

/// Prints the audit records written after `last_id`; returns the last id printed.
fn print_decisions(
    store: &Store,
    last_id: Option<u64>,
    started: Instant,
) -> Result<Option<u64>, crate::store::StoreError> {
    let since = now_ms().saturating_sub(started.elapsed().as_millis() as u64 + 1000);
    let mut last = last_id;
    for r in store.audit_since(since)?.into_iter().filter(|r| last_id.is_none_or(|l| r.id > l)) {
        // The demo's running commentary: a closed stdout ends it at its next line.
        let _ = say!("      >> {}", describe(&r));
        last = Some(r.id);
    }
    Ok(last)
}

fn describe(r: &AuditRecord) -> String {
    let key = r.key.as_ref().map_or_else(String::new, ToString::to_string);
    let dur = crate::time::human(Duration::from_millis(r.duration_ms));
    format!("{} {key}: level {} ({}) for {dur}, rule {}: {}", r.event.as_str(), r.level, r.actions, r.rule, r.reason)
}

/// The abuser also holds one TCP connection open through `ft_tcp` (a live session); returns the
/// second at which HAProxy closed it, if it did.
async fn hold_connection(port: u16, started: Instant) -> Option<u64> {
    use tokio::io::AsyncReadExt;
    let mut conn = sandbox::connect_from(sandbox::client_addr(ABUSER), port).await.ok()?;
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return Some(started.elapsed().as_secs()),
            Ok(_) => {}
        }
    }
}

fn blocked(store: &Store) -> String {
    let now = now_ms();
    let list: Vec<String> = store
        .blocks()
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{} L{} {} {}s left", b.key, b.level, b.actions, b.until.saturating_sub(now).div_ceil(1000)))
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join("; ")
    }
}
