//! Stick-table key types and the validation of keys before they are sent.
//!
//! HAProxy's own key parsing is not to be trusted with user input: 2.6 silently turns
//! `999.1.1.1` into `231.1.1.1`, 3.4 stores `abc` in an integer table as `0`, and a string key longer
//! than the table's `len` is truncated into another client's key. Every key therefore goes through
//! [`TableKey::parse`] against the table's [`KeyType`] and is sent in a canonical form.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::escape::{escape_arg, EscapeError};

/// The type of a stick table's key, as named in the `# table:` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ip,
    Ipv6,
    Integer,
    /// `len` is not shown by the Runtime API; it is known only when configured.
    String {
        len: Option<usize>,
    },
    Binary,
}

impl KeyType {
    /// Parses the header's type word (`ip`, `ipv6`, `integer`, `string`, `binary`).
    pub fn from_header(word: &str) -> Option<KeyType> {
        Some(match word {
            "ip" => KeyType::Ip,
            "ipv6" => KeyType::Ipv6,
            "integer" => KeyType::Integer,
            "string" => KeyType::String { len: None },
            "binary" => KeyType::Binary,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            KeyType::Ip => "ip",
            KeyType::Ipv6 => "ipv6",
            KeyType::Integer => "integer",
            KeyType::String { .. } => "string",
            KeyType::Binary => "binary",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key that has been checked against its table's type and is safe to send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TableKey {
    Ip(Ipv4Addr),
    Ipv6(Ipv6Addr),
    Integer(u32),
    String(Vec<u8>),
}

/// Why a key was refused before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("'{0}' is not a valid IPv4 address")]
    NotIpv4(String),
    #[error("'{0}' is not a valid IPv4 or IPv6 address")]
    NotIp(String),
    #[error("'{0}' is an IPv6 address; an ip table only holds IPv4 keys")]
    Ipv6InIpTable(String),
    #[error("'{0}' is not an integer key (decimal, 0 to 4294967295)")]
    NotInteger(String),
    #[error("string key is {len} bytes long; the table's keys are at most {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("string key {0}")]
    Unsendable(EscapeError),
    #[error("binary tables cannot be addressed by key through the Runtime API")]
    Binary,
}

impl TableKey {
    /// Validates `text` as a key of a table of type `ty`.
    ///
    /// IPv4-mapped IPv6 addresses become IPv4 in an `ip` table, and IPv4 addresses become
    /// `::ffff:a.b.c.d` in an `ipv6` table, which is how HAProxy itself stores IPv4 clients there.
    pub fn parse(ty: KeyType, text: &str) -> Result<TableKey, KeyError> {
        match ty {
            KeyType::Ip => match parse_ip(text)? {
                IpAddr::V4(v4) => Ok(TableKey::Ip(v4)),
                IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                    Some(v4) => Ok(TableKey::Ip(v4)),
                    None => Err(KeyError::Ipv6InIpTable(text.to_owned())),
                },
            },
            KeyType::Ipv6 => Ok(TableKey::Ipv6(match parse_ip(text)? {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            })),
            KeyType::Integer => {
                let ok = !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
                match text.parse::<u32>() {
                    Ok(n) if ok => Ok(TableKey::Integer(n)),
                    _ => Err(KeyError::NotInteger(text.to_owned())),
                }
            }
            KeyType::String { len } => {
                let bytes = text.as_bytes();
                escape_arg(bytes, &mut Vec::new()).map_err(KeyError::Unsendable)?;
                match len {
                    Some(max) if bytes.len() > max => Err(KeyError::TooLong { len: bytes.len(), max }),
                    _ => Ok(TableKey::String(bytes.to_vec())),
                }
            }
            KeyType::Binary => Err(KeyError::Binary),
        }
    }

    /// The key of an address, for the table type given (`ip` or `ipv6`).
    pub fn from_addr(ty: KeyType, addr: IpAddr) -> Result<TableKey, KeyError> {
        TableKey::parse(ty, &addr.to_string())
    }

    /// Appends the key as one escaped command argument.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            TableKey::Ip(a) => write!(out, "{a}").expect("write to Vec"),
            TableKey::Ipv6(a) => write!(out, "{a}").expect("write to Vec"),
            TableKey::Integer(n) => write!(out, "{n}").expect("write to Vec"),
            TableKey::String(s) => escape_arg(s, out).expect("validated in parse"),
        }
    }
}

impl fmt::Display for TableKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableKey::Ip(a) => a.fmt(f),
            TableKey::Ipv6(a) => a.fmt(f),
            TableKey::Integer(n) => n.fmt(f),
            TableKey::String(s) => f.write_str(&String::from_utf8_lossy(s)),
        }
    }
}

/// Parses an address strictly (no leading zeros, no trailing garbage, no zone id).
pub fn parse_ip(text: &str) -> Result<IpAddr, KeyError> {
    text.parse::<IpAddr>().map_err(|_| {
        if text.contains(':') {
            KeyError::NotIp(text.to_owned())
        } else {
            KeyError::NotIpv4(text.to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(k: &TableKey) -> String {
        let mut v = Vec::new();
        k.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn refuses_what_haproxy_would_mangle() {
        assert!(matches!(TableKey::parse(KeyType::Ip, "999.1.1.1"), Err(KeyError::NotIpv4(_))));
        assert!(TableKey::parse(KeyType::Ip, "010.1.1.1").is_err());
        assert!(TableKey::parse(KeyType::Ip, "1.2.3.4 ").is_err());
        assert!(matches!(TableKey::parse(KeyType::Integer, "abc"), Err(KeyError::NotInteger(_))));
        assert!(TableKey::parse(KeyType::Integer, "-1").is_err());
        assert!(TableKey::parse(KeyType::Integer, "+1").is_err());
        assert!(TableKey::parse(KeyType::Integer, "4294967296").is_err());
        assert!(TableKey::parse(KeyType::Ipv6, "zz::zz::1").is_err());
        assert_eq!(TableKey::parse(KeyType::Binary, "00"), Err(KeyError::Binary));
    }

    #[test]
    fn normalises_address_families() {
        let k = TableKey::parse(KeyType::Ip, "::ffff:10.0.0.1").unwrap();
        assert_eq!(enc(&k), "10.0.0.1");
        let k = TableKey::parse(KeyType::Ipv6, "10.0.0.1").unwrap();
        assert_eq!(enc(&k), "::ffff:10.0.0.1");
        let k = TableKey::parse(KeyType::Ipv6, "2001:DB8:0::1").unwrap();
        assert_eq!(enc(&k), "2001:db8::1");
        assert!(matches!(TableKey::parse(KeyType::Ip, "2001:db8::1"), Err(KeyError::Ipv6InIpTable(_))));
    }

    #[test]
    fn string_keys_are_escaped_and_length_checked() {
        let k = TableKey::parse(KeyType::String { len: Some(32) }, "a b=c\\d;e").unwrap();
        assert_eq!(enc(&k), "a\\ b=c\\\\d\\;e");
        let long = "x".repeat(33);
        assert_eq!(
            TableKey::parse(KeyType::String { len: Some(32) }, &long),
            Err(KeyError::TooLong { len: 33, max: 32 })
        );
        assert!(TableKey::parse(KeyType::String { len: None }, "a\nb").is_err());
        assert!(TableKey::parse(KeyType::String { len: None }, "").is_err());
    }
}
