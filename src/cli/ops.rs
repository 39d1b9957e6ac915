//! The operator subcommands: `blocks`, `history`, `explain`, `block`, `unblock`, `extend`, `allow`,
//! `import`, `audit`. Input is checked here first (bad input: exit 2, nothing sent). Then, when a
//! daemon's API answers (`--api`, or the config's `[api] listen`), they go through it with the
//! token of `STICKWARDEN_TOKEN`; otherwise they work on the store and the HAProxy targets directly,
//! so an operator can still act while the daemon is down. Human output is aligned columns with
//! relative times; `--json` prints JSON (JSON Lines for the listings).

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Failure, EXIT_CONFIG, EXIT_RUNTIME, EXIT_USAGE};
use crate::api::client::{ApiClient, ApiClientError};
use crate::config::{Config, Listen};
use crate::key::Key;
use crate::ops::explain::ExplainView;
use crate::ops::{
    self, AllowRequest, AuditQuery, AuditView, BlockRequest, BlockView, ExtendRequest, HistoryView, ImportRequest,
    Manual, OpError, Outcome, UnblockRequest,
};
use crate::store::Store;
use crate::time::{now_ms, relative_text};

/// Where the daemon is, or the configuration to work without it.
#[derive(Debug, Args)]
pub struct Access {
    /// The configuration file (store path, targets, API address).
    #[arg(long, short, env = "STICKWARDEN_CONFIG", default_value = "/etc/stickwarden/stickwarden.toml")]
    config: PathBuf,
    /// The daemon's API (`host:port` or `unix:/path`); default: the config's `[api] listen`.
    #[arg(long, env = "STICKWARDEN_API")]
    api: Option<String>,
    /// The API token.
    #[arg(long, env = "STICKWARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// An address (or a CIDR where it makes sense), or a key of --table.
    key: String,
    /// The table KEY belongs to, when it is keyed by something else than addresses (string,
    /// integer): `--table st_apikey KEY`.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct BlockArgs {
    /// The address or CIDR to block, or a key of --table.
    key: String,
    /// The table KEY belongs to, when it is keyed by something else than addresses (string,
    /// integer): `--table st_apikey KEY`.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// How long: 30m, 2h, 7d.
    #[arg(long = "for")]
    duration: String,
    #[arg(long)]
    reason: String,
    /// Allow a network broader than `[safety] max_prefix_v4`/`max_prefix_v6` (never all of IPv4 or IPv6).
    #[arg(long)]
    allow_broad: bool,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct UnblockArgs {
    key: String,
    /// The table KEY belongs to, when it is keyed by something else than addresses (string,
    /// integer): `--table st_apikey KEY`.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    #[arg(long)]
    reason: String,
    /// Keep the rules from blocking it again for this long.
    #[arg(long)]
    grace: Option<String>,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The blocked address or CIDR, or a key of --table.
    key: String,
    /// The table KEY belongs to, when it is keyed by something else than addresses (string,
    /// integer): `--table st_apikey KEY`.
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// The block ends this long from now (longer or shorter than it would): 30m, 2h, 7d.
    #[arg(long = "for")]
    duration: String,
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct AllowArgs {
    /// The address or CIDR never to block.
    key: String,
    /// Until when (default: until removed).
    #[arg(long = "for", conflicts_with = "remove")]
    duration: Option<String>,
    #[arg(long)]
    reason: String,
    /// Remove the entry instead of adding it.
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// One address or CIDR per line; blank lines and `#` comments are skipped.
    file: PathBuf,
    #[arg(long = "for")]
    duration: String,
    #[arg(long)]
    reason: String,
    /// Allow networks broader than `[safety] max_prefix_v4`/`max_prefix_v6` (never all of IPv4 or IPv6).
    #[arg(long)]
    allow_broad: bool,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Records of this long ago or later (`1h`, `7d`), or since an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only records about this address or network, or this key of --table.
    #[arg(long)]
    key: Option<String>,
    /// With --key: the table the key belongs to (keyed by string or integer).
    #[arg(long, value_name = "NAME", requires = "key")]
    table: Option<String>,
    #[arg(long)]
    actor: Option<String>,
    /// `block`, `release`, `would_block`, `allow`, ...
    #[arg(long)]
    event: Option<String>,
    #[command(flatten)]
    access: Access,
}

/// How a subcommand reaches the data.
pub(super) enum Via {
    Api(ApiClient),
    Local(Box<Config>, Store),
}

fn op_failure(e: OpError) -> Failure {
    let code = if matches!(e, OpError::BadInput { .. }) { EXIT_USAGE } else { EXIT_RUNTIME };
    Failure { code, error: e.into() }
}

pub(super) fn api_failure(e: ApiClientError) -> Failure {
    let e = match e {
        ApiClientError::Output(io) => return Failure::output(io),
        other => other,
    };
    let code = if e.is_bad_input() { EXIT_USAGE } else { EXIT_RUNTIME };
    let hint = match &e {
        ApiClientError::Api { status: 401, .. } => " (set STICKWARDEN_TOKEN or --token)",
        _ => "",
    };
    Failure { code, error: anyhow!("{e}{hint}") }
}

impl Access {
    /// The API if a daemon answers there; otherwise the store and targets of the configuration.
    /// Whatever answers must first prove it is the daemon ([`ApiClient::prove`]) before the token
    /// is sent; the config's Unix socket is preferred to its TCP addresses.
    pub(super) async fn connect(&self) -> Result<Via, Failure> {
        if let Some(at) = &self.api {
            let at: Listen = at.parse().map_err(|m: String| Failure::usage(anyhow!(m)))?;
            let client = ApiClient::new(at, self.token.clone());
            client.prove().await.map_err(api_failure)?;
            return Ok(Via::Api(client));
        }
        let cfg = Config::load(&self.config).map_err(|e| Failure { code: EXIT_CONFIG, error: e.into() })?;
        let listen = cfg.api.as_ref().map(|a| a.listen.as_slice()).unwrap_or_default();
        let preferred = listen.iter().find(|l| matches!(l, Listen::Unix(_))).or(listen.first());
        if let Some(at) = preferred {
            let client = ApiClient::new(at.clone(), self.token.clone());
            match client.prove().await {
                Ok(()) => return Ok(Via::Api(client)),
                Err(ApiClientError::Unreachable { .. }) => {}
                Err(e) => return Err(api_failure(e)),
            }
        }
        let c = cfg.store.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open_config(&c)).await.expect("open task");
        let store = opened.map_err(|e| {
            Failure::runtime(anyhow!(
                "{e}\n(is `stickwarden run` running? Then reach it through its API: [api] in the config, or --api)"
            ))
        })?;
        Ok(Via::Local(Box::new(cfg), store))
    }
}

impl Via {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        match self {
            Via::Api(c) => c.get(path).await.map_err(api_failure),
            Via::Local(..) => unreachable!("local reads do not go through paths"),
        }
    }

    async fn act<R: Serialize>(&self, path: &str, req: &R, op: Manual) -> Result<Outcome, Failure> {
        match self {
            Via::Api(c) => c.post(path, req).await.map_err(api_failure),
            Via::Local(_, store) if store.postgres().is_some() => Err(Failure::runtime(anyhow!(
                "no controller's API answers: on a shared PostgreSQL store, actions go through a running \
                 controller (the leader, or any follower), never around them"
            ))),
            Via::Local(cfg, store) => {
                let actor = format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into()));
                crate::daemon::run_once((**cfg).clone(), store.clone(), op, &actor, crate::daemon::CONFIRM_WAIT)
                    .await
                    .map_err(op_failure)
            }
        }
    }
}

/// A path segment: everything but letters, digits and `-._~` percent-encoded (the `/` of a
/// CIDR, the spaces and `;` a table key may hold).
fn seg(key: &str) -> String {
    urlencode(key)
}

fn json_line(v: &impl Serialize) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v).map_err(|e| Failure::output(e.into()))?;
    writeln!(out).map_err(Failure::output)
}

pub async fn blocks(a: Access) -> Result<(), Failure> {
    let via = a.connect().await?;
    if let (true, Via::Api(c)) = (a.json, &via) {
        // JSON Lines straight from the daemon to stdout: nothing parsed, nothing held whole.
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
        c.get_lines("/v1/blocks", &mut out).await.map_err(api_failure)?;
        return std::io::Write::flush(&mut out).map_err(Failure::output);
    }
    let list: Vec<BlockView> = match &via {
        Via::Api(_) => via.get("/v1/blocks").await?,
        Via::Local(_, store) => ops::blocks(store, now_ms()).map_err(op_failure)?,
    };
    if a.json {
        return list.iter().try_for_each(json_line);
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.key.clone(),
                match (b.dry_run, b.unconfirmed_on.is_empty()) {
                    (true, _) => format!("{} (dry run)", b.action),
                    (false, true) => b.action.clone(),
                    (false, false) => format!("{} (not yet on {})", b.action, b.unconfirmed_on.join(", ")),
                },
                b.level.to_string(),
                b.rule.clone(),
                b.source.clone(),
                b.actor.clone(),
                relative_text(&b.since, now),
                relative_text(&b.until, now),
                b.reason.clone(),
            ]
        })
        .collect();
    super::print_table(&["KEY", "ACTION", "LEVEL", "RULE", "SOURCE", "ACTOR", "SINCE", "UNTIL", "REASON"], &rows)?;
    match list.iter().filter(|b| !b.unconfirmed_on.is_empty()).count() {
        0 => eprintln!("{} active block(s)", list.len()),
        n => eprintln!("{} active block(s), {n} not yet confirmed by every target", list.len()),
    }
    Ok(())
}

/// The key of `history` and `explain`: one address, or a key of `--table`; its path and query
/// in the API.
fn subject(a: &KeyArgs) -> Result<(Key, String), Failure> {
    let key = match &a.table {
        None => Key::host(ops::parse_addr(&a.key).map_err(op_failure)?),
        Some(t) => ops::parse_block_key(Some(t), &a.key).map_err(op_failure)?,
    };
    let path = match &a.table {
        None => seg(&a.key),
        Some(t) => format!("{}?table={}", seg(&a.key), urlencode(t)),
    };
    Ok((key, path))
}

pub async fn history(a: KeyArgs) -> Result<(), Failure> {
    let (key, path) = subject(&a)?;
    let via = a.access.connect().await?;
    let h: HistoryView = match &via {
        Via::Api(_) => via.get(&format!("/v1/history/{path}")).await?,
        Via::Local(cfg, store) => {
            let key = ops::checked_key(cfg, &key).map_err(op_failure)?;
            ops::history(store, &key, now_ms()).map_err(op_failure)?
        }
    };
    if a.access.json {
        return json_line(&h);
    }
    let now = now_ms();
    say!(
        "{}: {}",
        h.key,
        h.block.as_ref().map_or("not blocked".to_owned(), |b| format!(
            "blocked ({}) until {}",
            b.action,
            relative_text(&b.until, now)
        ))
    )?;
    say!(
        "offences kept: {}; last seen {}",
        h.offences.len(),
        h.last_seen.as_deref().map_or("never".into(), |t| relative_text(t, now))
    )?;
    print_audit(&h.events)
}

fn print_audit(events: &[AuditView]) -> Result<(), Failure> {
    let now = now_ms();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|r| {
            vec![
                relative_text(&r.at, now),
                r.event.clone(),
                r.key.clone().unwrap_or_else(|| "-".into()),
                r.rule.clone(),
                r.action.clone(),
                r.level.to_string(),
                crate::time::human(std::time::Duration::from_secs(r.duration_s)),
                r.actor.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    super::print_table(&["WHEN", "EVENT", "KEY", "RULE", "ACTION", "LEVEL", "DURATION", "ACTOR", "REASON"], &rows)
}

pub async fn explain(a: KeyArgs) -> Result<(), Failure> {
    let (key, path) = subject(&a)?;
    let via = a.access.connect().await?;
    let x: ExplainView = match &via {
        Via::Api(_) => via.get(&format!("/v1/explain/{path}")).await?,
        Via::Local(cfg, store) => {
            let clients: Vec<(String, crate::client::Client)> = cfg
                .targets
                .iter()
                .map(|t| (t.name.clone(), crate::client::Client::new(t.target.clone(), Default::default())))
                .collect();
            ops::explain::explain(cfg, store, &clients, &key, now_ms()).await.map_err(op_failure)?
        }
    };
    if a.access.json {
        return json_line(&x);
    }
    let now = now_ms();
    say!("{}: {}", x.key, x.verdict)?;
    if let Some(b) = &x.block {
        say!(
            "  block: {} level {} by {} ({}), until {}: {}",
            b.action,
            b.level,
            b.actor,
            b.rule,
            relative_text(&b.until, now),
            b.reason
        )?;
    }
    if let Some(r) = &x.allowlisted {
        say!("  allowlisted: {r}")?;
    }
    if let Some(b) = &x.breaker {
        say!(
            "  circuit breaker open since {}: {}; a new offence is not blocked until it closes",
            b.open_since,
            b.reason
        )?;
    }
    say!(
        "  score {:.1} of {} ; {} offence(s) within the forgiveness window",
        x.score,
        x.threshold,
        x.offences_in_window
    )?;
    say!(
        "  next offence: level {} ({}) for {}",
        x.next_level,
        x.next_action,
        crate::time::human(std::time::Duration::from_secs(x.next_duration_s))
    )?;
    for t in &x.tables {
        match (&t.error, t.found) {
            (Some(e), _) => say!("  {} {}: cannot read: {e}", t.target, t.table)?,
            (None, false) => say!("  {} {}: no entry", t.target, t.table)?,
            (None, true) => {
                let counters: Vec<String> = t.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
                say!("  {} {}: {}", t.target, t.table, counters.join(" "))?;
                for r in &t.rules {
                    let conds: Vec<String> = r
                        .conditions
                        .iter()
                        .map(|(c, v, ok)| {
                            format!(
                                "{c} [{}: {}]",
                                v.map_or("-".into(), |v| v.to_string()),
                                if *ok { "yes" } else { "no" }
                            )
                        })
                        .collect();
                    let dry = if r.dry_run { " (dry run)" } else { "" };
                    say!("    {} {}{dry}: {}", if r.matched { "MATCH" } else { "no   " }, r.rule, conds.join(", "))?;
                }
            }
        }
    }
    Ok(())
}

fn print_outcome(o: &Outcome, json: bool) -> Result<(), Failure> {
    if json {
        json_line(o)?;
    } else {
        let now = now_ms();
        for b in &o.blocked {
            say!("blocked {} ({}) until {} ({})", b.key, b.action, b.until, relative_text(&b.until, now))?;
        }
        for k in &o.released {
            say!("released {k}")?;
        }
        for k in &o.allowed {
            say!("allowlist: {k}")?;
        }
        for (k, why) in &o.skipped {
            say!("skipped {k}: {why}")?;
        }
    }
    if o.failures.is_empty() {
        return Ok(());
    }
    Err(Failure::runtime(anyhow!("recorded, but HAProxy did not confirm everything: {}", o.failures.join("; "))))
}

pub async fn block(a: BlockArgs) -> Result<(), Failure> {
    let req =
        BlockRequest { key: a.key, table: a.table, duration: a.duration, reason: a.reason, allow_broad: a.allow_broad };
    let op = req.check().map_err(op_failure)?;
    let via = a.access.connect().await?;
    print_outcome(&via.act("/v1/blocks", &req, op).await?, a.access.json)
}

pub async fn unblock(a: UnblockArgs) -> Result<(), Failure> {
    let req = UnblockRequest { key: a.key, table: a.table, reason: a.reason, grace: a.grace };
    let op = req.check().map_err(op_failure)?;
    let via = a.access.connect().await?;
    print_outcome(&via.act("/v1/unblock", &req, op).await?, a.access.json)
}

pub async fn extend(a: ExtendArgs) -> Result<(), Failure> {
    let req = ExtendRequest { key: a.key, table: a.table, duration: a.duration, reason: a.reason };
    let op = req.check().map_err(op_failure)?;
    let via = a.access.connect().await?;
    print_outcome(&via.act("/v1/extend", &req, op).await?, a.access.json)
}

pub async fn allow(a: AllowArgs) -> Result<(), Failure> {
    let req = AllowRequest { key: a.key, reason: a.reason, duration: a.duration };
    let (op, path) = if a.remove { (req.check_remove(), "/v1/allow/remove") } else { (req.check_add(), "/v1/allow") };
    let op = op.map_err(op_failure)?;
    let via = a.access.connect().await?;
    print_outcome(&via.act(path, &req, op).await?, a.access.json)
}

pub async fn import(a: ImportArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| Failure::usage(anyhow!("{}: cannot read: {e}", a.file.display())))?;
    let req = ImportRequest {
        entries: text.lines().map(str::to_owned).collect(),
        duration: a.duration,
        reason: a.reason,
        allow_broad: a.allow_broad,
    };
    let progress = !a.access.json && crate::output::progress::on_terminal();
    let mut bar = crate::output::progress::Bar::new("lines checked", req.entries.len(), progress);
    let op = req.check_with(|done| bar.set(done)).map_err(|e| match e {
        OpError::BadInput { message, .. } => {
            Failure::usage(anyhow!("{}: {message}; nothing was imported", a.file.display()))
        }
        other => op_failure(other),
    })?;
    bar.finish();
    let n = match &op {
        Manual::Import { keys, .. } => keys.len(),
        _ => 0,
    };
    let via = a.access.connect().await?;
    let label = format!("recording {n} blocks and applying them (one ACL version, committed at once)");
    let outcome = crate::output::progress::spin(&label, progress, via.act("/v1/import", &req, op)).await?;
    if !a.access.json {
        say!("imported {} of {n} ({} skipped)", outcome.blocked.len(), outcome.skipped.len())?;
        for (k, why) in &outcome.skipped {
            say!("skipped {k}: {why}")?;
        }
        let only_failures = Outcome { failures: outcome.failures.clone(), ..Default::default() };
        return print_outcome(&only_failures, false);
    }
    print_outcome(&outcome, true)
}

pub async fn audit(a: AuditArgs) -> Result<(), Failure> {
    let q = AuditQuery { since: a.since, key: a.key, table: a.table, actor: a.actor, event: a.event };
    // Checked here first, so that bad input never reaches the daemon.
    ops::audit_check(&q).map_err(op_failure)?;
    let via = a.access.connect().await?;
    let records: Vec<AuditView> = match &via {
        Via::Api(_) => {
            let mut qs = Vec::new();
            let fields =
                [("since", &q.since), ("key", &q.key), ("table", &q.table), ("actor", &q.actor), ("event", &q.event)];
            for (k, v) in fields {
                if let Some(v) = v {
                    qs.push(format!("{k}={}", urlencode(v)));
                }
            }
            via.get(&format!("/v1/audit?{}", qs.join("&"))).await?
        }
        Via::Local(_, store) => ops::audit(store, &q, now_ms()).map_err(op_failure)?,
    };
    if a.access.json {
        return records.iter().try_for_each(json_line);
    }
    print_audit(&records)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
