//! `stickwarden.toml`: HAProxy targets, watched tables, how to block, the store, safety limits and
//! the static allowlist, plus the rule set of the `rules` directory it points to.
//!
//! [`Config::load`] parses a raw serde struct (`deny_unknown_fields`, documented defaults), then
//! checks it into [`Config`], a section at a time (`check`): every problem is reported with file,
//! line and column before any socket is opened or any store touched (exit code 64). The tokens
//! file of `[api]` is read by [`tokens`]. `docs/configuration.md` documents every key.

mod check;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::checked::error::{read, Source};
pub use crate::checked::{ConfigError, Location};
use crate::proto::{AclRef, DataField};
use crate::rules::RuleSet;
use crate::target::Target;
use crate::time::Millis;

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub rules_dir: PathBuf,
    pub rules: RuleSet,
    /// Decide, record and audit, but change nothing in HAProxy.
    pub dry_run: bool,
    /// How often each target's ACL and tags are compared with the active blocks.
    pub reconcile_interval: Duration,
    pub store: StoreConfig,
    pub targets: Vec<TargetConfig>,
    /// Every table a rule reads, with its poll interval.
    pub tables: Vec<TableConfig>,
    pub block: BlockConfig,
    pub safety: Safety,
    pub aggregate: Option<Aggregate>,
    pub allow: Vec<StaticAllow>,
    /// The HTTP API; none without an `[api]` section.
    pub api: Option<ApiConfig>,
    /// How observations of one address on several targets are merged (`[fleet]`).
    pub merge: crate::fleet::MergeConfig,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: Vec<Listen>,
    pub tokens: std::sync::Arc<tokens::Tokens>,
    /// Open API connections at most (lowered to fit the file descriptor limit).
    pub max_connections: usize,
    /// How long a review console login lasts (from the login, not from the last request).
    pub console_session: std::time::Duration,
}

/// Default of `[api] console_session`.
pub const DEFAULT_CONSOLE_SESSION: std::time::Duration = std::time::Duration::from_secs(8 * 3600);
/// Longest `[api] console_session`.
pub const MAX_CONSOLE_SESSION: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Default of `[api] max_connections`.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 256;

/// Where the API listens: a TCP address, or a Unix socket (created with mode 0600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("unix: needs a path".into()),
            Some(p) => Ok(Listen::Unix(PathBuf::from(p))),
            None => s
                .parse()
                .map(Listen::Tcp)
                .map_err(|_| format!("'{s}': expected host:port (e.g. 127.0.0.1:9180) or unix:/path")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where the records live: sled at `path`, or a shared PostgreSQL.
    pub backend: BackendConfig,
    /// The embedded store (sled), or with PostgreSQL the controller's local state (backup
    /// scratch files).
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// How long an offender's history is kept after its last offence.
    pub retention: Duration,
    /// At most this many offences are kept per offender (the newest).
    pub max_offences: usize,
    /// How long audit records are kept.
    pub audit_retention: Duration,
}

/// `[store] backend`.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    Sled,
    Postgres(PgConfig),
}

/// `[store] backend = "postgres"`: where, and this controller's name among those that share it.
#[derive(Debug, Clone, PartialEq)]
pub struct PgConfig {
    /// A libpq URL or key=value string, without a password.
    pub url: String,
    /// The password's file; else `STICKWARDEN_PG_PASSWORD`; else none (peer or trust auth).
    pub password_file: Option<PathBuf>,
    /// This controller's name in the leader row, the audit log and `/healthz`.
    pub name: String,
}

/// A libpq URL (`postgres://user@host:port/db`) or key=value string, checked.
pub fn pg_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let c: tokio_postgres::Config = url.parse().map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    if c.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if c.get_dbname().is_none() {
        return Err("the URL names no database (postgres://USER@HOST:PORT/DATABASE)".into());
    }
    if c.get_user().is_none() {
        return Err("the URL names no user (postgres://USER@HOST:PORT/DATABASE)".into());
    }
    Ok(c)
}

/// A controller's name when `[store] name` is not set: the host's name.
pub fn default_controller_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String =
        host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).take(48).collect();
    if host.is_empty() {
        "stickwarden".into()
    } else {
        host
    }
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: String,
    pub target: Target,
    /// Actuator rate limit (governor), commands per second on this target.
    pub commands_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: String,
    pub interval: Duration,
    /// Suspects mode ([`crate::suspects`]): the table HAProxy flags this table's offenders in.
    pub suspects: Option<SuspectsConfig>,
    /// What the table is keyed by when it is not client addresses (`[[table]] key`): string (with
    /// the table's `len`) or integer; its offenders are then blocked by key, in the table itself
    /// (`tag`) or in `map`.
    pub key: Option<crate::proto::KeyType>,
    /// The map file the `map:CLASS` steps set this table's keys in (tables keyed otherwise).
    pub map: Option<AclRef>,
}

impl Config {
    /// The key type a table declares (`None`: addresses, or not a watched table).
    pub fn key_type(&self, table: &str) -> Option<crate::proto::KeyType> {
        self.tables.iter().find(|t| t.name == table).and_then(|t| t.key)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SuspectsConfig {
    /// The suspects table's name.
    pub table: String,
    /// How often a full poll of the watched table checks that nothing was missed.
    pub sweep: Duration,
}

/// Default of `[[table]] sweep_interval`.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The table whose tag counter the `tag` action sets (and `clear table key` removes).
    pub table: Option<String>,
    pub tag: DataField,
    pub tag_value: u32,
    /// The ACL file (as HAProxy loaded it) the `acl` action adds to.
    pub acl: Option<AclRef>,
    /// The map file (as HAProxy loaded it) the `map:CLASS` actions set keys in.
    pub map: Option<AclRef>,
}

impl BlockConfig {
    /// How a blocked client of `table` is known: the tag, when it is set in `table`, and the ACL.
    pub fn blocked_in(&self, table: &str) -> crate::suspects::Blocked<'_> {
        crate::suspects::Blocked {
            tag: (self.table.as_deref() == Some(table)).then_some(&self.tag),
            acl: self.acl.as_ref(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Safety {
    /// Circuit breaker: automatic blocks within a minute are always allowed up to this many...
    pub breaker_floor: u32,
    /// ...and up to this share of the tracked clients (the watched tables' entries) above it...
    pub breaker_share: f64,
    /// ...but never more than this many, when set.
    pub max_blocks_per_minute: Option<u32>,
    /// Never blocked, whatever the rules say: the configured `never_block`, the hosts of tcp
    /// targets, and this host's loopback (`127.0.0.1`, `::1`), each with why.
    pub never_block: Vec<Protected>,
    /// The broadest IPv4 block allowed without an explicit override: prefix length at least this.
    pub max_prefix_v4: u8,
    /// The broadest IPv6 block allowed without an explicit override.
    pub max_prefix_v6: u8,
}

/// A network no block may touch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub net: IpNet,
    pub why: String,
}

/// Default of `[safety] breaker_floor`: automatic blocks a minute allowed whatever the population.
pub const DEFAULT_BREAKER_FLOOR: u32 = 100;
/// Default of `[safety] breaker_share`: 5% of the tracked clients blocked within a minute.
pub const DEFAULT_BREAKER_SHARE: f64 = 0.05;
/// Default of `[safety] max_prefix_v4`: a /16 (65,536 addresses) at the broadest.
pub const DEFAULT_MAX_PREFIX_V4: u8 = 16;
/// Default of `[safety] max_prefix_v6`: a /32 (one provider's allocation) at the broadest.
pub const DEFAULT_MAX_PREFIX_V6: u8 = 32;

impl Safety {
    /// Whether a block of `net` is narrow enough. Blocks reaching every IPv4 client (`0.0.0.0/0`,
    /// `::/0`, `::/64`...) or every IPv6 one are refused even with `allow_broad`; broader than
    /// `max_prefix_v4`/`max_prefix_v6` only with it. Measured by [`crate::net::breadth`], so an
    /// IPv6 network holding part of `::ffff:0:0/96` counts by the IPv4 range it reaches.
    pub fn check_breadth(&self, net: &IpNet, allow_broad: bool) -> Result<(), String> {
        let shown = crate::net::display(net);
        if crate::net::reaches_all_ipv4(net) {
            return Err(format!(
                "{shown} would block every IPv4 client (HAProxy matches them as ::ffff:a.b.c.d): never allowed"
            ));
        }
        let (v4, v6) = crate::net::breadth(net);
        if v6 == Some(0) {
            return Err(format!("{shown} would block every IPv6 client: never allowed"));
        }
        if allow_broad {
            return Ok(());
        }
        if let Some(len) = v4.filter(|l| *l < self.max_prefix_v4) {
            return Err(format!(
                "{shown} reaches an IPv4 /{len}, broader than [safety] max_prefix_v4 = {}: split it, or override explicitly (--allow-broad, \"allow_broad\": true)",
                self.max_prefix_v4
            ));
        }
        if v6.is_some_and(|l| l < self.max_prefix_v6) {
            return Err(format!(
                "{shown} is broader than [safety] max_prefix_v6 = {}: split it, or override explicitly (--allow-broad, \"allow_broad\": true)",
                self.max_prefix_v6
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Aggregate {
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Distinct blocked offenders of one prefix within `window` that block the prefix.
    pub offenders: usize,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct StaticAllow {
    pub net: IpNet,
    pub reason: String,
    pub until: Option<Millis>,
}

/// The actuator's default rate limit per target. HAProxy takes about 190,000 pipelined commands a
/// second on one core; this leaves it room while an import or a burst of blocks goes through.
pub const DEFAULT_COMMANDS_PER_SECOND: u32 = 20_000;

/// sled's page cache, in MiB. It holds decoded tree nodes, which take about three times their
/// size on disk: 16 MiB serves the daemon's lookups (an offender per candidate) and keeps a daemon
/// with 100,000 active blocks and a million offenders in history under 200 MB (docs/BENCHMARKS.md).
pub const DEFAULT_CACHE_MB: u64 = 16;

/// The API's port when `[api]` does not say where to listen (on 127.0.0.1).
pub const DEFAULT_API_PORT: u16 = 9180;

/// Default poll interval of a table without a `[[table]]` entry.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default time between two reconciliations of a target.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

impl Config {
    /// Reads and checks `path` and the rules directory it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        let src = Source { path, text: &text };
        let raw: check::RawConfig = src.parse()?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rules_dir = base.join(raw.rules.as_deref().unwrap_or("rules"));
        let rules = crate::rules::load_dir(&rules_dir)?;
        check::check(&src, raw, rules_dir, rules)
    }

    /// The configuration of a rule set alone, every other setting at its default and no target:
    /// what `simulate --rules DIR` decides with.
    pub fn offline(rules: RuleSet) -> Config {
        Config {
            path: PathBuf::new(),
            rules_dir: PathBuf::new(),
            rules,
            dry_run: false,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            store: StoreConfig {
                backend: BackendConfig::Sled,
                path: PathBuf::new(),
                cache_bytes: DEFAULT_CACHE_MB * 1024 * 1024,
                retention: Duration::from_secs(30 * 86_400),
                max_offences: DEFAULT_MAX_OFFENCES,
                audit_retention: Duration::from_secs(90 * 86_400),
            },
            targets: Vec::new(),
            tables: Vec::new(),
            block: BlockConfig {
                table: None,
                tag: "gpt0".parse().expect("a data field"),
                tag_value: 1,
                acl: None,
                map: None,
            },
            safety: Safety {
                breaker_floor: DEFAULT_BREAKER_FLOOR,
                breaker_share: DEFAULT_BREAKER_SHARE,
                max_blocks_per_minute: None,
                never_block: Vec::new(),
                max_prefix_v4: DEFAULT_MAX_PREFIX_V4,
                max_prefix_v6: DEFAULT_MAX_PREFIX_V6,
            },
            aggregate: None,
            allow: Vec::new(),
            api: None,
            merge: Default::default(),
        }
    }
}

/// Default of `[store] max_offences`.
pub const DEFAULT_MAX_OFFENCES: usize = 100;

/// `$STATE_DIRECTORY` (systemd), else `/var/lib/stickwarden` for root, else
/// `$XDG_STATE_HOME/stickwarden` or `~/.local/state/stickwarden`.
pub fn default_store_path() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    if std::env::var("USER").is_ok_and(|u| u == "root") || std::env::var_os("HOME").is_some_and(|h| h == "/root") {
        return PathBuf::from("/var/lib/stickwarden");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("stickwarden")
}

#[cfg(test)]
mod tests;
