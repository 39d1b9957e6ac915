//! The embedded backend: sled, one tree per kind of record (offenders, blocks, allow, owned,
//! audit, meta), each record JSON, so a store can be read with any JSON tool and survives field
//! additions. [`SledStore::decide`] writes a block, its offender and its audit record in one
//! transaction; [`Backend::flush`] makes them durable and records them in the [`manifest`], which
//! [`SledStore::open`] checks. Nothing outside this file sees a sled type.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{backup, manifest, Backend, StoreError, Verified, Write, BATCH};
use super::{AllowEntry, AuditRecord, Block, Event, Offender};
use crate::key::Key;
use crate::time::Millis;

/// The sled backend: one database, a tree per kind of record, the manifest beside it.
#[derive(Clone)]
pub struct SledStore {
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
    /// The audit records about each key: `key \0 id` -> nothing, written with the record. An
    /// address's history reads its own and its networks' records without scanning the log.
    audit_keys: sled::Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("path", &self.path).finish()
    }
}

/// The key of a record about `k` ([`Key::stored`]): an address's is its network's text, as in
/// stores written before table keys.
fn key(k: &Key) -> Vec<u8> {
    k.stored().into_bytes()
}

/// The key of an allowlist entry.
fn net_key(net: &IpNet) -> Vec<u8> {
    net.to_string().into_bytes()
}

/// The entry of [`SledStore::audit_keys`] for record `id` about `k`.
fn index_key(k: &Key, id: u64) -> Vec<u8> {
    let mut k = key(k);
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
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

impl SledStore {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`, and checks that
    /// it holds what its manifest says was committed ([`StoreError::Damaged`] if not). A store
    /// of an older format is migrated to [`manifest::FORMAT`] first, its manifest then rewritten;
    /// a store without a manifest (new, or made by a version before manifests) gets one.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let store = SledStore::open_unchecked(path, cache_bytes)?;
        let damaged = |problem: String| StoreError::Damaged { path: path.display().to_string(), problem };
        let format = match manifest::read(path).map_err(damaged)? {
            Some(m) => {
                let newest = store.newest()?;
                let at = store.audit_record_bytes(m.last_audit_id)?;
                manifest::check(&m, newest.as_ref(), at.as_deref()).map_err(damaged)?;
                store.manifest_id.store(m.last_audit_id, Ordering::Relaxed);
                m.format
            }
            None => {
                if let Some(n) = store.newest()? {
                    tracing::info!(path = %path.display(), last_audit_id = n.id, "the store has no manifest yet; writing one");
                }
                1
            }
        };
        if format < manifest::FORMAT {
            store.migrate(format)?;
            store.db.flush()?;
            store.manifest_id.store(u64::MAX, Ordering::Relaxed);
            store.write_manifest()?;
        }
        Ok(store)
    }

    /// Brings a store of format `from` to [`manifest::FORMAT`], one step at a time.
    fn migrate(&self, from: u32) -> Result<(), StoreError> {
        if from < 2 {
            self.build_audit_keys()?;
        }
        // 2 to 3: table keys are new records; the address records read as they are.
        if from > 0 {
            tracing::info!(path = %self.path.display(), from, to = manifest::FORMAT, "store format migrated");
        }
        Ok(())
    }

    /// Opens the store without comparing it with its manifest (and without writing one): for
    /// `store verify` and `store recover`, which read what a damaged store still holds.
    pub fn open_unchecked(path: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let config = sled::Config::new().path(path).cache_capacity(cache_bytes).mode(sled::Mode::LowSpace);
        // A store this process closed a moment ago (a restore, then the open that follows) stays
        // locked until sled's threads let go of it: that is waited for, a second at most. A store
        // another process holds is still refused, a second later.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Err(e) if tries < 20 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other,
            }
        }
        .map_err(|e| StoreError::Open { path: path.display().to_string(), message: e.to_string() })?;
        let meta = db.open_tree("meta")?;
        let id_base =
            meta.get(ID_BASE)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes);
        Ok(SledStore {
            path: path.to_owned(),
            id_base,
            manifest_id: Arc::new(AtomicU64::new(u64::MAX)),
            offenders: db.open_tree("offenders")?,
            blocks: db.open_tree("blocks")?,
            allow: db.open_tree("allow")?,
            audit: db.open_tree("audit")?,
            owned: db.open_tree("owned")?,
            audit_keys: db.open_tree("audit_keys")?,
            db,
        })
    }

    /// Format 1 to 2: indexes the audit records of a store written before [`SledStore::audit_keys`]
    /// existed.
    fn build_audit_keys(&self) -> Result<(), StoreError> {
        let mut n = 0u64;
        for r in self.audit.iter() {
            let (k, v) = r?;
            let rec: AuditRecord = decode("audit", &k, &v)?;
            if let Some(net) = &rec.key {
                self.audit_keys.insert(index_key(net, rec.id), &[])?;
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(records = n, "indexed the audit log by key (once, for this version)");
        }
        Ok(())
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

    /// Restores the backup `file` into a new store at `path`, which must hold none (the caller
    /// moves an old one aside). The whole file is checked before the first write; audit ids go on
    /// from the backup's.
    pub fn restore(file: &Path, path: &Path, cache_bytes: u64) -> Result<backup::Counts, StoreError> {
        let bad = |problem: String| StoreError::BadBackup { path: file.display().to_string(), problem };
        let open =
            || std::fs::File::open(file).map(std::io::BufReader::new).map_err(|e| bad(format!("cannot read: {e}")));
        backup::read(open()?, |_| Ok(())).map_err(bad)?;
        let store = SledStore::open_unchecked(path, cache_bytes)?;
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

    /// Writes one backup record as it was.
    fn put_line(&self, line: &backup::Line) -> Result<(), StoreError> {
        use backup::Line;
        match line {
            Line::Block(b) => self.blocks.insert(key(&b.key), encode(b)).map(drop)?,
            Line::Offender { key, offender } => self.offenders.insert(key.as_bytes(), encode(offender)).map(drop)?,
            Line::Allow(a) => self.allow.insert(net_key(&a.net), encode(a)).map(drop)?,
            Line::Owned { key, at } => self.owned.insert(key.as_bytes(), &at.to_be_bytes()).map(drop)?,
            Line::Audit(r) => {
                self.audit.insert(r.id.to_be_bytes(), encode(r))?;
                if let Some(net) = &r.key {
                    self.audit_keys.insert(index_key(net, r.id), &[])?;
                }
            }
            Line::Header(_) | Line::End { .. } => {}
        }
        Ok(())
    }

    /// The stored bytes of audit record `id`.
    fn audit_record_bytes(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.audit.get(id.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// The next audit id (sled's generator, offset by the base a restore set).
    fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.id_base + self.db.generate_id()?)
    }
}

impl Backend for SledStore {
    /// Where the store lives.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Makes every write so far durable, then records it in the manifest.
    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.write_manifest()
    }

    /// Writes every record as a backup ([`backup`]) to `out`. The caller makes sure nothing writes
    /// meanwhile (the daemon runs it in its controller, the only writer), so the copy is of one
    /// moment.
    fn export(&self, out: &mut dyn std::io::Write) -> Result<backup::Counts, StoreError> {
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
        w.finish().map(|(_, counts)| counts).map_err(io)
    }

    /// Everything that is wrong with the store, read whole: the manifest compared with the
    /// database, and every record of every tree decoded. Changes nothing.
    fn verify(&self) -> Result<Verified, StoreError> {
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
                    "allow" => decode::<AllowEntry>(name, &k, &val).map(|a| net_key(&a.net) == k.as_ref()),
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
    fn salvage(&self) -> (Vec<backup::Line>, Vec<String>) {
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

    /// The newest audit record: its id and digest.
    fn newest(&self) -> Result<Option<manifest::Newest>, StoreError> {
        Ok(self.audit.last()?.map(|(k, v)| manifest::Newest {
            id: <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes),
            digest: manifest::digest(&v),
        }))
    }

    fn offender(&self, who: &Key) -> Result<Option<Offender>, StoreError> {
        let k = key(who);
        self.offenders.get(&k)?.map(|v| decode("offenders", &k, &v)).transpose()
    }

    fn put_offender(&self, who: &Key, o: &Offender) -> Result<(), StoreError> {
        self.offenders.insert(key(who), encode(o))?;
        Ok(())
    }

    /// Records a block decision atomically: the block, the offender's updated history (if any) and
    /// the audit record. Returns the audit record's id.
    fn decide(&self, block: &Block, offender: Option<(&Key, &Offender)>, rec: AuditRecord) -> Result<u64, StoreError> {
        let (bk, bv) = (key(&block.key), encode(block));
        let off = offender.map(|(a, o)| (key(a), encode(o)));
        let since = block.since.to_be_bytes();
        let base = self.id_base;
        let id = (&self.blocks, &self.offenders, &self.audit, &self.owned, &self.audit_keys).transaction(
            |(blocks, offenders, audit, owned, keys)| {
                blocks.insert(bk.as_slice(), bv.as_slice())?;
                owned.insert(bk.as_slice(), &since)?;
                if let Some((k, v)) = &off {
                    offenders.insert(k.as_slice(), v.as_slice())?;
                }
                append(audit, keys, base, &rec)
            },
        )?;
        Ok(id)
    }

    /// Carries out the controller's writes in order, [`BATCH`] at a time in one transaction over
    /// every tree: a poll's thousand decisions cost one transaction, not a thousand.
    fn record(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let base = self.id_base;
        for chunk in writes.chunks(BATCH) {
            // Encoded once, outside the transaction (which sled may run more than once).
            let encoded: Vec<Encoded> = chunk.iter().map(Encoded::of).collect();
            (&self.blocks, &self.offenders, &self.audit, &self.owned, &self.audit_keys).transaction(
                |(blocks, offenders, audit, owned, keys)| {
                    let audited = |rec: &AuditRecord| append(audit, keys, base, rec).map(drop);
                    for e in &encoded {
                        match e {
                            Encoded::Offender(k, v) => {
                                offenders.insert(k.as_slice(), v.as_slice())?;
                            }
                            Encoded::Decide { key, block, since, offender, rec } => {
                                blocks.insert(key.as_slice(), block.as_slice())?;
                                owned.insert(key.as_slice(), since)?;
                                if let Some((k, v)) = offender {
                                    offenders.insert(k.as_slice(), v.as_slice())?;
                                }
                                audited(rec)?;
                            }
                            Encoded::Release { key, since, rec } => {
                                let Some(v) = blocks.get(key)? else { continue };
                                let b: Block =
                                    decode("blocks", key, &v).map_err(ConflictableTransactionError::Abort)?;
                                if b.since == *since {
                                    blocks.remove(key.as_slice())?;
                                    audited(rec)?;
                                }
                            }
                            Encoded::Audit(rec) => audited(rec)?,
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// Records many blocks of no offender (an import), each with its audit record built by `rec`,
    /// in transactions of [`BATCH`]: each block is written with its record or not at all, and memory
    /// stays bounded whatever the number of blocks.
    fn decide_many(&self, blocks: &[Block], rec: &dyn Fn(&Block) -> AuditRecord) -> Result<(), StoreError> {
        let base = self.id_base;
        for chunk in blocks.chunks(BATCH) {
            let encoded: Vec<(Vec<u8>, Vec<u8>, AuditRecord)> =
                chunk.iter().map(|b| (key(&b.key), encode(b), rec(b))).collect();
            (&self.blocks, &self.audit, &self.owned, &self.audit_keys).transaction(|(bt, at, ot, kt)| {
                for (k, v, r) in &encoded {
                    bt.insert(k.as_slice(), v.as_slice())?;
                    ot.insert(k.as_slice(), &r.at.to_be_bytes())?;
                    append(at, kt, base, r)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })?;
        }
        Ok(())
    }

    /// Removes the block of `key` if it is still the one that started at `since` (a newer block of
    /// the same key is left alone), with its audit record. Returns whether it was removed.
    fn release(&self, which: &Key, since: Millis, rec: AuditRecord) -> Result<bool, StoreError> {
        let k = key(which);
        let base = self.id_base;
        let removed = (&self.blocks, &self.audit, &self.audit_keys).transaction(|(blocks, audit, keys)| {
            let Some(v) = blocks.get(&k)? else { return Ok(false) };
            let b: Block = decode("blocks", &k, &v).map_err(ConflictableTransactionError::Abort)?;
            if b.since != since {
                return Ok(false);
            }
            blocks.remove(k.as_slice())?;
            append(audit, keys, base, &rec)?;
            Ok::<_, ConflictableTransactionError<StoreError>>(true)
        })?;
        Ok(removed)
    }

    /// Whether stickwarden has blocked `net` (within the audit retention).
    fn owns(&self, which: &Key) -> Result<bool, StoreError> {
        Ok(self.owned.contains_key(key(which))?)
    }

    /// Appends one audit record; returns its id.
    fn audit(&self, mut rec: AuditRecord) -> Result<u64, StoreError> {
        rec.id = self.next_id()?;
        let (k, v) = (rec.id.to_be_bytes(), encode(&rec));
        let entry = rec.key.as_ref().map(|net| index_key(net, rec.id));
        (&self.audit, &self.audit_keys).transaction(|(audit, keys)| {
            audit.insert(&k, v.as_slice())?;
            if let Some(e) = &entry {
                keys.insert(e.as_slice(), &[])?;
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(rec.id)
    }

    fn block(&self, which: &Key) -> Result<Option<Block>, StoreError> {
        let k = key(which);
        self.blocks.get(&k)?.map(|v| decode("blocks", &k, &v)).transpose()
    }

    /// Every block, read one at a time (for listings too long to hold whole).
    fn blocks_iter(&self) -> Box<dyn Iterator<Item = Result<Block, StoreError>> + Send + 'static> {
        Box::new(self.blocks.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v))))
    }

    /// Up to `n` blocks in store order, after the one keyed `after` (from the start when `None`):
    /// a page of a listing read a little at a time.
    fn blocks_after(&self, after: Option<&Key>, n: usize) -> Result<Vec<Block>, StoreError> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(key(a)));
        self.blocks
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
            .take(n)
            .map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v)))
            .collect()
    }

    fn blocks(&self) -> Result<Vec<Block>, StoreError> {
        self.blocks.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("blocks", &k, &v))).collect()
    }

    fn put_allow(&self, e: &AllowEntry) -> Result<(), StoreError> {
        self.allow.insert(net_key(&e.net), encode(e))?;
        Ok(())
    }

    /// Removes the allowlist entry of exactly `net`; returns it if there was one.
    fn remove_allow(&self, net: &IpNet) -> Result<Option<AllowEntry>, StoreError> {
        let k = net_key(net);
        self.allow.remove(&k)?.map(|v| decode("allow", &k, &v)).transpose()
    }

    fn allows(&self) -> Result<Vec<AllowEntry>, StoreError> {
        self.allow.iter().map(|r| r.map_err(StoreError::from).and_then(|(k, v)| decode("allow", &k, &v))).collect()
    }

    /// Audit records from `since` on, oldest first.
    fn audit_since(&self, since: Millis) -> Result<Vec<AuditRecord>, StoreError> {
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

    fn audit_about(&self, keys: &[Key]) -> Result<Vec<AuditRecord>, StoreError> {
        let mut ids = Vec::new();
        for k in keys {
            let mut prefix = key(k);
            prefix.push(0);
            for r in self.audit_keys.scan_prefix(&prefix) {
                let (k, _) = r?;
                let id = <[u8; 8]>::try_from(&k[prefix.len()..]).map(u64::from_be_bytes).map_err(|_| {
                    StoreError::Corrupt {
                        tree: "audit_keys",
                        key: String::from_utf8_lossy(&k).into_owned(),
                        error: "not a key, a NUL and an id".into(),
                    }
                })?;
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // A record pruned since its entry was read is simply gone.
            if let Some(v) = self.audit.get(id.to_be_bytes())? {
                out.push(decode("audit", &id.to_be_bytes(), &v)?);
            }
        }
        Ok(out)
    }

    fn audit_back(&self, before: Option<u64>, f: &mut dyn FnMut(AuditRecord) -> bool) -> Result<(), StoreError> {
        let end = before.map_or(std::ops::Bound::Unbounded, |b| std::ops::Bound::Excluded(b.to_be_bytes()));
        for r in self.audit.range((std::ops::Bound::Unbounded, end)).rev() {
            let (k, v) = r?;
            if !f(decode("audit", &k, &v)?) {
                break;
            }
        }
        Ok(())
    }

    /// Drops offenders with no offence and no score since `offender_cutoff`, and audit records
    /// older than `audit_cutoff`. Returns (offenders, audit records) removed.
    fn prune(&self, offender_cutoff: Millis, audit_cutoff: Millis) -> Result<(usize, usize), StoreError> {
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
            if let Some(net) = &rec.key {
                self.audit_keys.remove(index_key(net, rec.id))?;
            }
            self.audit.remove(&k)?;
            audit += 1;
        }
        Ok((offenders, audit))
    }
}

/// Appends `rec` to the audit log within a transaction, with its entry in the key index; returns
/// its id.
fn append(
    audit: &sled::transaction::TransactionalTree,
    keys: &sled::transaction::TransactionalTree,
    base: u64,
    rec: &AuditRecord,
) -> Result<u64, ConflictableTransactionError<StoreError>> {
    let mut rec = rec.clone();
    rec.id = base + audit.generate_id()?;
    audit.insert(&rec.id.to_be_bytes(), encode(&rec))?;
    if let Some(net) = &rec.key {
        keys.insert(index_key(net, rec.id), &[])?;
    }
    Ok(rec.id)
}

/// A [`Write`] with its keys and values encoded, ready for a transaction.
enum Encoded<'a> {
    Offender(Vec<u8>, Vec<u8>),
    Decide { key: Vec<u8>, block: Vec<u8>, since: [u8; 8], offender: Option<(Vec<u8>, Vec<u8>)>, rec: &'a AuditRecord },
    Release { key: Vec<u8>, since: Millis, rec: &'a AuditRecord },
    Audit(&'a AuditRecord),
}

impl<'a> Encoded<'a> {
    fn of(w: &'a Write) -> Encoded<'a> {
        match w {
            Write::Offender(who, o) => Encoded::Offender(key(who), encode(o)),
            Write::Decide { block, offender, rec } => Encoded::Decide {
                key: key(&block.key),
                block: encode(block.as_ref()),
                since: block.since.to_be_bytes(),
                offender: offender.as_ref().map(|(a, o)| (key(a), encode(o))),
                rec,
            },
            Write::Release { key: k, since, rec } => Encoded::Release { key: key(k), since: *since, rec },
            Write::Audit(rec) => Encoded::Audit(rec),
        }
    }
}
