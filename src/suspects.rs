//! Suspects mode: HAProxy itself flags the clients a table's rules match, in a small second table,
//! so that a poll walks the flagged few instead of every tracked client.
//!
//! A watched table with `suspects = "sw_suspects"` gets HAProxy lines ([`lines`]) that evaluate
//! the table's rules (as one condition in disjunctive normal form, [`condition`]) at every event
//! that can raise a counter they read: a new connection, a request, a response. A client that
//! matches is tracked in the suspects table and its `gpt0` set to 1. Between two events a rate or
//! a live-connection count only falls, and a cumulative count stays; so whenever a rule matches a
//! client, it matched at that client's last event, and the client is flagged. The poller reads the
//! flagged entries (`show table SUSPECTS data.gpt0 gt 0`, a walk of the small table) and the true
//! counters of each from the watched table by key, pipelined: the rules then evaluate exactly what
//! a poll of the whole table would have given them. Blocked clients (tagged or listed) are never
//! flagged again (the lines skip them) and their flag is cleared when a poll finds them tagged.
//!
//! The argument needs columns that only change at those events: not `bytes_*` (they grow while
//! data flows), and conditions that are lower bounds (`gt`, `ge`), not `lt`, `le`, `eq`, `ne`,
//! which a falling value can start to satisfy with no event at all. [`check_rules`] refuses the
//! rest. A periodic full poll (the sweep) backs the argument with a measurement: what it finds
//! that was not flagged is counted and logged.

use crate::proto::{AclRef, DataField, FilterOp};
use crate::rules::{Condition, Rule};

/// The sticky counter the suspects table is tracked with in the generated lines.
pub const SUSPECTS_COUNTER: u8 = 2;
/// The sticky counter the watched table is tracked with (`tcp-request connection track-sc0 src`,
/// as in docs/haproxy.md).
pub const TRACKED_AS: u8 = 0;

/// Why `rule` cannot be watched through a suspects table, if it cannot.
pub fn check_rule(rule: &Rule) -> Result<(), String> {
    for c in rule.conditions() {
        if fetch(c).is_none() {
            return Err(format!(
                "rule '{}' ({}) reads {}, which HAProxy may raise between two events (or which has no sample fetch here): a suspects table cannot vouch for it",
                rule.name, rule.at, c.column
            ));
        }
        if !matches!(c.op, FilterOp::Gt | FilterOp::Ge) {
            return Err(format!(
                "rule '{}' ({}): '{c}' is not a lower bound (gt, ge); a falling value can start to match it with no event, so a suspects table cannot vouch for it",
                rule.name, rule.at
            ));
        }
    }
    if rule.all.is_empty() && rule.any.is_empty() {
        return Err(format!("rule '{}' ({}) has no condition", rule.name, rule.at));
    }
    Ok(())
}

/// [`check_rule`] for every rule.
pub fn check_rules<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Result<(), String> {
    rules.into_iter().try_for_each(check_rule)
}

/// The sample fetch that reads `c`'s column of the entry tracked as `sc0`, for the columns that
/// only change at connection, request and response events.
fn fetch(c: &Condition) -> Option<String> {
    let name = c.column.as_str();
    let n = TRACKED_AS;
    let f = match name {
        "gpt0" | "gpc0" | "gpc1" => format!("sc{n}_get_{name}"),
        "gpc0_rate" | "gpc1_rate" | "conn_cnt" | "conn_rate" | "conn_cur" | "sess_cnt" | "sess_rate"
        | "http_req_cnt" | "http_req_rate" | "http_err_cnt" | "http_err_rate" | "http_fail_cnt" | "http_fail_rate" => {
            format!("sc{n}_{name}")
        }
        _ => return None,
    };
    Some(f)
}

/// How a blocked client is known, in HAProxy and in the poller: the tag column of the watched
/// table (when the tag is set there), and the block ACL.
#[derive(Debug, Clone, Copy, Default)]
pub struct Blocked<'a> {
    pub tag: Option<&'a DataField>,
    pub acl: Option<&'a AclRef>,
}

/// One condition as an HAProxy ACL term: `{ sc0_http_req_rate gt 100 }`.
fn term(c: &Condition) -> String {
    let f = fetch(c).unwrap_or_else(|| c.column.to_string());
    format!("{{ {f} {} {} }}", c.op.as_str(), c.value)
}

/// The conjunctions (each a list of conditions, all of which must hold) whose disjunction is
/// "some rule matches": a rule's `all` with each of its `any` in turn.
pub fn conjunctions<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Vec<Vec<&'a Condition>> {
    let mut out = Vec::new();
    for r in rules {
        if r.any.is_empty() {
            out.push(r.all.iter().collect());
        } else {
            for a in &r.any {
                out.push(r.all.iter().chain(std::iter::once(a)).collect());
            }
        }
    }
    out
}

/// One conjunction as the text after an HAProxy `if`, prefixed with `guard` (terms that exclude
/// blocked clients): `!{ sc0_get_gpt0 gt 0 } { sc0_http_req_rate gt 100 }`.
fn condition(conj: &[&Condition], guard: &str) -> String {
    let terms: Vec<String> = conj.iter().map(|c| term(c)).collect();
    [guard.to_owned(), terms.join(" ")].into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The HAProxy lines of suspects mode for `table` (watched as `sc0`) with `suspects`: those of its
/// frontend, and the suspects table's own section.
#[derive(Debug, Clone, PartialEq)]
pub struct Lines {
    pub frontend: Vec<String>,
    pub section: Vec<String>,
}

/// The lines that flag, in `suspects`, the clients `rules` (of `table`) match. `blocked` says
/// which clients are blocked (the tag, the ACL file), so that they are never flagged again.
/// One `set-var` line per conjunction and event (HAProxy reads at most 64 words a line); the
/// `tcp-request` lines come first, as HAProxy runs them first.
pub fn lines<'a>(
    table: &str,
    suspects: &str,
    rules: impl IntoIterator<Item = &'a Rule>,
    blocked: Blocked<'_>,
) -> Lines {
    let mut guard = Vec::new();
    if let Some(tag) = blocked.tag {
        guard.push(format!("!{{ sc{TRACKED_AS}_get_{tag} gt 0 }}"));
    }
    if let Some(acl) = blocked.acl {
        guard.push(format!("!{{ src -f {acl} }}"));
    }
    let guard = guard.join(" ");
    let conjunctions = conjunctions(rules);
    let var = format!("sw_{}", table.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let (sc, s) = (SUSPECTS_COUNTER, suspects);
    let flagged = |scope: &str| format!("{{ var({scope}.{var}) -m int gt 0 }}");
    let mut frontend = vec![
        format!("# stickwarden suspects mode: every client a rule of {table} matches is flagged in {s}, at each"),
        format!(
            "# event that can raise a counter the rules read (needs `tcp-request connection track-sc{TRACKED_AS} src`"
        ),
        format!("# before these lines; `stickwarden check` compares {s} with a full poll of {table})"),
    ];
    let mut event = |rule: &str, scope: &str, track: bool| {
        for conj in &conjunctions {
            frontend.push(format!("{rule} set-var({scope}.{var}) int(1) if {}", condition(conj, &guard)));
        }
        if track {
            frontend.push(format!("{rule} track-sc{sc} src table {s} if {}", flagged(scope)));
        }
        frontend.push(format!("{rule} sc-set-gpt0({sc}) 1 if {}", flagged(scope)));
    };
    event("tcp-request connection", "sess", true);
    event("http-request", "txn", true);
    event("http-response", "txn", true);
    let section = vec![
        format!("backend {s}"),
        format!("    # The same key type as {table}; room for every client that may be flagged at once; and an"),
        format!("    # expire no shorter than {table}'s, so that a flag lasts as long as the counters it stands for."),
        "    stick-table type ip size 100k expire 15m store gpt0".to_owned(),
    ];
    Lines { frontend, section }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`Rule::parsed`], placed at line 3 of its file.
    fn rule(all: &[&str], any: &[&str]) -> Rule {
        let mut r = Rule::parsed(all, any);
        r.at.line = 3;
        r
    }

    #[test]
    fn the_shipped_rules_become_one_line_per_conjunction_and_event() {
        let rules = [
            rule(&[], &["conn_rate gt 200", "conn_cur gt 50"]),
            rule(&["http_req_rate gt 100"], &[]),
            rule(&["http_err_rate gt 20"], &[]),
        ];
        let (tag, acl) = ("gpt0".parse().unwrap(), "/etc/haproxy/block.lst".parse().unwrap());
        let l = lines("ft_web", "sw_suspects", &rules, Blocked { tag: Some(&tag), acl: Some(&acl) });
        let guard = "!{ sc0_get_gpt0 gt 0 } !{ src -f /etc/haproxy/block.lst }";
        assert_eq!(
            &l.frontend[3..9],
            [
                format!("tcp-request connection set-var(sess.sw_ft_web) int(1) if {guard} {{ sc0_conn_rate gt 200 }}"),
                format!("tcp-request connection set-var(sess.sw_ft_web) int(1) if {guard} {{ sc0_conn_cur gt 50 }}"),
                format!(
                    "tcp-request connection set-var(sess.sw_ft_web) int(1) if {guard} {{ sc0_http_req_rate gt 100 }}"
                ),
                format!(
                    "tcp-request connection set-var(sess.sw_ft_web) int(1) if {guard} {{ sc0_http_err_rate gt 20 }}"
                ),
                "tcp-request connection track-sc2 src table sw_suspects if { var(sess.sw_ft_web) -m int gt 0 }"
                    .to_owned(),
                "tcp-request connection sc-set-gpt0(2) 1 if { var(sess.sw_ft_web) -m int gt 0 }".to_owned(),
            ]
        );
        assert_eq!(l.frontend.len(), 3 + 3 * 6);
        assert!(l.frontend.iter().all(|line| line.split_whitespace().count() < 64), "HAProxy's limit of 64 words");
        assert_eq!(
            condition(&conjunctions(&[rule(&["conn_cur ge 5"], &["gpt0 gt 0"])])[0], ""),
            "{ sc0_conn_cur ge 5 } { sc0_get_gpt0 gt 0 }"
        );
    }

    #[test]
    fn only_lower_bounds_on_event_counters_can_be_vouched_for() {
        assert!(check_rule(&rule(&["http_req_rate gt 100"], &["conn_cur ge 2"])).is_ok());
        let e = check_rule(&rule(&["bytes_in_rate gt 100"], &[])).unwrap_err();
        assert!(e.contains("'r' (r.toml:3:1) reads bytes_in_rate"), "{e}");
        let e = check_rule(&rule(&["http_req_rate gt 1"], &["conn_cur lt 5"])).unwrap_err();
        assert!(e.contains("'conn_cur lt 5' is not a lower bound"), "{e}");
        assert!(check_rule(&rule(&["gpt1 gt 0"], &[])).is_err(), "array elements have no sc0_ fetch here");
    }

    const COLUMNS: [&str; 5] = ["http_req_rate", "http_err_rate", "conn_cur", "conn_rate", "gpt0"];

    fn arb_condition() -> impl Strategy<Value = Condition> {
        (0..COLUMNS.len(), prop::bool::ANY, 0i64..20).prop_map(|(c, ge, v)| {
            let op = if ge { "ge" } else { "gt" };
            format!("{} {op} {v}", COLUMNS[c]).parse().unwrap()
        })
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (prop::collection::vec(arb_condition(), 0..3), prop::collection::vec(arb_condition(), 0..3))
            .prop_filter("a rule has a condition", |(all, any)| !all.is_empty() || !any.is_empty())
            .prop_map(|(all, any)| Rule { all, any, ..rule(&[], &[]) })
    }

    proptest! {
        /// The conjunctions HAProxy evaluates say "some rule matches" exactly when one does, on
        /// any values of the columns.
        #[test]
        fn the_condition_is_the_rules(rules in prop::collection::vec(arb_rule(), 1..4),
                                      values in prop::collection::vec(prop::option::of(0i128..25), COLUMNS.len())) {
            let read = |c: &Condition| values[COLUMNS.iter().position(|n| *n == c.column.as_str()).unwrap()];
            let some_rule = rules.iter().any(|r| r.matches_by(read));
            let haproxy = conjunctions(&rules).iter().any(|conj| conj.iter().all(|c| c.holds_on(read(c))));
            prop_assert_eq!(some_rule, haproxy);
        }
    }
}
