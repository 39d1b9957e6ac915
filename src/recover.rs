//! `stickwarden store recover`: a damaged store rebuilt from every source that still knows
//! something, with the daemon stopped. The damaged store is moved aside (never deleted), and a
//! new one is written from, in order of trust:
//!
//! 1. every record of the damaged store that still reads back (a copy is read, so the evidence
//!    stays as it was found);
//! 2. a backup, when one is given (`--backup FILE`): its records fill what the damage took, and a
//!    block or audit record both sources hold is taken from the store, the newer;
//! 3. HAProxy itself: an ACL pattern or a tag of a key the store (or the backup) says stickwarden
//!    once blocked, with no block left to say until when, becomes a block of rule `recovered`
//!    lasting `--for`, so it is released on time instead of staying forever. Keys stickwarden
//!    never blocked are left alone and counted (`--adopt` takes them too, for an ACL file and a
//!    tag no one else writes).
//!
//! The result is written as a backup would be and restored ([`Store::restore`]), so ids, the
//! manifest and the format are those of any restored store; each block taken back from HAProxy
//! and the recovery itself are audited as `recovered`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::key::Key;

use crate::client::{Client, ClientOptions};
use crate::config::Config;
use crate::rules::{Action, Actions};
use crate::store::backup::{self, Line};
use crate::store::{AuditRecord, Block, Event, Origin, Place, Store};
use crate::time::{ms, now_ms, Millis};

/// The actor of what recovery writes.
pub const ACTOR: &str = "stickwarden store recover";

/// What a recovery found and did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Where the damaged store was moved.
    pub damaged_moved_to: String,
    /// Records read back from the damaged store.
    pub from_store: backup::Counts,
    /// What could not be read from it.
    pub unreadable: Vec<String>,
    /// Records taken from the backup that the store no longer had.
    pub from_backup: backup::Counts,
    /// Blocks rebuilt from what HAProxy held.
    pub from_haproxy: Vec<String>,
    /// HAProxy entries of keys stickwarden never blocked, left alone.
    pub foreign: Vec<String>,
    /// Targets that could not be read (what they hold was not recovered).
    pub unreachable: Vec<String>,
    /// Active blocks in the new store.
    pub blocks: u64,
}

/// How a recovery runs.
pub struct Options<'a> {
    pub backup: Option<&'a Path>,
    /// How long a block rebuilt from HAProxy lasts.
    pub hold: Duration,
    /// Take HAProxy entries of keys stickwarden never blocked too.
    pub adopt: bool,
}

/// Everything known, keyed as the store keys it.
#[derive(Default)]
struct Merged {
    blocks: BTreeMap<String, Block>,
    offenders: BTreeMap<String, crate::store::Offender>,
    allow: BTreeMap<String, crate::store::AllowEntry>,
    owned: BTreeMap<String, Millis>,
    audit: BTreeMap<u64, AuditRecord>,
}

impl Merged {
    /// Adds a record; `prefer` says whether it wins over one already there with the same key.
    fn add(&mut self, line: Line, prefer: bool) -> bool {
        fn put<K: Ord, V>(m: &mut BTreeMap<K, V>, k: K, v: V, prefer: bool) -> bool {
            match m.entry(k) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(v);
                    true
                }
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    if prefer {
                        e.insert(v);
                    }
                    false
                }
            }
        }
        match line {
            Line::Block(b) => {
                let newer = self.blocks.get(&b.key.to_string()).is_none_or(|o| b.since > o.since);
                put(&mut self.blocks, b.key.to_string(), b, prefer && newer)
            }
            Line::Offender { key, offender } => put(&mut self.offenders, key, offender, prefer),
            Line::Allow(a) => put(&mut self.allow, a.net.to_string(), a, prefer),
            Line::Owned { key, at } => {
                let at = self.owned.get(&key).map_or(at, |o| at.max(*o));
                put(&mut self.owned, key, at, true)
            }
            Line::Audit(r) => put(&mut self.audit, r.id, r, prefer),
            Line::Header(_) | Line::End { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(String),
}

/// Rebuilds the store of `cfg` (see the module's documentation). The daemon must be stopped.
pub async fn recover(cfg: &Config, opts: &Options<'_>) -> Result<Report, RecoverError> {
    let path = cfg.store.path.clone();
    if !crate::store::exists(&path) {
        return Err(RecoverError::Refused(format!("there is no store at {}", path.display())));
    }
    if crate::store::in_use(&path) {
        return Err(RecoverError::Refused(format!(
            "the store at {} is open in a running stickwarden: stop it first",
            path.display()
        )));
    }
    let now = now_ms();
    let mut report = Report::default();
    let mut merged = Merged::default();

    // 1. What the damaged store still holds, read from a copy.
    let scratch = tempfile::tempdir().map_err(|e| RecoverError::Io(e.to_string()))?;
    match Store::open_copy(&path, cfg.store.cache_bytes) {
        Ok((_copy, damaged)) => {
            let (lines, unreadable) = damaged.salvage();
            report.unreadable = unreadable;
            for l in lines {
                report.from_store.count(&l);
                merged.add(l, true);
            }
        }
        Err(e) => report.unreadable.push(format!("the database cannot be opened at all: {e}")),
    }

    // 2. The backup fills the gaps.
    if let Some(file) = opts.backup {
        let input = std::fs::File::open(file)
            .map(std::io::BufReader::new)
            .map_err(|e| RecoverError::Refused(format!("{}: cannot read: {e}", file.display())))?;
        backup::read(input, |l| {
            let probe = l.clone();
            if merged.add(l, false) {
                report.from_backup.count(&probe);
            }
            Ok(())
        })
        .map_err(|e| RecoverError::Refused(format!("{}: {e}; nothing was changed", file.display())))?;
    }

    // 3. What HAProxy holds of keys stickwarden blocked, with no block left to end it.
    let mut held: HashMap<IpNet, HashSet<Action>> = HashMap::new();
    for t in &cfg.targets {
        let read = async {
            let client = Client::connect(t.target.clone(), ClientOptions::default()).await?;
            crate::daemon::reconcile::read(&t.name, &client, cfg, &mut None, crate::time::now_ms()).await
        };
        match read.await {
            Ok(actual) => {
                for k in actual.acl.into_iter().flatten() {
                    held.entry(k).or_default().insert(Action::Acl);
                }
                for a in actual.tagged.into_iter().flatten() {
                    held.entry(crate::net::host_net(a)).or_default().insert(Action::Tag);
                }
            }
            Err(e) => report.unreachable.push(format!("{}: {e}", t.name)),
        }
    }
    let mut next_id = merged.audit.keys().next_back().copied().unwrap_or(0) + 1;
    let mut keys: Vec<(IpNet, HashSet<Action>)> = held.into_iter().collect();
    keys.sort_by_key(|(k, _)| *k);
    for (key, actions) in keys {
        let k = key.to_string();
        if merged.blocks.contains_key(&k) {
            continue;
        }
        if !merged.owned.contains_key(&k) && !opts.adopt {
            report.foreign.push(crate::net::display(&key));
            continue;
        }
        let mut actions: Vec<Action> = actions.into_iter().collect();
        actions.sort_by_key(|a| a.as_str());
        // Taken back from where today's [block] puts things: that is where release goes.
        let actions = Actions::new(actions);
        let block = Block {
            key: Key::Net(key),
            level: 0,
            place: Some(std::sync::Arc::new(Place::of(&cfg.block, &actions))),
            nodes: Vec::new(),
            actions,
            rule: "recovered".into(),
            reason: "held by HAProxy when the store was recovered".into(),
            source: Origin::Auto,
            actor: ACTOR.into(),
            since: now,
            until: now + ms(opts.hold),
            counters: Vec::new(),
            dry_run: false,
        };
        let mut rec = AuditRecord::of(Event::Recovered, &block, now);
        rec.id = next_id;
        rec.reason = format!("taken back from HAProxy, released in {}", crate::time::human(opts.hold));
        next_id += 1;
        merged.owned.insert(k.clone(), now);
        merged.audit.insert(rec.id, rec);
        report.from_haproxy.push(crate::net::display(&key));
        merged.blocks.insert(k, block);
    }
    let mut note = AuditRecord::note(
        Event::Recovered,
        now,
        ACTOR,
        format!(
            "store recovered: {} from the damaged store, {} from the backup, {} blocks from HAProxy; {} unreadable",
            report.from_store,
            report.from_backup,
            report.from_haproxy.len(),
            report.unreadable.len()
        ),
    );
    note.id = next_id;
    merged.audit.insert(note.id, note);
    report.blocks = merged.blocks.len() as u64;

    // Written as a backup, then restored into a fresh store; the damaged one is kept beside it.
    let file = scratch.path().join("recovered.jsonl");
    write_backup(&merged, &file).map_err(|e| RecoverError::Io(format!("cannot write the recovered records: {e}")))?;
    let aside = PathBuf::from(format!("{}.damaged-{now}", path.display()));
    std::fs::rename(&path, &aside)
        .map_err(|e| RecoverError::Io(format!("cannot move {} aside: {e}", path.display())))?;
    report.damaged_moved_to = aside.display().to_string();
    if let Err(e) = Store::restore(&file, &path, cfg.store.cache_bytes) {
        // Put things back as they were found.
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::rename(&aside, &path);
        return Err(e.into());
    }
    Ok(report)
}

fn write_backup(m: &Merged, file: &Path) -> std::io::Result<()> {
    let out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut w = backup::Writer::new(out, m.audit.keys().next_back().copied().unwrap_or(0))?;
    for b in m.blocks.values() {
        w.line(&Line::Block(b.clone()))?;
    }
    for (key, offender) in &m.offenders {
        w.line(&Line::Offender { key: key.clone(), offender: offender.clone() })?;
    }
    for a in m.allow.values() {
        w.line(&Line::Allow(a.clone()))?;
    }
    for (key, at) in &m.owned {
        w.line(&Line::Owned { key: key.clone(), at: *at })?;
    }
    for r in m.audit.values() {
        w.line(&Line::Audit(r.clone()))?;
    }
    w.finish().map(drop)
}
