//! `stickwarden store verify|recover|backup|restore`: the store's integrity, its recovery, and
//! backups. `verify` reads a copy and changes nothing (exit 1 on damage); `backup` goes through
//! the running daemon's API when it answers (a copy of one moment, made while the controller
//! waits), else reads the store itself; `recover` and `restore` need the daemon stopped and move
//! the store they replace aside, never deleting it.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::ops::{Access, Via};
use super::run::{load, ConfigArgs};
use super::{Failure, EXIT_USAGE};
use crate::recover::Options;
use crate::store::{backup, Store};

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Check the store without changing it: its manifest and every record (exit 1 on damage).
    Verify(ConfigArgs),
    /// Rebuild a damaged store from what it still holds, a backup and HAProxy (daemon stopped).
    Recover(RecoverArgs),
    /// Write a consistent copy of the store to FILE (JSON Lines), through the daemon if it runs.
    Backup(BackupArgs),
    /// Put a backup back (daemon stopped); the store it replaces is moved aside.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// A backup to fill what the damage took (and to know which keys stickwarden blocked).
    #[arg(long)]
    backup: Option<PathBuf>,
    /// How long a block taken back from HAProxy lasts (it had no `until` left to read).
    #[arg(long = "for", default_value = "1h")]
    hold: String,
    /// Also take back HAProxy entries of keys the store and backup do not know as stickwarden's
    /// (for a block ACL and tag that nothing else writes).
    #[arg(long)]
    adopt: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where to write the backup (written whole to FILE.partial first, then renamed).
    file: PathBuf,
    #[command(flatten)]
    access: Access,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup written by `stickwarden store backup`.
    file: PathBuf,
    /// Replace a store that holds data (it is moved aside to PATH.replaced-TIME).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub async fn run(cmd: StoreCmd) -> Result<(), Failure> {
    match cmd {
        StoreCmd::Verify(a) => verify(a),
        StoreCmd::Recover(a) => recover(a).await,
        StoreCmd::Backup(a) => backup_to(a).await,
        StoreCmd::Restore(a) => restore(a),
    }
}

fn refuse_if_running(path: &Path, what: &str) -> Result<(), Failure> {
    if crate::store::in_use(path) {
        return Err(Failure::usage(anyhow!(
            "the store at {} is open in a running stickwarden: stop it to {what}",
            path.display()
        )));
    }
    Ok(())
}

/// The PostgreSQL settings of `cfg`, when that is its store.
fn postgres(cfg: &crate::config::Config) -> Option<&crate::config::PgConfig> {
    match &cfg.store.backend {
        crate::config::BackendConfig::Postgres(p) => Some(p),
        crate::config::BackendConfig::Sled => None,
    }
}

fn verify(a: ConfigArgs) -> Result<(), Failure> {
    let cfg = load(&a)?;
    if let Some(pg) = postgres(&cfg) {
        // PostgreSQL keeps its own integrity; what is checked is the schema and every record.
        let store = Store::open_config(&cfg.store).map_err(Failure::runtime)?;
        let v = store.verify().map_err(Failure::runtime)?;
        say!("store {}: {}", crate::store::postgres::shown(pg), v.counts)?;
        if v.problems.is_empty() {
            say!("ok   every record reads back")?;
            return Ok(());
        }
        for p in &v.problems {
            say!("FAIL {p}")?;
        }
        return Err(Failure::runtime(anyhow!("{} record(s) cannot be read", v.problems.len())));
    }
    let path = &cfg.store.path;
    if !crate::store::exists(path) {
        return Err(Failure::runtime(anyhow!("there is no store at {}", path.display())));
    }
    refuse_if_running(path, "verify its files (it verified them when it started)")?;
    // A copy is read: opening a damaged sled database may rewrite its tail.
    let (_scratch, store) = Store::open_copy(path, cfg.store.cache_bytes).map_err(Failure::runtime)?;
    let v = store.verify().map_err(Failure::runtime)?;
    say!("store {}: {}", path.display(), v.counts)?;
    if v.problems.is_empty() {
        say!("ok   the store holds what it last committed, and every record reads back")?;
        return Ok(());
    }
    for p in &v.problems {
        say!("FAIL {p}")?;
    }
    Err(Failure::runtime(anyhow!(
        "the store is damaged ({} problem(s)): run `stickwarden store recover` (with --backup FILE if you have one), \
         or `stickwarden store restore FILE`",
        v.problems.len()
    )))
}

async fn recover(a: RecoverArgs) -> Result<(), Failure> {
    let cfg = load(&a.config)?;
    if postgres(&cfg).is_some() {
        return Err(Failure::usage(anyhow!(
            "store recover rebuilds a damaged sled store; a PostgreSQL store is recovered with PostgreSQL's own \
             tools (point-in-time recovery), or from a backup with `stickwarden store restore FILE`"
        )));
    }
    let hold = crate::ops::parse_duration(&a.hold).map_err(Failure::usage)?;
    let opts = Options { backup: a.backup.as_deref(), hold, adopt: a.adopt };
    let r = crate::recover::recover(&cfg, &opts).await.map_err(|e| match e {
        crate::recover::RecoverError::Refused(m) => Failure::usage(anyhow!(m)),
        other => Failure::runtime(other),
    })?;
    say!("damaged store moved to {}", r.damaged_moved_to)?;
    say!("from the damaged store: {}", r.from_store)?;
    for u in &r.unreadable {
        say!("  unreadable: {u}")?;
    }
    if a.backup.is_some() {
        say!("from the backup: {}", r.from_backup)?;
    }
    say!("from HAProxy: {} block(s), each for {}", r.from_haproxy.len(), crate::time::human(hold))?;
    for k in &r.from_haproxy {
        say!("  recovered {k}")?;
    }
    if !r.foreign.is_empty() {
        say!("left alone (never blocked by stickwarden; --adopt takes them): {}", r.foreign.join(", "))?;
    }
    for t in &r.unreachable {
        say!("NOT READ {t}: what it holds was not recovered; the daemon re-applies the recovered blocks there")?;
    }
    say!("the new store holds {} active block(s); start the daemon to apply and release them", r.blocks)?;
    Ok(())
}

async fn backup_to(a: BackupArgs) -> Result<(), Failure> {
    let partial = PathBuf::from(format!("{}.partial", a.file.display()));
    let file = std::fs::File::create(&partial)
        .map_err(|e| Failure::usage(anyhow!("cannot create {}: {e}", partial.display())))?;
    let mut out = std::io::BufWriter::new(file);
    let via = a.access.connect().await?;
    let written = match &via {
        Via::Api(c) => c
            .get_lines("/v1/store/backup", &mut out)
            .await
            .map_err(super::ops::api_failure)
            .and_then(|()| std::io::Write::flush(&mut out).map_err(Failure::runtime)),
        Via::Local(_, store) => store.export(&mut out).map(drop).map_err(Failure::runtime),
    };
    drop(out);
    // What was received is read back whole before it takes the name: a cut answer is no backup.
    let checked = written.and_then(|()| {
        let input = std::fs::File::open(&partial).map(std::io::BufReader::new).map_err(Failure::runtime)?;
        backup::read(input, |_| Ok(())).map_err(|e| Failure::runtime(anyhow!("the backup is incomplete: {e}")))
    });
    let (_, counts) = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &a.file).map_err(Failure::runtime)?;
    say!("backup written to {}: {counts}", a.file.display())
}

fn restore(a: RestoreArgs) -> Result<(), Failure> {
    let cfg = load(&a.config)?;
    if let Some(pg) = postgres(&cfg) {
        // Into an empty database only, with every controller stopped (the restore takes the lead
        // for its one transaction): nothing to move aside, so --force changes nothing.
        let counts = crate::store::postgres::PgStore::restore(&a.file, pg, &cfg.store.path).map_err(|e| match e {
            crate::store::StoreError::BadBackup { .. } => Failure::usage(e),
            other => Failure::runtime(other),
        })?;
        return say!("restored into {}: {counts}", crate::store::postgres::shown(pg));
    }
    let path = &cfg.store.path;
    refuse_if_running(path, "restore a backup")?;
    // The whole file is checked before anything is moved.
    let input = std::fs::File::open(&a.file)
        .map(std::io::BufReader::new)
        .map_err(|e| Failure::usage(anyhow!("{}: cannot read: {e}", a.file.display())))?;
    backup::read(input, |_| Ok(()))
        .map_err(|e| Failure::usage(anyhow!("{}: {e}; nothing was restored", a.file.display())))?;
    let holds_data = std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false);
    if holds_data {
        if !a.force {
            return Err(Failure {
                code: EXIT_USAGE,
                error: anyhow!(
                    "{} already holds a store: add --force to replace it (it is moved aside, not deleted)",
                    path.display()
                ),
            });
        }
        let aside = PathBuf::from(format!("{}.replaced-{}", path.display(), crate::time::now_ms() / 1000));
        std::fs::rename(path, &aside).map_err(|e| Failure::runtime(anyhow!("cannot move the store aside: {e}")))?;
        say!("the store it replaces was moved to {}", aside.display())?;
    }
    let counts = Store::restore(&a.file, path, cfg.store.cache_bytes).map_err(|e| match e {
        crate::store::StoreError::BadBackup { .. } => Failure::usage(e),
        other => Failure::runtime(other),
    })?;
    say!("restored into {}: {counts}", path.display())
}
