//! Operator actions and queries, shared by the HTTP API and the CLI: requests as serde types,
//! their validation (bad input is refused before anything changes, with a stable error code), the
//! JSON views of blocks, history, explanations and audit records, and the read-only queries over
//! the store. The actions themselves run in the controller ([`crate::daemon`]), the only writer
//! of blocks, whether it is the running daemon or one started by the CLI for a single action.

pub mod explain;
pub mod listing;
pub mod view;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::key::Key;
use serde::{Deserialize, Serialize};

use crate::store::{Event, Store, StoreError};
use crate::time::Millis;

pub use view::{AuditView, BlockView, HistoryView};

/// Longest reason accepted, in characters.
pub const MAX_REASON: usize = 500;
/// Longest manual block or allowlist duration.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);
/// Most entries in one import.
pub const MAX_IMPORT: usize = 1_000_000;

/// Every code of [`OpError::BadInput`] (a test checks the code uses no other).
pub const BAD_INPUT_CODES: &[&str] = &[
    "invalid_address",
    "invalid_duration",
    "invalid_event",
    "invalid_grace",
    "invalid_key",
    "invalid_reason",
    "invalid_request",
    "invalid_time",
    "too_broad",
    "too_many_entries",
    "unknown_table",
];

/// Why an operator action or query failed. Every variant has a stable code for the API.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{message}")]
    BadInput { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("HAProxy: {0}")]
    Haproxy(String),
    #[error("the controller is not running")]
    Unavailable,
}

impl OpError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> OpError {
        OpError::BadInput { code, message: message.into() }
    }

    /// The error of `code` and `message`, as [`OpError::code`] and the text gave them (an error
    /// answered by the leader to a follower). An unknown code reads as `invalid_request`.
    pub fn of_code(code: &str, message: String) -> OpError {
        match code {
            "not_found" => OpError::NotFound(message),
            "conflict" => OpError::Conflict(message),
            "store_error" => OpError::Store(StoreError::Backend(message)),
            "haproxy_error" => OpError::Haproxy(message.strip_prefix("HAProxy: ").unwrap_or(&message).to_owned()),
            "unavailable" => OpError::Unavailable,
            other => {
                let code = BAD_INPUT_CODES.iter().find(|c| **c == other).copied().unwrap_or("invalid_request");
                OpError::BadInput { code, message }
            }
        }
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            OpError::BadInput { code, .. } => code,
            OpError::NotFound(_) => "not_found",
            OpError::Conflict(_) => "conflict",
            OpError::Store(_) => "store_error",
            OpError::Haproxy(_) => "haproxy_error",
            OpError::Unavailable => "unavailable",
        }
    }
}

/// An address or a CIDR, canonical (IPv4-mapped folded, host bits must be clear).
pub fn parse_key(s: &str) -> Result<IpNet, OpError> {
    crate::net::parse_net(s).map_err(|m| OpError::bad("invalid_address", m))
}

/// The key a request names: an address or CIDR, or with `table`, a key of that table. A table
/// key is checked here for what no table could take (empty, a line feed, a NUL) and by the
/// decider against the table's declared type, before anything is recorded or sent.
pub fn parse_block_key(table: Option<&str>, key: &str) -> Result<Key, OpError> {
    let Some(table) = table else { return parse_key(key).map(Key::Net) };
    let table = table.trim();
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    if table.is_empty() || !table.bytes().all(ok) {
        return Err(OpError::bad("unknown_table", format!("'{table}' is not a stick table name")));
    }
    crate::proto::escape::escape_arg(key.as_bytes(), &mut Vec::new())
        .map_err(|e| OpError::bad("invalid_key", format!("a key that {e}")))?;
    Ok(Key::named(table, key))
}

/// `key` checked against the configuration: a table key's table must be watched, and the key must
/// fit its declared type (an address table takes an address).
pub fn checked_key(cfg: &crate::config::Config, key: &Key) -> Result<Key, OpError> {
    let Key::Table(named) = key else { return Ok(key.clone()) };
    let (table, text) = (&named.table, &named.key);
    let Some(t) = cfg.tables.iter().find(|t| &t.name == table) else {
        let known: Vec<&str> = cfg.tables.iter().map(|t| t.name.as_str()).collect();
        return Err(OpError::bad(
            "unknown_table",
            format!("no rule watches a table '{table}' (watched: {})", known.join(", ")),
        ));
    };
    match t.key {
        None => Ok(Key::Net(crate::net::parse_net(text).map_err(|m| OpError::bad("invalid_address", m))?)),
        Some(ty) => Key::in_table(table, ty, text).map_err(|m| OpError::bad("invalid_key", m)),
    }
}

/// An address only (history, explain).
pub fn parse_addr(s: &str) -> Result<IpAddr, OpError> {
    let net = parse_key(s)?;
    if !crate::net::is_host(&net) {
        return Err(OpError::bad("invalid_address", format!("'{s}': expected one address, not a network")));
    }
    Ok(net.addr())
}

/// A duration greater than zero and at most [`MAX_DURATION`]: `30m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, OpError> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        OpError::bad("invalid_duration", format!("'{s}' is not a duration ({e}); write e.g. 30m, 2h, 7d"))
    })?;
    if d.is_zero() {
        return Err(OpError::bad("invalid_duration", format!("'{s}': a duration must be greater than zero")));
    }
    if d > MAX_DURATION {
        return Err(OpError::bad("invalid_duration", format!("'{s}': at most {}", crate::time::human(MAX_DURATION))));
    }
    Ok(d)
}

/// A reason people will read in the audit log: not empty, at most [`MAX_REASON`] characters,
/// no control characters.
pub fn check_reason(s: &str) -> Result<String, OpError> {
    let r = s.trim();
    if r.is_empty() {
        return Err(OpError::bad("invalid_reason", "a reason is required"));
    }
    if r.chars().count() > MAX_REASON {
        return Err(OpError::bad("invalid_reason", format!("the reason is longer than {MAX_REASON} characters")));
    }
    if r.chars().any(char::is_control) {
        return Err(OpError::bad("invalid_reason", "the reason contains control characters"));
    }
    Ok(r.to_owned())
}

/// `POST /v1/blocks`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    pub key: String,
    /// The table `key` belongs to, for a table keyed by something else than addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub duration: String,
    pub reason: String,
    /// Allows a network broader than `[safety] max_prefix_v4`/`max_prefix_v6`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_broad: bool,
}

/// `POST /v1/unblock`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnblockRequest {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub reason: String,
    /// Keeps the rules from blocking the key again for this long.
    #[serde(default)]
    pub grace: Option<String>,
}

/// `POST /v1/extend`: the block of `key` ends `duration` from now instead (longer or shorter).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub duration: String,
    pub reason: String,
}

impl ExtendRequest {
    pub fn check(&self) -> Result<Manual, OpError> {
        Ok(Manual::Extend {
            key: parse_block_key(self.table.as_deref(), &self.key)?,
            duration: parse_duration(&self.duration)?,
            reason: check_reason(&self.reason)?,
        })
    }
}

/// `POST /v1/allow` (add) and `POST /v1/allow/remove`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRequest {
    pub key: String,
    pub reason: String,
    /// Only when adding: the entry ends after this long (default: never).
    #[serde(default)]
    pub duration: Option<String>,
}

/// `POST /v1/import`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// One address or CIDR per element; blank elements and `#` comments are skipped.
    pub entries: Vec<String>,
    pub duration: String,
    pub reason: String,
    /// Allows networks broader than `[safety] max_prefix_v4`/`max_prefix_v6`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_broad: bool,
}

/// A checked operator action, ready for the controller (serialized only to reach the leader
/// from a follower, [`crate::store::postgres::requests`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manual {
    Block {
        key: Key,
        duration: Duration,
        reason: String,
        allow_broad: bool,
    },
    Unblock {
        key: Key,
        reason: String,
        grace: Option<Duration>,
    },
    /// The active block of `key` ends `duration` from now; everything else about it stays.
    Extend {
        key: Key,
        duration: Duration,
        reason: String,
    },
    Allow {
        key: IpNet,
        duration: Option<Duration>,
        reason: String,
    },
    Disallow {
        key: IpNet,
        reason: String,
    },
    Import {
        keys: Vec<IpNet>,
        duration: Duration,
        reason: String,
        allow_broad: bool,
    },
}

impl BlockRequest {
    pub fn check(&self) -> Result<Manual, OpError> {
        Ok(Manual::Block {
            key: parse_block_key(self.table.as_deref(), &self.key)?,
            duration: parse_duration(&self.duration)?,
            reason: check_reason(&self.reason)?,
            allow_broad: self.allow_broad,
        })
    }
}

impl UnblockRequest {
    pub fn check(&self) -> Result<Manual, OpError> {
        Ok(Manual::Unblock {
            key: parse_block_key(self.table.as_deref(), &self.key)?,
            reason: check_reason(&self.reason)?,
            grace: self.grace.as_deref().map(parse_duration).transpose()?,
        })
    }
}

impl AllowRequest {
    pub fn check_add(&self) -> Result<Manual, OpError> {
        Ok(Manual::Allow {
            key: parse_key(&self.key)?,
            duration: self.duration.as_deref().map(parse_duration).transpose()?,
            reason: check_reason(&self.reason)?,
        })
    }

    pub fn check_remove(&self) -> Result<Manual, OpError> {
        if self.duration.is_some() {
            return Err(OpError::bad("invalid_request", "a removal takes no duration"));
        }
        Ok(Manual::Disallow { key: parse_key(&self.key)?, reason: check_reason(&self.reason)? })
    }
}

impl ImportRequest {
    /// Every entry is checked first: the first bad one is reported with its line number (1-based)
    /// and nothing is imported.
    pub fn check(&self) -> Result<Manual, OpError> {
        self.check_with(|_| {})
    }

    /// [`ImportRequest::check`], telling `progress` how many entries were checked so far.
    pub fn check_with(&self, mut progress: impl FnMut(usize)) -> Result<Manual, OpError> {
        let duration = parse_duration(&self.duration)?;
        let reason = check_reason(&self.reason)?;
        if self.entries.len() > MAX_IMPORT {
            return Err(OpError::bad("too_many_entries", format!("at most {MAX_IMPORT} entries per import")));
        }
        let mut keys = Vec::with_capacity(self.entries.len());
        let mut seen = std::collections::HashSet::with_capacity(self.entries.len());
        for (i, line) in self.entries.iter().enumerate() {
            if i % 1024 == 0 {
                progress(i);
            }
            let text = line.split('#').next().unwrap_or_default().trim();
            if text.is_empty() {
                continue;
            }
            let key = crate::net::parse_net(text)
                .map_err(|m| OpError::bad("invalid_address", format!("line {}: {m}", i + 1)))?;
            if seen.insert(key) {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(OpError::bad("invalid_request", "no address or CIDR to import"));
        }
        Ok(Manual::Import { keys, duration, reason, allow_broad: self.allow_broad })
    }
}

/// What a manual action did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// Blocks created or replaced.
    #[serde(default)]
    pub blocked: Vec<BlockView>,
    /// Keys whose block was released.
    #[serde(default)]
    pub released: Vec<String>,
    /// Keys left alone, with why (allowlisted, ...).
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
    /// Allowlist entries added or removed.
    #[serde(default)]
    pub allowed: Vec<String>,
    /// What HAProxy refused, per target (the decision is recorded and will be retried).
    #[serde(default)]
    pub failures: Vec<String>,
}

/// Active blocks, oldest first.
pub fn blocks(store: &Store, now: Millis) -> Result<Vec<BlockView>, OpError> {
    blocks_unconfirmed(store, now, &Default::default())
}

/// [`blocks`], each with the targets that have not confirmed it (the running daemon's view).
pub fn blocks_unconfirmed(
    store: &Store,
    now: Millis,
    unconfirmed: &std::collections::HashMap<Key, Vec<String>>,
) -> Result<Vec<BlockView>, OpError> {
    let mut list = store.blocks()?;
    list.sort_by(|a, b| (a.since, &a.key).cmp(&(b.since, &b.key)));
    Ok(list
        .iter()
        .map(|b| BlockView {
            unconfirmed_on: unconfirmed.get(&b.key).cloned().unwrap_or_default(),
            ..BlockView::of(b, now)
        })
        .collect())
}

/// Offences, blocks and releases of one address (and of the networks around it), or of one key of
/// a table keyed otherwise.
pub fn history(store: &Store, key: &Key, now: Millis) -> Result<HistoryView, OpError> {
    let offender = store.offender(key)?;
    let (block, events) = match key.addr() {
        Some(addr) => (store.block_covering(addr)?, store.audit_covering(addr)?),
        None => (store.block(key)?, store.audit_about(std::slice::from_ref(key))?),
    };
    let block = block.map(|b| BlockView::of(&b, now));
    let events = events.iter().map(AuditView::of).collect();
    Ok(HistoryView::new(key, offender.as_ref(), block, events))
}

/// Filters of `audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `1h` (that long ago) or an RFC 3339 time.
    pub since: Option<String>,
    /// Records about this address or network (or a network containing the address), or with
    /// `table`, about this key of that table.
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    pub actor: Option<String>,
    /// `block`, `release`, `would_block`, ...
    pub event: Option<String>,
}

/// Checks the filters of an audit query without reading anything.
pub fn audit_check(q: &AuditQuery) -> Result<(), OpError> {
    audit_filters(q, 0).map(drop)
}

/// An audit query's filters, checked: since when, about which key, which event.
pub type Filters = (Millis, Option<Key>, Option<Event>);

pub fn audit_filters(q: &AuditQuery, now: Millis) -> Result<Filters, OpError> {
    let since = match q.since.as_deref() {
        None => 0,
        Some(s) if s.contains('T') || s.contains('-') => {
            crate::time::parse_rfc3339(s).map_err(|m| OpError::bad("invalid_time", m))?
        }
        Some(s) => {
            let d = humantime::parse_duration(s.trim()).map_err(|e| {
                OpError::bad("invalid_duration", format!("'{s}' is neither a duration nor an RFC 3339 time ({e})"))
            })?;
            now.saturating_sub(crate::time::ms(d))
        }
    };
    if let (Some(_), None) = (&q.table, &q.key) {
        return Err(OpError::bad("invalid_request", "a table filter needs a key"));
    }
    let key = q.key.as_deref().map(|k| parse_block_key(q.table.as_deref(), k)).transpose()?;
    let event = match q.event.as_deref() {
        None => None,
        Some(e) => Some(
            serde_json::from_value::<Event>(serde_json::Value::String(e.to_owned()))
                .map_err(|_| OpError::bad("invalid_event", format!("unknown event '{e}'")))?,
        ),
    };
    Ok((since, key, event))
}

pub fn audit(store: &Store, q: &AuditQuery, now: Millis) -> Result<Vec<AuditView>, OpError> {
    let (since, key, event) = audit_filters(q, now)?;
    Ok(store
        .audit_since(since)?
        .iter()
        .filter(|r| key.as_ref().is_none_or(|k| r.key.as_ref().is_some_and(|rk| rk.overlaps(k))))
        .filter(|r| q.actor.as_ref().is_none_or(|a| &r.actor == a))
        .filter(|r| event.is_none_or(|e| r.event == e))
        .map(AuditView::of)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code given to [`OpError::bad`] in the sources is one [`OpError::of_code`] gives
    /// back, so an error answered by the leader reaches a follower's client with its code.
    #[test]
    fn every_bad_input_code_survives_the_way_from_leader_to_follower() {
        let mut dirs = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut found = std::collections::BTreeSet::new();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split("OpError::bad(").skip(1) {
                        let part = part.trim_start();
                        let code = part.strip_prefix('"').and_then(|r| r.split('"').next()).unwrap_or_default();
                        if !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                            found.insert(code.to_owned());
                        }
                    }
                }
            }
        }
        assert!(found.len() >= 8, "{found:?}");
        for code in &found {
            assert!(BAD_INPUT_CODES.contains(&code.as_str()), "{code} is missing from BAD_INPUT_CODES");
            let e = OpError::of_code(code, "m".into());
            assert_eq!(e.code(), code);
        }
        for e in [OpError::NotFound("x".into()), OpError::Conflict("x".into()), OpError::Haproxy("x".into())] {
            let back = OpError::of_code(e.code(), e.to_string());
            assert_eq!((back.code(), back.to_string()), (e.code(), e.to_string()));
        }
    }

    /// A table key names a watched table and fits its declared type; in a table of addresses it
    /// is an address.
    #[test]
    fn table_keys_are_checked_against_the_configuration() {
        use crate::proto::KeyType;
        let mut cfg = crate::config::Config::offline(crate::rules::RuleSet {
            rules: Vec::new(),
            policy: crate::rules::Policy::default(),
        });
        let table = |name: &str, key| crate::config::TableConfig {
            name: name.into(),
            interval: std::time::Duration::from_secs(1),
            suspects: None,
            key,
            map: None,
        };
        cfg.tables = vec![
            table("ft_web", None),
            table("st_apikey", Some(KeyType::String { len: Some(8) })),
            table("t_int", Some(KeyType::Integer)),
        ];
        let check = |t: &str, k: &str| parse_block_key(Some(t), k).and_then(|k| checked_key(&cfg, &k));
        assert_eq!(check("ft_web", "::ffff:10.0.0.1").unwrap(), Key::host("10.0.0.1".parse().unwrap()));
        assert_eq!(check("ft_web", "k-1").unwrap_err().code(), "invalid_address");
        assert_eq!(check("st_apikey", "a b;c").unwrap(), Key::named("st_apikey", "a b;c"));
        assert_eq!(check("st_apikey", "123456789").unwrap_err().code(), "invalid_key");
        assert_eq!(check("st_apikey", "a\nb").unwrap_err().code(), "invalid_key");
        assert_eq!(check("st_apikey", "").unwrap_err().code(), "invalid_key");
        assert_eq!(check("t_int", "42").unwrap().text(), "42");
        assert_eq!(check("t_int", "4x").unwrap_err().code(), "invalid_key");
        assert_eq!(check("st_nope", "k").unwrap_err().code(), "unknown_table");
        assert_eq!(check("bad table", "k").unwrap_err().code(), "unknown_table");
    }

    #[test]
    fn requests_are_checked_with_stable_codes() {
        let bad = |r: Result<Manual, OpError>| r.map(|_| ()).unwrap_err().code();
        let block = |key: &str, duration: &str, reason: &str| {
            BlockRequest {
                key: key.into(),
                table: None,
                duration: duration.into(),
                reason: reason.into(),
                allow_broad: false,
            }
            .check()
        };
        assert!(block("10.0.0.1", "1h", "abuse").is_ok());
        assert_eq!(bad(block("10.0.0.300", "1h", "abuse")), "invalid_address");
        assert_eq!(bad(block("10.0.0.1/24", "1h", "abuse")), "invalid_address");
        assert_eq!(bad(block("10.0.0.1", "0s", "abuse")), "invalid_duration");
        assert_eq!(bad(block("10.0.0.1", "-5m", "abuse")), "invalid_duration");
        assert_eq!(bad(block("10.0.0.1", "400d", "abuse")), "invalid_duration");
        assert_eq!(bad(block("10.0.0.1", "1h", "  ")), "invalid_reason");
        assert_eq!(bad(block("10.0.0.1", "1h", &"x".repeat(501))), "invalid_reason");
        assert_eq!(bad(block("10.0.0.1", "1h", "a\u{7}b")), "invalid_reason");
        let import = |entries: &[&str]| {
            ImportRequest {
                entries: entries.iter().map(|s| s.to_string()).collect(),
                duration: "1h".into(),
                reason: "list".into(),
                allow_broad: false,
            }
            .check()
        };
        let Manual::Import { keys, .. } =
            import(&["10.0.0.1", "", "# comment", "10.0.0.0/24 # net", "10.0.0.1"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(keys.len(), 2);
        let e = import(&["10.0.0.1", "10.0.0.2", "nope"]).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("invalid_address", "line 3: 'nope' is not an IPv4 or IPv6 address")
        );
        assert_eq!(bad(import(&["# only a comment"])), "invalid_request");
    }
}
