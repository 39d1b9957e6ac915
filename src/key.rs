//! What a block, an offender and an audit record are about: a [`Key`]. Most tables are keyed by
//! the client's address, and so are most blocks (an address or a network, [`crate::net`]'s
//! canonical form; every action applies). A table may be keyed by something else, an API key or
//! a user id from a header (`type string`) or a customer number (`type integer`): its offenders
//! are blocked by that key, in that table (`tag`) or a map (`map:CLASS`); the ACL, session kills
//! and aggregation stay address-only. A table key is validated against its table's declared type
//! ([`crate::proto::TableKey::parse`]) before it becomes a `Key`, so it is always sendable.
//!
//! The stored form of an address key is the network's text (`10.0.0.1/32`), as before table keys
//! existed, so older stores read unchanged; a table key is stored as `@TABLE/KEY` (a table name
//! holds no `/` and no IP text starts with `@`).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::proto::{KeyType, TableKey};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// An address (a full-length network) or a network.
    Net(IpNet),
    /// A key of a table that is not keyed by address (boxed: an address key, by far the most
    /// common, stays the size of a network in the daemon's index).
    Table(Box<Named>),
}

/// A key of a table, as HAProxy shows and takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Named {
    pub table: String,
    pub key: String,
}

impl Key {
    /// The key of a client address.
    pub fn host(addr: IpAddr) -> Key {
        Key::Net(crate::net::host_net(addr))
    }

    /// A key of `table`, as it is (unchecked: [`Key::in_table`] checks it against a type).
    pub fn named(table: &str, key: &str) -> Key {
        Key::Table(Box::new(Named { table: table.to_owned(), key: key.to_owned() }))
    }

    /// A key of `table` (of type `ty`), checked as [`TableKey::parse`] checks it.
    pub fn in_table(table: &str, ty: KeyType, text: &str) -> Result<Key, String> {
        match ty {
            KeyType::Ip | KeyType::Ipv6 => crate::net::parse_net(text).map(Key::Net),
            KeyType::Binary => Err(format!("table {table} is keyed by binary: not supported")),
            _ => {
                let k = TableKey::parse(ty, text).map_err(|e| format!("table {table} ({ty}): {e}"))?;
                Ok(Key::named(table, &k.to_string()))
            }
        }
    }

    /// The network, for an address key.
    pub fn net(&self) -> Option<&IpNet> {
        match self {
            Key::Net(n) => Some(n),
            Key::Table(_) => None,
        }
    }

    /// The table of a table key.
    pub fn table(&self) -> Option<&str> {
        match self {
            Key::Net(_) => None,
            Key::Table(t) => Some(&t.table),
        }
    }

    /// The address of a one-address key.
    pub fn addr(&self) -> Option<IpAddr> {
        self.net().filter(|n| crate::net::is_host(n)).map(|n| n.addr())
    }

    /// Whether it names one client (an address, or a table key), not a network.
    pub fn is_single(&self) -> bool {
        self.net().is_none_or(crate::net::is_host)
    }

    /// Whether a block of one reaches what the other names: networks that overlap, or the same
    /// table key.
    pub fn overlaps(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Net(a), Key::Net(b)) => crate::net::overlaps(a, b),
            (a, b) => a == b,
        }
    }

    /// The key alone as people and HAProxy write it: `10.0.0.1`, `10.0.0.0/24`, `k-123`.
    pub fn text(&self) -> String {
        match self {
            Key::Net(n) => crate::net::display(n),
            Key::Table(t) => t.key.clone(),
        }
    }

    /// The stored form (also the order of the store's trees).
    pub fn stored(&self) -> String {
        match self {
            Key::Net(n) => n.to_string(),
            Key::Table(t) => format!("@{}/{}", t.table, t.key),
        }
    }

    /// Reads the stored form back.
    pub fn from_stored(s: &str) -> Result<Key, String> {
        match s.strip_prefix('@') {
            Some(rest) => {
                let (table, key) = rest.split_once('/').ok_or_else(|| format!("'{s}': a table key without '/'"))?;
                if table.is_empty() || key.is_empty() {
                    return Err(format!("'{s}': an empty table or key"));
                }
                Ok(Key::named(table, key))
            }
            None => s.parse::<IpNet>().map(Key::Net).map_err(|e| format!("'{s}': {e}")),
        }
    }
}

impl From<IpNet> for Key {
    fn from(n: IpNet) -> Key {
        Key::Net(n)
    }
}

/// `10.0.0.1`, `10.0.0.0/24`, or `k-123 in st_apikey`.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Net(n) => f.write_str(&crate::net::display(n)),
            Key::Table(t) => write!(f, "{} in {}", t.key, t.table),
        }
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.stored())
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        d.deserialize_string(KeyVisitor)
    }
}

/// Reads the stored form from the text in place: a million records decoded allocate no text of
/// their own for their keys.
struct KeyVisitor;

impl serde::de::Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address, a network, or @TABLE/KEY")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Key, E> {
        Key::from_stored(s).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_are_stored_as_before_and_table_keys_round_trip() {
        let k = Key::host("10.0.0.1".parse().unwrap());
        assert_eq!(serde_json::to_string(&k).unwrap(), r#""10.0.0.1/32""#);
        // A record written before table keys existed reads unchanged.
        let old: IpNet = "2001:db8::/64".parse().unwrap();
        let back: Key = serde_json::from_str(&serde_json::to_string(&old).unwrap()).unwrap();
        assert_eq!(back, Key::Net(old));
        for text in ["k-123", "a b;c\\d", "x/y/z", "@"] {
            let k = Key::in_table("st_apikey", KeyType::String { len: Some(64) }, text).unwrap();
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), k, "{json}");
            assert_eq!(k.text(), text);
        }
        assert_eq!(
            Key::in_table("st_apikey", KeyType::String { len: None }, "k-1").unwrap().stored(),
            "@st_apikey/k-1"
        );
        assert!(Key::from_stored("@st_apikey").is_err());
        assert!(Key::from_stored("not a key").is_err());
    }

    #[test]
    fn an_address_key_is_no_bigger_than_with_table_keys_boxed() {
        assert!(std::mem::size_of::<Key>() <= 24, "{}", std::mem::size_of::<Key>());
    }

    #[test]
    fn table_keys_are_checked_against_the_declared_type() {
        let s = KeyType::String { len: Some(8) };
        assert!(Key::in_table("t", s, "123456789").unwrap_err().contains("at most 8 bytes"));
        assert!(Key::in_table("t", s, "a\nb").is_err(), "a newline cannot travel");
        assert!(Key::in_table("t", s, "").is_err());
        assert!(Key::in_table("t", KeyType::Integer, "12a").is_err());
        assert!(Key::in_table("t", KeyType::Integer, "-1").is_err());
        assert_eq!(Key::in_table("t", KeyType::Integer, "4294967295").unwrap().text(), "4294967295");
        assert!(Key::in_table("t", KeyType::Binary, "00").is_err());
        // An address table: the address rules (canonical, mapped IPv4 folded).
        assert_eq!(Key::in_table("t", KeyType::Ip, "::ffff:10.0.0.1").unwrap(), Key::host("10.0.0.1".parse().unwrap()));
        assert!(Key::in_table("t", KeyType::Ip, "999.1.1.1").is_err());
    }
}
