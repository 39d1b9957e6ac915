//! The one shared helper of the integration tests: a real `haproxy` in a temp dir with Unix
//! sockets and loopback ports, killed on drop (see `stickwarden::sandbox`), plus a connected client.

#![allow(dead_code)] // each test binary uses its own part of the helper

pub mod browser;

use stickwarden::sandbox::{Sandbox, SandboxOptions};
use stickwarden::{Client, ClientOptions};

/// Starts the standard sandbox. A missing `haproxy` fails the test: `make test` installs it.
pub fn haproxy() -> Sandbox {
    haproxy_with(&SandboxOptions::default())
}

pub fn haproxy_with(opts: &SandboxOptions) -> Sandbox {
    Sandbox::start(opts).unwrap_or_else(|e| panic!("cannot start haproxy for the test: {e}"))
}

/// A client on the sandbox's socket at `level admin`.
pub async fn admin(sb: &Sandbox) -> Client {
    Client::connect(sb.admin().parse().unwrap(), ClientOptions::default()).await.expect("connect to the sandbox")
}

/// Major and minor version of the sandbox's HAProxy, e.g. (2, 6).
pub fn version(sb: &Sandbox) -> (u32, u32) {
    let mut it = sb.version.split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// How often the controller polls in the tests.
pub const INTERVAL_MS: u64 = 250;

/// A controller set up in a temp dir: `stickwarden.toml`, a rules directory holding the shipped
/// rule files (`rules/*.toml` of the repository, not their production policy) and the test's
/// policy, and the store directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: std::path::PathBuf,
}

impl Setup {
    pub fn store_path(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }
}

/// A policy with threshold 100 (one match of a shipped rule of weight 100) and the given ladder
/// steps, e.g. `{ action = ["tag"], duration = "2s" }`.
pub fn policy(steps: &str) -> String {
    format!("[score]\nthreshold = 100\nhalf_life = \"10m\"\n[ladder]\nforgiveness = \"1h\"\nsteps = [{steps}]\n")
}

/// Writes the configuration for the sandbox: its admin socket, ft_web as the watched and block
/// table, its block ACL; `extra` is appended (e.g. `dry_run = true` must come before any table,
/// so it goes through `top`).
pub fn setup(sb: &Sandbox, top: &str, policy: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    for f in ["http-flood.toml", "scanner.toml", "conn-flood.toml"] {
        std::fs::copy(shipped.join(f), rules.join(f)).unwrap();
    }
    std::fs::write(rules.join("policy.toml"), policy).unwrap();
    let config = dir.path().join("stickwarden.toml");
    let text = format!(
        "{top}\nrules = \"rules\"\npoll_interval = \"{INTERVAL_MS}ms\"\n\n[store]\npath = \"store\"\ncache_mb = 8\n\n\
         [[haproxy]]\nname = \"sandbox\"\nsocket = \"{}\"\n\n[block]\ntable = \"ft_web\"\ntag = \"gpt0\"\nacl = \"{}\"\n\n{extra}\n",
        sb.admin(),
        sb.block_acl().display()
    );
    std::fs::write(&config, text).unwrap();
    Setup { dir, config }
}

/// The controller running in this process on `setup`, with its store open for inspection.
pub struct Daemon {
    pub store: stickwarden::store::Store,
    /// The daemon's clock: a test skips a block's hour instead of sleeping it.
    pub clock: stickwarden::time::Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), stickwarden::store::StoreError>>,
}

impl Daemon {
    pub fn start(setup: &Setup) -> Daemon {
        let cfg = stickwarden::config::Config::load(&setup.config).unwrap_or_else(|e| panic!("{e}"));
        let store = stickwarden::store::Store::open(&cfg.store.path, cfg.store.cache_bytes).unwrap();
        Daemon::start_on(setup, store)
    }

    /// [`Daemon::start`] on a store the test already has open. Within one process a store is
    /// opened once: sled releases its file lock only when its background threads let go, so
    /// dropping it and opening it again at once can fail.
    pub fn start_on(setup: &Setup, store: stickwarden::store::Store) -> Daemon {
        // STICKWARDEN_LOG=debug shows the controller's log in a failing test's output.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("STICKWARDEN_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        let cfg = stickwarden::config::Config::load(&setup.config).unwrap_or_else(|e| panic!("{e}"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let clock = stickwarden::time::Clock::system();
        let metrics = std::sync::Arc::new(stickwarden::metrics::Metrics::new());
        let stop = async move {
            let _ = rx.await;
        };
        let run = stickwarden::daemon::run_with(cfg, store.clone(), metrics, clock.clone(), stop, |_, _| {});
        let task = tokio::spawn(run);
        Daemon { store, clock, stop: Some(tx), task }
    }

    /// Stops it as SIGTERM would and checks it ended cleanly.
    pub async fn stop(mut self) -> stickwarden::store::Store {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
        self.store.clone()
    }
}

/// The `gpt0` of `addr` in ft_web; `None` when the entry does not exist.
pub async fn gpt0(c: &Client, addr: &str) -> Option<u64> {
    use stickwarden::proto::{KeyType, TableKey};
    gpt0_in(c, "ft_web", TableKey::parse(KeyType::Ip, addr).unwrap()).await
}

/// The `gpt0` of `key` in `table`; `None` when the entry does not exist.
pub async fn gpt0_in(c: &Client, table: &str, key: stickwarden::proto::TableKey) -> Option<u64> {
    use stickwarden::client::TableItem;
    use stickwarden::proto::{table::Value, TableSelect};
    let dump = c.show_table(table, TableSelect::Key(key)).await.unwrap();
    let mut out = None;
    dump.for_each(|item| {
        if let TableItem::Entry(e) = item {
            if let Some(Value::Uint(v)) = e.get("gpt0").map(|c| c.value) {
                out = Some(v);
            }
        }
    })
    .await
    .unwrap();
    out
}

/// The patterns of the sandbox's block ACL.
pub async fn acl(c: &Client, sb: &Sandbox) -> Vec<String> {
    let r = sb.block_acl().display().to_string().parse().unwrap();
    let mut v: Vec<String> = c.show_acl(&r).await.unwrap().into_iter().map(|e| e.pattern).collect();
    v.sort();
    v
}

/// Polls `f` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Status of one GET from loopback client `n` (1 -> 127.0.0.2, ...).
pub async fn get(sb: &Sandbox, n: u8) -> u16 {
    stickwarden::sandbox::http_get(stickwarden::sandbox::client_addr(n), sb.web_port).await.unwrap()
}

/// `count` requests from client `n`, 10 at a time.
pub async fn flood(sb: &Sandbox, n: u8, count: usize) -> Vec<(u16, usize)> {
    stickwarden::sandbox::http_burst(stickwarden::sandbox::client_addr(n), sb.web_port, count, 10).await.unwrap()
}

/// `stickwarden ARGS` with the setup's configuration and `token` (`None`: no token at all),
/// never an API address from the environment.
pub fn sw_with(s: &Setup, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"));
    c.args(args).env("STICKWARDEN_CONFIG", &s.config).env_remove("STICKWARDEN_API").env_remove("STICKWARDEN_TOKEN");
    if let Some(t) = token {
        c.env("STICKWARDEN_TOKEN", t);
    }
    c.output().unwrap()
}

/// [`sw_with`] as the operator.
pub fn sw(s: &Setup, args: &[&str]) -> std::process::Output {
    sw_with(s, args, Some(OPERATOR_TOKEN))
}

/// Standard output and standard error of a command, for messages and assertions.
pub fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Tokens of the API tests: `ops` (operator) and `view` (viewer).
pub const OPERATOR_TOKEN: &str = "operator-secret-0123456789";
pub const VIEWER_TOKEN: &str = "viewer-secret-0123456789ab";

/// Adds `[api]` to a setup: a Unix socket in its dir and the two test tokens. Returns the
/// socket's address (`unix:/...`).
pub fn with_api(s: &Setup) -> String {
    let tokens = s.dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"ops\"\nrole = \"operator\"\ntoken = \"{OPERATOR_TOKEN}\"\n\n\
             [[token]]\nname = \"view\"\nrole = \"viewer\"\ntoken = \"{VIEWER_TOKEN}\"\n"
        ),
    )
    .unwrap();
    private(&tokens);
    let sock = format!("unix:{}", s.dir.path().join("api.sock").display());
    let mut cfg = std::fs::read_to_string(&s.config).unwrap();
    cfg.push_str(&format!("\n[api]\nlisten = [\"{sock}\"]\ntokens = \"tokens.toml\"\n"));
    std::fs::write(&s.config, cfg).unwrap();
    sock
}

/// An ACL block of `key` until an hour from now, as an operator or an older version recorded it
/// (no place), written with its audit record straight into `store`.
pub fn store_acl_block(store: &stickwarden::store::Store, key: &str) {
    use stickwarden::rules::{Action, Actions};
    use stickwarden::store::{AuditRecord, Block, Event, Origin};
    let now = stickwarden::time::now_ms();
    let b = Block {
        key: stickwarden::key::Key::Net(stickwarden::net::parse_net(key).unwrap()),
        level: 0,
        actions: Actions::new(vec![Action::Acl]),
        rule: "manual".into(),
        reason: "stored".into(),
        source: Origin::Manual,
        actor: "old".into(),
        since: now,
        until: now + 3_600_000,
        counters: Vec::new(),
        dry_run: false,
        place: None,
        nodes: Vec::new(),
    };
    store.decide(&b, None, AuditRecord::of(Event::Block, &b, now)).unwrap();
}

/// The setup's API on a Unix socket ([`with_api`]) and its daemon running as a real process,
/// answering: the daemon, and the API socket.
pub async fn running_daemon(s: &Setup) -> (std::process::Child, String) {
    let sock = with_api(s);
    let d = spawn_daemon(s);
    assert!(api_socket_appears(&sock).await, "the daemon's API never listened");
    (d, sock)
}

/// [`running_daemon`] with `n` addresses from `base` on imported for an hour.
pub async fn daemon_with_import(s: &Setup, n: u32, base: u32) -> (std::process::Child, String) {
    let (d, sock) = running_daemon(s).await;
    let list = s.dir.path().join("list.txt");
    let text: String = (0..n).map(|i| format!("{}\n", stickwarden::sandbox::nth_addr(base + i))).collect();
    std::fs::write(&list, text).unwrap();
    let o = sw(s, &["import", list.to_str().unwrap(), "--for", "1h", "--reason", "feed"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    (d, sock)
}

/// Mode 0600, as a tokens file must have.
pub fn private(path: impl AsRef<std::path::Path>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Whether the API's Unix socket (`unix:/path`, as [`with_api`] returns it) appears within 5 s.
pub async fn api_socket_appears(sock: &str) -> bool {
    let path = std::path::PathBuf::from(sock.trim_start_matches("unix:"));
    eventually(std::time::Duration::from_secs(5), || {
        let p = path.clone();
        async move { p.exists() }
    })
    .await
}

/// `stickwarden run` on the setup, as a real process (for SIGKILL and SIGTERM).
pub fn spawn_daemon(s: &Setup) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_stickwarden"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// SIGTERM, and the clean exit (status 0) it must give.
pub fn stop_daemon(mut d: std::process::Child) {
    let pid = d.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert_eq!(d.wait().unwrap().code(), Some(0), "stickwarden run did not exit cleanly on SIGTERM");
}
