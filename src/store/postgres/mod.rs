//! The shared backend: PostgreSQL, for several controllers of which one leads ([`lead`]). The
//! records are the same JSON as in sled, one table per kind, keyed by the same text, so a backup
//! moves between the two unchanged. Every write runs in one transaction that names the writer's
//! epoch; the database refuses it when another controller has taken the lead since
//! ([`schema`]'s fence), so a controller that lost the lead cannot change anything, however late
//! its write arrives. Reads need no epoch: followers serve the API from here.
//!
//! Why `tokio-postgres` (through its blocking face, the `postgres` crate, for the synchronous
//! store seam, and directly for the leader's session): it is the client most Rust services use,
//! kept by one maintainer for years, pure Rust over the runtime the daemon already has, and it
//! brings no query macros or build-time database (sqlx does both, and a larger tree).

pub mod lead;
mod pool;
pub mod requests;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use postgres::fallible_iterator::FallibleIterator;

use super::{backup, manifest, Backend, StoreError, Verified, Write, BATCH};
use super::{AllowEntry, AuditRecord, Block, Event, Offender};
use crate::config::{pg_url as parse_url, PgConfig};
use crate::key::Key;
use crate::time::Millis;

/// Where the password comes from when there is no `password_file`.
pub const PASSWORD_ENV: &str = "STICKWARDEN_PG_PASSWORD";
/// Connections of one controller's store.
const POOL: usize = 3;

/// A failure at this boundary; callers see it as a [`StoreError`].
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Fenced(String),
    #[error("PostgreSQL: {0}")]
    Query(String),
    #[error("{0}")]
    Schema(String),
    #[error("store: record {key} of {table} cannot be read: {error}")]
    Corrupt { table: &'static str, key: String, error: String },
    #[error("the store's connections are closed")]
    Gone,
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        if e.code().is_some_and(|c| c.code() == schema::FENCED) {
            return PgError::Fenced(describe(&e));
        }
        if e.is_closed() || lost_connection(&e) {
            return PgError::Unreachable(describe(&e));
        }
        PgError::Query(describe(&e))
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> StoreError {
        match e {
            PgError::Fenced(m) => StoreError::Fenced(m),
            PgError::Unreachable(m) => StoreError::Unreachable(m),
            PgError::Corrupt { table, key, error } => StoreError::Corrupt { tree: table, key, error },
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// Whether `e` is about the connection (an I/O error, a timeout, a refused connection) rather
/// than an answer of the server.
fn lost_connection(e: &postgres::Error) -> bool {
    if e.as_db_error().is_some() {
        return false;
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        if inner.is::<std::io::Error>() {
            return true;
        }
        src = inner.source();
    }
    let text = e.to_string();
    text.starts_with("error connecting") || text.contains("timeout") || text.contains("timed out")
}

/// What went wrong, with the server's message when it sent one (the client's own text for a
/// server error is only "db error").
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// The connection settings of `cfg`, with the password from its file or the environment.
pub fn connect_config(cfg: &PgConfig) -> Result<tokio_postgres::Config, StoreError> {
    let mut c = parse_url(&cfg.url).map_err(|m| StoreError::Open { path: shown(cfg), message: m })?;
    let password = match &cfg.password_file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| StoreError::Open {
            path: shown(cfg),
            message: format!("cannot read the password file {}: {e}", f.display()),
        })?),
        None => std::env::var(PASSWORD_ENV).ok(),
    };
    if let Some(p) = password {
        c.password(p.trim_end_matches(['\n', '\r']));
    }
    c.application_name(format!("stickwarden {}", cfg.name));
    c.connect_timeout(pool::CONNECT_TIMEOUT);
    c.keepalives_idle(std::time::Duration::from_secs(5));
    // No query of the store runs for long; one that does is stuck on a lock or a dying server.
    c.options("-c statement_timeout=60000 -c lock_timeout=10000");
    Ok(c)
}

/// The database `cfg` names, for messages: user, host, port and database, never a password.
pub fn shown(cfg: &PgConfig) -> String {
    match parse_url(&cfg.url) {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => String::new(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "postgres://{}@{host}:{port}/{}",
                c.get_user().unwrap_or_default(),
                c.get_dbname().unwrap_or_default()
            )
        }
        Err(_) => "postgres (unparsable URL)".into(),
    }
}

/// The PostgreSQL backend of one controller.
pub struct PgStore {
    /// The controller's local directory (backup scratch files).
    path: PathBuf,
    shown: String,
    pool: pool::Pool,
    /// The epoch this controller leads at; 0 when it does not lead (its writes are refused
    /// before they are sent; the database would refuse them anyway).
    epoch: Arc<AtomicI64>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("db", &self.shown).finish()
    }
}

/// One row of a table read as JSON text.
fn decode<T: serde::de::DeserializeOwned>(table: &'static str, key: &str, v: &str) -> Result<T, PgError> {
    serde_json::from_str(v).map_err(|e| PgError::Corrupt { table, key: key.to_owned(), error: e.to_string() })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("store records always serialize")
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The last time an offender was seen or scored: what pruning compares.
fn last_at(o: &Offender) -> i64 {
    i(o.offences.iter().map(|x| x.at).max().unwrap_or(0).max(o.last_seen))
}

/// One decision of a bulk write: the block, when its key became stickwarden's, the offender's
/// new history (if any) and the audit record.
type Decision<'a> = (&'a Block, Millis, Option<(&'a Key, &'a Offender)>, &'a AuditRecord);

/// Statements of a write transaction, prepared once per transaction.
struct Writer<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    audit: Option<postgres::Statement>,
    block: Option<postgres::Statement>,
    owned: Option<postgres::Statement>,
    offender: Option<postgres::Statement>,
    ids: Vec<i64>,
}

impl<'a, 'b> Writer<'a, 'b> {
    fn new(tx: &'a mut postgres::Transaction<'b>) -> Writer<'a, 'b> {
        Writer { tx, audit: None, block: None, owned: None, offender: None, ids: Vec::new() }
    }

    /// Takes `n` audit ids in one round trip, for the records to come.
    fn reserve(&mut self, n: usize) -> Result<(), PgError> {
        if n == 0 {
            return Ok(());
        }
        let rows =
            self.tx.query("SELECT nextval('sw_audit_id') FROM generate_series(1, $1::bigint)", &[&(n as i64)])?;
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        ids.reverse();
        ids.append(&mut self.ids);
        self.ids = ids;
        Ok(())
    }

    fn append(&mut self, rec: &AuditRecord) -> Result<u64, PgError> {
        if self.ids.is_empty() {
            self.reserve(1)?;
        }
        let id = self.ids.pop().expect("reserved");
        let mut rec = rec.clone();
        rec.id = id as u64;
        if self.audit.is_none() {
            self.audit = Some(self.tx.prepare("INSERT INTO sw_audit (id, at, key, record) VALUES ($1, $2, $3, $4)")?);
        }
        let key = rec.key.as_ref().map(Key::stored);
        self.tx.execute(self.audit.as_ref().expect("prepared"), &[&id, &i(rec.at), &key, &encode(&rec)])?;
        Ok(rec.id)
    }

    fn put_block(&mut self, b: &Block, owned_at: Millis) -> Result<(), PgError> {
        if self.block.is_none() {
            self.block = Some(self.tx.prepare(
                "INSERT INTO sw_blocks (key, record) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET record = excluded.record",
            )?);
            self.owned = Some(self.tx.prepare(
                "INSERT INTO sw_owned (key, at) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET at = excluded.at",
            )?);
        }
        let key = b.key.stored();
        self.tx.execute(self.block.as_ref().expect("prepared"), &[&key, &encode(b)])?;
        self.tx.execute(self.owned.as_ref().expect("prepared"), &[&key, &i(owned_at)])?;
        Ok(())
    }

    fn put_offender(&mut self, who: &Key, o: &Offender) -> Result<(), PgError> {
        if self.offender.is_none() {
            self.offender = Some(self.tx.prepare(
                "INSERT INTO sw_offenders (key, last_at, record) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET last_at = excluded.last_at, record = excluded.record",
            )?);
        }
        self.tx.execute(self.offender.as_ref().expect("prepared"), &[&who.stored(), &last_at(o), &encode(o)])?;
        Ok(())
    }

    /// Many decisions in four statements (blocks, owned keys, offenders, audit records) instead
    /// of four each: no key may appear twice among `items` (an upsert touches a row once).
    fn decide_bulk(&mut self, items: &[Decision<'_>]) -> Result<(), PgError> {
        if items.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = items.iter().map(|(b, ..)| b.key.stored()).collect();
        let records: Vec<String> = items.iter().map(|(b, ..)| encode(*b)).collect();
        let owned_at: Vec<i64> = items.iter().map(|(_, at, ..)| i(*at)).collect();
        self.tx.execute(
            "INSERT INTO sw_blocks (key, record) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT (key) DO UPDATE SET record = excluded.record",
            &[&keys, &records],
        )?;
        self.tx.execute(
            "INSERT INTO sw_owned (key, at) SELECT * FROM unnest($1::text[], $2::bigint[]) \
             ON CONFLICT (key) DO UPDATE SET at = excluded.at",
            &[&keys, &owned_at],
        )?;
        let offenders: Vec<(&Key, &Offender)> = items.iter().filter_map(|(_, _, o, _)| *o).collect();
        self.put_offenders(&offenders)?;
        let recs: Vec<&AuditRecord> = items.iter().map(|(.., r)| *r).collect();
        self.append_many(&recs)
    }

    /// Offenders in one statement (no key twice).
    fn put_offenders(&mut self, offenders: &[(&Key, &Offender)]) -> Result<(), PgError> {
        if offenders.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = offenders.iter().map(|(k, _)| k.stored()).collect();
        let last: Vec<i64> = offenders.iter().map(|(_, o)| last_at(o)).collect();
        let records: Vec<String> = offenders.iter().map(|(_, o)| encode(*o)).collect();
        self.tx.execute(
            "INSERT INTO sw_offenders (key, last_at, record) SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) \
             ON CONFLICT (key) DO UPDATE SET last_at = excluded.last_at, record = excluded.record",
            &[&keys, &last, &records],
        )?;
        Ok(())
    }

    /// Audit records in one statement, their ids taken from those reserved.
    fn append_many(&mut self, recs: &[&AuditRecord]) -> Result<(), PgError> {
        if self.ids.len() < recs.len() {
            self.reserve(recs.len() - self.ids.len())?;
        }
        let (mut ids, mut ats, mut keys, mut records) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in recs {
            let id = self.ids.pop().expect("reserved");
            let mut rec = (*r).clone();
            rec.id = id as u64;
            ids.push(id);
            ats.push(i(rec.at));
            keys.push(rec.key.as_ref().map(Key::stored));
            records.push(encode(&rec));
        }
        self.tx.execute(
            "INSERT INTO sw_audit (id, at, key, record) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[])",
            &[&ids, &ats, &keys, &records],
        )?;
        Ok(())
    }

    /// Removes the block of `key` if it started at `since`, with `rec`. Whether it did.
    fn release(&mut self, key: &Key, since: Millis, rec: &AuditRecord) -> Result<bool, PgError> {
        let k = key.stored();
        let Some(row) = self.tx.query_opt("SELECT record FROM sw_blocks WHERE key = $1 FOR UPDATE", &[&k])? else {
            return Ok(false);
        };
        let b: Block = decode("sw_blocks", &k, row.get(0))?;
        if b.since != since {
            return Ok(false);
        }
        self.tx.execute("DELETE FROM sw_blocks WHERE key = $1", &[&k])?;
        self.append(rec)?;
        Ok(true)
    }
}

impl PgStore {
    /// Connects to the database of `cfg`, brings its schema to [`schema::VERSION`] and checks
    /// that this user may read and write every table. Nothing leads yet: writes wait for
    /// [`PgStore::set_epoch`].
    pub fn connect(cfg: &PgConfig, path: &Path) -> Result<PgStore, StoreError> {
        let config = connect_config(cfg)?;
        let store = PgStore {
            path: path.to_owned(),
            shown: shown(cfg),
            pool: pool::Pool::new(postgres::Config::from(config), POOL),
            epoch: Arc::new(AtomicI64::new(0)),
        };
        let open = |e: PgError| StoreError::Open { path: store.shown.clone(), message: e.to_string() };
        let m = store.pool.run(schema::migrate).map_err(open)?;
        if m.from != m.to {
            tracing::info!(db = %store.shown, from = m.from, to = m.to, "database schema migrated");
        }
        store.privileges().map_err(open)?;
        Ok(store)
    }

    /// Connects without changing anything (no migration): for `check`. The schema version, or
    /// `None` for a database stickwarden never opened.
    pub fn inspect(cfg: &PgConfig, path: &Path) -> Result<(PgStore, Option<i32>), StoreError> {
        let store = PgStore {
            path: path.to_owned(),
            shown: shown(cfg),
            pool: pool::Pool::new(postgres::Config::from(connect_config(cfg)?), 1),
            epoch: Arc::new(AtomicI64::new(0)),
        };
        let version = store.pool.run(|c| {
            let exists: bool = c.query_one("SELECT to_regclass('sw_schema') IS NOT NULL", &[])?.get(0);
            if !exists {
                return Ok(None);
            }
            Ok(c.query_opt("SELECT version FROM sw_schema", &[])?.map(|r| r.get(0)))
        })?;
        Ok((store, version))
    }

    /// What this user may not do on the store's tables (empty when it may do everything).
    pub fn privileges(&self) -> Result<(), PgError> {
        let missing: Vec<String> = self.pool.run(|c| {
            let rows = c.query(
                "SELECT t || ': ' || p FROM unnest(ARRAY['sw_blocks','sw_offenders','sw_allow','sw_owned','sw_audit',\
                 'sw_leader','sw_members','sw_requests']) AS t, unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE']) AS p \
                 WHERE NOT has_table_privilege(t, p)",
                &[],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PgError::Schema(format!("this user lacks privileges: {}", missing.join(", "))))
        }
    }

    /// The database, for messages (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        Ok(self.pool.run(|c| Ok(c.query_one("SELECT version FROM sw_schema", &[])?.get(0)))?)
    }

    /// From now on, writes carry `epoch` (0: this controller does not lead, and writes nothing).
    pub fn set_epoch(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Runs `f` on a read connection.
    pub(crate) fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<R, PgError> + Send + 'static,
    ) -> Result<R, StoreError> {
        Ok(self.pool.run(f)?)
    }

    /// Runs `f` in one transaction at this controller's epoch: committed whole, or not at all.
    fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer<'_, '_>) -> Result<R, PgError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let epoch = self.epoch();
        if epoch <= 0 {
            return Err(StoreError::Fenced("this controller does not lead: it writes nothing".into()));
        }
        Ok(self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT set_config('stickwarden.epoch', $1, true)", &[&epoch.to_string()])?;
            let r = f(&mut Writer::new(&mut tx))?;
            tx.commit()?;
            Ok(r)
        })?)
    }

    /// Every record, in backup order, read in one snapshot and handed to `each` (on the
    /// caller's thread) as it arrives.
    fn scan(&self, mut each: impl FnMut(Result<backup::Line, PgError>) -> bool) -> Result<u64, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<backup::Line, PgError>>(1024);
        let (last_tx, last_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let job = std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.pool.run(move |c| {
                    let mut t = c
                        .build_transaction()
                        .isolation_level(postgres::IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()?;
                    let last: Option<i64> = t.query_one("SELECT max(id) FROM sw_audit", &[])?.get(0);
                    let _ = last_tx.send(last.unwrap_or(0) as u64);
                    const TABLES: [&str; 5] = [
                        "SELECT key, record FROM sw_blocks ORDER BY key",
                        "SELECT key, record FROM sw_offenders ORDER BY key",
                        "SELECT net, record FROM sw_allow ORDER BY net",
                        "SELECT key, at::text FROM sw_owned ORDER BY key",
                        "SELECT id::text, record FROM sw_audit ORDER BY sw_audit.id",
                    ];
                    for (n, sql) in TABLES.iter().enumerate() {
                        let mut rows = t.query_raw(*sql, std::iter::empty::<i64>())?;
                        while let Some(row) = rows.next()? {
                            let (k, v): (&str, &str) = (row.get(0), row.get(1));
                            let line = match n {
                                0 => decode("sw_blocks", k, v).map(backup::Line::Block),
                                1 => decode("sw_offenders", k, v)
                                    .map(|offender| backup::Line::Offender { key: k.to_owned(), offender }),
                                2 => decode("sw_allow", k, v).map(backup::Line::Allow),
                                3 => Ok(backup::Line::Owned { key: k.to_owned(), at: v.parse().unwrap_or(0) }),
                                _ => decode("sw_audit", k, v).map(backup::Line::Audit),
                            };
                            if tx.send(line).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Ok(())
                })
            });
            let last = last_rx.recv().ok();
            for line in rx.iter() {
                if !each(line) {
                    break;
                }
            }
            (handle.join().expect("scan thread"), last)
        });
        job.0?;
        Ok(job.1.unwrap_or(0))
    }

    /// Restores the backup `file` into the database of `cfg`, which must hold no record. The
    /// whole file is checked first; the restore takes the lead for its one transaction, so it is
    /// refused while any controller runs on the database.
    pub fn restore(file: &Path, cfg: &PgConfig, path: &Path) -> Result<backup::Counts, StoreError> {
        let bad = |problem: String| StoreError::BadBackup { path: file.display().to_string(), problem };
        let open =
            || std::fs::File::open(file).map(std::io::BufReader::new).map_err(|e| bad(format!("cannot read: {e}")));
        backup::read(open()?, |_| Ok(())).map_err(bad)?;
        let store = PgStore::connect(cfg, path)?;
        let mut lines = Vec::new();
        let (header, counts) = backup::read(open()?, |l| {
            lines.push(l);
            Ok(())
        })
        .map_err(bad)?;
        let note = format!("restored from {} (backup of {}): {counts}", file.display(), header.created);
        let db = store.shown.clone();
        store.pool.run(move |c| {
            let held: bool = c.query_one("SELECT pg_try_advisory_lock($1)", &[&schema::LEADER_LOCK])?.get(0);
            if !held {
                return Err(PgError::Schema(format!(
                    "a controller leads on {db}: stop every controller before restoring; nothing was restored"
                )));
            }
            let result = restore_lines(c, &lines, note, &db);
            let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&schema::LEADER_LOCK]);
            result
        })?;
        Ok(counts)
    }
}

/// [`PgStore::restore`]'s transaction, under the leader lock.
fn restore_lines(c: &mut postgres::Client, lines: &[backup::Line], note: String, db: &str) -> Result<(), PgError> {
    use backup::Line;
    let mut tx = c.transaction()?;
    let epoch: i64 = tx
        .query_one(
            "UPDATE sw_leader SET epoch = epoch + 1, holder = 'stickwarden store restore', since = $1 RETURNING epoch",
            &[&i(crate::time::now_ms())],
        )?
        .get(0);
    tx.execute("SELECT set_config('stickwarden.epoch', $1, true)", &[&epoch.to_string()])?;
    let held: i64 = tx
        .query_one(
            "SELECT (SELECT count(*) FROM sw_blocks) + (SELECT count(*) FROM sw_audit) + (SELECT count(*) FROM sw_allow) \
             + (SELECT count(*) FROM sw_offenders)",
            &[],
        )?
        .get(0);
    if held > 0 {
        return Err(PgError::Schema(format!("{db} already holds a store ({held} records); nothing was restored")));
    }
    let mut w = Writer::new(&mut tx);
    let owned = w.tx.prepare("INSERT INTO sw_owned (key, at) VALUES ($1, $2)")?;
    let allow = w.tx.prepare("INSERT INTO sw_allow (net, record) VALUES ($1, $2)")?;
    let audit = w.tx.prepare("INSERT INTO sw_audit (id, at, key, record) VALUES ($1, $2, $3, $4)")?;
    let block = w.tx.prepare("INSERT INTO sw_blocks (key, record) VALUES ($1, $2)")?;
    let offender = w.tx.prepare("INSERT INTO sw_offenders (key, last_at, record) VALUES ($1, $2, $3)")?;
    let mut max_id = 0u64;
    for line in lines {
        match line {
            Line::Block(b) => w.tx.execute(&block, &[&b.key.stored(), &encode(b)]).map(drop)?,
            Line::Offender { key, offender: o } => {
                w.tx.execute(&offender, &[key, &last_at(o), &encode(o)]).map(drop)?
            }
            Line::Allow(a) => w.tx.execute(&allow, &[&a.net.to_string(), &encode(a)]).map(drop)?,
            Line::Owned { key, at } => w.tx.execute(&owned, &[key, &i(*at)]).map(drop)?,
            Line::Audit(r) => {
                max_id = max_id.max(r.id);
                let key = r.key.as_ref().map(Key::stored);
                w.tx.execute(&audit, &[&i(r.id), &i(r.at), &key, &encode(r)]).map(drop)?
            }
            Line::Header(_) | Line::End { .. } => {}
        }
    }
    w.tx.execute("SELECT setval('sw_audit_id', $1)", &[&i(max_id.max(1))])?;
    let rec = AuditRecord::note(Event::Restored, crate::time::now_ms(), "stickwarden store restore", note);
    w.append(&rec)?;
    tx.commit()?;
    Ok(())
}

/// How many writes from the first are of its kind (decisions or offender updates) and name no
/// key twice: what one bulk statement may take. Other writes go one at a time.
fn run_of(writes: &[Write]) -> usize {
    let mut keys = std::collections::HashSet::new();
    let mut offenders = std::collections::HashSet::new();
    let same = |w: &Write| {
        matches!(
            (&writes[0], w),
            (Write::Decide { .. }, Write::Decide { .. }) | (Write::Offender(..), Write::Offender(..))
        )
    };
    if !matches!(writes[0], Write::Decide { .. } | Write::Offender(..)) {
        return 1;
    }
    writes
        .iter()
        .take_while(|w| {
            same(w)
                && match w {
                    Write::Decide { block, offender, .. } => {
                        keys.insert(&block.key) && offender.as_ref().is_none_or(|(k, _)| offenders.insert(k))
                    }
                    Write::Offender(k, _) => offenders.insert(k),
                    _ => false,
                }
        })
        .count()
        .max(1)
}

/// Lazily pages through the blocks, [`PAGE`] at a time.
struct BlockPages {
    store: Shared,
    after: Option<Key>,
    page: std::vec::IntoIter<Block>,
    done: bool,
}

const PAGE: usize = 5_000;

impl Iterator for BlockPages {
    type Item = Result<Block, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.page.next() {
                self.after = Some(b.key.clone());
                return Some(Ok(b));
            }
            if self.done {
                return None;
            }
            match self.store.blocks_after(self.after.as_ref(), PAGE) {
                Ok(page) => {
                    self.done = page.len() < PAGE;
                    self.page = page.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A cheap handle on the same store, for iterators that outlive a borrow.
#[derive(Clone, Debug)]
pub struct Shared(pub Arc<PgStore>);

impl Backend for Shared {
    fn path(&self) -> &Path {
        &self.0.path
    }

    /// Every committed write is durable in PostgreSQL already.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn newest(&self) -> Result<Option<manifest::Newest>, StoreError> {
        self.0.read(|c| {
            Ok(c.query_opt("SELECT id, record FROM sw_audit ORDER BY id DESC LIMIT 1", &[])?.map(|r| {
                manifest::Newest {
                    id: r.get::<_, i64>(0) as u64,
                    digest: manifest::digest(r.get::<_, &str>(1).as_bytes()),
                }
            }))
        })
    }

    fn export(&self, out: &mut dyn std::io::Write) -> Result<backup::Counts, StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("cannot write the backup: {e}"));
        let last = self.newest()?.map_or(0, |n| n.id);
        let mut w = backup::Writer::new(out, last).map_err(io)?;
        let mut failed: Option<StoreError> = None;
        self.0.scan(|line| {
            let r = line.map_err(StoreError::from).and_then(|l| w.line(&l).map_err(io));
            match r {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        w.finish().map(|(_, counts)| counts).map_err(io)
    }

    fn verify(&self) -> Result<Verified, StoreError> {
        let mut v = Verified::default();
        let version = self.0.schema_version()?;
        if version != schema::VERSION {
            v.problems.push(format!("schema version {version}, this stickwarden writes {}", schema::VERSION));
        }
        self.0.scan(|line| {
            match line {
                Ok(l) => v.counts.count(&l),
                Err(e) => v.problems.push(e.to_string()),
            }
            true
        })?;
        Ok(v)
    }

    fn salvage(&self) -> (Vec<backup::Line>, Vec<String>) {
        let (mut lines, mut problems) = (Vec::new(), Vec::new());
        let r = self.0.scan(|line| {
            match line {
                Ok(l) => lines.push(l),
                Err(e) => problems.push(e.to_string()),
            }
            true
        });
        if let Err(e) = r {
            problems.push(e.to_string());
        }
        (lines, problems)
    }

    fn offender(&self, who: &Key) -> Result<Option<Offender>, StoreError> {
        let k = who.stored();
        self.0.read(move |c| {
            c.query_opt("SELECT record FROM sw_offenders WHERE key = $1", &[&k])?
                .map(|r| decode("sw_offenders", &k, r.get(0)))
                .transpose()
        })
    }

    /// A poll's reads in one query.
    fn offenders(&self, keys: &[Key]) -> Result<Vec<Option<Offender>>, StoreError> {
        let ks: Vec<String> = keys.iter().map(Key::stored).collect();
        self.0.read(move |c| {
            let rows = c.query("SELECT key, record FROM sw_offenders WHERE key = ANY($1)", &[&ks])?;
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for r in &rows {
                let k: &str = r.get(0);
                found.insert(k.to_owned(), decode::<Offender>("sw_offenders", k, r.get(1))?);
            }
            Ok(ks.iter().map(|k| found.remove(k)).collect())
        })
    }

    fn put_offender(&self, who: &Key, o: &Offender) -> Result<(), StoreError> {
        let (who, o) = (who.clone(), o.clone());
        self.0.write(move |w| w.put_offender(&who, &o))
    }

    fn decide(&self, block: &Block, offender: Option<(&Key, &Offender)>, rec: AuditRecord) -> Result<u64, StoreError> {
        let block = block.clone();
        let offender = offender.map(|(k, o)| (k.clone(), o.clone()));
        self.0.write(move |w| {
            w.put_block(&block, block.since)?;
            if let Some((k, o)) = &offender {
                w.put_offender(k, o)?;
            }
            w.append(&rec)
        })
    }

    /// The controller's writes in order, [`BATCH`] per transaction, their audit ids taken in one
    /// round trip, and each run of decisions (or of offenders) written in a few statements.
    fn record(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut writes = writes;
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(BATCH));
            let chunk = std::mem::replace(&mut writes, rest);
            self.0.write(move |w| {
                w.reserve(chunk.iter().filter(|x| !matches!(x, Write::Offender(..))).count())?;
                let mut at = 0;
                while at < chunk.len() {
                    let run = run_of(&chunk[at..]);
                    match &chunk[at] {
                        Write::Decide { .. } => {
                            let items: Vec<_> = chunk[at..at + run]
                                .iter()
                                .map(|x| match x {
                                    Write::Decide { block, offender, rec } => {
                                        (block.as_ref(), block.since, offender.as_ref().map(|(k, o)| (k, o)), rec)
                                    }
                                    _ => unreachable!("a run holds one kind"),
                                })
                                .collect();
                            w.decide_bulk(&items)?;
                        }
                        Write::Offender(..) => {
                            let items: Vec<(&Key, &Offender)> = chunk[at..at + run]
                                .iter()
                                .map(|x| match x {
                                    Write::Offender(k, o) => (k, o),
                                    _ => unreachable!("a run holds one kind"),
                                })
                                .collect();
                            w.put_offenders(&items)?;
                        }
                        Write::Release { key, since, rec } => {
                            w.release(key, *since, rec)?;
                        }
                        Write::Audit(rec) => {
                            w.append(rec)?;
                        }
                    }
                    at += run;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn decide_many(&self, blocks: &[Block], rec: &dyn Fn(&Block) -> AuditRecord) -> Result<(), StoreError> {
        for chunk in blocks.chunks(BATCH) {
            let items: Vec<(Block, AuditRecord)> = chunk.iter().map(|b| (b.clone(), rec(b))).collect();
            self.0.write(move |w| {
                w.reserve(items.len())?;
                // An import names each key once; a list that repeats one is written in runs.
                let mut at = 0;
                while at < items.len() {
                    let mut seen = std::collections::HashSet::new();
                    let run: Vec<_> = items[at..]
                        .iter()
                        .take_while(|(b, _)| seen.insert(b.key.clone()))
                        .map(|(b, r)| (b, r.at, None, r))
                        .collect();
                    at += run.len();
                    w.decide_bulk(&run)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn release(&self, key: &Key, since: Millis, rec: AuditRecord) -> Result<bool, StoreError> {
        let key = key.clone();
        self.0.write(move |w| w.release(&key, since, &rec))
    }

    fn owns(&self, key: &Key) -> Result<bool, StoreError> {
        let k = key.stored();
        self.0.read(move |c| Ok(c.query_opt("SELECT 1 FROM sw_owned WHERE key = $1", &[&k])?.is_some()))
    }

    fn audit(&self, rec: AuditRecord) -> Result<u64, StoreError> {
        self.0.write(move |w| w.append(&rec))
    }

    fn block(&self, key: &Key) -> Result<Option<Block>, StoreError> {
        let k = key.stored();
        self.0.read(move |c| {
            c.query_opt("SELECT record FROM sw_blocks WHERE key = $1", &[&k])?
                .map(|r| decode("sw_blocks", &k, r.get(0)))
                .transpose()
        })
    }

    /// The narrowest block covering `addr`, in one query over its prefixes.
    fn block_covering(&self, addr: std::net::IpAddr) -> Result<Option<Block>, StoreError> {
        let keys: Vec<String> = crate::net::prefixes(addr).into_iter().map(|n| Key::Net(n).stored()).collect();
        let found: Vec<Block> = self.0.read(move |c| {
            let rows = c.query("SELECT key, record FROM sw_blocks WHERE key = ANY($1)", &[&keys])?;
            rows.iter().map(|r| decode("sw_blocks", r.get(0), r.get(1))).collect()
        })?;
        Ok(found.into_iter().max_by_key(|b| b.key.net().map_or(0, IpNet::prefix_len)))
    }

    fn blocks_iter(&self) -> Box<dyn Iterator<Item = Result<Block, StoreError>> + Send + 'static> {
        Box::new(BlockPages { store: self.clone(), after: None, page: Vec::new().into_iter(), done: false })
    }

    fn blocks_after(&self, after: Option<&Key>, n: usize) -> Result<Vec<Block>, StoreError> {
        let after = after.map(Key::stored);
        let n = n as i64;
        self.0.read(move |c| {
            let rows = match &after {
                Some(a) => {
                    c.query("SELECT key, record FROM sw_blocks WHERE key > $1 ORDER BY key LIMIT $2", &[a, &n])?
                }
                None => c.query("SELECT key, record FROM sw_blocks ORDER BY key LIMIT $1", &[&n])?,
            };
            rows.iter().map(|r| decode("sw_blocks", r.get(0), r.get(1))).collect()
        })
    }

    fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        self.blocks_iter().collect()
    }

    fn put_allow(&self, e: &AllowEntry) -> Result<(), StoreError> {
        let e = e.clone();
        self.0.write(move |w| {
            w.tx.execute(
                "INSERT INTO sw_allow (net, record) VALUES ($1, $2) ON CONFLICT (net) DO UPDATE SET record = excluded.record",
                &[&e.net.to_string(), &encode(&e)],
            )?;
            Ok(())
        })
    }

    fn remove_allow(&self, net: &IpNet) -> Result<Option<AllowEntry>, StoreError> {
        let k = net.to_string();
        self.0.write(move |w| {
            w.tx.query_opt("DELETE FROM sw_allow WHERE net = $1 RETURNING record", &[&k])?
                .map(|r| decode("sw_allow", &k, r.get(0)))
                .transpose()
        })
    }

    fn allows(&self) -> Result<Vec<AllowEntry>, StoreError> {
        self.0.read(|c| {
            let rows = c.query("SELECT net, record FROM sw_allow ORDER BY net", &[])?;
            rows.iter().map(|r| decode("sw_allow", r.get(0), r.get(1))).collect()
        })
    }

    fn audit_since(&self, since: Millis) -> Result<Vec<AuditRecord>, StoreError> {
        let since = i(since);
        self.0.read(move |c| {
            let rows =
                c.query("SELECT id::text, record FROM sw_audit WHERE at >= $1 ORDER BY sw_audit.id", &[&since])?;
            rows.iter().map(|r| decode("sw_audit", r.get(0), r.get(1))).collect()
        })
    }

    fn audit_about(&self, keys: &[Key]) -> Result<Vec<AuditRecord>, StoreError> {
        let ks: Vec<String> = keys.iter().map(Key::stored).collect();
        self.0.read(move |c| {
            let rows =
                c.query("SELECT id::text, record FROM sw_audit WHERE key = ANY($1) ORDER BY sw_audit.id", &[&ks])?;
            rows.iter().map(|r| decode("sw_audit", r.get(0), r.get(1))).collect()
        })
    }

    fn audit_back(&self, before: Option<u64>, f: &mut dyn FnMut(AuditRecord) -> bool) -> Result<(), StoreError> {
        let mut before = before.map_or(i64::MAX, i);
        loop {
            let page: Vec<AuditRecord> = self.0.read(move |c| {
                let rows = c.query(
                    "SELECT id::text, record FROM sw_audit WHERE sw_audit.id < $1 ORDER BY sw_audit.id DESC LIMIT 500",
                    &[&before],
                )?;
                rows.iter().map(|r| decode("sw_audit", r.get(0), r.get(1))).collect()
            })?;
            let last = page.len() < 500;
            for rec in page {
                before = i(rec.id);
                if !f(rec) {
                    return Ok(());
                }
            }
            if last {
                return Ok(());
            }
        }
    }

    fn prune(&self, offender_cutoff: Millis, audit_cutoff: Millis) -> Result<(usize, usize), StoreError> {
        let (oc, ac) = (i(offender_cutoff), i(audit_cutoff));
        self.0.write(move |w| {
            let offenders = w.tx.execute("DELETE FROM sw_offenders WHERE last_at < $1", &[&oc])?;
            w.tx.execute("DELETE FROM sw_owned WHERE at < $1", &[&ac])?;
            // The newest record always stays, as in sled.
            let audit =
                w.tx.execute("DELETE FROM sw_audit WHERE at < $1 AND id <> (SELECT max(id) FROM sw_audit)", &[&ac])?;
            Ok((offenders as usize, audit as usize))
        })
    }
}
