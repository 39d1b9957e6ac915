//! Runtime API commands as types, and their encoding into one command line.
//!
//! A [`Command`] can only be built from validated parts ([`TableKey`], [`DataField`], [`Filter`],
//! [`AclRef`], [`AclPattern`]), so encoding cannot produce a line HAProxy would misread. Encoding
//! also enforces a line-length guard: HAProxy <=2.x silently closes the connection on a line longer
//! than its buffer and 3.x answers with an error and closes, so an over-long line is refused here.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::escape::{escape_arg, EscapeError};
use super::key::TableKey;

/// Default longest line sent, newline included: half of HAProxy's default `tune.bufsize` (16384),
/// which leaves room for the CLI's own buffer reserve.
pub const DEFAULT_MAX_LINE: usize = 8192;

/// HAProxy evaluates at most this many `data.` filters per `show table` (2.2+).
pub const MAX_FILTERS: usize = 4;

/// A stick-table data column name as used after `data.`: `gpt0`, `http_req_rate`, `gpc[1]` (3.2+).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataField(String);

impl DataField {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DataField {
    type Err = CommandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (base, index) = match s.split_once('[') {
            Some((b, rest)) => (b, Some(rest.strip_suffix(']').unwrap_or("x"))),
            None => (s, None),
        };
        let base_ok = base.len() <= 64
            && base.starts_with(|c: char| c.is_ascii_lowercase())
            && base.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let index_ok = index.is_none_or(|i| !i.is_empty() && i.len() <= 3 && i.bytes().all(|b| b.is_ascii_digit()));
        if base_ok && index_ok {
            Ok(DataField(s.to_owned()))
        } else {
            Err(CommandError::BadDataField(s.to_owned()))
        }
    }
}

impl fmt::Display for DataField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A `show table` comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Ne,
    Le,
    Ge,
    Lt,
    Gt,
}

impl FilterOp {
    pub fn as_str(self) -> &'static str {
        match self {
            FilterOp::Eq => "eq",
            FilterOp::Ne => "ne",
            FilterOp::Le => "le",
            FilterOp::Ge => "ge",
            FilterOp::Lt => "lt",
            FilterOp::Gt => "gt",
        }
    }

    /// Whether `value op operand` holds, as HAProxy evaluates it.
    pub fn holds(self, value: i128, operand: i128) -> bool {
        match self {
            FilterOp::Eq => value == operand,
            FilterOp::Ne => value != operand,
            FilterOp::Le => value <= operand,
            FilterOp::Ge => value >= operand,
            FilterOp::Lt => value < operand,
            FilterOp::Gt => value > operand,
        }
    }
}

impl FromStr for FilterOp {
    type Err = CommandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "eq" => FilterOp::Eq,
            "ne" => FilterOp::Ne,
            "le" => FilterOp::Le,
            "ge" => FilterOp::Ge,
            "lt" => FilterOp::Lt,
            "gt" => FilterOp::Gt,
            _ => {
                return Err(CommandError::BadFilter(format!(
                    "unknown operator '{s}' (expected eq, ne, le, ge, lt or gt)"
                )))
            }
        })
    }
}

/// One server-side filter: `data.<field> <op> <value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub field: DataField,
    pub op: FilterOp,
    pub value: i64,
}

impl FromStr for Filter {
    type Err = CommandError;

    /// Parses the text users write: `data.http_req_rate gt 100` (the `data.` prefix is optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let [field, op, value] = words[..] else {
            return Err(CommandError::BadFilter(format!("'{s}': expected three words, 'data.<type> <op> <integer>'")));
        };
        let field = field.strip_prefix("data.").unwrap_or(field);
        Ok(Filter {
            field: field.parse().map_err(|e: CommandError| CommandError::BadFilter(format!("'{s}': {e}")))?,
            op: op.parse().map_err(|e: CommandError| CommandError::BadFilter(format!("'{s}': {e}")))?,
            value: value.parse().map_err(|_| CommandError::BadFilter(format!("'{s}': '{value}' is not an integer")))?,
        })
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "data.{} {} {}", self.field, self.op.as_str(), self.value)
    }
}

/// How an ACL is addressed: by the file it was loaded from (stable), or by `#id` (shifts when the
/// configuration changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AclRef {
    File(String),
    Id(u32),
}

impl FromStr for AclRef {
    type Err = CommandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(id) = s.strip_prefix('#') {
            return id.parse().map(AclRef::Id).map_err(|_| CommandError::BadAcl(s.to_owned()));
        }
        if s.is_empty() || escape_arg(s.as_bytes(), &mut Vec::new()).is_err() {
            return Err(CommandError::BadAcl(s.to_owned()));
        }
        Ok(AclRef::File(s.to_owned()))
    }
}

impl fmt::Display for AclRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclRef::File(p) => f.write_str(p),
            AclRef::Id(id) => write!(f, "#{id}"),
        }
    }
}

/// An address or network pattern of an `ip` ACL, in canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AclPattern {
    Addr(IpAddr),
    Net(IpNet),
}

impl AclPattern {
    /// An address, IPv4-mapped IPv6 folded to IPv4 (HAProxy matches IPv4 clients as IPv4).
    pub fn addr(a: IpAddr) -> AclPattern {
        AclPattern::Addr(a.to_canonical())
    }
}

impl FromStr for AclPattern {
    type Err = CommandError;

    /// Accepts `a.b.c.d`, an IPv6 address, or a CIDR whose host bits are zero; a full-length
    /// prefix (`/32`, `/128`) is the address itself.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('/') {
            return s
                .parse::<IpAddr>()
                .map(AclPattern::addr)
                .map_err(|_| CommandError::BadPattern(format!("'{s}' is not a valid IPv4 or IPv6 address")));
        }
        let net: IpNet =
            s.parse().map_err(|_| CommandError::BadPattern(format!("'{s}' is not a valid CIDR (address/prefix)")))?;
        if net.trunc() != net {
            return Err(CommandError::BadPattern(format!("'{s}' has host bits set; did you mean {}?", net.trunc())));
        }
        if net.prefix_len() == net.max_prefix_len() {
            return Ok(AclPattern::addr(net.addr()));
        }
        Ok(AclPattern::Net(net))
    }
}

impl fmt::Display for AclPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AclPattern::Addr(a) => a.fmt(f),
            AclPattern::Net(n) => n.fmt(f),
        }
    }
}

/// Which `show table` dump to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSelect {
    All,
    Filters(Vec<Filter>),
    Key(TableKey),
}

impl TableSelect {
    /// The dump of a query: the whole table when it has no filter.
    pub fn query(filters: &[Filter]) -> TableSelect {
        if filters.is_empty() {
            TableSelect::All
        } else {
            TableSelect::Filters(filters.to_vec())
        }
    }
}

/// One Runtime API command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ShowInfo,
    /// `show table`: one header per table.
    ListTables,
    ShowTable {
        table: String,
        select: TableSelect,
    },
    /// Several fields in one command are applied under one lock.
    SetTable {
        table: String,
        key: TableKey,
        fields: Vec<(DataField, u64)>,
    },
    ClearTableKey {
        table: String,
        key: TableKey,
    },
    ListAcls,
    ShowAcl {
        acl: AclRef,
    },
    GetAcl {
        acl: AclRef,
        addr: IpAddr,
    },
    AddAcl {
        acl: AclRef,
        version: Option<u32>,
        pattern: AclPattern,
    },
    DelAcl {
        acl: AclRef,
        pattern: AclPattern,
    },
    DelAclPtr {
        acl: AclRef,
        ptr: u64,
    },
    PrepareAcl {
        acl: AclRef,
    },
    CommitAcl {
        acl: AclRef,
        version: u32,
    },
    /// Drops an uncommitted version (always with a version: a bare `clear acl` empties the ACL).
    ClearAclVersion {
        acl: AclRef,
        version: u32,
    },
    ShowSess,
    ShutdownSession {
        ptr: u64,
    },
    /// `show map`: the maps HAProxy loaded (the format of `show acl`).
    ListMaps,
    /// `show map <ref>`: the entries of a map.
    ShowMap {
        map: AclRef,
    },
    /// `add map <ref> <key> <value>` (HAProxy adds a duplicate key as a second entry).
    AddMap {
        map: AclRef,
        key: MapKey,
        value: String,
    },
    /// `set map <ref> <key> <value>`: the value of every entry of `key`.
    SetMap {
        map: AclRef,
        key: MapKey,
        value: String,
    },
    /// `del map <ref> <key>`: every entry of `key`.
    DelMap {
        map: AclRef,
        key: MapKey,
    },
}

/// The key of a map entry: an address or network (a map read with `map_ip`), or a text (a map
/// read with `map_str`: an API key, a user id), escaped as one argument when sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapKey {
    Pattern(AclPattern),
    /// Checked as sendable where it was made ([`crate::proto::TableKey::parse`]); refused again
    /// at encoding if it is not.
    Text(String),
}

impl From<AclPattern> for MapKey {
    fn from(p: AclPattern) -> MapKey {
        MapKey::Pattern(p)
    }
}

impl MapKey {
    /// A key as `show map` lists it: an address or network when it reads as one.
    pub fn listed(text: &str) -> MapKey {
        text.parse::<AclPattern>().map_or_else(|_| MapKey::Text(text.to_owned()), MapKey::Pattern)
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        match self {
            MapKey::Pattern(p) => {
                out.extend_from_slice(p.to_string().as_bytes());
                Ok(())
            }
            MapKey::Text(t) => super::escape::escape_arg(t.as_bytes(), out)
                .map_err(|e| CommandError::BadPattern(format!("a map key that {e}"))),
        }
    }
}

/// A map value stickwarden writes: a response class, letters, digits, `-` and `_` only, so that
/// nothing in it can end the command or start another.
fn map_value(out: &mut Vec<u8>, v: &str) -> Result<(), CommandError> {
    if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(CommandError::BadPattern(format!("'{v}' is not a map value stickwarden writes")));
    }
    out.extend_from_slice(v.as_bytes());
    Ok(())
}

/// Why a command could not be built or encoded; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("'{0}' is not a data type name (expected e.g. gpt0, http_req_rate, gpc[1])")]
    BadDataField(String),
    #[error("bad filter {0}")]
    BadFilter(String),
    #[error("at most {MAX_FILTERS} filters per query, got {0}")]
    TooManyFilters(usize),
    #[error("'{0}' is not an ACL reference (a file path, or #<id>)")]
    BadAcl(String),
    #[error("{0}")]
    BadPattern(String),
    #[error("table name '{0}' {1}")]
    BadTable(String, EscapeError),
    #[error("command line of {len} bytes exceeds the {max}-byte limit")]
    LineTooLong { len: usize, max: usize },
}

impl Command {
    /// Whether sending this command twice has the same effect as once (safe to retry after a
    /// dropped connection).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Command::ShowInfo
                | Command::ListTables
                | Command::ShowTable { .. }
                | Command::ListAcls
                | Command::ShowAcl { .. }
                | Command::GetAcl { .. }
                | Command::ListMaps
                | Command::ShowMap { .. }
                | Command::ShowSess
        )
    }

    /// Appends the command line, `\n` included, to `out`; on error `out` is left unchanged.
    pub fn encode(&self, out: &mut Vec<u8>, max_line: usize) -> Result<(), CommandError> {
        let start = out.len();
        let res = self.encode_unchecked(out).and_then(|()| {
            out.push(b'\n');
            let len = out.len() - start;
            if len > max_line {
                Err(CommandError::LineTooLong { len, max: max_line })
            } else {
                Ok(())
            }
        });
        if res.is_err() {
            out.truncate(start);
        }
        res
    }

    /// The command line without its newline, for messages and logs.
    pub fn to_line(&self) -> String {
        let mut v = Vec::new();
        match self.encode_unchecked(&mut v) {
            Ok(()) => String::from_utf8_lossy(&v).into_owned(),
            Err(e) => format!("<unencodable: {e}>"),
        }
    }

    fn encode_unchecked(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        let table_arg = |out: &mut Vec<u8>, t: &str| {
            escape_arg(t.as_bytes(), out).map_err(|e| CommandError::BadTable(t.to_owned(), e))
        };
        let acl_arg = |out: &mut Vec<u8>, a: &AclRef| match a {
            AclRef::File(p) => escape_arg(p.as_bytes(), out).map_err(|_| CommandError::BadAcl(p.clone())),
            AclRef::Id(id) => write!(out, "#{id}").map_err(|_| CommandError::BadAcl(a.to_string())),
        };
        let w = |out: &mut Vec<u8>, args: fmt::Arguments<'_>| out.write_fmt(args).expect("write to Vec");
        match self {
            Command::ShowInfo => out.extend_from_slice(b"show info"),
            Command::ListTables => out.extend_from_slice(b"show table"),
            Command::ShowTable { table, select } => {
                out.extend_from_slice(b"show table ");
                table_arg(out, table)?;
                match select {
                    TableSelect::All => {}
                    TableSelect::Filters(fs) => {
                        if fs.len() > MAX_FILTERS {
                            return Err(CommandError::TooManyFilters(fs.len()));
                        }
                        for f in fs {
                            w(out, format_args!(" {f}"));
                        }
                    }
                    TableSelect::Key(k) => {
                        out.extend_from_slice(b" key ");
                        k.encode(out);
                    }
                }
            }
            Command::SetTable { table, key, fields } => {
                out.extend_from_slice(b"set table ");
                table_arg(out, table)?;
                out.extend_from_slice(b" key ");
                key.encode(out);
                for (f, v) in fields {
                    w(out, format_args!(" data.{f} {v}"));
                }
            }
            Command::ClearTableKey { table, key } => {
                out.extend_from_slice(b"clear table ");
                table_arg(out, table)?;
                out.extend_from_slice(b" key ");
                key.encode(out);
            }
            Command::ListAcls => out.extend_from_slice(b"show acl"),
            Command::ShowAcl { acl } => {
                out.extend_from_slice(b"show acl ");
                acl_arg(out, acl)?;
            }
            Command::GetAcl { acl, addr } => {
                out.extend_from_slice(b"get acl ");
                acl_arg(out, acl)?;
                w(out, format_args!(" {}", addr.to_canonical()));
            }
            Command::AddAcl { acl, version, pattern } => {
                out.extend_from_slice(b"add acl ");
                if let Some(v) = version {
                    w(out, format_args!("@{v} "));
                }
                acl_arg(out, acl)?;
                w(out, format_args!(" {pattern}"));
            }
            Command::DelAcl { acl, pattern } => {
                out.extend_from_slice(b"del acl ");
                acl_arg(out, acl)?;
                w(out, format_args!(" {pattern}"));
            }
            Command::ListMaps => out.extend_from_slice(b"show map"),
            Command::ShowMap { map } => {
                out.extend_from_slice(b"show map ");
                acl_arg(out, map)?;
            }
            Command::AddMap { map, key, value } | Command::SetMap { map, key, value } => {
                let verb: &[u8] = if matches!(self, Command::AddMap { .. }) { b"add map " } else { b"set map " };
                out.extend_from_slice(verb);
                acl_arg(out, map)?;
                out.push(b' ');
                key.encode(out)?;
                out.push(b' ');
                map_value(out, value)?;
            }
            Command::DelMap { map, key } => {
                out.extend_from_slice(b"del map ");
                acl_arg(out, map)?;
                out.push(b' ');
                key.encode(out)?;
            }
            Command::DelAclPtr { acl, ptr } => {
                out.extend_from_slice(b"del acl ");
                acl_arg(out, acl)?;
                w(out, format_args!(" #{ptr:#x}"));
            }
            Command::PrepareAcl { acl } => {
                out.extend_from_slice(b"prepare acl ");
                acl_arg(out, acl)?;
            }
            Command::CommitAcl { acl, version } => {
                w(out, format_args!("commit acl @{version} "));
                acl_arg(out, acl)?;
            }
            Command::ClearAclVersion { acl, version } => {
                w(out, format_args!("clear acl @{version} "));
                acl_arg(out, acl)?;
            }
            Command::ShowSess => out.extend_from_slice(b"show sess"),
            Command::ShutdownSession { ptr } => w(out, format_args!("shutdown session {ptr:#x}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::key::KeyType;

    fn line(c: &Command) -> String {
        let mut v = Vec::new();
        c.encode(&mut v, DEFAULT_MAX_LINE).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn encodes_table_commands() {
        let key = TableKey::parse(KeyType::Ip, "10.1.2.3").unwrap();
        let set = Command::SetTable {
            table: "ft_web".into(),
            key: key.clone(),
            fields: vec![("gpt0".parse().unwrap(), 1), ("http_req_rate".parse().unwrap(), 50)],
        };
        assert_eq!(line(&set), "set table ft_web key 10.1.2.3 data.gpt0 1 data.http_req_rate 50\n");
        let show = Command::ShowTable {
            table: "ft_web".into(),
            select: TableSelect::Filters(vec![
                "data.gpt0 gt 0".parse().unwrap(),
                "http_req_rate ge 1".parse().unwrap(),
            ]),
        };
        assert_eq!(line(&show), "show table ft_web data.gpt0 gt 0 data.http_req_rate ge 1\n");
        let clear = Command::ClearTableKey { table: "ft_web".into(), key };
        assert_eq!(line(&clear), "clear table ft_web key 10.1.2.3\n");
    }

    #[test]
    fn encodes_acl_and_session_commands() {
        let acl: AclRef = "/etc/haproxy/block.lst".parse().unwrap();
        let add = Command::AddAcl { acl: acl.clone(), version: Some(3), pattern: "10.0.0.0/8".parse().unwrap() };
        assert_eq!(line(&add), "add acl @3 /etc/haproxy/block.lst 10.0.0.0/8\n");
        let del = Command::DelAclPtr { acl: acl.clone(), ptr: 0x55f34fd7ac30 };
        assert_eq!(line(&del), "del acl /etc/haproxy/block.lst #0x55f34fd7ac30\n");
        assert_eq!(line(&Command::CommitAcl { acl, version: 3 }), "commit acl @3 /etc/haproxy/block.lst\n");
        assert_eq!(line(&Command::ShutdownSession { ptr: 0x7f06c8039b58 }), "shutdown session 0x7f06c8039b58\n");
        assert_eq!(line(&Command::ShowAcl { acl: AclRef::Id(2) }), "show acl #2\n");
        let map: AclRef = "/etc/haproxy/sw.map".parse().unwrap();
        let key = MapKey::Pattern("10.0.0.0/24".parse().unwrap());
        let add = Command::AddMap { map: map.clone(), key: key.clone(), value: "tarpit".into() };
        assert_eq!(line(&add), "add map /etc/haproxy/sw.map 10.0.0.0/24 tarpit\n");
        let set = Command::SetMap { map: map.clone(), key: key.clone(), value: "deny".into() };
        assert_eq!(line(&set), "set map /etc/haproxy/sw.map 10.0.0.0/24 deny\n");
        let del = Command::DelMap { map: map.clone(), key: key.clone() };
        assert_eq!(line(&del), "del map /etc/haproxy/sw.map 10.0.0.0/24\n");
        // A text key travels as one argument, whatever it holds; one that cannot is refused.
        let text = MapKey::Text("k 1;show info\\".into());
        let add = Command::AddMap { map: map.clone(), key: text, value: "deny".into() };
        assert_eq!(line(&add), "add map /etc/haproxy/sw.map k\\ 1\\;show\\ info\\\\ deny\n");
        let bad = Command::DelMap { map: map.clone(), key: MapKey::Text("a\nshow info".into()) };
        assert!(bad.encode(&mut Vec::new(), 1 << 16).is_err());
        assert_eq!(line(&Command::ShowMap { map: map.clone() }), "show map /etc/haproxy/sw.map\n");
        // A value that would end the command and start another is never sent.
        for evil in ["deny; clear table t", "a b", "x\nshow info", ""] {
            let cmd = Command::AddMap { map: map.clone(), key: key.clone(), value: evil.into() };
            let mut out = Vec::new();
            assert!(cmd.encode(&mut out, 1 << 16).is_err(), "{evil:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn refuses_bad_parts() {
        assert!("data.gpt0 zz 0".parse::<Filter>().is_err());
        assert!("data.gpt0 gt x".parse::<Filter>().is_err());
        assert!("data.GPT0 gt 1".parse::<Filter>().is_err());
        assert!("data.gpt0 gt".parse::<Filter>().is_err());
        assert!("data.gpc[1] gt 0".parse::<Filter>().is_ok());
        assert!("data.gpc[] gt 0".parse::<Filter>().is_err());
        assert!("10.0.0.1/8".parse::<AclPattern>().is_err());
        assert!("notanip".parse::<AclPattern>().is_err());
        assert_eq!("10.0.0.1/32".parse::<AclPattern>().unwrap().to_string(), "10.0.0.1");
        assert_eq!("::ffff:10.0.0.1".parse::<AclPattern>().unwrap().to_string(), "10.0.0.1");
        assert!("#x".parse::<AclRef>().is_err());
        let five = Command::ShowTable {
            table: "t".into(),
            select: TableSelect::Filters(vec!["gpt0 gt 0".parse().unwrap(); 5]),
        };
        assert_eq!(five.encode(&mut Vec::new(), DEFAULT_MAX_LINE), Err(CommandError::TooManyFilters(5)));
    }

    #[test]
    fn length_guard_leaves_buffer_unchanged() {
        let mut out = b"prefix".to_vec();
        let key = TableKey::parse(KeyType::String { len: None }, &"k".repeat(100)).unwrap();
        let c = Command::ClearTableKey { table: "t".into(), key };
        assert!(matches!(c.encode(&mut out, 64), Err(CommandError::LineTooLong { .. })));
        assert_eq!(out, b"prefix");
    }
}
