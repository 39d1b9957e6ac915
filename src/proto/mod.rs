//! The Runtime API protocol, with no socket in sight: commands and their encoding, key
//! validation, answer framing, error classification, and parsers of every answer stickwarden
//! reads. Everything here works on byte slices and is tested on text captured from real HAProxy
//! 2.6.12 and 3.4.0 (`tests/fixtures`, copied from the project's shared captures).

pub mod acl;
pub mod command;
pub mod error;
pub mod escape;
pub mod frame;
pub mod info;
pub mod key;
pub mod sess;
pub mod table;

/// Parses an object address as HAProxy prints it (`%p`: `0x` and up to 16 hex digits).
pub(crate) fn parse_ptr(text: &str) -> Option<u64> {
    let hex = text.strip_prefix("0x")?;
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

pub use command::{AclPattern, AclRef, Command, CommandError, DataField, Filter, FilterOp, MapKey, TableSelect};
pub use error::{ErrorKind, HaproxyError};
pub use key::{KeyError, KeyType, TableKey};

#[cfg(test)]
pub(crate) mod test_fixtures {
    //! Access to the captured answers in `tests/fixtures`.

    pub const VERSIONS: [&str; 2] = ["haproxy-2.6.12", "haproxy-3.4.0"];

    pub fn fixture(version: &str, name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{version}/{name}.txt", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
    }
}
