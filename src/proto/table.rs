//! Streaming parser of `show table` answers: table headers and entries, line by line.
//!
//! Lines are parsed in place: an [`Entry`] borrows the line it came from, and its data columns
//! are kept as offsets in a buffer the [`EntryParser`] reuses, so a dump of a million entries is
//! parsed without one allocation per entry and never held whole. Columns are read generically
//! (`name[(period)]=value`), so a column this code has never heard of is kept, not refused; the
//! fixed prefix is `0x<ptr>: key=<key> use=<n> exp=<ms>` with `shard=<n>` from 2.7.

use std::borrow::Cow;
use std::net::IpAddr;

use super::escape::unescape_key;
use super::key::KeyType;

/// `# table: ft_web, type: ip, size:1048576, used:2`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableHeader<'a> {
    pub name: &'a str,
    /// The type word as printed; [`KeyType::from_header`] reads it.
    pub key_type: &'a str,
    pub size: u64,
    pub used: u64,
}

impl TableHeader<'_> {
    pub fn key_type(&self) -> Option<KeyType> {
        KeyType::from_header(self.key_type)
    }

    pub fn to_owned(&self) -> TableInfo {
        TableInfo { name: self.name.to_owned(), key_type: self.key_type.to_owned(), size: self.size, used: self.used }
    }
}

/// An owned [`TableHeader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    pub key_type: String,
    pub size: u64,
    pub used: u64,
}

/// A column value: counters and rates are numbers, `server_key`/dictionary columns are text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Uint(u64),
    /// Only negative numbers (signed columns such as `server_id`) land here.
    Int(i64),
    Text(&'a str),
}

impl Value<'_> {
    /// The value as a number, if it is one.
    pub fn as_i128(&self) -> Option<i128> {
        match *self {
            Value::Uint(u) => Some(u as i128),
            Value::Int(i) => Some(i as i128),
            Value::Text(_) => None,
        }
    }
}

/// One data column of an entry: `gpt0=1`, `http_req_rate(10000)=50`, `gpc1_rate(10000)=0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub period_ms: Option<u32>,
    pub value: Value<'a>,
}

#[derive(Debug, Clone, Copy)]
enum RawValue {
    Uint(u64),
    Int(i64),
    Text(u32, u32),
}

#[derive(Debug, Clone, Copy)]
struct RawColumn {
    /// Index in the parser's [`SchemaColumn`]s.
    slot: u32,
    value: RawValue,
}

/// A column name met before. The columns of a table are the same on every line, so each line's
/// tokens are matched against the names already seen (`gpt0=`, `http_req_rate(10000)=`): no
/// search for `=`, no parsing of the period and no UTF-8 check after the first line.
#[derive(Debug, Clone)]
struct SchemaColumn {
    /// The token's text up to and including `=`.
    prefix: Vec<u8>,
    name: String,
    period_ms: Option<u32>,
}

/// More distinct column names than any table has: past this the cache is reset (odd input).
const MAX_SCHEMA: usize = 1024;

/// One stick-table entry, borrowing its line.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub ptr: u64,
    /// `use=`: sessions tracking the entry right now.
    pub use_count: u32,
    /// `exp=`: milliseconds left; 0 for tables without `expire`.
    pub exp_ms: u64,
    /// `shard=`, HAProxy 2.7 and later.
    pub shard: Option<u32>,
    key: &'a [u8],
    line: &'a [u8],
    columns: &'a [RawColumn],
    schema: &'a [SchemaColumn],
}

impl<'a> Entry<'a> {
    /// The key exactly as dumped (string keys still escaped).
    pub fn raw_key(&self) -> &'a [u8] {
        self.key
    }

    /// The key's real bytes: string-key escapes undone.
    pub fn key_bytes(&self) -> Cow<'a, [u8]> {
        unescape_key(self.key)
    }

    /// The key as an address, for `ip` and `ipv6` tables; IPv4-mapped IPv6 folded to IPv4.
    pub fn key_addr(&self) -> Option<IpAddr> {
        std::str::from_utf8(self.key).ok()?.parse::<IpAddr>().ok().map(|a| a.to_canonical())
    }

    pub fn columns(&self) -> impl ExactSizeIterator<Item = Column<'a>> + 'a {
        let (line, schema) = (self.line, self.schema);
        self.columns.iter().map(move |c| column(line, schema, c))
    }

    /// The column called `name` (`gpt0`, `http_req_rate`, `gpc1_rate`), if stored.
    pub fn get(&self, name: &str) -> Option<Column<'a>> {
        self.columns().find(|c| c.name == name)
    }
}

fn column<'a>(line: &'a [u8], schema: &'a [SchemaColumn], c: &RawColumn) -> Column<'a> {
    let s = &schema[c.slot as usize];
    Column {
        name: &s.name,
        period_ms: s.period_ms,
        value: match c.value {
            RawValue::Uint(u) => Value::Uint(u),
            RawValue::Int(i) => Value::Int(i),
            RawValue::Text(s, e) => Value::Text(ascii(&line[s as usize..e as usize])),
        },
    }
}

/// Text the parser checked to be printable ASCII; anything else reads as `?` rather than panic.
fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).unwrap_or("?")
}

/// What one line of a `show table` answer is.
#[derive(Debug, Clone, Copy)]
pub enum Line<'a> {
    Header(TableHeader<'a>),
    Entry(Entry<'a>),
    /// `# contents not dumped due to insufficient privileges` (socket at `level user`).
    Denied,
    /// A line this parser does not understand, with the reason.
    Invalid(&'a [u8], &'static str),
}

/// Parses lines, reusing its column buffer from one entry to the next.
#[derive(Debug, Default)]
pub struct EntryParser {
    columns: Vec<RawColumn>,
    schema: Vec<SchemaColumn>,
}

impl EntryParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one line, with or without its trailing `\n`.
    pub fn parse_line<'a>(&'a mut self, line: &'a [u8]) -> Line<'a> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.first() == Some(&b'#') {
            if let Some(h) = parse_header(line) {
                return Line::Header(h);
            }
            if line.ends_with(b"insufficient privileges") {
                return Line::Denied;
            }
            return Line::Invalid(line, "unknown comment line");
        }
        match self.parse_entry(line) {
            Ok(e) => Line::Entry(e),
            Err(why) => Line::Invalid(line, why),
        }
    }

    fn parse_entry<'a>(&'a mut self, line: &'a [u8]) -> Result<Entry<'a>, &'static str> {
        let (ptr, colon) = parse_hex_ptr(line).ok_or("bad pointer")?;
        let key_at = colon + 1 + line[colon + 1..].strip_prefix(b" key=").map(|_| 5).ok_or("no key")?;
        let key_end = key_at + find_unescaped_space(&line[key_at..]);
        let key = &line[key_at..key_end];

        self.columns.clear();
        if self.schema.len() > MAX_SCHEMA {
            self.schema.clear();
        }
        let (mut use_count, mut exp_ms, mut shard) = (None, None, None);
        // One pass, left to right: at each space, the token's name is matched against the schema
        // and its digits are read in the same sweep, so the common line is scanned once.
        let mut pos = key_end;
        while pos < line.len() {
            let start = pos + 1;
            let tok = &line[start..];
            if self.columns.is_empty() {
                let fixed = if use_count.is_none() && tok.starts_with(b"use=") {
                    Some((&mut use_count, 4, u32::MAX as u64, "bad use="))
                } else if exp_ms.is_none() && tok.starts_with(b"exp=") {
                    Some((&mut exp_ms, 4, u64::MAX, "bad exp="))
                } else if shard.is_none() && tok.starts_with(b"shard=") {
                    Some((&mut shard, 6, u32::MAX as u64, "bad shard="))
                } else {
                    None
                };
                if let Some((field, skip, max, why)) = fixed {
                    let (v, end) = scan_u64(line, start + skip).filter(|(v, _)| *v <= max).ok_or(why)?;
                    *field = Some(v);
                    pos = end;
                    continue;
                }
            }
            let slot = self.slot_of(tok)?;
            let val_at = start + self.schema[slot].prefix.len();
            let (value, end) = match scan_u64(line, val_at) {
                Some((u, end)) => (RawValue::Uint(u), end),
                None => {
                    let end = memchr::memchr(b' ', &line[val_at..]).map_or(line.len(), |i| val_at + i);
                    (other_value(&line[val_at..end], val_at as u32)?, end)
                }
            };
            self.columns.push(RawColumn { slot: slot as u32, value });
            pos = end;
        }
        let (Some(use_count), Some(exp_ms)) = (use_count, exp_ms) else {
            return Err("no use= or exp=");
        };
        let (use_count, shard) = (use_count as u32, shard.map(|s| s as u32));
        Ok(Entry { ptr, use_count, exp_ms, shard, key, line, columns: &self.columns, schema: &self.schema })
    }

    /// The schema slot of the `name[(period)]=value` token `rest` starts with, learning the name
    /// if it is new.
    fn slot_of(&mut self, rest: &[u8]) -> Result<usize, &'static str> {
        // The common case: the same column as at this position on the previous line.
        // A prefix holds no space (it was cut from a token), so matching it against the rest of
        // the line matches it against the token.
        let guess = self.columns.len();
        if self.schema.get(guess).is_some_and(|s| has_prefix(rest, &s.prefix)) {
            return Ok(guess);
        }
        if let Some(i) = self.schema.iter().position(|s| has_prefix(rest, &s.prefix)) {
            return Ok(i);
        }
        let tok = &rest[..memchr::memchr(b' ', rest).unwrap_or(rest.len())];
        let eq = memchr::memchr(b'=', tok).ok_or("column without '='")?;
        let name = &tok[..eq];
        let (name_len, period_ms) = match memchr::memchr(b'(', name) {
            Some(p) if name.last() == Some(&b')') => {
                let period = parse_u64(&name[p + 1..name.len() - 1]).and_then(|v| u32::try_from(v).ok());
                (p, Some(period.ok_or("bad period")?))
            }
            _ => (name.len(), None),
        };
        let base = &name[..name_len];
        if base.is_empty() || !base.iter().all(|b| b.is_ascii_graphic() && *b != b'(') {
            return Err("bad column name");
        }
        let name = std::str::from_utf8(base).map_err(|_| "bad column name")?.to_owned();
        self.schema.push(SchemaColumn { prefix: tok[..=eq].to_vec(), name, period_ms });
        Ok(self.schema.len() - 1)
    }
}

/// A value that is not a plain unsigned number: a negative number or text.
fn other_value(val: &[u8], at: u32) -> Result<RawValue, &'static str> {
    if let [b'-', digits @ ..] = val {
        if let Some(d) = parse_u64(digits).filter(|d| *d <= i64::MAX as u64 + 1) {
            return Ok(RawValue::Int((d as i64).wrapping_neg()));
        }
    }
    if val.iter().all(|b| b.is_ascii_graphic()) {
        Ok(RawValue::Text(at, at + val.len() as u32))
    } else {
        Err("non-printable column value")
    }
}

/// Iterates over the lines of `buf`, each with its `\n` (the last one may lack it).
pub fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// Parses `# table: NAME, type: TYPE, size:N, used:N` (spaces after `:` optional, extra
/// `, word:value` parts ignored).
pub fn parse_header(line: &[u8]) -> Option<TableHeader<'_>> {
    let line = std::str::from_utf8(line.strip_suffix(b"\n").unwrap_or(line)).ok()?;
    let rest = line.strip_prefix("# table: ")?;
    let mut parts = rest.split(", ");
    let name = parts.next().filter(|n| !n.is_empty())?;
    let (mut key_type, mut size, mut used) = (None, None, None);
    for part in parts {
        let (k, v) = part.split_once(':')?;
        let v = v.trim_start();
        match k {
            "type" => key_type = Some(v),
            "size" => size = v.parse().ok(),
            "used" => used = v.parse().ok(),
            _ => {}
        }
    }
    Some(TableHeader { name, key_type: key_type?, size: size?, used: used? })
}

/// Where the key ends: the first space not escaped by `\\`. Keys are short, so this reads eight
/// bytes at a time (SWAR) rather than calling a vectorised search per line.
fn find_unescaped_space(s: &[u8]) -> usize {
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let hits = zero_bytes(word ^ splat(b' ')) | zero_bytes(word ^ splat(b'\\'));
        if hits == 0 {
            i += 8;
            continue;
        }
        // The lowest flagged byte is always a true match (false flags only sit above one).
        let at = i + (hits.trailing_zeros() / 8) as usize;
        if s[at] == b' ' {
            return at;
        }
        i = at + 2;
    }
    while let Some(&b) = s.get(i) {
        match b {
            b' ' => return i,
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    s.len()
}

const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// Sets the high bit of each zero byte of `w` (and possibly of bytes above the first zero byte).
const fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(splat(1)) & !w & splat(0x80)
}

/// Reads the digits of `line` from `at` up to the next space or the end of the line: the value and
/// where it ends; `None` when that token is not a plain `u64`.
#[inline]
fn scan_u64(line: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut i = at;
    // Up to 19 digits cannot overflow; a 20-digit value takes the checked path.
    while let Some(d) = line.get(i).map(|b| b.wrapping_sub(b'0')).filter(|d| *d <= 9) {
        if i - at == 19 {
            let end = i + line[i..].iter().position(|b| !b.is_ascii_digit()).unwrap_or(line.len() - i);
            return parse_u64(&line[at..end]).filter(|_| line.get(end).is_none_or(|b| *b == b' ')).map(|v| (v, end));
        }
        v = v * 10 + d as u64;
        i += 1;
    }
    (i > at && line.get(i).is_none_or(|b| *b == b' ')).then_some((v, i))
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(d as u64)?;
    }
    Some(v)
}

/// Reads `0x<hex>:` at the start of a line; returns the pointer and the index of the colon.
fn parse_hex_ptr(s: &[u8]) -> Option<(u64, usize)> {
    let digits = s.strip_prefix(b"0x")?;
    let mut v: u64 = 0;
    for (i, &b) in digits.iter().enumerate().take(17) {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b':' if i > 0 => return Some((v, i + 2)),
            _ => return None,
        };
        if i == 16 {
            return None;
        }
        v = (v << 4) | d as u64;
    }
    None
}

/// `tok.starts_with(prefix)` for the short prefixes of column names: eight bytes at a time, the
/// last eight overlapping, instead of a call to memcmp or a byte loop.
#[inline]
fn has_prefix(tok: &[u8], prefix: &[u8]) -> bool {
    let n = prefix.len();
    let Some(tok) = tok.get(..n) else { return false };
    if n < 8 {
        return tok == prefix;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or_default());
    (0..n / 8).all(|k| word(tok, k * 8) == word(prefix, k * 8)) && word(tok, n - 8) == word(prefix, n - 8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::{fixture, VERSIONS};
    use proptest::prelude::*;

    /// Every line of a fixture, parsed; panics on an invalid line.
    fn parse_all(raw: &[u8]) -> (Vec<TableInfo>, Vec<String>) {
        let mut p = EntryParser::new();
        let (mut headers, mut entries) = (Vec::new(), Vec::new());
        for line in raw.split_inclusive(|&b| b == b'\n').filter(|l| *l != b"\n") {
            match p.parse_line(line) {
                Line::Header(h) => headers.push(h.to_owned()),
                Line::Entry(e) => entries.push(render(&e)),
                Line::Denied => entries.push("DENIED".into()),
                Line::Invalid(l, why) => panic!("{why}: {}", String::from_utf8_lossy(l)),
            }
        }
        (headers, entries)
    }

    fn render(e: &Entry<'_>) -> String {
        let mut s = format!("{}|use={}|", String::from_utf8_lossy(&e.key_bytes()), e.use_count);
        for c in e.columns() {
            let v = match c.value {
                Value::Uint(u) => u.to_string(),
                Value::Int(i) => i.to_string(),
                Value::Text(t) => format!("'{t}'"),
            };
            match c.period_ms {
                Some(p) => s.push_str(&format!("{}@{}={} ", c.name, p, v)),
                None => s.push_str(&format!("{}={} ", c.name, v)),
            }
        }
        s.trim_end().to_owned()
    }

    #[test]
    fn ip_table_both_versions() {
        for v in VERSIONS {
            let (h, e) = parse_all(&fixture(v, "show-table-ft_web"));
            assert_eq!(h, vec![TableInfo { name: "ft_web".into(), key_type: "ip".into(), size: 1048576, used: 3 }]);
            assert_eq!(e.len(), 3);
            assert!(e.contains(&"10.1.2.3|use=0|gpt0=1 conn_cur=0 http_req_rate@10000=50".to_owned()), "{v}: {e:?}");
        }
        let raw = fixture("haproxy-3.4.0", "show-table-key-hit");
        let mut p = EntryParser::new();
        let line = raw.split(|&b| b == b'\n').nth(1).unwrap();
        let Line::Entry(e) = p.parse_line(line) else { panic!() };
        assert_eq!(e.ptr, 0x561b2c778eb8);
        assert_eq!(e.exp_ms, 899697);
        assert_eq!(e.shard, Some(0));
        assert_eq!(e.key_addr(), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(e.get("gpt0").unwrap().value, Value::Uint(1));
        assert_eq!(e.get("http_req_rate").unwrap().period_ms, Some(10000));
        assert!(e.get("gpc0").is_none());
    }

    #[test]
    fn every_key_type() {
        for v in VERSIONS {
            let (_, e) = parse_all(&fixture(v, "show-table-t_v6"));
            assert_eq!(e[0], "::ffff:10.0.0.1|use=0|gpt0=1 gpc0=0 http_err_rate@10000=0");
            assert_eq!(e[1], "2001:db8::1|use=0|gpt0=0 gpc0=5 http_err_rate@10000=3");
            let (_, e) = parse_all(&fixture(v, "show-table-t_str"));
            assert_eq!(e, vec!["a b=c\\d;e|use=0|gpc0=7 conn_cnt=0", "tab\there|use=0|gpc0=1 conn_cnt=0"]);
            let (_, e) = parse_all(&fixture(v, "show-table-t_int"));
            assert_eq!(e, vec!["42|use=0|gpc0=3", "4294967295|use=0|gpc0=1"]);
            let (h, e) = parse_all(&fixture(v, "show-table-t_bin"));
            assert_eq!(h[0].key_type, "binary");
            assert!(e.is_empty());
            let (_, e) = parse_all(&fixture(v, "show-table-t_noexp"));
            assert_eq!(e, vec!["10.0.0.10|use=0|gpt0=2"]);
        }
        let mut p = EntryParser::new();
        let Line::Entry(e) = p.parse_line(b"0x1: key=::ffff:10.0.0.1 use=0 exp=0 gpt0=1") else { panic!() };
        assert_eq!(e.key_addr(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn arrays_and_odd_columns() {
        for v in VERSIONS {
            let (_, e) = parse_all(&fixture(v, "show-table-t_arr"));
            assert_eq!(
                e[0],
                "10.0.0.9|use=0|http_req_cnt=0 bytes_in_rate@60000=0 gpt0=1 gpt1=0 gpc0=4 gpc1=0 gpc2=0 \
                 gpc0_rate@10000=0 gpc1_rate@10000=0 gpc2_rate@10000=0"
            );
        }
        let mut p = EntryParser::new();
        let line = b"0x55b70ce151b8: key=5 use=0 exp=3600000 shard=1 server_id=-3 server_key=s1 gpc0=18446744073709551615 new_thing=-";
        let Line::Entry(e) = p.parse_line(line) else { panic!() };
        assert_eq!(e.shard, Some(1));
        assert_eq!(render(&e), "5|use=0|server_id=-3 server_key='s1' gpc0=18446744073709551615 new_thing='-'");
        // One past u64::MAX is not a number; digits followed by text are text.
        let Line::Entry(e) =
            p.parse_line(b"0x1: key=5 use=0 exp=0 a=18446744073709551616 b=00000000000000000009 c=12x")
        else {
            panic!()
        };
        assert_eq!(render(&e), "5|use=0|a='18446744073709551616' b=9 c='12x'");
    }

    #[test]
    fn lists_denials_and_filters() {
        for v in VERSIONS {
            let (h, e) = parse_all(&fixture(v, "show-table-list"));
            assert_eq!(h.len(), 7);
            assert!(e.is_empty());
            assert_eq!(h[6].name, "ft_web");
            assert_eq!(KeyType::from_header(&h[6].key_type), Some(KeyType::Ip));
            let (_, e) = parse_all(&fixture(v, "show-table-user-level"));
            assert_eq!(e, vec!["DENIED"]);
            let (_, e) = parse_all(&fixture(v, "show-table-filter-2"));
            assert_eq!(e.len(), 2);
        }
        let (h, _) = parse_all(b"# table: peers/t1, type: string, size: 10, used: 0, extra:1\n");
        assert_eq!(h[0].name, "peers/t1");
        assert_eq!(h[0].size, 10);
    }

    #[test]
    fn invalid_lines_are_reported_not_panicked() {
        let mut p = EntryParser::new();
        for bad in [
            &b"0x12 key=1"[..],
            b"0xZZ: key=1 use=0 exp=0",
            b"0x1: key=1 use=x exp=0",
            b"0x1: key=1 use=4294967296 exp=0",
            b"0x1: key=1 use=0 exp=18446744073709551616",
            b"0x1: key=1 use=0 exp=0 ",
            b"0x1: key=1 use=0  exp=0",
            b"0x1: key=1 exp=0",
            b"0x1: key=1 use=0 exp=0 gpt0",
            b"0x1: key=1 use=0 exp=0 a(b)=1",
            b"# something else",
            b"No such table",
        ] {
            assert!(matches!(p.parse_line(bad), Line::Invalid(..)), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut p = EntryParser::new();
            if let Line::Entry(e) = p.parse_line(&line) {
                for c in e.columns() { let _ = c.value.as_i128(); }
                let _ = e.key_bytes();
                let _ = e.key_addr();
            }
        }

        #[test]
        fn never_panics_on_entry_shapes(
            key in "[ -~]{0,12}", cols in proptest::collection::vec("[a-z_(0-9)=-]{0,12}", 0..6)
        ) {
            let line = format!("0x1f: key={key} use=0 exp=5 {}", cols.join(" "));
            let mut p = EntryParser::new();
            let _ = p.parse_line(line.as_bytes());
        }

        #[test]
        fn word_at_a_time_helpers_agree_with_the_plain_ones(
            s in proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\\'), Just(b'a'), any::<u8>()], 0..40),
            p in proptest::collection::vec(prop_oneof![Just(b'a'), any::<u8>()], 0..30),
        ) {
            let mut naive = 0;
            while naive < s.len() && s[naive] != b' ' {
                naive += if s[naive] == b'\\' { 2 } else { 1 };
            }
            prop_assert_eq!(find_unescaped_space(&s), naive.min(s.len()));
            prop_assert_eq!(has_prefix(&s, &p), s.starts_with(&p));
            let mut with_prefix = p.clone();
            with_prefix.extend_from_slice(&s);
            prop_assert!(has_prefix(&with_prefix, &p));
        }

        #[test]
        fn string_keys_round_trip(key in proptest::collection::vec(1u8..=255, 1..40), gpc in any::<u32>()) {
            let mut line = b"0x7f: key=".to_vec();
            crate::proto::escape::dump_escape(&key, &mut line);
            line.extend_from_slice(format!(" use=0 exp=10 gpc0={gpc}").as_bytes());
            let mut p = EntryParser::new();
            let Line::Entry(e) = p.parse_line(&line) else { panic!("not an entry") };
            prop_assert_eq!(&*e.key_bytes(), &key[..]);
            prop_assert_eq!(e.get("gpc0").unwrap().value, Value::Uint(gpc as u64));
        }
    }
}
