//! The HAProxy side of a configuration, written out: the `stats socket` line at the level the
//! ladder needs, each watched table with every column its rules read (and the tag), the tracking
//! line, the denies of the tag and of the ACL, and suspects mode's lines. What `stickwarden
//! haproxy-config` prints, so that a new user pastes them instead of reading three documents; and
//! the socket line `check` and the controller advise when the level is too low.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::rules::{Action, MapClass};
use crate::target::Target;

/// The `stats socket` line that gives `level`.
pub fn socket_line(target: &Target, level: &str) -> String {
    match target {
        Target::Unix(p) => format!("stats socket {} mode 600 level {level}", p.display()),
        Target::Tcp { host, port } => format!("stats socket ipv4@{host}:{port} level {level}"),
        Target::Master(p) => format!("-S {},level,{level} (haproxy's command line)", p.display()),
    }
}

/// The columns HAProxy has by these names since before its arrays (`gpt0`, `gpc0`, `gpc1`).
const LEGACY: [&str; 5] = ["gpt0", "gpc0", "gpc1", "gpc0_rate", "gpc1_rate"];

/// An element of a `gpt` or `gpc` array that has no name of its own (`gpt1`, `gpc2`): its array
/// and index.
fn array(column: &str) -> Option<(&'static str, u32)> {
    if LEGACY.contains(&column) {
        return None;
    }
    crate::columns::array_element(column)
}

/// How a column is declared in a `stick-table ... store` list: rates over 10 s (the window the
/// shipped rules are written for), arrays as long as the highest element read.
fn store_list(columns: &[String]) -> String {
    let mut arrays: BTreeMap<&str, u32> = BTreeMap::new();
    let mut out: Vec<String> = Vec::new();
    for c in columns {
        if let Some((base, n)) = array(c) {
            let len = arrays.entry(base).or_insert(0);
            *len = (*len).max(n + 1);
            continue;
        }
        let decl = if c.ends_with("_rate") { format!("{c}(10s)") } else { c.clone() };
        if !out.contains(&decl) {
            out.push(decl);
        }
    }
    out.extend(arrays.into_iter().map(|(base, len)| {
        if base == "gpc_rate" {
            format!("gpc_rate({len},10s)")
        } else {
            format!("{base}({len})")
        }
    }));
    out.join(",")
}

/// The sample fetch that reads the tag of the client's address in `table`.
fn tag_fetch(tag: &str, table: &str) -> String {
    match array(tag) {
        Some((base, n)) => format!("src_get_{base}({n},{table})"),
        None => format!("src_get_{tag}({table})"),
    }
}

/// The response classes the ladder uses, in their order.
fn used_classes(cfg: &Config) -> Vec<MapClass> {
    MapClass::ALL.into_iter().filter(|c| cfg.rules.policy.uses(Action::Map(*c))).collect()
}

/// The key the challenge's cookie is made with. Change it (any integer): a client that knows it
/// can make the cookie of any address without fetching the page.
pub const CHALLENGE_SEED: u64 = 48879;

/// The lines of the `map:CLASS` actions: the client's class read from the block map, then one
/// response per class the ladder uses.
pub fn map_lines(map: &str, classes: &[MapClass]) -> Vec<String> {
    let is = |c: MapClass| format!("{{ var(txn.sw_class) -m str {} }}", c.as_str());
    let mut out = vec![
        "    # The map:CLASS actions: the class stickwarden gave the client's address (or network).".to_owned(),
        format!("    http-request set-var(txn.sw_class) src,map_ip({map})"),
    ];
    for c in classes {
        match c {
            MapClass::Tarpit => {
                out.push("    # tarpit: the request is held for `timeout tarpit`, then answered 429.".into());
                out.push("    timeout tarpit 5s".into());
                out.push(format!("    http-request tarpit deny_status 429 if {}", is(*c)));
            }
            MapClass::Throttle => {
                out.push("    # throttle: 429 at once, with the time to wait before trying again.".into());
                out.push(format!(
                    "    http-request return status 429 content-type text/plain hdr Retry-After 30 string \"slow down\" if {}",
                    is(*c)
                ));
            }
            MapClass::Challenge => {
                out.push(
                    "    # challenge: a page whose script sets a cookie made from the client's address; a client"
                        .into(),
                );
                out.push(
                    "    # that runs it (a browser) comes back with the cookie and is served, one that does not".into(),
                );
                out.push("    # (a plain script) gets the page again. Not a CAPTCHA: a bot that runs or reads the page passes.".into());
                out.push(format!(
                    "    http-request set-var(txn.sw_proof) src,xxh3({CHALLENGE_SEED}),hex if {}",
                    is(*c)
                ));
                out.push(format!(
                    "    http-request return status 200 content-type text/html lf-string \"<html><script>document.cookie='sw_proof=%[var(txn.sw_proof)]; path=/';location.reload()</script><noscript>Please turn on JavaScript.</noscript></html>\" if {} !{{ req.cook(sw_proof),strcmp(txn.sw_proof) eq 0 }}",
                    is(*c)
                ));
            }
            MapClass::Deny => {
                out.push("    # deny: refused with this status and body.".into());
                out.push(format!(
                    "    http-request deny deny_status 403 content-type text/plain string \"access denied\" if {}",
                    is(*c)
                ));
            }
        }
    }
    out
}

/// What `stickwarden haproxy-config` prints for `cfg`.
pub fn render(cfg: &Config) -> String {
    let mut out = vec![
        format!("# The HAProxy lines {} needs, by `stickwarden haproxy-config`.", cfg.path.display()),
        "# Each part goes where its heading says; `stickwarden check` verifies the result.".to_owned(),
        String::new(),
        "# == in the global section".to_owned(),
    ];
    let admin =
        cfg.rules.policy.uses(Action::Kill) || cfg.block.acl.is_some() || cfg.rules.policy.map_class().is_some();
    for t in &cfg.targets {
        if admin {
            out.push(
                "    # level admin: the ladder's kill step and, from HAProxy 3.4 on, ACL and map changes need it"
                    .into(),
            );
        }
        out.push(format!("    {}", socket_line(&t.target, if admin { "admin" } else { "operator" })));
    }

    out.push(String::new());
    out.push("# == in the frontend that receives the clients, after its bind lines".into());
    for (i, t) in cfg.tables.iter().enumerate() {
        out.push(format!("    tcp-request connection track-sc{i} src table {}", t.name));
    }
    if let Some(acl) = &cfg.block.acl {
        out.push("    # The acl action: new connections refused; a kept-alive one denied at its next request.".into());
        out.push(format!("    tcp-request connection reject if {{ src -f {acl} }}"));
        out.push(format!("    http-request deny deny_status 403 if {{ src -f {acl} }}"));
    }
    if let (Some(map), Some(_)) = (&cfg.block.map, cfg.rules.policy.map_class()) {
        out.extend(map_lines(&map.to_string(), &used_classes(cfg)));
    }
    if let Some(table) = &cfg.block.table {
        out.push("    # The tag action: stickwarden sets the tag; leave the column to it.".into());
        out.push(format!(
            "    http-request deny deny_status 403 if {{ {} gt 0 }}",
            tag_fetch(cfg.block.tag.as_str(), table)
        ));
    }

    out.push(String::new());
    out.push("# == sections of their own (or add the store list to the stick-table you have)".into());
    let mut tables: Vec<(String, Vec<String>)> = cfg
        .tables
        .iter()
        .map(|t| {
            let cols = cfg.rules.for_table(&t.name).flat_map(|(_, r)| r.conditions()).map(|c| c.column.to_string());
            (t.name.clone(), cols.collect())
        })
        .collect();
    if let Some(table) = &cfg.block.table {
        let tag = cfg.block.tag.to_string();
        match tables.iter_mut().find(|(n, _)| n == table) {
            Some((_, cols)) => cols.insert(0, tag),
            None => tables.push((table.clone(), vec![tag])),
        }
    }
    for (name, cols) in &tables {
        out.push(format!("backend {name}"));
        out.push("    # `expire` only frees memory: stickwarden, not the table, decides when a block ends.".into());
        out.push(format!("    stick-table type ip size 1m expire 15m store {}", store_list(cols)));
    }
    let mut text = out.join("\n");
    text.push('\n');
    text.push_str(&suspects(cfg));
    text
}

/// Suspects mode's lines for each table that uses it.
fn suspects(cfg: &Config) -> String {
    let mut out = String::new();
    for t in &cfg.tables {
        let Some(s) = &t.suspects else { continue };
        let blocked = cfg.block.blocked_in(&t.name);
        let lines = crate::suspects::lines(&t.name, &s.table, cfg.rules.for_table(&t.name).map(|(_, r)| r), blocked);
        out.push('\n');
        out.push_str(&format!(
            "# In the frontend that tracks '{}' (after `tcp-request connection track-sc0 src`):\n",
            t.name
        ));
        for l in &lines.frontend {
            out.push_str(&format!("    {l}\n"));
        }
        out.push('\n');
        for l in &lines.section {
            out.push_str(&format!("{l}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_lists_give_rates_a_period_and_arrays_a_length() {
        let cols = |c: &[&str]| store_list(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(cols(&["gpt0", "http_req_rate", "conn_cur", "http_req_rate"]), "gpt0,http_req_rate(10s),conn_cur");
        assert_eq!(cols(&["gpc2", "gpc0", "conn_rate", "gpt3"]), "gpc0,conn_rate(10s),gpc(3),gpt(4)");
        assert_eq!(tag_fetch("gpt0", "st"), "src_get_gpt0(st)");
        assert_eq!(tag_fetch("gpt1", "st"), "src_get_gpt(1,st)");
    }
}
