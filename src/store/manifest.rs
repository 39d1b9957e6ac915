//! The manifest: a small file beside the database that says what the store last committed, so
//! that a damaged or rolled-back database is detected at open instead of being read as empty.
//!
//! sled checks each of its log messages and, when one is damaged, silently treats the log as
//! ending there: a byte flipped in the middle of the file can make a store of thousands of
//! blocks open as an empty one. Every audit record gets a strictly increasing id, and every
//! decision (block, release, allowlist change, recovery) writes one, so the newest audit id and a
//! digest of that record are a cheap fingerprint of "everything up to here". After each flush the
//! manifest is rewritten (a temp file, fsync, rename, fsync of the directory) when the newest id
//! changed; at open, the database must still hold that record, unchanged. A store rolled back to an
//! older copy, truncated, with its database deleted, or damaged anywhere before its newest record
//! fails the check. What it cannot see: damage to the manifest's own file together with the
//! database, which `store verify` then reports as a store without a manifest.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// The manifest's file name, inside the store directory.
pub const FILE: &str = "stickwarden-manifest.json";

/// The store's format version, written in the manifest. Opening a store of an older format
/// migrates it ([`crate::store::sled::SledStore::open`]); a newer one is refused.
///
/// - 1: offenders, blocks, allowlist, audit log, owned keys.
/// - 2: and the audit log indexed by key (`audit_keys`), built at the first open.
/// - 3: and keys of tables keyed by string or integer (`@TABLE/KEY`, [`crate::key::Key`]) beside
///   addresses, which an older version would take for damage. Address records are unchanged:
///   nothing to rewrite.
pub const FORMAT: u32 = 3;

/// The format of backup files: their lines, which formats 2 and 3 did not change (a table key is
/// one more kind of key text). A backup of format 1 restores into a store of any format.
pub const BACKUP_FORMAT: u32 = 1;

/// What the store had committed when the manifest was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The newest audit record's id (0: none yet).
    pub last_audit_id: u64,
    /// SHA-256 (hex, first 16 bytes) of that record as stored.
    pub last_audit_digest: String,
    /// When it was written.
    pub written_at: Millis,
}

pub fn path(store: &Path) -> PathBuf {
    store.join(FILE)
}

/// SHA-256 of a stored record, the first 16 bytes in hex.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest of the store at `store`: `Ok(None)` when there is none.
pub fn read(store: &Path) -> Result<Option<Manifest>, String> {
    let p = path(store);
    match std::fs::read(&p) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{} cannot be read: {e}", p.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

/// Writes `m` durably: a temp file, fsync'd, renamed over the manifest, and the directory fsync'd,
/// so a crash leaves the old manifest or the new one, never a torn one.
pub fn write(store: &Path, m: &Manifest) -> std::io::Result<()> {
    let tmp = store.join(format!("{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(m).expect("a manifest serializes"))?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path(store))?;
    std::fs::File::open(store)?.sync_all()
}

/// What the database holds of its newest audit record, to compare with the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Newest {
    pub id: u64,
    pub digest: String,
}

/// Whether the database, whose newest audit record is `newest` (and that holds `at_manifest`,
/// the record of the manifest's id, if any), still has what the manifest says was committed.
/// `Err` says what is wrong, for people.
pub fn check(m: &Manifest, newest: Option<&Newest>, at_manifest: Option<&[u8]>) -> Result<(), String> {
    if m.format > FORMAT {
        return Err(format!(
            "the store is of format {} and this stickwarden reads format {FORMAT} at most: use a newer stickwarden",
            m.format
        ));
    }
    if m.last_audit_id == 0 {
        return Ok(());
    }
    let when = crate::time::rfc3339(m.written_at);
    let Some(newest) = newest else {
        return Err(format!(
            "the database holds no audit record, but audit record #{} was committed ({when}): \
             the database is damaged, deleted or replaced by an empty one",
            m.last_audit_id
        ));
    };
    if newest.id < m.last_audit_id {
        return Err(format!(
            "the database's newest audit record is #{}, but #{} was committed ({when}): \
             the database lost its latest writes (damaged, truncated, or rolled back to an older copy)",
            newest.id, m.last_audit_id
        ));
    }
    match at_manifest {
        None => Err(format!(
            "audit record #{} committed ({when}) is missing from the database: it is damaged",
            m.last_audit_id
        )),
        Some(bytes) if digest(bytes) != m.last_audit_digest => Err(format!(
            "audit record #{} committed ({when}) has changed since: the database is damaged",
            m.last_audit_id
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, record: &[u8]) -> Manifest {
        Manifest { format: FORMAT, last_audit_id: id, last_audit_digest: digest(record), written_at: 0 }
    }

    #[test]
    fn a_store_behind_its_manifest_is_refused() {
        let rec = b"{\"id\":7}";
        let newest = |id| Newest { id, digest: String::new() };
        assert!(check(&m(7, rec), Some(&newest(7)), Some(rec)).is_ok());
        assert!(check(&m(7, rec), Some(&newest(9)), Some(rec)).is_ok(), "written after the manifest: fine");
        assert!(check(&m(0, b""), None, None).is_ok(), "a new store");
        assert!(check(&m(7, rec), None, None).unwrap_err().contains("holds no audit record"));
        assert!(check(&m(7, rec), Some(&newest(5)), None).unwrap_err().contains("lost its latest writes"));
        assert!(check(&m(7, rec), Some(&newest(9)), None).unwrap_err().contains("is missing"));
        assert!(check(&m(7, rec), Some(&newest(9)), Some(b"{\"id\":8}")).unwrap_err().contains("has changed"));
        let newer = Manifest { format: FORMAT + 1, ..m(7, rec) };
        assert!(check(&newer, Some(&newest(7)), Some(rec)).unwrap_err().contains("use a newer stickwarden"));
    }

    #[test]
    fn written_atomically_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), &m(3, b"x")).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m(3, b"x")));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        std::fs::write(path(dir.path()), "{ torn").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("cannot be read"));
    }
}
