//! `stickwarden.toml`: HAProxy targets, watched tables, how to block, the store, safety limits and
//! the static allowlist, plus the rule set of the `rules` directory it points to.
//!
//! [`Config::load`] parses a raw serde struct (`deny_unknown_fields`, documented defaults), then
//! checks it into [`Config`]: every problem is reported with file, line and column before any
//! socket is opened or any store touched (exit code 64). `docs/configuration.md` documents every key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

pub mod tokens;

use crate::checked::error::{read, Source};
use crate::checked::values::{Dur, Net, Time};
pub use crate::checked::{ConfigError, Location};

use crate::proto::{AclRef, DataField};
use crate::rules::{Action, RuleSet};
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
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rules: Option<String>,
    #[serde(default)]
    dry_run: bool,
    poll_interval: Option<Spanned<Dur>>,
    reconcile_interval: Option<Spanned<Dur>>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    haproxy: Vec<Spanned<RawTarget>>,
    #[serde(default)]
    table: Vec<Spanned<RawTable>>,
    #[serde(default)]
    block: RawBlock,
    #[serde(default)]
    safety: RawSafety,
    aggregate: Option<Spanned<RawAggregate>>,
    #[serde(default)]
    allow: Vec<Spanned<RawAllow>>,
    api: Option<RawApi>,
    fleet: Option<RawFleet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    merge: Option<bool>,
    #[serde(default)]
    columns: std::collections::BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Vec<Spanned<String>>>,
    tokens: Spanned<String>,
    max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<String>,
    cache_mb: Option<Spanned<u64>>,
    retention: Option<Dur>,
    max_offences: Option<Spanned<usize>>,
    audit_retention: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    socket: Spanned<String>,
    commands_per_second: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: Spanned<String>,
    interval: Option<Spanned<Dur>>,
    suspects: Option<Spanned<String>>,
    sweep_interval: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    table: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    tag_value: Option<Spanned<u32>>,
    acl: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_blocks_per_minute: Option<Spanned<u32>>,
    breaker_floor: Option<Spanned<u32>>,
    breaker_share: Option<Spanned<f64>>,
    #[serde(default)]
    never_block: Vec<Net>,
    max_prefix_v4: Option<Spanned<u8>>,
    max_prefix_v6: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    #[serde(default = "v4")]
    ipv4_prefix: Spanned<u8>,
    #[serde(default = "v6")]
    ipv6_prefix: Spanned<u8>,
    offenders: Spanned<usize>,
    window: Dur,
    duration: Dur,
}

fn v4() -> Spanned<u8> {
    Spanned::new(0..0, 24)
}

fn v6() -> Spanned<u8> {
    Spanned::new(0..0, 64)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    cidr: Net,
    reason: Spanned<String>,
    until: Option<Time>,
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
        let raw: RawConfig = src.parse()?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rules_dir = base.join(raw.rules.as_deref().unwrap_or("rules"));
        let rules = crate::rules::load_dir(&rules_dir)?;
        check(&src, raw, rules_dir, rules)
    }
}

fn check(src: &Source<'_>, raw: RawConfig, rules_dir: PathBuf, rules: RuleSet) -> Result<Config, ConfigError> {
    let file_error = |message: String| ConfigError::File { path: src.path.to_owned(), message };

    if raw.haproxy.is_empty() {
        return Err(file_error(
            "no [[haproxy]] target: add one with name = \"...\" and socket = \"unix:/path\"".into(),
        ));
    }
    let mut targets: Vec<TargetConfig> = Vec::new();
    for t in &raw.haproxy {
        let t = t.get_ref();
        let name = t.name.get_ref().trim();
        if name.is_empty() {
            return Err(src.error(&t.name.span(), "a target needs a name"));
        }
        if targets.iter().any(|o| o.name == name) {
            return Err(src.error(&t.name.span(), format!("target '{name}' is defined twice")));
        }
        let target: Target = t.socket.get_ref().parse().map_err(|e| src.error(&t.socket.span(), format!("{e}")))?;
        if let Some(c) = t.commands_per_second.as_ref().filter(|c| *c.get_ref() == 0) {
            return Err(src.error(&c.span(), "commands_per_second must be at least 1"));
        }
        let cps = t.commands_per_second.as_ref().map_or(DEFAULT_COMMANDS_PER_SECOND, |c| *c.get_ref());
        targets.push(TargetConfig { name: name.to_owned(), target, commands_per_second: cps });
    }

    let default_interval = raw.poll_interval.as_ref().map_or(DEFAULT_POLL_INTERVAL, |d| d.get_ref().0);
    let reconcile_interval = raw.reconcile_interval.as_ref().map_or(DEFAULT_RECONCILE_INTERVAL, |d| d.get_ref().0);
    if let Some(d) = raw.reconcile_interval.as_ref().filter(|d| d.get_ref().0 < MIN_POLL_INTERVAL) {
        return Err(src.error(&d.span(), "reconcile_interval must be at least 100ms"));
    }
    if let Some(d) = &raw.poll_interval {
        if d.get_ref().0 < MIN_POLL_INTERVAL {
            return Err(src.error(&d.span(), "poll_interval must be at least 100ms"));
        }
    }
    let read_tables = rules.tables();
    let mut tables: Vec<TableConfig> = read_tables
        .iter()
        .map(|t| TableConfig { name: (*t).to_owned(), interval: default_interval, suspects: None })
        .collect();
    for (i, t) in raw.table.iter().enumerate() {
        let t = t.get_ref();
        let name = t.name.get_ref();
        if raw.table[..i].iter().any(|o| o.get_ref().name.get_ref() == name) {
            return Err(src.error(&t.name.span(), format!("table '{name}' is listed twice")));
        }
        let Some(slot) = tables.iter_mut().find(|c| c.name == *name) else {
            return Err(src.error(
                &t.name.span(),
                format!("no rule reads table '{name}' (rules read: {})", read_tables.join(", ")),
            ));
        };
        if let Some(interval) = &t.interval {
            if interval.get_ref().0 < MIN_POLL_INTERVAL {
                return Err(src.error(&interval.span(), "interval must be at least 100ms"));
            }
            slot.interval = interval.get_ref().0;
        }
        if let (Some(s), None) = (&t.sweep_interval, &t.suspects) {
            return Err(
                src.error(&s.span(), "sweep_interval needs suspects = \"TABLE\" (it checks the suspects table)")
            );
        }
        if let Some(s) = &t.suspects {
            let suspects = s.get_ref();
            let shared =
                raw.table[..i].iter().any(|o| o.get_ref().suspects.as_ref().is_some_and(|x| x.get_ref() == suspects));
            if suspects.is_empty() || suspects == name || read_tables.contains(&suspects.as_str()) || shared {
                return Err(src.error(&s.span(), format!("suspects must name a table of its own, not '{suspects}'")));
            }
            if let Err(why) = crate::suspects::check_rules(rules.for_table(name).map(|(_, r)| r)) {
                return Err(src.error(&s.span(), format!("table '{name}' cannot use a suspects table: {why}")));
            }
            let sweep = t.sweep_interval.as_ref().map_or(DEFAULT_SWEEP_INTERVAL, |d| d.get_ref().0);
            if sweep < slot.interval {
                let at = t.sweep_interval.as_ref().map_or(s.span(), |d| d.span());
                return Err(src.error(&at, "sweep_interval must be at least the table's poll interval"));
            }
            slot.suspects = Some(SuspectsConfig { table: suspects.clone(), sweep });
        }
    }

    let block = check_block(src, &raw.block, &tables)?;
    let tag_table = tables.iter().find(|t| t.suspects.is_some() && block.table.as_deref() == Some(t.name.as_str()));
    if let (Some(t), false) = (tag_table, matches!(block.tag.as_str(), "gpt0" | "gpc0" | "gpc1")) {
        // The lines of suspects mode skip tagged clients with `sc0_get_<tag>`, which HAProxy has
        // for these columns only.
        return Err(file_error(format!(
            "table '{}' uses a suspects table, which needs [block] tag to be gpt0, gpc0 or gpc1 (not {})",
            t.name, block.tag
        )));
    }
    if rules.policy.uses(Action::Acl) && block.acl.is_none() {
        return Err(file_error("the ladder uses \"acl\" but [block] has no acl = \"/path/of/the/acl/file\"".into()));
    }
    if rules.policy.uses(Action::Tag) && block.table.is_none() {
        return Err(file_error(
            "the ladder uses \"tag\" but [block] has no table = \"...\" (needed with several watched tables)".into(),
        ));
    }

    let never_block = protected(&raw.safety.never_block, &targets);
    let max_prefix_v4 = raw.safety.max_prefix_v4.as_ref().map_or(DEFAULT_MAX_PREFIX_V4, |m| *m.get_ref());
    if let Some(m) = raw.safety.max_prefix_v4.as_ref().filter(|m| !(1..=32).contains(m.get_ref())) {
        return Err(src.error(&m.span(), "max_prefix_v4 must be between 1 and 32 (0 would allow blocking all of IPv4)"));
    }
    let max_prefix_v6 = raw.safety.max_prefix_v6.as_ref().map_or(DEFAULT_MAX_PREFIX_V6, |m| *m.get_ref());
    if let Some(m) = raw.safety.max_prefix_v6.as_ref().filter(|m| !(1..=128).contains(m.get_ref())) {
        return Err(
            src.error(&m.span(), "max_prefix_v6 must be between 1 and 128 (0 would allow blocking all of IPv6)")
        );
    }
    let max_blocks_per_minute = raw.safety.max_blocks_per_minute.as_ref().map(|m| *m.get_ref());
    if let Some(m) = raw.safety.max_blocks_per_minute.as_ref().filter(|m| *m.get_ref() == 0) {
        return Err(src.error(&m.span(), "max_blocks_per_minute must be at least 1"));
    }
    let breaker_floor = raw.safety.breaker_floor.as_ref().map_or(DEFAULT_BREAKER_FLOOR, |m| *m.get_ref());
    if let Some(m) = raw.safety.breaker_floor.as_ref().filter(|m| *m.get_ref() == 0) {
        return Err(src.error(&m.span(), "breaker_floor must be at least 1"));
    }
    let breaker_share = raw.safety.breaker_share.as_ref().map_or(DEFAULT_BREAKER_SHARE, |m| *m.get_ref());
    if let Some(m) = raw.safety.breaker_share.as_ref().filter(|m| !(m.get_ref() > &0.0 && m.get_ref() <= &1.0)) {
        return Err(src.error(&m.span(), "breaker_share must be a fraction above 0 and at most 1 (0.05 is 5%)"));
    }

    let aggregate = match &raw.aggregate {
        None => None,
        Some(a) => {
            let a = a.get_ref();
            if !(1..=32).contains(a.ipv4_prefix.get_ref()) {
                return Err(src.error(&a.ipv4_prefix.span(), "ipv4_prefix must be between 1 and 32"));
            }
            if !(1..=128).contains(a.ipv6_prefix.get_ref()) {
                return Err(src.error(&a.ipv6_prefix.span(), "ipv6_prefix must be between 1 and 128"));
            }
            for (family, prefix, max) in [("v4", &a.ipv4_prefix, max_prefix_v4), ("v6", &a.ipv6_prefix, max_prefix_v6)]
            {
                if *prefix.get_ref() < max {
                    let m = format!(
                        "ip{family}_prefix /{} is broader than [safety] max_prefix_{family} = {max}",
                        prefix.get_ref()
                    );
                    return Err(src.error(&prefix.span(), m));
                }
            }
            if *a.offenders.get_ref() < 2 {
                return Err(src.error(&a.offenders.span(), "offenders must be at least 2"));
            }
            if block.acl.is_none() {
                return Err(file_error("[aggregate] blocks prefixes through the ACL: set [block] acl".into()));
            }
            Some(Aggregate {
                ipv4_prefix: *a.ipv4_prefix.get_ref(),
                ipv6_prefix: *a.ipv6_prefix.get_ref(),
                offenders: *a.offenders.get_ref(),
                window: a.window.0,
                duration: a.duration.0,
            })
        }
    };

    let mut allow = Vec::new();
    for a in &raw.allow {
        let a = a.get_ref();
        let reason = a.reason.get_ref().trim();
        if reason.is_empty() {
            return Err(src.error(&a.reason.span(), "an allowlist entry needs a reason"));
        }
        allow.push(StaticAllow { net: a.cidr.0, reason: reason.to_owned(), until: a.until.map(|t| t.0) });
    }

    let store = &raw.store;
    let cache_mb = store.cache_mb.as_ref().map_or(DEFAULT_CACHE_MB, |c| *c.get_ref());
    if let Some(c) = store.cache_mb.as_ref().filter(|c| !(1..=65_536).contains(c.get_ref())) {
        return Err(src.error(&c.span(), "cache_mb must be between 1 and 65536"));
    }
    let max_offences = store.max_offences.as_ref().map_or(100, |m| *m.get_ref());
    if let Some(m) = store.max_offences.as_ref().filter(|m| !(1..=10_000).contains(m.get_ref())) {
        return Err(src.error(&m.span(), "max_offences must be between 1 and 10000"));
    }
    let base = src.path.parent().unwrap_or(Path::new("."));
    let store = StoreConfig {
        path: store.path.as_ref().map_or_else(default_store_path, |p| base.join(p)),
        cache_bytes: cache_mb * 1024 * 1024,
        retention: store.retention.map_or(Duration::from_secs(30 * 86_400), |d| d.0),
        max_offences,
        audit_retention: store.audit_retention.map_or(Duration::from_secs(90 * 86_400), |d| d.0),
    };
    if store.retention < rules.policy.forgiveness {
        return Err(file_error(format!(
            "[store] retention ({}) is shorter than the ladder's forgiveness ({}): repeat offenders would be forgotten early",
            crate::time::human(store.retention),
            crate::time::human(rules.policy.forgiveness)
        )));
    }

    let api = match &raw.api {
        None => None,
        Some(a) => {
            let mut listen = Vec::new();
            for l in a.listen.as_deref().unwrap_or_default() {
                listen.push(l.get_ref().parse::<Listen>().map_err(|m| src.error(&l.span(), m))?);
            }
            if a.listen.is_none() {
                listen.push(Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT))));
            }
            if listen.is_empty() {
                return Err(src.error(&a.tokens.span(), "[api] listen is empty: remove [api] to run without the API"));
            }
            let max_connections = a.max_connections.as_ref().map_or(DEFAULT_API_MAX_CONNECTIONS, |m| *m.get_ref());
            if let Some(m) = a.max_connections.as_ref().filter(|m| !(1..=65_536).contains(m.get_ref())) {
                return Err(src.error(&m.span(), "max_connections must be between 1 and 65536"));
            }
            let tokens = tokens::Tokens::load(&base.join(a.tokens.get_ref()))?;
            Some(ApiConfig { listen, tokens: std::sync::Arc::new(tokens), max_connections })
        }
    };

    let mut merge = crate::fleet::MergeConfig { enabled: targets.len() > 1, ..Default::default() };
    if let Some(f) = &raw.fleet {
        merge.enabled = f.merge.unwrap_or(merge.enabled);
        for (column, mode) in &f.columns {
            let name = column.get_ref();
            if name.parse::<DataField>().is_err() || name.starts_with("data.") {
                return Err(src.error(&column.span(), format!("'{name}' is not a column name (e.g. http_req_rate)")));
            }
            let mode = match mode.get_ref().as_str() {
                "sum" => crate::fleet::MergeMode::Sum,
                "max" => crate::fleet::MergeMode::Max,
                other => return Err(src.error(&mode.span(), format!("'{other}': expected \"sum\" or \"max\""))),
            };
            merge.columns.insert(name.clone(), mode);
        }
    }
    if merge.enabled && targets.len() > 1 && tables.iter().any(|t| t.suspects.is_some()) {
        // Merged rules read each node's share of a threshold, which one node's flags cannot vouch for.
        return Err(file_error(
            "suspects tables are not supported with [fleet] merge across several targets yet: set merge = false, or remove suspects".into(),
        ));
    }

    Ok(Config {
        merge,
        api,
        path: src.path.to_owned(),
        rules_dir,
        rules,
        dry_run: raw.dry_run,
        reconcile_interval,
        store,
        targets,
        tables,
        block,
        safety: Safety {
            breaker_floor,
            breaker_share,
            max_blocks_per_minute,
            never_block,
            max_prefix_v4,
            max_prefix_v6,
        },
        aggregate,
        allow,
    })
}

/// What no block may touch: the configured `never_block`, this host's loopback (the controller
/// itself, and HAProxy when it is local) and the addresses of every tcp target, with `localhost`
/// standing for both `127.0.0.1` and `::1` whatever the resolver says.
fn protected(configured: &[Net], targets: &[TargetConfig]) -> Vec<Protected> {
    let entry = |net: IpNet, why: &str| Protected { net, why: why.to_owned() };
    let mut out: Vec<Protected> = configured.iter().map(|n| entry(n.0, "never_block")).collect();
    let loopback = [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)];
    out.extend(loopback.iter().map(|a| entry(crate::net::host_net(*a), "this host's loopback")));
    for t in targets {
        let Target::Tcp { host, port } = &t.target else { continue };
        let why = format!("HAProxy target {}", t.name);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut addrs: Vec<IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, *port))
            .map(|a| a.map(|a| a.ip()).collect())
            .unwrap_or_default();
        if host.eq_ignore_ascii_case("localhost") {
            addrs.extend(loopback);
        }
        out.extend(addrs.into_iter().map(|a| entry(crate::net::host_net(a), &why)));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|p| seen.insert(p.net));
    out
}

fn check_block(src: &Source<'_>, b: &RawBlock, tables: &[TableConfig]) -> Result<BlockConfig, ConfigError> {
    let table = match &b.table {
        Some(t) if t.get_ref().trim().is_empty() => return Err(src.error(&t.span(), "expected a stick table name")),
        Some(t) => Some(t.get_ref().trim().to_owned()),
        // With one watched table, that is where tags go.
        None if tables.len() == 1 => Some(tables[0].name.clone()),
        None => None,
    };
    let tag = match &b.tag {
        None => "gpt0".parse().expect("valid"),
        Some(t) => t
            .get_ref()
            .parse()
            .map_err(|_| src.error(&t.span(), format!("'{}' is not a data column name", t.get_ref())))?,
    };
    let tag_value = b.tag_value.as_ref().map_or(1, |v| *v.get_ref());
    if let Some(v) = b.tag_value.as_ref().filter(|v| *v.get_ref() == 0) {
        return Err(src.error(&v.span(), "tag_value must not be 0 (0 is the released state)"));
    }
    let acl = match &b.acl {
        None => None,
        Some(a) => Some(match a.get_ref().parse::<AclRef>() {
            Ok(AclRef::File(f)) => AclRef::File(f),
            _ => return Err(src.error(&a.span(), "expected the ACL file path exactly as HAProxy loads it (not #id)")),
        }),
    };
    Ok(BlockConfig { table, tag, tag_value, acl })
}

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
