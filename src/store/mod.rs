//! The store: offenders, active blocks, the allowlist and the append-only audit log.
//!
//! [`Store`] is a cheap-to-clone handle on a [`Backend`]: the domain operations (`decide`,
//! `release`, `blocks_after`, `audit_since`, ...) that every backend provides, with [`sled`] the
//! embedded default and [`postgres`] the one several controllers share. Nothing outside this module sees a
//! backend's types, errors included. `decide` writes a block, its offender and its audit record
//! at once; `flush` makes them durable (the controller does it before it acts on any of them,
//! off the runtime thread) and records what was committed in the [`manifest`], so a store that no
//! longer holds it (damaged, truncated, rolled back) is refused at open, never read as empty.

pub mod backup;
pub mod manifest;
pub mod model;
pub mod postgres;
pub mod sled;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use ::sled::transaction::TransactionError;
use ipnet::IpNet;

pub use model::{
    AllowEntry, AuditRecord, Block, Event, NodeCounters, Offence, Offender, Origin, Place, Score, TagPlace,
};

use crate::key::Key;
use crate::time::Millis;

/// A store failure. The backend's own errors are carried as text: callers never see its types.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
    #[error("store: {0}")]
    Backend(String),
    #[error("store: record {key} of {tree} cannot be read: {error}")]
    Corrupt { tree: &'static str, key: String, error: String },
    /// The database does not hold what its manifest says was committed.
    #[error(
        "the store at {path} is damaged or was rolled back: {problem}. Nothing was started. \
         `stickwarden store verify` says more; `stickwarden store recover` rebuilds what can be \
         rebuilt (from the store, a backup and HAProxy); `stickwarden store restore FILE` puts back a backup"
    )]
    Damaged { path: String, problem: String },
    #[error("store: {0}")]
    Io(String),
    /// A shared store refused a write: this controller no longer leads.
    #[error("store: {0}")]
    Fenced(String),
    /// A shared store cannot be reached now.
    #[error("store: {0}")]
    Unreachable(String),
    /// A backup file that cannot be restored: what is wrong, and where.
    #[error("{path}: {problem}; nothing was restored")]
    BadBackup { path: String, problem: String },
}

impl From<::sled::Error> for StoreError {
    fn from(e: ::sled::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}

/// What [`Store::verify`] found: the readable records, counted, and every problem.
#[derive(Debug, Default)]
pub struct Verified {
    pub counts: backup::Counts,
    pub problems: Vec<String>,
}

/// Blocks per transaction of [`Store::decide_many`].
pub const BATCH: usize = 5_000;

/// What a store does, in the domain's terms. Calls are synchronous: the daemon runs the long
/// ones (flush, scans, backups) on the blocking pool.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Where the store lives.
    fn path(&self) -> &Path;
    /// Makes every write so far durable, then records it in the manifest.
    fn flush(&self) -> Result<(), StoreError>;
    /// The newest audit record: its id and digest.
    fn newest(&self) -> Result<Option<manifest::Newest>, StoreError>;
    /// Writes every record as a backup ([`backup`]) to `out`; the caller makes sure nothing
    /// writes meanwhile.
    fn export(&self, out: &mut dyn std::io::Write) -> Result<backup::Counts, StoreError>;
    /// Everything that is wrong with the store, read whole; changes nothing.
    fn verify(&self) -> Result<Verified, StoreError>;
    /// Every record that still reads back, as backup lines, and what could not be read.
    fn salvage(&self) -> (Vec<backup::Line>, Vec<String>);
    fn offender(&self, who: &Key) -> Result<Option<Offender>, StoreError>;
    fn put_offender(&self, who: &Key, o: &Offender) -> Result<(), StoreError>;
    /// Records a block decision atomically: the block, the offender's updated history (if any)
    /// and the audit record. Returns the audit record's id.
    fn decide(&self, block: &Block, offender: Option<(&Key, &Offender)>, rec: AuditRecord) -> Result<u64, StoreError>;
    /// Records many blocks of no offender (an import), each with its audit record built by `rec`,
    /// in transactions of [`BATCH`].
    fn decide_many(&self, blocks: &[Block], rec: &dyn Fn(&Block) -> AuditRecord) -> Result<(), StoreError>;
    /// Removes the block of `key` if it is still the one that started at `since`, with its audit
    /// record. Returns whether it was removed.
    fn release(&self, key: &Key, since: Millis, rec: AuditRecord) -> Result<bool, StoreError>;
    /// Whether stickwarden has blocked `key` (within the audit retention).
    fn owns(&self, key: &Key) -> Result<bool, StoreError>;
    /// Appends one audit record; returns its id.
    fn audit(&self, rec: AuditRecord) -> Result<u64, StoreError>;
    fn block(&self, key: &Key) -> Result<Option<Block>, StoreError>;
    /// Every block, read one at a time (for listings too long to hold whole).
    fn blocks_iter(&self) -> Box<dyn Iterator<Item = Result<Block, StoreError>> + Send + 'static>;
    /// Up to `n` blocks in store order, after the one keyed `after` (from the start when `None`).
    fn blocks_after(&self, after: Option<&Key>, n: usize) -> Result<Vec<Block>, StoreError>;
    fn blocks(&self) -> Result<Vec<Block>, StoreError>;
    fn put_allow(&self, e: &AllowEntry) -> Result<(), StoreError>;
    /// Removes the allowlist entry of exactly `net`; returns it if there was one.
    fn remove_allow(&self, net: &IpNet) -> Result<Option<AllowEntry>, StoreError>;
    fn allows(&self) -> Result<Vec<AllowEntry>, StoreError>;
    /// Audit records from `since` on, oldest first.
    fn audit_since(&self, since: Millis) -> Result<Vec<AuditRecord>, StoreError>;
    /// The audit records about any of `keys` exactly, oldest first (read through an index: an
    /// address's history costs its own records, not the log).
    fn audit_about(&self, keys: &[Key]) -> Result<Vec<AuditRecord>, StoreError>;
    /// Audit records newest first, from the one before id `before` (the newest when `None`), each
    /// given to `f` until it returns false: a page of the log, or a time window, read without
    /// holding the rest.
    fn audit_back(&self, before: Option<u64>, f: &mut dyn FnMut(AuditRecord) -> bool) -> Result<(), StoreError>;
    /// Drops offenders with no offence and no score since `offender_cutoff`, and audit records
    /// older than `audit_cutoff` (the newest always stays). Returns (offenders, records) removed.
    fn prune(&self, offender_cutoff: Millis, audit_cutoff: Millis) -> Result<(usize, usize), StoreError>;

    /// The block in force on `addr`: its own, else the narrowest network block that covers it.
    /// One lookup per prefix length, whatever the number of blocks.
    fn block_covering(&self, addr: IpAddr) -> Result<Option<Block>, StoreError> {
        for net in crate::net::prefixes(addr) {
            if let Some(b) = self.block(&Key::Net(net))? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    /// Every audit record about `addr` or a network containing it, oldest first.
    fn audit_covering(&self, addr: IpAddr) -> Result<Vec<AuditRecord>, StoreError> {
        let keys: Vec<Key> = crate::net::prefixes(addr).into_iter().map(Key::Net).collect();
        self.audit_about(&keys)
    }

    /// The offenders of `keys`, in order: a poll's reads in one call.
    fn offenders(&self, keys: &[Key]) -> Result<Vec<Option<Offender>>, StoreError> {
        keys.iter().map(|k| self.offender(k)).collect()
    }

    /// Carries out `writes` in order: what the controller decided since its last call, in one
    /// call off its thread.
    fn record(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        for w in writes {
            match w {
                Write::Offender(who, o) => self.put_offender(&who, &o)?,
                Write::Decide { block, offender, rec } => {
                    self.decide(&block, offender.as_ref().map(|(a, o)| (a, o)), rec)?;
                }
                Write::Release { key, since, rec } => {
                    self.release(&key, since, rec)?;
                }
                Write::Audit(rec) => {
                    self.audit(rec)?;
                }
            }
        }
        Ok(())
    }
}

/// One write the controller decided, carried out by [`Backend::record`].
#[derive(Debug, Clone)]
pub enum Write {
    Offender(Key, Offender),
    /// [`Backend::decide`] (boxed: a decision is the largest write by far).
    Decide {
        block: Box<Block>,
        offender: Option<(Key, Offender)>,
        rec: AuditRecord,
    },
    /// [`Backend::release`].
    Release {
        key: Key,
        since: Millis,
        rec: AuditRecord,
    },
    Audit(AuditRecord),
}

/// Whether a running stickwarden holds the store at `path` (sled locks its database file).
pub fn in_use(path: &Path) -> bool {
    match std::fs::File::open(path.join("db")) {
        Ok(f) => matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Whether there is a store at `path` (a database, or a manifest saying there was one).
pub fn exists(path: &Path) -> bool {
    path.join("db").exists() || manifest::read(path).ok().flatten().is_some()
}

/// Copies a store directory (files and sub-directories), e.g. to read a damaged store without
/// letting sled's recovery rewrite the original.
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// A cheap-to-clone handle on the store's backend.
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Backend>, Option<Arc<postgres::PgStore>>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Opens (or creates) the embedded store at `path` with a page cache of `cache_bytes`, and
    /// checks that it holds what its manifest says was committed ([`StoreError::Damaged`] if not).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Ok(Store(Arc::new(sled::SledStore::open(path, cache_bytes)?), None))
    }

    /// Opens the store without comparing it with its manifest: for `store verify` and `store
    /// recover`, which read what a damaged store still holds.
    pub fn open_unchecked(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Ok(Store(Arc::new(sled::SledStore::open_unchecked(path, cache_bytes)?), None))
    }

    /// [`Store::open_unchecked`] on a copy of the store at `path` in a temp dir (kept as long as
    /// the returned handle): what a damaged store still holds, read without changing it.
    pub fn open_copy(path: &Path, cache_bytes: u64) -> Result<(tempfile::TempDir, Store), StoreError> {
        let io = |e: std::io::Error| StoreError::Io(format!("cannot copy the store: {e}"));
        let scratch = tempfile::tempdir().map_err(io)?;
        copy_dir(path, &scratch.path().join("store")).map_err(io)?;
        let store = Store::open_unchecked(&scratch.path().join("store"), cache_bytes)?;
        Ok((scratch, store))
    }

    /// Restores the backup `file` into a new store at `path` ([`sled::SledStore::restore`]).
    pub fn restore(file: &Path, path: &Path, cache_bytes: u64) -> Result<backup::Counts, StoreError> {
        sled::SledStore::restore(file, path, cache_bytes)
    }

    /// The store of `cfg`: sled at its path, or the PostgreSQL it names (connected, its schema
    /// migrated and its privileges checked).
    pub fn open_config(cfg: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        match &cfg.backend {
            crate::config::BackendConfig::Sled => Store::open(&cfg.path, cfg.cache_bytes),
            crate::config::BackendConfig::Postgres(pg) => {
                Ok(Store::on_postgres(Arc::new(postgres::PgStore::connect(pg, &cfg.path)?)))
            }
        }
    }

    /// A handle on a PostgreSQL store.
    pub fn on_postgres(pg: Arc<postgres::PgStore>) -> Store {
        Store(Arc::new(postgres::Shared(pg.clone())), Some(pg))
    }

    /// The PostgreSQL store behind this handle, if that is its backend.
    pub fn postgres(&self) -> Option<Arc<postgres::PgStore>> {
        self.1.clone()
    }

    /// [`Backend::decide_many`] with any closure.
    pub fn decide_many(&self, blocks: &[Block], rec: impl Fn(&Block) -> AuditRecord) -> Result<(), StoreError> {
        self.0.decide_many(blocks, &rec)
    }

    /// [`Backend::export`] to `out`, given back with what was written.
    pub fn export<W: std::io::Write>(&self, mut out: W) -> Result<(W, backup::Counts), StoreError> {
        let counts = self.0.export(&mut out)?;
        Ok((out, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Actions};

    fn block(key: &str, since: Millis) -> Block {
        Block {
            key: Key::Net(crate::net::parse_net(key).unwrap()),
            level: 1,
            actions: Actions::new(vec![Action::Tag]),
            rule: "flood".into(),
            reason: "test".into(),
            source: Origin::Auto,
            actor: "stickwarden".into(),
            since,
            until: since + 60_000,
            counters: vec![("http_req_rate".into(), 120)],
            dry_run: false,
            place: None,
            nodes: Vec::new(),
        }
    }

    #[test]
    fn blocks_are_read_page_by_page_in_store_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let all: Vec<Block> = (0..25).map(|i| block(&format!("10.0.{}.{}", i / 10, i % 10), 1_000)).collect();
        s.decide_many(&all, |b| AuditRecord::of(Event::Block, b, 1_000)).unwrap();
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.blocks_after(after.as_ref(), 10).unwrap();
            after = page.last().map(|b| b.key.clone());
            let last = page.len() < 10;
            paged.extend(page);
            if last {
                break;
            }
        }
        assert_eq!(paged, s.blocks().unwrap());
        assert_eq!(paged.len(), 25);
    }

    #[test]
    fn decisions_survive_reopening_and_release_checks_since() {
        let dir = tempfile::tempdir().unwrap();
        let addr: IpAddr = "10.0.0.1".parse().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let b = block("10.0.0.1", 1_000);
            let mut o = Offender::default();
            o.offences.push(Offence { at: 1_000, rule: "flood".into(), level: 1, dry_run: false });
            s.decide(&b, Some((&Key::host(addr), &o)), AuditRecord::of(Event::Block, &b, 1_000)).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let b = s.block(&Key::host(addr)).unwrap().unwrap();
        assert_eq!(b, block("10.0.0.1", 1_000));
        assert_eq!(s.offender(&Key::host(addr)).unwrap().unwrap().offences.len(), 1);
        // A release of an older block of the same key leaves the current one.
        assert!(!s.release(&b.key, 999, AuditRecord::of(Event::Release, &b, 2_000)).unwrap());
        assert!(s.release(&b.key, 1_000, AuditRecord::of(Event::Release, &b, 2_000)).unwrap());
        assert!(s.blocks().unwrap().is_empty());
        let log = s.audit_since(0).unwrap();
        assert_eq!(log.iter().map(|r| r.event).collect::<Vec<_>>(), [Event::Block, Event::Release]);
        assert!(log[0].id < log[1].id);
        assert_eq!(s.audit_since(1_500).unwrap().len(), 1);
        assert!(s.owns(&b.key).unwrap(), "a released key stays known as stickwarden's");
        assert_eq!(s.prune(1_001, 1_500).unwrap(), (1, 1));
        assert!(!s.owns(&b.key).unwrap(), "until the audit retention forgets it");
        assert_eq!(s.audit_since(0).unwrap().len(), 1);
    }
    #[test]
    fn an_addresses_records_and_block_are_found_without_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let addr: IpAddr = "10.0.0.7".parse().unwrap();
        let all = [block("10.0.0.7", 1_000), block("10.0.0.0/24", 2_000), block("10.0.1.7", 3_000)];
        s.decide_many(&all, |b| AuditRecord::of(Event::Block, b, b.since)).unwrap();
        s.audit(AuditRecord::note(Event::BreakerOpen, 4_000, "stickwarden", "no key".into())).unwrap();
        // The address's own block first, then the network's.
        assert_eq!(s.block_covering(addr).unwrap().unwrap().key, all[0].key);
        assert!(s.release(&all[0].key, 1_000, AuditRecord::of(Event::Release, &all[0], 5_000)).unwrap());
        assert_eq!(s.block_covering(addr).unwrap().unwrap().key, all[1].key);
        let about = |s: &Store| s.audit_covering(addr).unwrap().iter().map(|r| (r.event, r.at)).collect::<Vec<_>>();
        let want = [(Event::Block, 1_000), (Event::Block, 2_000), (Event::Release, 5_000)];
        assert_eq!(about(&s), want);
        // "::ffff:10.0.0.7" is the same client.
        assert_eq!(s.audit_covering("::ffff:10.0.0.7".parse().unwrap()).unwrap().len(), 3);

        // Newest first from any point, stopping when asked.
        let mut seen = Vec::new();
        s.audit_back(None, &mut |r| {
            seen.push(r.at);
            seen.len() < 3
        })
        .unwrap();
        assert_eq!(seen, [5_000, 4_000, 3_000]);
        let newest = s.audit_since(0).unwrap().last().unwrap().id;
        let mut older = Vec::new();
        s.audit_back(Some(newest), &mut |r| {
            older.push(r.at);
            true
        })
        .unwrap();
        assert_eq!(older, [4_000, 3_000, 2_000, 1_000]);

        // Pruning removes the index entries with the records.
        s.prune(0, 1_500).unwrap();
        assert_eq!(about(&s), want[1..]);
    }

    /// A copy of a store holding one block of 10.0.0.7, made what a version of `format` left (at
    /// format 1, no audit index); the copy's directory (sled keeps its lock on the original a
    /// while after it is dropped).
    fn old_store(format: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            let b = block("10.0.0.7", 1_000);
            s.decide(&b, None, AuditRecord::of(Event::Block, &b, 1_000)).unwrap();
            s.flush().unwrap();
        }
        let old = tempfile::tempdir().unwrap();
        let old = old.path().join("store");
        copy_dir(dir.path(), &old).unwrap();
        if format < 2 {
            let db = ::sled::open(&old).unwrap();
            db.drop_tree("audit_keys").unwrap();
            db.flush().unwrap();
        }
        let mut m = manifest::read(&old).unwrap().unwrap();
        assert_eq!(m.format, manifest::FORMAT);
        m.format = format;
        manifest::write(&old, &m).unwrap();
        let copy = tempfile::tempdir().unwrap();
        let path = copy.path().join("store");
        copy_dir(&old, &path).unwrap();
        (copy, path)
    }

    #[test]
    fn a_store_of_format_1_is_migrated_at_open() {
        let (_copy, path) = old_store(1);
        let s = Store::open(&path, 1 << 20).unwrap();
        assert_eq!(s.audit_covering("10.0.0.7".parse().unwrap()).unwrap().len(), 1);
        assert_eq!(manifest::read(&path).unwrap().unwrap().format, manifest::FORMAT, "migrated");
    }

    /// A store of format 2 (address keys only) opens as it is, is marked format 3, and then holds
    /// table keys beside its addresses, through a reopening and a backup restored elsewhere.
    #[test]
    fn a_store_of_format_2_takes_table_keys_after_its_migration() {
        let (_copy, path) = old_store(2);
        let api_key = Key::named("st_apikey", "k 1;\\x");
        {
            let s = Store::open(&path, 1 << 20).unwrap();
            assert_eq!(manifest::read(&path).unwrap().unwrap().format, 3, "migrated");
            assert_eq!(s.blocks().unwrap(), [block("10.0.0.7", 1_000)], "the address block reads as it was");
            let b = Block { key: api_key.clone(), ..block("10.0.0.8", 2_000) };
            let mut o = Offender::default();
            o.offences.push(Offence { at: 2_000, rule: "api-flood".into(), level: 1, dry_run: false });
            s.decide(&b, Some((&api_key, &o)), AuditRecord::of(Event::Block, &b, 2_000)).unwrap();
            s.flush().unwrap();
        }
        let again = tempfile::tempdir().unwrap();
        copy_dir(&path, &again.path().join("store")).unwrap();
        let s = Store::open(&again.path().join("store"), 1 << 20).unwrap();
        assert_eq!(s.block(&api_key).unwrap().unwrap().key, api_key);
        assert_eq!(s.offender(&api_key).unwrap().unwrap().offences.len(), 1);
        assert_eq!(s.audit_about(std::slice::from_ref(&api_key)).unwrap().len(), 1);
        assert!(s.owns(&api_key).unwrap());
        assert!(s.verify().unwrap().problems.is_empty());
        // A backup restored into a new store holds the same.
        let (out, _) = s.export(Vec::new()).unwrap();
        let file = again.path().join("backup.jsonl");
        std::fs::write(&file, out).unwrap();
        let other = tempfile::tempdir().unwrap();
        Store::restore(&file, &other.path().join("store"), 1 << 20).unwrap();
        let r = Store::open(&other.path().join("store"), 1 << 20).unwrap();
        assert_eq!(r.block(&api_key).unwrap().unwrap().key, api_key);
        assert_eq!(r.offender(&api_key).unwrap().unwrap().offences.len(), 1);
    }
}

#[cfg(test)]
mod damage_tests {
    use std::path::PathBuf;

    use super::*;
    use crate::rules::{Action, Actions};

    fn copy_dir(from: &Path, to: &Path) {
        super::copy_dir(from, to).unwrap();
    }

    /// A store of `n` imported blocks, flushed and closed; the copy's path.
    fn store_of(n: u32, dir: &Path) -> PathBuf {
        let made = dir.join("made");
        {
            let s = Store::open(&made, 1 << 20).unwrap();
            let blocks: Vec<Block> = (0..n)
                .map(|i| Block {
                    key: Key::host(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
                    level: 0,
                    actions: Actions::new(vec![Action::Acl]),
                    rule: "import".into(),
                    reason: "list".into(),
                    source: Origin::Manual,
                    actor: "t".into(),
                    since: 1_000,
                    until: 9_000_000_000_000,
                    counters: Vec::new(),
                    dry_run: false,
                    place: None,
                    nodes: Vec::new(),
                })
                .collect();
            s.decide_many(&blocks, |b| AuditRecord::of(Event::Block, b, 1_000)).unwrap();
            s.flush().unwrap();
        }
        made
    }

    #[test]
    fn a_flipped_byte_a_cut_or_a_deleted_database_is_never_read_as_empty() {
        for n in [50, 301] {
            let dir = tempfile::tempdir().unwrap();
            let made = store_of(n, dir.path());
            let size = std::fs::metadata(made.join("db")).unwrap().len();
            type Damage = Box<dyn Fn(&Path)>;
            let mut cases: Vec<(String, Damage)> = Vec::new();
            for pct in [25u64, 50, 75, 90, 99] {
                cases.push((
                    format!("byte flipped at {pct}%"),
                    Box::new(move |p: &Path| {
                        let mut bytes = std::fs::read(p.join("db")).unwrap();
                        let at = (size * pct / 100) as usize;
                        bytes[at] ^= 0xff;
                        std::fs::write(p.join("db"), bytes).unwrap();
                    }),
                ));
            }
            cases.push((
                "cut at 60%".into(),
                Box::new(move |p: &Path| {
                    let f = std::fs::OpenOptions::new().write(true).open(p.join("db")).unwrap();
                    f.set_len(size * 6 / 10).unwrap();
                }),
            ));
            cases.push(("deleted".into(), Box::new(|p: &Path| std::fs::remove_file(p.join("db")).unwrap())));
            for (i, (what, damage)) in cases.iter().enumerate() {
                let copy = dir.path().join(format!("copy{i}"));
                copy_dir(&made, &copy);
                damage(&copy);
                match Store::open(&copy, 1 << 20) {
                    Ok(s) => {
                        // Damage sled did not notice must have cost nothing.
                        let v = s.verify().unwrap();
                        assert_eq!(v.counts.blocks, u64::from(n), "{n} blocks, {what}: opened with {v:?}");
                        assert!(v.problems.is_empty(), "{n} blocks, {what}: {:?}", v.problems);
                    }
                    Err(e) => {
                        let text = e.to_string();
                        assert!(text.contains("damaged") || text.contains("cannot open"), "{what}: {text}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_store_rolled_back_to_an_older_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = store_of(10, dir.path());
        let old = dir.path().join("old");
        copy_dir(&made, &old);
        // More decisions after the copy was taken, then the old database put back under the
        // newer manifest.
        let moved = dir.path().join("moved");
        copy_dir(&made, &moved);
        {
            let s = Store::open(&moved, 1 << 20).unwrap();
            s.audit(AuditRecord::note(Event::Allow, 2_000, "t", "x".into())).unwrap();
            s.flush().unwrap();
        }
        std::fs::copy(moved.join(manifest::FILE), old.join(manifest::FILE)).unwrap();
        let e = Store::open(&old, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("lost its latest writes") && e.contains("stickwarden store recover"), "{e}");
    }

    #[test]
    fn a_backup_restores_to_the_same_records_and_ids_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let made = store_of(25, dir.path());
        let s = Store::open(&made, 1 << 20).unwrap();
        s.put_allow(&AllowEntry {
            net: "192.0.2.0/24".parse().unwrap(),
            reason: "r".into(),
            actor: "a".into(),
            since: 1,
            until: None,
        })
        .unwrap();
        let (bytes, counts) = s.export(Vec::new()).unwrap();
        assert_eq!((counts.blocks, counts.audit, counts.owned, counts.allow), (25, 25, 25, 1));
        let file = dir.path().join("backup.jsonl");
        std::fs::write(&file, &bytes).unwrap();
        let restored_path = dir.path().join("restored");
        let c = Store::restore(&file, &restored_path, 1 << 20).unwrap();
        assert_eq!(c, counts);
        let r = Store::open(&restored_path, 1 << 20).unwrap();
        assert_eq!(r.blocks().unwrap(), s.blocks().unwrap());
        let mut log = r.audit_since(0).unwrap();
        assert_eq!(log.pop().map(|l| l.event), Some(Event::Restored));
        assert_eq!(log, s.audit_since(0).unwrap());
        assert_eq!(r.allows().unwrap(), s.allows().unwrap());
        let last = s.newest().unwrap().unwrap().id;
        let next = r.audit(AuditRecord::note(Event::Allow, 3_000, "t", "x".into())).unwrap();
        assert!(next > last, "ids go on after a restore: {next} after {last}");
        // A backup of the restored store is the same file but for its creation time.
        let (again, _) = r.export(Vec::new()).unwrap();
        let body = |b: &[u8]| String::from_utf8_lossy(b).lines().skip(1).take(76).collect::<Vec<_>>().join("\n");
        assert_eq!(body(&again), body(&bytes));
        // Restoring over a store is refused, and a damaged backup writes nothing.
        assert!(Store::restore(&file, &restored_path, 1 << 20).is_err());
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        let e = Store::restore(&file, &dir.path().join("other"), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("nothing was restored"), "{e}");
        assert!(!dir.path().join("other").exists());
    }
}
