//! What `stickwarden check` verifies on each HAProxy target before the daemon relies on it: the
//! connection, the watched and block tables (present, keyed by address, storing every column the
//! rules read and the tag), the block ACL (loaded from its file), and the socket's level (operator
//! for tables, admin for `shutdown session`, and whatever this HAProxy asks for ACL commands:
//! nothing more than operator up to 3.3, admin from 3.4, a change that may be backported, so it is
//! asked, never inferred from the version). Every probe is read-only: filtered `show table` with a
//! filter no entry matches, `show acl` (which 3.4+ refuses below admin, like every ACL command),
//! and a `shutdown session` of a pointer that cannot be a session, which only tells the level.

use std::collections::BTreeSet;

use crate::client::{Client, ClientOptions};
use crate::columns;
use crate::config::{Config, TargetConfig};
use crate::proto::{DataField, ErrorKind, KeyType};
use crate::rules::Action;

/// One verified fact, or one problem with what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
}

impl Finding {
    fn ok(what: impl Into<String>) -> Finding {
        Finding { ok: true, what: what.into() }
    }

    fn fail(what: impl Into<String>) -> Finding {
        Finding { ok: false, what: what.into() }
    }
}

/// Runs every probe against one target.
pub async fn check_target(cfg: &Config, t: &TargetConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let client = match Client::connect(t.target.clone(), ClientOptions::default()).await {
        Ok(c) => c,
        Err(e) => return vec![Finding::fail(format!("cannot connect to {}: {e}", t.target))],
    };
    match client.show_info().await {
        Ok(info) => out.push(Finding::ok(format!(
            "connected to {}: HAProxy {} (pid {})",
            t.target,
            info.get("Version").unwrap_or("?"),
            info.pid().map_or("?".into(), |p| p.to_string())
        ))),
        Err(e) => return vec![Finding::fail(format!("{}: show info failed: {e}", t.target))],
    }
    let version = client.show_info().await.ok().and_then(|i| i.get("Version").map(str::to_owned)).unwrap_or_default();
    let tables = match client.list_tables().await {
        Ok(t) => t,
        Err(e) => return [out, vec![Finding::fail(format!("cannot list tables: {e}"))]].concat(),
    };

    // Columns each table must store: what its rules read, plus the tag in the block table.
    let mut needs: Vec<(String, BTreeSet<String>)> = cfg
        .tables
        .iter()
        .map(|tc| {
            let cols =
                cfg.rules.for_table(&tc.name).flat_map(|(_, r)| r.conditions()).map(|c| c.column.to_string()).collect();
            (tc.name.clone(), cols)
        })
        .collect();
    // A table keyed otherwise carries the tag of its own keys.
    for tc in cfg.tables.iter().filter(|t| t.key.is_some() && cfg.rules.policy.uses(Action::Tag)) {
        if let Some((_, cols)) = needs.iter_mut().find(|(n, _)| *n == tc.name) {
            cols.insert(cfg.block.tag.to_string());
        }
    }
    if let Some(bt) = cfg.block.table.as_ref().filter(|_| cfg.rules.policy.uses(Action::Tag)) {
        match needs.iter_mut().find(|(n, _)| n == bt) {
            Some((_, cols)) => {
                cols.insert(cfg.block.tag.to_string());
            }
            None => needs.push((bt.clone(), [cfg.block.tag.to_string()].into())),
        }
    }
    for (name, cols) in &needs {
        let Some(info) = tables.iter().find(|i| i.name == *name) else {
            let known: Vec<&str> = tables.iter().map(|i| i.name.as_str()).collect();
            out.push(Finding::fail(format!(
                "table '{name}' does not exist (tables: {}; `stickwarden haproxy-config` prints its lines)",
                known.join(", ")
            )));
            continue;
        };
        let declared = cfg.key_type(name);
        match (KeyType::from_header(&info.key_type), declared) {
            (Some(KeyType::Ip | KeyType::Ipv6), None) => {}
            (Some(KeyType::String { .. }), Some(KeyType::String { len })) => out.push(Finding::ok(format!(
                "table '{name}' is keyed by string (keys checked at most {} bytes, its `len`): its keys are \
                 blocked by tag and map only; the ACL, kill and aggregation are for addresses",
                len.unwrap_or_default()
            ))),
            (Some(KeyType::Integer), Some(KeyType::Integer)) => out.push(Finding::ok(format!(
                "table '{name}' is keyed by integer: its keys are blocked by tag and map only; the ACL, kill \
                 and aggregation are for addresses"
            ))),
            (_, None) => {
                out.push(Finding::fail(format!(
                    "table '{name}' is keyed by {}: declare it in [[table]] with key = \"string\" (and key_len) \
                     or \"integer\", or track addresses (type ip or ipv6)",
                    info.key_type
                )));
                continue;
            }
            (_, Some(want)) => {
                out.push(Finding::fail(format!(
                    "table '{name}' is keyed by {} in HAProxy, and [[table]] says key = \"{want}\"",
                    info.key_type
                )));
                continue;
            }
        }
        let (mut missing, mut unfilterable) = (Vec::new(), Vec::new());
        for col in cols {
            let field: DataField = match col.parse() {
                Ok(f) => f,
                Err(e) => {
                    out.push(Finding::fail(format!("table '{name}': {e}")));
                    continue;
                }
            };
            match columns::filter_name(&client, name, &field).await {
                Ok(Some(_)) => {}
                // An array element past 0 cannot be named in a filter before HAProxy 3.2, so
                // whether it is stored cannot be asked either.
                Ok(None) if columns::array_element(col).is_some_and(|(_, n)| n > 0) => unfilterable.push(col.as_str()),
                Ok(None) => missing.push(col.as_str()),
                Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::PermissionDenied) => {
                    out.push(Finding::fail(format!(
                        "the socket is at level user: table contents need level operator at least ({})",
                        socket_line(&t.target, "admin")
                    )));
                    return out;
                }
                Err(e) => {
                    out.push(Finding::fail(format!("table '{name}': probing {col} failed: {e}")));
                    return out;
                }
            }
        }
        if missing.is_empty() {
            let list: Vec<&str> = cols.iter().map(String::as_str).filter(|c| !unfilterable.contains(c)).collect();
            out.push(Finding::ok(format!("table '{name}' ({}) stores {}", info.key_type, list.join(", "))));
        } else {
            out.push(Finding::fail(format!(
                "table '{name}' does not store {}: add them to its 'store' list in the HAProxy config \
                 (`stickwarden haproxy-config` prints the lines this configuration needs)",
                missing.join(", ")
            )));
        }
        if !unfilterable.is_empty() {
            out.push(Finding::ok(format!(
                "note: table '{name}': {} cannot be filtered on by this HAProxy (array elements past 0 need 3.2+): \
                 not verified, and rules on them read a wider dump",
                unfilterable.join(", ")
            )));
        }
    }

    for tc in cfg.tables.iter().filter(|t| t.suspects.is_some()) {
        out.extend(suspects_findings(cfg, tc, &client, &tables).await);
    }

    let uses_acl = cfg.rules.policy.uses(Action::Acl) || cfg.aggregate.is_some();
    let mut acl_refused = false;
    if let Some(acl) = cfg.block.acl.as_ref().filter(|_| uses_acl) {
        match client.list_acls().await {
            Ok(list) if list.iter().any(|a| a.file.as_deref() == Some(&acl.to_string())) => {
                out.push(Finding::ok(format!("ACL {acl} is loaded")))
            }
            Ok(_) => out.push(Finding::fail(format!(
                "ACL file {acl} is not loaded by HAProxy: reference it with `acl blocked src -f {acl}` and \
                 `http-request deny if blocked` (`stickwarden haproxy-config` prints the lines); the file must \
                 exist, even empty"
            ))),
            // Said once, with the line to change, by the level finding below.
            Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::PermissionDenied) => acl_refused = true,
            Err(e) => out.push(Finding::fail(format!("cannot list ACLs: {e}"))),
        }
    }
    if let (Some(_), Some(map)) = (cfg.rules.policy.map_class(), cfg.block.map.as_ref()) {
        match client.list_maps().await {
            Ok(list) if list.iter().any(|m| m.file.as_deref() == Some(&map.to_string())) => {
                out.push(Finding::ok(format!("map {map} is loaded")))
            }
            Ok(_) => out.push(Finding::fail(format!(
                "map file {map} is not loaded by HAProxy: read it with `http-request set-var(txn.sw_class) \
                 src,map_ip({map})` (`stickwarden haproxy-config` prints the lines); the file must exist, even empty"
            ))),
            Err(e) => out.push(Finding::fail(format!("cannot list maps: {e}"))),
        }
    }
    // The maps of tables keyed otherwise, read with `map` (strings) rather than `map_ip`.
    for (name, map) in cfg.tables.iter().filter_map(|t| Some((&t.name, t.map.as_ref()?))) {
        match client.list_maps().await {
            Ok(list) if list.iter().any(|m| m.file.as_deref() == Some(&map.to_string())) => {
                out.push(Finding::ok(format!("map {map} (keys of {name}) is loaded")))
            }
            Ok(_) => out.push(Finding::fail(format!(
                "map file {map} (keys of {name}) is not loaded by HAProxy: read it with the key's fetch, e.g. \
                 `req.hdr(x-api-key),map({map})`; the file must exist, even empty"
            ))),
            Err(e) => out.push(Finding::fail(format!("cannot list maps: {e}"))),
        }
    }
    out.push(level_finding(cfg, t, &client, acl_refused, &version).await);
    out
}

/// Suspects mode: the suspects table is there, keyed like the watched table, storing the flag; and
/// a sweep now (a full poll, then the flags) finds every offender flagged, which only the lines of
/// `stickwarden haproxy-config` in the watched table's frontend can do.
async fn suspects_findings(
    cfg: &Config,
    tc: &crate::config::TableConfig,
    client: &Client,
    tables: &[crate::proto::table::TableInfo],
) -> Vec<Finding> {
    let Some(s) = &tc.suspects else { return Vec::new() };
    let (name, sus) = (&tc.name, &s.table);
    let advice = "add the lines `stickwarden haproxy-config` prints to HAProxy's configuration";
    let Some(info) = tables.iter().find(|i| i.name == *sus) else {
        return vec![Finding::fail(format!("suspects table '{sus}' of '{name}' does not exist: {advice}"))];
    };
    let Some(watched) = tables.iter().find(|i| i.name == *name) else { return Vec::new() };
    if info.key_type != watched.key_type {
        return vec![Finding::fail(format!(
            "suspects table '{sus}' is keyed by {}, '{name}' by {}: they must be of one type",
            info.key_type, watched.key_type
        ))];
    }
    let gpt0: DataField = "gpt0".parse().expect("a column name");
    match columns::filter_name(client, sus, &gpt0).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return vec![Finding::fail(format!("suspects table '{sus}' does not store gpt0 (the flag): {advice}"))]
        }
        Err(e) => return vec![Finding::fail(format!("suspects table '{sus}': {e}"))],
    }
    let swept = async {
        let queries = crate::poll::plan(client, name, &cfg.rules).await?;
        let key_type = client.table_key_type(name).await?;
        let blocked = cfg.block.blocked_in(name);
        crate::poll::sweep(client, name, sus, key_type, &queries, &cfg.rules, blocked).await
    };
    match swept.await {
        Ok(sw) if sw.missed.is_empty() => vec![Finding::ok(format!(
            "suspects table '{sus}' flags every offender a full poll of '{name}' finds ({} now, {} flagged)",
            sw.polled.observations.len(),
            sw.flagged
        ))],
        Ok(sw) => {
            let first: Vec<String> = sw.missed.iter().take(5).map(|a| a.to_string()).collect();
            vec![Finding::fail(format!(
                "{} offender(s) a full poll of '{name}' finds are not flagged in '{sus}' ({}): {advice}, after `tcp-request connection track-sc0 src`",
                sw.missed.len(),
                first.join(", ")
            ))]
        }
        Err(e) => vec![Finding::fail(format!("suspects table '{sus}': the comparison with a full poll failed: {e}"))],
    }
}

/// The one finding about the socket's level, in every case: admin; or below admin, and whether
/// that is enough for the ladder's kill step and for the ACL commands this HAProxy refused.
async fn level_finding(cfg: &Config, t: &TargetConfig, client: &Client, acl_refused: bool, version: &str) -> Finding {
    let admin = match client.shutdown_session(1).await {
        // No such session, or (should a version ever answer nothing) accepted: admin either way.
        Ok(()) => true,
        Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::NoSuchSession) => true,
        Err(e) if e.haproxy().is_some_and(|h| h.kind == ErrorKind::PermissionDenied) => false,
        Err(e) => return Finding::fail(format!("socket level: the probe failed: {e}")),
    };
    if admin {
        return Finding::ok("socket level admin");
    }
    let mut needs = Vec::new();
    if cfg.rules.policy.uses(Action::Kill) {
        needs.push("the ladder's \"kill\" step".to_owned());
    }
    if acl_refused {
        needs.push(format!("ACL commands on this HAProxy ({version}, which refused `show acl`)"));
    }
    if needs.is_empty() {
        return Finding::ok("socket level operator (enough: no kill step, and this HAProxy allows ACL commands at it)");
    }
    Finding::fail(format!(
        "the socket is below level admin, which {} need: change its line to `{}`",
        needs.join(" and "),
        socket_line(&t.target, "admin")
    ))
}

pub use crate::haproxy_side::socket_line;

/// Runs [`check_target`] on every target; returns every finding with its target's name.
pub async fn check_all(cfg: &Config) -> Vec<(String, Finding)> {
    let mut out = Vec::new();
    for t in &cfg.targets {
        out.extend(check_target(cfg, t).await.into_iter().map(|f| (t.name.clone(), f)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lines() {
        assert_eq!(
            socket_line(&"unix:/run/h.sock".parse().unwrap(), "admin"),
            "stats socket /run/h.sock mode 600 level admin"
        );
    }
}
