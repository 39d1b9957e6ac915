//! The configuration file as serde reads it (`deny_unknown_fields`, spans kept), and its check
//! into [`Config`], one function per section: `[[haproxy]]`, the intervals, `[[table]]`,
//! `[block]`, `[safety]`, `[aggregate]`, `[[allow]]`, `[store]`, `[api]` and `[fleet]`, then the
//! checks that read several sections. Every error names the file, line and column it is about.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    default_store_path, tokens, Aggregate, ApiConfig, BackendConfig, BlockConfig, Config, ConfigError, Listen,
    PgConfig, Protected, Safety, StaticAllow, StoreConfig, SuspectsConfig, TableConfig, TargetConfig,
    DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_PORT, DEFAULT_BREAKER_FLOOR, DEFAULT_BREAKER_SHARE, DEFAULT_CACHE_MB,
    DEFAULT_COMMANDS_PER_SECOND, DEFAULT_CONSOLE_SESSION, DEFAULT_MAX_PREFIX_V4, DEFAULT_MAX_PREFIX_V6,
    DEFAULT_POLL_INTERVAL, DEFAULT_RECONCILE_INTERVAL, DEFAULT_SWEEP_INTERVAL, MAX_CONSOLE_SESSION, MIN_POLL_INTERVAL,
};
use crate::checked::error::Source;
use crate::checked::values::{Dur, Net, Time};
use crate::proto::{AclRef, DataField, KeyType};
use crate::rules::{Action, RuleSet};
use crate::target::Target;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) rules: Option<String>,
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
pub(super) struct RawFleet {
    merge: Option<bool>,
    #[serde(default)]
    columns: std::collections::BTreeMap<Spanned<String>, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    listen: Option<Vec<Spanned<String>>>,
    tokens: Spanned<String>,
    max_connections: Option<Spanned<usize>>,
    console_session: Option<Spanned<Dur>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    path: Option<String>,
    cache_mb: Option<Spanned<u64>>,
    retention: Option<Dur>,
    max_offences: Option<Spanned<usize>>,
    audit_retention: Option<Dur>,
    backend: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    name: Spanned<String>,
    socket: Spanned<String>,
    commands_per_second: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    name: Spanned<String>,
    interval: Option<Spanned<Dur>>,
    suspects: Option<Spanned<String>>,
    sweep_interval: Option<Spanned<Dur>>,
    key: Option<Spanned<String>>,
    key_len: Option<Spanned<usize>>,
    map: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBlock {
    table: Option<Spanned<String>>,
    tag: Option<Spanned<String>>,
    tag_value: Option<Spanned<u32>>,
    acl: Option<Spanned<String>>,
    map: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
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
pub(super) struct RawAggregate {
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
pub(super) struct RawAllow {
    cidr: Net,
    reason: Spanned<String>,
    until: Option<Time>,
}

fn file_error(src: &Source<'_>, message: String) -> ConfigError {
    ConfigError::File { path: src.path.to_owned(), message }
}

/// Checks `raw` (read from `src`) with the rules of `rules_dir` into a [`Config`].
pub(super) fn check(
    src: &Source<'_>,
    raw: RawConfig,
    rules_dir: PathBuf,
    rules: RuleSet,
) -> Result<Config, ConfigError> {
    let targets = check_targets(src, &raw)?;
    let (default_interval, reconcile_interval) = check_intervals(src, &raw)?;
    let tables = check_tables(src, &raw, &rules, default_interval)?;
    let block = check_block(src, &raw.block, &tables)?;
    check_block_uses(src, &block, &tables, &rules)?;
    let safety = check_safety(src, &raw.safety, &targets)?;
    let aggregate = check_aggregate(src, raw.aggregate.as_ref(), &safety, &block)?;
    let allow = check_allow(src, &raw.allow)?;
    let store = check_store(src, &raw.store, &rules)?;
    let api = check_api(src, raw.api.as_ref())?;
    let merge = check_fleet(src, raw.fleet.as_ref(), &targets, &tables)?;
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
        safety,
        aggregate,
        allow,
    })
}

/// `[[haproxy]]`: at least one target, names unique, sockets parsed.
fn check_targets(src: &Source<'_>, raw: &RawConfig) -> Result<Vec<TargetConfig>, ConfigError> {
    if raw.haproxy.is_empty() {
        return Err(file_error(
            src,
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
    Ok(targets)
}

/// `poll_interval` and `reconcile_interval`.
fn check_intervals(src: &Source<'_>, raw: &RawConfig) -> Result<(Duration, Duration), ConfigError> {
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
    Ok((default_interval, reconcile_interval))
}

/// `[[table]]`: every table a rule reads, with its interval and suspects mode.
fn check_tables(
    src: &Source<'_>,
    raw: &RawConfig,
    rules: &RuleSet,
    default_interval: Duration,
) -> Result<Vec<TableConfig>, ConfigError> {
    let read_tables = rules.tables();
    let mut tables: Vec<TableConfig> = read_tables
        .iter()
        .map(|t| TableConfig {
            name: (*t).to_owned(),
            interval: default_interval,
            suspects: None,
            key: None,
            map: None,
        })
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
        (slot.key, slot.map) = check_table_key(src, t)?;
        if let (Some(s), None) = (&t.sweep_interval, &t.suspects) {
            return Err(
                src.error(&s.span(), "sweep_interval needs suspects = \"TABLE\" (it checks the suspects table)")
            );
        }
        if let Some(s) = &t.suspects {
            let suspects = s.get_ref();
            let shared =
                raw.table[..i].iter().any(|o| o.get_ref().suspects.as_ref().is_some_and(|x| x.get_ref() == suspects));
            if slot.key.is_some() {
                return Err(
                    src.error(&s.span(), "suspects mode flags clients by address: not for a table keyed otherwise")
                );
            }
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
    Ok(tables)
}

/// `key`, `key_len` and `map` of a `[[table]]`: what its keys are (`None`: addresses) and, for a
/// table keyed otherwise, the map its `map:CLASS` steps set keys in.
fn check_table_key(src: &Source<'_>, t: &RawTable) -> Result<(Option<KeyType>, Option<AclRef>), ConfigError> {
    let key = match t.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
        None | Some((_, "address")) => None,
        Some((_, "integer")) => Some(KeyType::Integer),
        Some((k, "string")) => {
            let Some(len) = &t.key_len else {
                return Err(src.error(
                    &k.span(),
                    "key = \"string\" needs key_len = N, the table's `len` in HAProxy: a longer key would be \
                     truncated by HAProxy into another client's",
                ));
            };
            if !(1..=65_535).contains(len.get_ref()) {
                return Err(src.error(&len.span(), "key_len must be between 1 and 65535"));
            }
            Some(KeyType::String { len: Some(*len.get_ref()) })
        }
        Some((k, other)) => {
            return Err(
                src.error(&k.span(), format!("key must be \"address\", \"string\" or \"integer\", not '{other}'"))
            )
        }
    };
    if let (Some(l), false) = (&t.key_len, matches!(key, Some(KeyType::String { .. }))) {
        return Err(src.error(&l.span(), "key_len is for a table with key = \"string\""));
    }
    if let (Some(m), None) = (&t.map, key) {
        return Err(src.error(&m.span(), "map is for a table keyed by string or integer; addresses use [block] map"));
    }
    Ok((key, file_ref(src, t.map.as_ref(), "map")?))
}

/// What the ladder and suspects mode need of `[block]`.
fn check_block_uses(
    src: &Source<'_>,
    block: &BlockConfig,
    tables: &[TableConfig],
    rules: &RuleSet,
) -> Result<(), ConfigError> {
    let tag_table = tables.iter().find(|t| t.suspects.is_some() && block.table.as_deref() == Some(t.name.as_str()));
    if let (Some(t), false) = (tag_table, matches!(block.tag.as_str(), "gpt0" | "gpc0" | "gpc1")) {
        // The lines of suspects mode skip tagged clients with `sc0_get_<tag>`, which HAProxy has
        // for these columns only.
        return Err(file_error(
            src,
            format!(
                "table '{}' uses a suspects table, which needs [block] tag to be gpt0, gpc0 or gpc1 (not {})",
                t.name, block.tag
            ),
        ));
    }
    // [block]'s places are for addresses: needed when an address table is watched.
    let addresses = tables.iter().any(|t| t.key.is_none());
    if addresses && rules.policy.uses(Action::Acl) && block.acl.is_none() {
        return Err(file_error(
            src,
            "the ladder uses \"acl\" but [block] has no acl = \"/path/of/the/acl/file\"".into(),
        ));
    }
    if let (true, Some(class), None) = (addresses, rules.policy.map_class(), &block.map) {
        return Err(file_error(
            src,
            format!("the ladder uses \"map:{}\" but [block] has no map = \"/path/of/the/map/file\"", class.as_str()),
        ));
    }
    // Keys that are not addresses are blocked by tag (in their own table) or map only.
    for t in tables.iter().filter(|t| t.key.is_some()) {
        for (i, step) in rules.policy.steps.iter().enumerate() {
            let n = i + 1;
            if !step.actions.has(Action::Tag) && step.actions.map_class().is_none() {
                return Err(file_error(
                    src,
                    format!(
                        "ladder step {n} ({}) cannot block the keys of table '{}': they are not addresses, so \
                         the ACL and kill do not apply; give the step tag or map:CLASS",
                        step.actions, t.name
                    ),
                ));
            }
            if step.actions.map_class().is_some() && t.map.is_none() {
                return Err(file_error(
                    src,
                    format!("ladder step {n} uses a map, and table '{}' has no map = \"...\" for its keys", t.name),
                ));
            }
        }
    }
    if addresses && rules.policy.uses(Action::Tag) && block.table.is_none() {
        return Err(file_error(
            src,
            "the ladder uses \"tag\" but [block] has no table = \"...\" (needed with several watched tables)".into(),
        ));
    }
    Ok(())
}

/// `[safety]`: what is never blocked, the broadest blocks, the circuit breaker.
fn check_safety(src: &Source<'_>, raw: &RawSafety, targets: &[TargetConfig]) -> Result<Safety, ConfigError> {
    let never_block = protected(&raw.never_block, targets);
    let max_prefix_v4 = raw.max_prefix_v4.as_ref().map_or(DEFAULT_MAX_PREFIX_V4, |m| *m.get_ref());
    if let Some(m) = raw.max_prefix_v4.as_ref().filter(|m| !(1..=32).contains(m.get_ref())) {
        return Err(src.error(&m.span(), "max_prefix_v4 must be between 1 and 32 (0 would allow blocking all of IPv4)"));
    }
    let max_prefix_v6 = raw.max_prefix_v6.as_ref().map_or(DEFAULT_MAX_PREFIX_V6, |m| *m.get_ref());
    if let Some(m) = raw.max_prefix_v6.as_ref().filter(|m| !(1..=128).contains(m.get_ref())) {
        return Err(
            src.error(&m.span(), "max_prefix_v6 must be between 1 and 128 (0 would allow blocking all of IPv6)")
        );
    }
    let max_blocks_per_minute = raw.max_blocks_per_minute.as_ref().map(|m| *m.get_ref());
    if let Some(m) = raw.max_blocks_per_minute.as_ref().filter(|m| *m.get_ref() == 0) {
        return Err(src.error(&m.span(), "max_blocks_per_minute must be at least 1"));
    }
    let breaker_floor = raw.breaker_floor.as_ref().map_or(DEFAULT_BREAKER_FLOOR, |m| *m.get_ref());
    if let Some(m) = raw.breaker_floor.as_ref().filter(|m| *m.get_ref() == 0) {
        return Err(src.error(&m.span(), "breaker_floor must be at least 1"));
    }
    let breaker_share = raw.breaker_share.as_ref().map_or(DEFAULT_BREAKER_SHARE, |m| *m.get_ref());
    if let Some(m) = raw.breaker_share.as_ref().filter(|m| !(m.get_ref() > &0.0 && m.get_ref() <= &1.0)) {
        return Err(src.error(&m.span(), "breaker_share must be a fraction above 0 and at most 1 (0.05 is 5%)"));
    }
    Ok(Safety { breaker_floor, breaker_share, max_blocks_per_minute, never_block, max_prefix_v4, max_prefix_v6 })
}

/// `[aggregate]`: prefixes within the safety limits, blocked through the ACL.
fn check_aggregate(
    src: &Source<'_>,
    raw: Option<&Spanned<RawAggregate>>,
    safety: &Safety,
    block: &BlockConfig,
) -> Result<Option<Aggregate>, ConfigError> {
    let aggregate = match raw {
        None => None,
        Some(a) => {
            let a = a.get_ref();
            if !(1..=32).contains(a.ipv4_prefix.get_ref()) {
                return Err(src.error(&a.ipv4_prefix.span(), "ipv4_prefix must be between 1 and 32"));
            }
            if !(1..=128).contains(a.ipv6_prefix.get_ref()) {
                return Err(src.error(&a.ipv6_prefix.span(), "ipv6_prefix must be between 1 and 128"));
            }
            for (family, prefix, max) in
                [("v4", &a.ipv4_prefix, safety.max_prefix_v4), ("v6", &a.ipv6_prefix, safety.max_prefix_v6)]
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
                return Err(file_error(src, "[aggregate] blocks prefixes through the ACL: set [block] acl".into()));
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
    Ok(aggregate)
}

/// `[[allow]]`: each entry with a reason.
fn check_allow(src: &Source<'_>, raw: &[Spanned<RawAllow>]) -> Result<Vec<StaticAllow>, ConfigError> {
    let mut allow = Vec::new();
    for a in raw {
        let a = a.get_ref();
        let reason = a.reason.get_ref().trim();
        if reason.is_empty() {
            return Err(src.error(&a.reason.span(), "an allowlist entry needs a reason"));
        }
        allow.push(StaticAllow { net: a.cidr.0, reason: reason.to_owned(), until: a.until.map(|t| t.0) });
    }
    Ok(allow)
}

/// `[store]`: where, how much cache, how long history is kept.
fn check_store(src: &Source<'_>, raw: &RawStore, rules: &RuleSet) -> Result<StoreConfig, ConfigError> {
    let store = raw;
    let cache_mb = store.cache_mb.as_ref().map_or(DEFAULT_CACHE_MB, |c| *c.get_ref());
    if let Some(c) = store.cache_mb.as_ref().filter(|c| !(1..=65_536).contains(c.get_ref())) {
        return Err(src.error(&c.span(), "cache_mb must be between 1 and 65536"));
    }
    let max_offences = store.max_offences.as_ref().map_or(super::DEFAULT_MAX_OFFENCES, |m| *m.get_ref());
    if let Some(m) = store.max_offences.as_ref().filter(|m| !(1..=10_000).contains(m.get_ref())) {
        return Err(src.error(&m.span(), "max_offences must be between 1 and 10000"));
    }
    let base = src.path.parent().unwrap_or(Path::new("."));
    let backend = check_backend(src, raw, base)?;
    let store = StoreConfig {
        backend,
        path: store.path.as_ref().map_or_else(default_store_path, |p| base.join(p)),
        cache_bytes: cache_mb * 1024 * 1024,
        retention: store.retention.map_or(Duration::from_secs(30 * 86_400), |d| d.0),
        max_offences,
        audit_retention: store.audit_retention.map_or(Duration::from_secs(90 * 86_400), |d| d.0),
    };
    if store.retention < rules.policy.forgiveness {
        return Err(file_error(src, format!(
            "[store] retention ({}) is shorter than the ladder's forgiveness ({}): repeat offenders would be forgotten early",
            crate::time::human(store.retention),
            crate::time::human(rules.policy.forgiveness)
        )));
    }
    Ok(store)
}

/// `[store] backend`: sled (the default: `url`, `password_file` and `name` are refused), or
/// PostgreSQL at `url`, whose password is never in the URL (the configuration is readable by
/// more people than the password should be) but in `password_file` or the environment.
fn check_backend(src: &Source<'_>, raw: &RawStore, base: &Path) -> Result<BackendConfig, ConfigError> {
    let kind = raw.backend.as_ref().map_or("sled", |b| b.get_ref().as_str());
    match kind {
        "sled" => {
            let stray = [("url", &raw.url), ("password_file", &raw.password_file), ("name", &raw.name)];
            if let Some((what, Some(v))) = stray.into_iter().find(|(_, v)| v.is_some()) {
                return Err(src.error(&v.span(), format!("{what} is only for backend = \"postgres\"")));
            }
            Ok(BackendConfig::Sled)
        }
        "postgres" => {
            let Some(url) = &raw.url else {
                let at = raw.backend.as_ref().map(|b| b.span()).unwrap_or_default();
                return Err(src.error(&at, "backend = \"postgres\" needs url = \"postgres://USER@HOST:PORT/DATABASE\""));
            };
            let parsed = super::pg_url(url.get_ref()).map_err(|m| src.error(&url.span(), m))?;
            if parsed.get_password().is_some() {
                return Err(src.error(
                    &url.span(),
                    "the URL holds a password: put it in password_file or STICKWARDEN_PG_PASSWORD instead",
                ));
            }
            let name = match &raw.name {
                Some(n) => {
                    let ok = !n.get_ref().is_empty()
                        && n.get_ref().len() <= 64
                        && n.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                    if !ok {
                        return Err(src.error(&n.span(), "name: 1 to 64 letters, digits, '-', '_', '.' or ':'"));
                    }
                    n.get_ref().clone()
                }
                None => super::default_controller_name(),
            };
            Ok(BackendConfig::Postgres(PgConfig {
                url: url.get_ref().clone(),
                password_file: raw.password_file.as_ref().map(|p| base.join(p.get_ref())),
                name,
            }))
        }
        other => Err(src.error(
            &raw.backend.as_ref().map(|b| b.span()).unwrap_or_default(),
            format!("backend '{other}': expected \"sled\" or \"postgres\""),
        )),
    }
}

/// `[api]`: listeners, the connection cap, the tokens file.
fn check_api(src: &Source<'_>, raw: Option<&RawApi>) -> Result<Option<ApiConfig>, ConfigError> {
    let base = src.path.parent().unwrap_or(Path::new("."));
    let api = match raw {
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
            let console_session = a.console_session.as_ref().map_or(DEFAULT_CONSOLE_SESSION, |d| d.get_ref().0);
            if let Some(d) = a.console_session.as_ref().filter(|d| d.get_ref().0 > MAX_CONSOLE_SESSION) {
                return Err(src.error(&d.span(), "console_session is at most 7d"));
            }
            let tokens = tokens::Tokens::load(&base.join(a.tokens.get_ref()))?;
            Some(ApiConfig { listen, tokens: std::sync::Arc::new(tokens), max_connections, console_session })
        }
    };
    Ok(api)
}

/// `[fleet]`: whether and how observations of several targets are merged.
fn check_fleet(
    src: &Source<'_>,
    raw: Option<&RawFleet>,
    targets: &[TargetConfig],
    tables: &[TableConfig],
) -> Result<crate::fleet::MergeConfig, ConfigError> {
    let mut merge = crate::fleet::MergeConfig { enabled: targets.len() > 1, ..Default::default() };
    if let Some(f) = raw {
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
            src,
            "suspects tables are not supported with [fleet] merge across several targets yet: set merge = false, or remove suspects".into(),
        ));
    }
    Ok(merge)
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

/// `[block]`: the tag's table, column and value, and the ACL file.
fn check_block(src: &Source<'_>, b: &RawBlock, tables: &[TableConfig]) -> Result<BlockConfig, ConfigError> {
    let table = match &b.table {
        Some(t) if t.get_ref().trim().is_empty() => return Err(src.error(&t.span(), "expected a stick table name")),
        Some(t) => Some(t.get_ref().trim().to_owned()),
        // With one watched table of addresses, that is where tags go.
        None if tables.len() == 1 && tables[0].key.is_none() => Some(tables[0].name.clone()),
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
    let acl = file_ref(src, b.acl.as_ref(), "ACL")?;
    let map = file_ref(src, b.map.as_ref(), "map")?;
    Ok(BlockConfig { table, tag, tag_value, acl, map })
}

/// An ACL or map file (`what`) as HAProxy loads it: a path, not a `#id` (ids change with the
/// configuration).
fn file_ref(src: &Source<'_>, raw: Option<&Spanned<String>>, what: &str) -> Result<Option<AclRef>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    match r.get_ref().parse::<AclRef>() {
        Ok(AclRef::File(f)) => Ok(Some(AclRef::File(f))),
        _ => Err(src.error(&r.span(), format!("expected the {what} file path exactly as HAProxy loads it (not #id)"))),
    }
}
