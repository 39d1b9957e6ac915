//! The store: offenders, active blocks, the allowlist and the append-only audit log, in sled.
//!
//! [`Store`] is a cheap-to-clone handle; nothing outside this module sees a sled type. Calls are
//! synchronous and short (the daemon runs them on the blocking pool); [`Store::decide`] writes a
//! block, its offender and its audit record in one transaction, and [`Store::flush`] makes them
//! durable, which the controller does before it acts on any of them.

pub mod model;

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

pub use model::{AllowEntry, AuditRecord, Block, Event, Offence, Offender, Origin, Score};

use crate::time::Millis;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: record {key} of {tree} cannot be read: {error}")]
    Corrupt { tree: &'static str, key: String, error: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> StoreError {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// Blocks per transaction of [`Store::decide_many`].
pub const BATCH: usize = 5_000;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
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

impl Store {
    /// Opens (or creates) the store at `path` with a page cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        Ok(Store {
            offenders: db.open_tree("offenders")?,
            blocks: db.open_tree("blocks")?,
            allow: db.open_tree("allow")?,
            audit: db.open_tree("audit")?,
            owned: db.open_tree("owned")?,
            db,
        })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
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
        let id = (&self.blocks, &self.offenders, &self.audit, &self.owned).transaction(
            |(blocks, offenders, audit, owned)| {
                blocks.insert(bk.as_slice(), bv.as_slice())?;
                owned.insert(bk.as_slice(), &since)?;
                if let Some((k, v)) = &off {
                    offenders.insert(k.as_slice(), v.as_slice())?;
                }
                let mut rec = rec.clone();
                rec.id = audit.generate_id()?;
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
        for chunk in blocks.chunks(BATCH) {
            let encoded: Vec<(Vec<u8>, Vec<u8>, AuditRecord)> =
                chunk.iter().map(|b| (key(&b.key), encode(b), rec(b))).collect();
            (&self.blocks, &self.audit, &self.owned).transaction(|(bt, at, ot)| {
                for (k, v, r) in &encoded {
                    bt.insert(k.as_slice(), v.as_slice())?;
                    ot.insert(k.as_slice(), &r.at.to_be_bytes())?;
                    let mut r = r.clone();
                    r.id = at.generate_id()?;
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
        let removed = (&self.blocks, &self.audit).transaction(|(blocks, audit)| {
            let Some(v) = blocks.get(&k)? else { return Ok(false) };
            let b: Block = decode("blocks", &k, &v).map_err(ConflictableTransactionError::Abort)?;
            if b.since != since {
                return Ok(false);
            }
            blocks.remove(k.as_slice())?;
            let mut rec = rec.clone();
            rec.id = audit.generate_id()?;
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
        rec.id = self.db.generate_id()?;
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
        for r in self.audit.iter() {
            let (k, v) = r?;
            let rec: AuditRecord = decode("audit", &k, &v)?;
            if rec.at >= audit_cutoff {
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
