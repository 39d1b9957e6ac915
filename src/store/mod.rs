//! The store: offenders, active blocks, the allowlist and the append-only audit log, in sled.
//!
//! [`Store`] is a cheap-to-clone handle; nothing outside this module sees a sled type, errors
//! included. [`Store::decide`] writes a block, its offender and its audit record in one
//! transaction, and [`Store::flush`] makes them durable, which the controller does before it acts
//! on any of them, and records what was committed in the [`manifest`]: a store that no longer
//! holds it (damaged, truncated, rolled back) is refused at open, never read as empty.

pub mod backup;
pub mod manifest;
pub mod model;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use model::{AllowEntry, AuditRecord, Block, Event, Offence, Offender, Origin, Place, Score, TagPlace};

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
    /// A backup file that cannot be restored: what is wrong, and where.
    #[error("{path}: {problem}; nothing was restored")]
    BadBackup { path: String, problem: String },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
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

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: sled::Db,
    /// Added to sled's generated ids to make audit ids: a restored store continues the ids of
    /// its backup (kept in the `meta` tree).
    id_base: u64,
    /// The audit id the manifest holds, to rewrite it only when something new was committed.
    manifest_id: Arc<AtomicU64>,
    offenders: sled::Tree,
    blocks: sled::Tree,
    allow: sled::Tree,
    audit: sled::Tree,
    /// Every key stickwarden has blocked (key -> time of its last block): what the reconciler may
    /// remove from HAProxy when no block wants it any more. Nothing else is ever removed.
    owned: sled::Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("blocks", &self.blocks.len()).finish()
    }
}

fn key(net: &IpNet) -> Vec<u8> {
    net.to_string().into_bytes()
}

fn addr_key(addr: IpAddr) -> Vec<u8> {
    key(&crate::net::host_net(addr))
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialize")
}

fn decode<T: serde::de::DeserializeOwned>(tree: &'static str, k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(k).into_owned(),
        error: e.to_string(),
    })
}

const ID_BASE: &[u8] = b"id_base";

impl Store {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`, and checks that
    /// it holds what its manifest says was committed ([`StoreError::Damaged`] if not). A store
    /// without a manifest (new, or made by an older version) gets one.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let store = Store::open_unchecked(path, cache_bytes)?;
        let damaged = |problem: String| StoreError::Damaged { path: path.display().to_string(), problem };
        match manifest::read(path).map_err(damaged)? {
            Some(m) => {
                let newest = store.newest()?;
                let at = store.audit_record_bytes(m.last_audit_id)?;
                manifest::check(&m, newest.as_ref(), at.as_deref()).map_err(damaged)?;
                store.manifest_id.store(m.last_audit_id, Ordering::Relaxed);
            }
            None => {
                if let Some(n) = store.newest()? {
                    tracing::info!(path = %path.display(), last_audit_id = n.id, "the store has no manifest yet; writing one");
                }
                store.manifest_id.store(u64::MAX, Ordering::Relaxed);
                store.write_manifest()?;
            }
        }
        Ok(store)
    }

    /// Opens the store without comparing it with its manifest (and without writing one): for
    /// `store verify` and `store recover`, which read what a damaged store still holds.
    pub fn open_unchecked(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| StoreError::Open { path: path.display().to_string(), message: e.to_string() })?;
        let meta = db.open_tree("meta")?;
        let id_base =
            meta.get(ID_BASE)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes);
        Ok(Store {
            path: path.to_owned(),
            id_base,
            manifest_id: Arc::new(AtomicU64::new(u64::MAX)),
            offenders: db.open_tree("offenders")?,
            blocks: db.open_tree("blocks")?,
            allow: db.open_tree("allow")?,
            audit: db.open_tree("audit")?,
            owned: db.open_tree("owned")?,
            db,
        })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write so far durable, then records it in the manifest.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.write_manifest()
    }

    fn write_manifest(&self) -> Result<(), StoreError> {
        let newest = self.newest()?;
        let id = newest.as_ref().map_or(0, |n| n.id);
        if self.manifest_id.swap(id, Ordering::Relaxed) == id {
            return Ok(());
        }
        let m = manifest::Manifest {
            format: manifest::FORMAT,
            last_audit_id: id,
            last_audit_digest: newest.map_or_else(String::new, |n| n.digest),
            written_at: crate::time::now_ms(),
        };
        manifest::write(&self.path, &m).map_err(|e| {
            self.manifest_id.store(u64::MAX, Ordering::Relaxed);
            StoreError::Io(format!("cannot write the manifest in {}: {e}", self.path.display()))
        })
    }

    /// Writes every record as a backup ([`backup`]) to `out`. The caller makes sure nothing writes
    /// meanwhile (the daemon runs it in its controller, the only writer), so the copy is of one
    /// moment.
    pub fn export<W: std::io::Write>(&self, out: W) -> Result<(W, backup::Counts), StoreError> {
        use backup::Line;
        let io = |e: std::io::Error| StoreError::Io(format!("cannot write the backup: {e}"));
        let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let mut w = backup::Writer::new(out, self.newest()?.map_or(0, |n| n.id)).map_err(io)?;
        for r in self.blocks.iter() {
            let (k, v) = r?;
            w.line(&Line::Block(decode("blocks", &k, &v)?)).map_err(io)?;
        }
        for r in self.offenders.iter() {
            let (k, v) = r?;
            w.line(&Line::Offender { key: text(&k), offender: decode("offenders", &k, &v)? }).map_err(io)?;
        }
        for r in self.allow.iter() {
            let (k, v) = r?;
            w.line(&Line::Allow(decode("allow", &k, &v)?)).map_err(io)?;
        }
        for r in self.owned.iter() {
            let (k, v) = r?;
            let at = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            w.line(&Line::Owned { key: text(&k), at }).map_err(io)?;
        }
        for r in self.audit.iter() {
            let (k, v) = r?;
            w.line(&Line::Audit(decode("audit", &k, &v)?)).map_err(io)?;
        }
        w.finish().map_err(io)
    }

    /// Restores the backup `file` into a new store at `path`, which must hold none (the caller
    /// moves an old one aside). The whole file is checked before the first write; audit ids go on
    /// from the backup's.
    pub fn restore(file: &Path, path: &Path, cache_bytes: u64) -> Result<backup::Counts, StoreError> {
        let bad = |problem: String| StoreError::BadBackup { path: file.display().to_string(), problem };
        let open =
            || std::fs::File::open(file).map(std::io::BufReader::new).map_err(|e| bad(format!("cannot read: {e}")));
        backup::read(open()?, |_| Ok(())).map_err(bad)?;
        let store = Store::open_unchecked(path, cache_bytes)?;
        if store.newest()?.is_some() || !store.blocks.is_empty() {
            return Err(StoreError::Io(format!("{} already holds a store: move it aside first", path.display())));
        }
        let mut max_id = 0;
        let (header, counts) = backup::read(open()?, |line| {
            store.put_line(&line).map_err(|e| e.to_string())?;
            if let backup::Line::Audit(r) = &line {
                max_id = max_id.max(r.id);
            }
            Ok(())
        })
        .map_err(bad)?;
        let now = crate::time::now_ms();
        let mut rec = AuditRecord::note(
            Event::Restored,
            now,
            "stickwarden store restore",
            format!("restored from {} (backup of {}): {counts}", file.display(), header.created),
        );
        rec.id = max_id + 1;
        store.put_line(&backup::Line::Audit(rec))?;
        store.db.open_tree("meta")?.insert(ID_BASE, &(max_id + 2).to_be_bytes())?;
        store.flush()?;
        Ok(counts)
    }

    /// Everything that is wrong with the store, read whole: the manifest compared with the
    /// database, and every record of every tree decoded. Changes nothing.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let mut v = Verified::default();
        match manifest::read(&self.path) {
            Ok(Some(m)) => {
                let at = self.audit_record_bytes(m.last_audit_id)?;
                if let Err(p) = manifest::check(&m, self.newest()?.as_ref(), at.as_deref()) {
                    v.problems.push(p);
                }
            }
            Ok(None) => v.problems.push(
                "no manifest: the store cannot prove it holds what it last committed (a store of an older \
                 version gets one when the daemon opens it)"
                    .into(),
            ),
            Err(e) => v.problems.push(e),
        }
        let trees: [(&'static str, &sled::Tree, &mut u64); 5] = [
            ("blocks", &self.blocks, &mut v.counts.blocks),
            ("offenders", &self.offenders, &mut v.counts.offenders),
            ("allow", &self.allow, &mut v.counts.allow),
            ("owned", &self.owned, &mut v.counts.owned),
            ("audit", &self.audit, &mut v.counts.audit),
        ];
        for (name, tree, count) in trees {
            for r in tree.iter() {
                let (k, val) = match r {
                    Ok(kv) => kv,
                    Err(e) => {
                        v.problems.push(format!("{name}: cannot be read past record {count}: {e}"));
                        break;
                    }
                };
                let ok = match name {
                    "blocks" => decode::<Block>(name, &k, &val).map(|b| key(&b.key) == k.as_ref()),
                    "offenders" => decode::<Offender>(name, &k, &val).map(|_| true),
                    "allow" => decode::<AllowEntry>(name, &k, &val).map(|a| key(&a.net) == k.as_ref()),
                    "owned" => Ok(val.len() == 8),
                    _ => decode::<AuditRecord>(name, &k, &val).map(|r| r.id.to_be_bytes() == k.as_ref()),
                };
                match ok {
                    Ok(true) => *count += 1,
                    Ok(false) => v
                        .problems
                        .push(format!("{name}: record {} does not match its key", String::from_utf8_lossy(&k))),
                    Err(e) => v.problems.push(e.to_string()),
                }
            }
        }
        Ok(v)
    }

    /// Every record that still reads back, as backup lines, and what could not be read: what a
    /// recovery starts from. Holds them all in memory.
    pub fn salvage(&self) -> (Vec<backup::Line>, Vec<String>) {
        use backup::Line;
        let (mut lines, mut problems) = (Vec::new(), Vec::new());
        let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let trees: [(&'static str, &sled::Tree); 5] = [
            ("blocks", &self.blocks),
            ("offenders", &self.offenders),
            ("allow", &self.allow),
            ("owned", &self.owned),
            ("audit", &self.audit),
        ];
        for (name, tree) in trees {
            for r in tree.iter() {
                let (k, v) = match r {
                    Ok(kv) => kv,
                    Err(e) => {
                        problems.push(format!("{name}: the rest cannot be read: {e}"));
                        break;
                    }
                };
                let line = match name {
                    "blocks" => decode(name, &k, &v).map(Line::Block),
                    "offenders" => decode(name, &k, &v).map(|offender| Line::Offender { key: text(&k), offender }),
                    "allow" => decode(name, &k, &v).map(Line::Allow),
                    "owned" => <[u8; 8]>::try_from(v.as_ref())
                        .map(|at| Line::Owned { key: text(&k), at: u64::from_be_bytes(at) })
                        .map_err(|_| StoreError::Corrupt { tree: name, key: text(&k), error: "not a time".into() }),
                    _ => decode(name, &k, &v).map(Line::Audit),
                };
                match line {
                    Ok(l) => lines.push(l),
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        (lines, problems)
    }

    /// Writes one backup record as it was.
    fn put_line(&self, line: &backup::Line) -> Result<(), StoreError> {
        use backup::Line;
        match line {
            Line::Block(b) => self.blocks.insert(key(&b.key), encode(b)).map(drop)?,
            Line::Offender { key, offender } => self.offenders.insert(key.as_bytes(), encode(offender)).map(drop)?,
            Line::Allow(a) => self.allow.insert(key(&a.net), encode(a)).map(drop)?,
            Line::Owned { key, at } => self.owned.insert(key.as_bytes(), &at.to_be_bytes()).map(drop)?,
            Line::Audit(r) => self.audit.insert(r.id.to_be_bytes(), encode(r)).map(drop)?,
            Line::Header(_) | Line::End { .. } => {}
        }
        Ok(())
    }

    /// The newest audit record: its id and digest.
    pub fn newest(&self) -> Result<Option<manifest::Newest>, StoreError> {
        Ok(self.audit.last()?.map(|(k, v)| manifest::Newest {
            id: <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes),
            digest: manifest::digest(&v),
        }))
    }

    /// The stored bytes of audit record `id`.
    fn audit_record_bytes(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.audit.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// The next audit id (sled's generator, offset by the base a restore set).
    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.id_base + self.db.generate_id()?)
    }

    pub fn offender(&self, addr: IpAddr) -> Result<Option<Offender>, StoreError> {
        let k = addr_key(addr);
        self.offenders.get(&k)?.map(|v| decode("offenders", &k, &v)).transpose()
    }

    pub fn put_offender(&self, addr: IpAddr, o: &Offender) -> Result<(), StoreError> {
        self.offenders.insert(addr_key(addr), encode(o))?;
        Ok(())
    }

    /// Records a block decision atomically: the block, the offender's updated history (if any) and
    /// the audit record. Returns the audit record's id.
    pub fn decide(
        &self,
        block: &Block,
        offender: Option<(IpAddr, &Offender)>,
        rec: AuditRecord,
    ) -> Result<u64, StoreError> {
        let (bk, bv) = (key(&block.key), encode(block));
        let off = offender.map(|(a, o)| (addr_key(a), encode(o)));
        let since = block.since.to_be_bytes();
        let base = self.id_base;
        let id = (&self.blocks, &self.offenders, &self.audit, &self.owned).transaction(
            |(blocks, offenders, audit, owned)| {
                blocks.insert(bk.as_slice(), bv.as_slice())?;
                owned.insert(bk.as_slice(), &since)?;
                if let Some((k, v)) = &off {
                    offenders.insert(k.as_slice(), v.as_slice())?;
                }
                let mut rec = rec.clone();
                rec.id = base + audit.generate_id()?;
                audit.insert(&rec.id.to_be_bytes(), encode(&rec))?;
                Ok::<_, ConflictableTransactionError<StoreError>>(rec.id)
            },
        )?;
        Ok(id)
    }

    /// Records many blocks of no offender (an import), each with its audit record built by `rec`,
    /// in transactions of [`BATCH`]: each block is written with its record or not at all, and memory
    /// stays bounded whatever the number of blocks.
    pub fn decide_many(&self, blocks: &[Block], rec: impl Fn(&Block) -> AuditRecord) -> Result<(), StoreError> {
        let base = self.id_base;
        for chunk in blocks.chunks(BATCH) {
            let encoded: Vec<(Vec<u8>, Vec<u8>, AuditRecord)> =
                chunk.iter().map(|b| (key(&b.key), encode(b), rec(b))).collect();
            (&self.blocks, &self.audit, &self.owned).transaction(|(bt, at, ot)| {
                for (k, v, r) in &encoded {
                    bt.insert(k.as_slice(), v.as_slice())?;
                    ot.insert(k.as_slice(), &r.at.to_be_bytes())?;
                    let mut r = r.clone();
                    r.id = base + at.generate_id()?;
                    at.insert(&r.id.to_be_bytes(), encode(&r))?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        }
        Ok(())
    }

    /// Removes the block of `key` if it is still the one that started at `since` (a newer block of
    /// the same key is left alone), with its audit record. Returns whether it was removed.
    pub fn release(&self, key_net: &IpNet, since: Millis, rec: AuditRecord) -> Result<bool, StoreError> {
        let k = key(key_net);
        let base = self.id_base;
        let removed = (&self.blocks, &self.audit).transaction(|(blocks, audit)| {
            let Some(v) = blocks.get(&k)? else { return Ok(false) };
            let b: Block = decode("blocks", &k, &v).map_err(ConflictableTransactionError::Abort)?;
            if b.since != since {
                return Ok(false);
            }
            blocks.remove(k.as_slice())?;
            let mut rec = rec.clone();
            rec.id = base + audit.generate_id()?;
            audit.insert(&rec.id.to_be_bytes(), encode(&rec))?;
            Ok::<_, ConflictableTransactionError<StoreError>>(true)
        })?;
        Ok(removed)
    }

    /// Whether stickwarden has blocked `net` (within the audit retention).
    pub fn owns(&self, net: &IpNet) -> Result<bool, StoreError> {
        Ok(self.owned.contains_key(key(net))?)
    }

    /// Appends one audit record; returns its id.
    pub fn audit(&self, mut rec: AuditRecord) -> Result<u64, StoreError> {
        rec.id = self.next_id()?;
        self.audit.insert(rec.id.to_be_bytes(), encode(&rec))?;
        Ok(rec.id)
    }

    pub fn block(&self, net: &IpNet) -> Result<Option<Block>, StoreError> {
        let k = key(net);
        self.blocks.get(&k)?.map(|v| decode("blocks", &k, &v)).transpose()
    }

    /// Every block, read one at a time (for listings too long to hold whole).
    pub fn blocks_iter(&self) -> impl Iterator<Item = Result<Block, StoreError>> + Send + 'static {
        self.blocks.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v)))
    }

    /// Up to `n` blocks in store order, after the one keyed `after` (from the start when `None`):
    /// a page of a listing read a little at a time.
    pub fn blocks_after(&self, after: Option<&IpNet>, n: usize) -> Result<Vec<Block>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(key(a)));
        self.blocks
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .take(n)
            .map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v)))
            .collect()
    }

    pub fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        self.blocks.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v))).collect()
    }

    pub fn put_allow(&self, e: &AllowEntry) -> Result<(), StoreError> {
        self.allow.insert(key(&e.net), encode(e))?;
        Ok(())
    }

    /// Removes the allowlist entry of exactly `net`; returns it if there was one.
    pub fn remove_allow(&self, net: &IpNet) -> Result<Option<AllowEntry>, StoreError> {
        let k = key(net);
        self.allow.remove(&k)?.map(|v| decode("allow", &k, &v)).transpose()
    }

    pub fn allows(&self) -> Result<Vec<AllowEntry>, StoreError> {
        self.allow.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("allow", &k, &v))).collect()
    }

    /// Audit records from `since` on, oldest first.
    pub fn audit_since(&self, since: Millis) -> Result<Vec<AuditRecord>, StoreError> {
        let mut out = Vec::new();
        for r in self.audit.iter().rev() {
            let (k, v) = r?;
            let rec: AuditRecord = decode("audit", &k, &v)?;
            if rec.at < since {
                break;
            }
            out.push(rec);
        }
        out.reverse();
        Ok(out)
    }

    /// Drops offenders with no offence and no score since `offender_cutoff`, and audit records
    /// older than `audit_cutoff`. Returns (offenders, audit records) removed.
    pub fn prune(&self, offender_cutoff: Millis, audit_cutoff: Millis) -> Result<(usize, usize), StoreError> {
        let mut offenders = 0;
        for r in self.offenders.iter() {
            let (k, v) = r?;
            let o: Offender = decode("offenders", &k, &v)?;
            let last = o.offences.iter().map(|x| x.at).max().unwrap_or(0).max(o.last_seen);
            if last < offender_cutoff {
                self.offenders.remove(&k)?;
                offenders += 1;
            }
        }
        for r in self.owned.iter() {
            let (k, v) = r?;
            let at = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
            if at < audit_cutoff {
                self.owned.remove(&k)?;
            }
        }
        let mut audit = 0;
        // The newest record always stays: the manifest names it.
        let newest = self.newest()?.map(|n| n.id.to_be_bytes());
        for r in self.audit.iter() {
            let (k, v) = r?;
            let rec: AuditRecord = decode("audit", &k, &v)?;
            if rec.at >= audit_cutoff || newest.is_some_and(|n| k.as_ref() == n) {
                break;
            }
            self.audit.remove(&k)?;
            audit += 1;
        }
        Ok((offenders, audit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Actions};

    fn block(key: &str, since: Millis) -> Block {
        Block {
            key: crate::net::parse_net(key).unwrap(),
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
            after = page.last().map(|b| b.key);
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
            s.decide(&b, Some((addr, &o)), AuditRecord::of(Event::Block, &b, 1_000)).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let b = s.block(&crate::net::host_net(addr)).unwrap().unwrap();
        assert_eq!(b, block("10.0.0.1", 1_000));
        assert_eq!(s.offender(addr).unwrap().unwrap().offences.len(), 1);
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
}

#[cfg(test)]
mod damage_tests {
    use super::*;
    use crate::rules::{Action, Actions};

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    /// A store of `n` imported blocks, flushed and closed; the copy's path.
    fn store_of(n: u32, dir: &Path) -> PathBuf {
        let made = dir.join("made");
        {
            let s = Store::open(&made, 1 << 20).unwrap();
            let blocks: Vec<Block> = (0..n)
                .map(|i| Block {
                    key: crate::net::host_net(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
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
