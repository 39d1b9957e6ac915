//! `stickwarden run` and `stickwarden check`: load and check the configuration (exit 64 with
//! file:line:column when it is wrong), then run the daemon until SIGTERM or SIGINT, or verify each
//! HAProxy target (exit 1 when a check fails).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Failure, EXIT_CONFIG};
use std::sync::Arc;

use crate::api::ApiState;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The configuration file.
    #[arg(long, short, env = "STICKWARDEN_CONFIG", default_value = "/etc/stickwarden/stickwarden.toml")]
    pub config: PathBuf,
}

pub fn load(a: &ConfigArgs) -> Result<Config, Failure> {
    Config::load(&a.config).map_err(|e| Failure { code: EXIT_CONFIG, error: e.into() })
}

pub async fn run(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = load(&a)?;
    std::fs::create_dir_all(&cfg.store.path)
        .with_context(|| format!("cannot create the store directory {}", cfg.store.path.display()))
        .map_err(Failure::runtime)?;
    let store = Store::open_config(&cfg.store).map_err(Failure::runtime)?;
    serve(cfg, store, shutdown_signal()).await
}

/// The daemon on an opened store, with its API and review console when `[api]` is configured,
/// until `stop` resolves (`stickwarden run`: SIGTERM or SIGINT; the demo: its end).
pub async fn serve(cfg: Config, store: Store, stop: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
    let bound = match &cfg.api {
        Some(api) => {
            let cap = crate::api::serve::connection_cap(api.max_connections, cfg.targets.len());
            Some((crate::api::serve::bind(&api.listen).await.map_err(Failure::runtime)?, api.tokens.clone(), cap))
        }
        None => None,
    };
    let session_ttl = cfg.api.as_ref().map_or(crate::config::DEFAULT_CONSOLE_SESSION, |a| a.console_session);
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        stop.await;
        let _ = stop_tx.send(true);
    };
    let shared = Arc::new(cfg.clone());
    let (api_store, api_metrics) = (store.clone(), metrics.clone());
    let on_start = move |handle, clients: Vec<(String, crate::client::Client)>| {
        tokio::spawn(super::systemd::ready_when_targets_answer(clients.clone()));
        if let Some((bound, tokens, cap)) = bound {
            let state = ApiState {
                cfg: shared,
                store: api_store,
                handle,
                clients: Arc::new(clients),
                tokens,
                metrics: api_metrics,
            };
            let app = crate::api::router(state.clone(), crate::console::router(state, session_ttl));
            let mut stop = stop_rx;
            tokio::spawn(crate::api::serve::serve(app, bound, cap, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
        }
    };
    let sockets: Vec<std::path::PathBuf> = cfg
        .api
        .iter()
        .flat_map(|a| a.listen.iter())
        .filter_map(|l| match l {
            crate::config::Listen::Unix(p) => Some(p.clone()),
            crate::config::Listen::Tcp(_) => None,
        })
        .collect();
    let shutdown = async move {
        shutdown.await;
        let _ = super::systemd::notify("STOPPING=1");
    };
    let clock = crate::time::Clock::system();
    let result = match (&cfg.store.backend, store.postgres()) {
        (crate::config::BackendConfig::Postgres(pgc), Some(pg)) => {
            let pgc = pgc.clone();
            crate::daemon::ha::run(cfg, pgc, pg, metrics, clock, shutdown, on_start).await
        }
        _ => crate::daemon::run_with(cfg, store, metrics, clock, shutdown, on_start).await,
    }
    .map_err(Failure::runtime);
    // The API's tasks end with the runtime: its socket files are removed here, so that nothing
    // mistakes a stale one for a daemon that answers.
    for p in sockets {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// With several targets: how observations are merged and, when a daemon answers on the
/// configured API, which targets it reports down or behind (blocks or releases not confirmed).
async fn fleet_findings(cfg: &crate::config::Config) -> Vec<crate::check::Finding> {
    use crate::check::Finding;
    let mut out = Vec::new();
    if cfg.targets.len() < 2 {
        return out;
    }
    let how = if cfg.merge.enabled {
        let cols = crate::fleet::Columns::of(&cfg.rules.rules, &cfg.merge);
        let each: Vec<String> = cols
            .names
            .iter()
            .zip(&cols.modes)
            .map(|(n, m)| format!("{n} {}", format!("{m:?}").to_lowercase()))
            .collect();
        format!("observations merged across the nodes ({})", each.join(", "))
    } else {
        "observations not merged ([fleet] merge = false): each node is scored on its own".to_owned()
    };
    out.push(Finding { ok: true, what: format!("{} targets; {how}", cfg.targets.len()) });
    let Some(at) = cfg.api.as_ref().and_then(|a| a.listen.first()) else { return out };
    let client = crate::api::client::ApiClient::new(at.clone(), None);
    let Ok(health) = client.get::<serde_json::Value>("/healthz").await else {
        out.push(Finding { ok: true, what: format!("no daemon answers at {at}: confirmations not checked") });
        return out;
    };
    for t in health["targets"].as_array().into_iter().flatten() {
        let name = t["name"].as_str().unwrap_or("?");
        let (up, lag) = (t["up"].as_bool().unwrap_or(false), t["unconfirmed"].as_u64().unwrap_or(0));
        let what = match (up, lag) {
            (true, 0) => format!("{name}: up, every block and release confirmed"),
            (true, n) => {
                format!("{name}: up, {n} key(s) not confirmed yet (queued or refused; the reconciler repairs)")
            }
            (false, n) => format!("{name}: DOWN for the daemon, {n} key(s) waiting; applied when it returns"),
        };
        out.push(Finding { ok: up && lag == 0, what });
    }
    out
}

/// On PostgreSQL: whether the database answers, at which schema version, with which privileges
/// missing, and who leads among which controllers. Changes nothing (no migration).
async fn store_findings(cfg: &crate::config::Config) -> Vec<crate::check::Finding> {
    use crate::check::Finding;
    use crate::store::postgres::{lead, schema, PgStore};
    let crate::config::BackendConfig::Postgres(pgc) = &cfg.store.backend else { return Vec::new() };
    let (c, path) = (pgc.clone(), cfg.store.path.clone());
    let inspected = tokio::task::spawn_blocking(move || {
        let (store, version) = PgStore::inspect(&c, &path)?;
        let privileges = version.map(|_| store.privileges());
        Ok::<_, crate::store::StoreError>((store.shown().to_owned(), version, privileges))
    })
    .await
    .expect("inspect task");
    let mut out = Vec::new();
    let (db, version, privileges) = match inspected {
        Ok(v) => v,
        Err(e) => return vec![Finding { ok: false, what: e.to_string() }],
    };
    out.push(match version {
        Some(v) if v == schema::VERSION => Finding { ok: true, what: format!("{db}: schema version {v}") },
        Some(v) => Finding {
            ok: v < schema::VERSION,
            what: format!(
                "{db}: schema version {v}, this stickwarden writes {} (migrated at start when older)",
                schema::VERSION
            ),
        },
        None => Finding { ok: true, what: format!("{db}: no schema yet (created at the first start)") },
    });
    if let Some(p) = privileges {
        out.push(match p {
            Ok(()) => Finding { ok: true, what: format!("{db}: this user may read and write every table") },
            Err(e) => Finding { ok: false, what: format!("{db}: {e}") },
        });
    }
    if version.is_some() {
        match lead::census(pgc).await {
            Ok((leader, members)) => {
                let now = crate::time::now_ms() as i64;
                let each: Vec<String> = members
                    .iter()
                    .map(|m| {
                        let ago = crate::time::human(std::time::Duration::from_millis(
                            now.saturating_sub(m.seen).max(0) as u64,
                        ));
                        format!("{} {} at epoch {} (seen {ago} ago)", m.name, m.role, m.epoch)
                    })
                    .collect();
                let who = if leader.holder.is_empty() { "nobody".to_owned() } else { leader.holder.clone() };
                let fresh =
                    members.iter().any(|m| m.role == "leader" && m.epoch == leader.epoch && now - m.seen < 10_000);
                // Who leads is said, not verified: with every controller stopped, nobody does.
                out.push(Finding {
                    ok: true,
                    what: format!(
                        "leader {who} at epoch {}{}; controllers: {}",
                        leader.epoch,
                        if fresh { "" } else { " (not heard from in 10 s: no controller leads now)" },
                        if each.is_empty() { "none yet".to_owned() } else { each.join(", ") }
                    ),
                });
            }
            Err(e) => out.push(Finding { ok: false, what: e.to_string() }),
        }
    }
    out
}

/// `stickwarden haproxy-config`: the HAProxy lines the configuration needs
/// ([`crate::haproxy_side`]).
pub fn haproxy_config(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = load(&a)?;
    say!("{}", crate::haproxy_side::render(&cfg).trim_end())?;
    Ok(())
}

pub async fn check(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = load(&a)?;
    say!("ok   config {} ({} rules from {})", cfg.path.display(), cfg.rules.rules.len(), cfg.rules_dir.display())?;
    let findings = crate::check::check_all(&cfg).await;
    let mut failed = 0;
    for f in store_findings(&cfg).await {
        failed += usize::from(!f.ok);
        say!("{} store: {}", if f.ok { "ok  " } else { "FAIL" }, f.what)?;
    }
    for (target, f) in &findings {
        failed += usize::from(!f.ok);
        say!("{} {target}: {}", if f.ok { "ok  " } else { "FAIL" }, f.what)?;
    }
    for f in fleet_findings(&cfg).await {
        failed += usize::from(!f.ok);
        say!("{} fleet: {}", if f.ok { "ok  " } else { "FAIL" }, f.what)?;
    }
    if failed > 0 {
        return Err(Failure::runtime(anyhow::anyhow!("{failed} check(s) failed")));
    }
    Ok(())
}
