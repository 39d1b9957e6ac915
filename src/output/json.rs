//! JSON Lines for tables and entries, written by hand into a reused buffer.
//!
//! A million-entry dump must print as fast as HAProxy produces it, so entries are formatted
//! without an intermediate value tree. The shapes are fixed and documented in `docs/cli.md`:
//! `{"table":..,"type":..,"size":..,"used":..}` per table and
//! `{"table":..,"key":..,"ptr":..,"use":..,"exp_ms":..,"shard":..,"data":{..}}` per entry, with string
//! keys unescaped to their real value (bytes that are not UTF-8 become U+FFFD).

use crate::proto::table::{Entry, TableHeader, Value};

/// Appends `s` as a JSON string literal.
pub fn string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    // Column names and address keys never need escaping: one scan, one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// One line describing a table, newline included.
pub fn table_line(out: &mut Vec<u8>, h: &TableHeader<'_>) {
    out.extend_from_slice(b"{\"table\":");
    string(out, h.name);
    out.extend_from_slice(b",\"type\":");
    string(out, h.key_type);
    out.extend_from_slice(b",\"size\":");
    uint(out, h.size);
    out.extend_from_slice(b",\"used\":");
    uint(out, h.used);
    out.extend_from_slice(b"}\n");
}

/// One line describing an entry of `table`, newline included.
pub fn entry_line(out: &mut Vec<u8>, table: &str, e: &Entry<'_>) {
    entry_head(out, table);
    entry_rest(out, e);
}

/// The start of every entry line of `table`; printers write it once per table and reuse it.
pub fn entry_head(out: &mut Vec<u8>, table: &str) {
    out.extend_from_slice(b"{\"table\":");
    string(out, table);
    out.extend_from_slice(b",\"key\":");
}

/// The rest of an entry line, after [`entry_head`].
pub fn entry_rest(out: &mut Vec<u8>, e: &Entry<'_>) {
    let key = e.key_bytes();
    match std::str::from_utf8(&key) {
        Ok(k) => string(out, k),
        Err(_) => string(out, &String::from_utf8_lossy(&key)),
    }
    out.extend_from_slice(b",\"ptr\":\"0x");
    let mut hex = [0u8; 16];
    let mut n = e.ptr;
    let mut i = hex.len();
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\",\"use\":");
    uint(out, e.use_count as u64);
    out.extend_from_slice(b",\"exp_ms\":");
    uint(out, e.exp_ms);
    out.extend_from_slice(b",\"shard\":");
    match e.shard {
        Some(s) => uint(out, s as u64),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"data\":{");
    for (i, c) in e.columns().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, c.name);
        out.push(b':');
        if let Some(p) = c.period_ms {
            out.extend_from_slice(b"{\"value\":");
            value(out, c.value);
            out.extend_from_slice(b",\"period_ms\":");
            uint(out, p as u64);
            out.push(b'}');
        } else {
            value(out, c.value);
        }
    }
    out.extend_from_slice(b"}}\n");
}

fn value(out: &mut Vec<u8>, v: Value<'_>) {
    match v {
        Value::Uint(u) => uint(out, u),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Value::Text(t) => string(out, t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::table::{EntryParser, Line};

    fn entry_json(line: &[u8]) -> serde_json::Value {
        let mut p = EntryParser::new();
        let Line::Entry(e) = p.parse_line(line) else { panic!() };
        let mut out = Vec::new();
        entry_line(&mut out, "ft_web", &e);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn entry_shape_matches_the_documented_one() {
        let v = entry_json(b"0x7f06c8039b58: key=10.1.2.3 use=0 exp=899986 gpt0=1 conn_cur=0 http_req_rate(10000)=50");
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"table":"ft_web","key":"10.1.2.3","ptr":"0x7f06c8039b58","use":0,"exp_ms":899986,"shard":null,"data":{"gpt0":1,"conn_cur":0,"http_req_rate":{"value":50,"period_ms":10000}}}"#,
        )
        .unwrap();
        assert_eq!(v, expected);
    }

    #[test]
    fn string_keys_and_odd_values() {
        let v = entry_json(b"0x1: key=a\\ b\\=c\\\\d;e\\t\"\\x01 use=2 exp=0 shard=3 server_id=-3 server_key=s1");
        assert_eq!(v["key"], "a b=c\\d;e\t\"\u{1}");
        assert_eq!(v["shard"], 3);
        assert_eq!(v["use"], 2);
        assert_eq!(v["data"]["server_id"], -3);
        assert_eq!(v["data"]["server_key"], "s1");
        let v = entry_json(b"0x1: key=\\xFF use=0 exp=0");
        assert_eq!(v["key"], "\u{FFFD}");
    }

    #[test]
    fn table_shape() {
        let mut out = Vec::new();
        table_line(&mut out, &TableHeader { name: "ft_web", key_type: "ip", size: 1048576, used: 2 });
        assert_eq!(out, b"{\"table\":\"ft_web\",\"type\":\"ip\",\"size\":1048576,\"used\":2}\n");
    }
}
