//! Parsers of the ACL and map answers: `show acl` (the list), `show acl <ref>` (its patterns),
//! `get acl <ref> <value>` (whether a value matches) and `show map <ref>` (keys and values).

/// One line of `show acl`: `2 (/etc/haproxy/block.lst) pattern loaded from file ... entry_cnt=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclInfo {
    pub id: u32,
    /// The file the ACL was loaded from; `None` for inline ACLs (reachable only by `#id`).
    pub file: Option<String>,
    pub description: String,
    /// `entry_cnt=` (2.4+).
    pub entry_count: Option<u64>,
}

/// One pattern of `show acl <ref>`: `0x55f34fd7ac30 10.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub ptr: u64,
    pub pattern: String,
}

/// Parses the answer of `show acl`, skipping the `# id (file) description` heading.
pub fn parse_acl_list(body: &[u8]) -> Result<Vec<AclInfo>, String> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let bad = || format!("unexpected 'show acl' line: {line}");
        let (id, rest) = line.split_once(" (").ok_or_else(bad)?;
        let (file, description) = rest.split_once(") ").ok_or_else(bad)?;
        let entry_count =
            description.rsplit_once("entry_cnt=").and_then(|(_, n)| n.split_whitespace().next()?.parse().ok());
        out.push(AclInfo {
            id: id.parse().map_err(|_| bad())?,
            file: (!file.is_empty()).then(|| file.to_owned()),
            description: description.to_owned(),
            entry_count,
        });
    }
    Ok(out)
}

/// Parses the answer of `show acl <ref>`: pointer and pattern, split on the first space.
pub fn parse_acl_entries(body: &[u8]) -> Result<Vec<AclEntry>, String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (ptr, pattern) = line.split_once(' ').ok_or_else(|| format!("unexpected ACL entry: {line}"))?;
            let ptr = super::parse_ptr(ptr).ok_or_else(|| format!("unexpected ACL entry pointer: {line}"))?;
            Ok(AclEntry { ptr, pattern: pattern.to_owned() })
        })
        .collect()
}

/// One entry of `show map <ref>`: `0x7f64b40465b0 127.0.0.2 tarpit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub ptr: u64,
    pub key: String,
    pub value: String,
}

/// Parses the answer of `show map <ref>`: pointer, key and value (the value may hold spaces).
pub fn parse_map_entries(body: &[u8]) -> Result<Vec<MapEntry>, String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let bad = || format!("unexpected map entry: {line}");
            let (ptr, rest) = line.split_once(' ').ok_or_else(bad)?;
            let (key, value) = rest.split_once(' ').ok_or_else(bad)?;
            let ptr = super::parse_ptr(ptr).ok_or_else(bad)?;
            Ok(MapEntry { ptr, key: key.to_owned(), value: value.to_owned() })
        })
        .collect()
}

#[cfg(test)]
mod map_tests {
    #[test]
    fn map_entries_as_haproxy_2_6_prints_them() {
        let body = b"0x7f64b40465b0 127.0.0.2 tarpit\n0x55f12fe5ea00 10.0.0.0/24 deny\n\n";
        let e = super::parse_map_entries(body).unwrap();
        assert_eq!((e[1].ptr, e[1].key.as_str(), e[1].value.as_str()), (0x55f12fe5ea00, "10.0.0.0/24", "deny"));
        assert!(super::parse_map_entries(b"0x1 lonely\n").is_err());
    }
}

/// Reads `match=yes` / `match=no` from the answer of `get acl`.
pub fn parse_get_acl(body: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(body);
    for part in text.trim_end().split(", ") {
        match part {
            "match=yes" => return Ok(true),
            "match=no" => return Ok(false),
            _ => {}
        }
    }
    Err(format!("unexpected 'get acl' answer: {}", text.trim_end()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::test_fixtures::{fixture, VERSIONS};
    use proptest::prelude::*;

    #[test]
    fn both_versions() {
        for v in VERSIONS {
            let list = parse_acl_list(&fixture(v, "show-acl-list")).unwrap();
            assert_eq!(list.len(), 6);
            assert_eq!(list[2].id, 2);
            assert_eq!(list[2].file.as_deref(), Some("/etc/haproxy/block.lst"));
            assert_eq!(list[2].entry_count, Some(2));
            assert_eq!(list[0].file, None);
            let entries = parse_acl_entries(&fixture(v, "show-acl-file")).unwrap();
            assert_eq!(entries.iter().map(|e| e.pattern.as_str()).collect::<Vec<_>>(), ["10.66.0.1", "192.168.0.0/16"]);
            assert_eq!(parse_get_acl(&fixture(v, "get-acl-match")), Ok(true));
            assert_eq!(parse_get_acl(&fixture(v, "get-acl-nomatch")), Ok(false));
        }
        assert!(parse_acl_entries(b"garbage\n").is_err());
        assert!(parse_get_acl(b"type=ip\n").is_err());
    }

    proptest! {
        #[test]
        fn never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_acl_list(&body);
            let _ = parse_acl_entries(&body);
            let _ = parse_get_acl(&body);
        }
    }
}
