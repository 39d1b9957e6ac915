//! Seeing one address whole across the HAProxy nodes of a fleet: how each column's values of the
//! nodes are merged (a sum for counters and rates, the largest for tags; configurable), which
//! per-node filter still returns every address whose merged values can match a rule, and the
//! accumulator the fleet poller fills node by node.
//!
//! Pure code, no I/O. The soundness of the per-node filter is what makes merging cheap: if the sum
//! over `n` nodes of a column exceeds `V`, at least one node holds more than `V / n`, so polling each
//! node with `gt floor(V / n)` finds every candidate, and only the candidates travel.

use std::collections::HashMap;

use serde::Deserialize;

use crate::proto::{DataField, FilterOp};
use crate::rules::{Condition, Rule};

/// How the values of one column on several nodes make one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// Counters and rates: an abuser spread over nodes adds up.
    Sum,
    /// Tags and flags (`gpt0`): set on any node is set.
    Max,
}

impl MergeMode {
    /// The default for a column: `gpt*` columns (tags) take the largest value, the rest add up.
    pub fn default_for(column: &str) -> MergeMode {
        if column.starts_with("gpt") {
            MergeMode::Max
        } else {
            MergeMode::Sum
        }
    }

    fn merge(self, a: i128, b: i128) -> i128 {
        match self {
            MergeMode::Sum => a.saturating_add(b),
            MergeMode::Max => a.max(b),
        }
    }
}

/// How a fleet's observations are merged (the `[fleet]` section of the configuration).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeConfig {
    /// Merge across nodes at all (on by default when there are several targets).
    pub enabled: bool,
    /// Per-column overrides of [`MergeMode::default_for`].
    pub columns: HashMap<String, MergeMode>,
}

impl MergeConfig {
    pub fn mode(&self, column: &DataField) -> MergeMode {
        self.columns.get(column.as_str()).copied().unwrap_or_else(|| MergeMode::default_for(column.as_str()))
    }
}

/// The condition to poll each of `nodes` nodes with, so that every address whose merged value
/// satisfies `c` satisfies it on at least one node; `None` when no such filter exists (the query
/// is then widened to the whole table for that condition).
pub fn relax(c: &Condition, mode: MergeMode, nodes: usize) -> Option<Condition> {
    let n = nodes.max(1) as i64;
    match (mode, c.op) {
        // The largest value satisfies it, and the largest value is some node's value.
        (MergeMode::Max, _) => Some(c.clone()),
        _ if n == 1 => Some(c.clone()),
        // sum > V  =>  some node > V/n  =>  some node > floor(V/n)   (values are never negative)
        (MergeMode::Sum, FilterOp::Gt) if c.value >= 0 => Some(Condition { value: c.value / n, ..c.clone() }),
        // sum >= V  =>  some node >= V/n  =>  some node >= ceil(V/n)
        (MergeMode::Sum, FilterOp::Ge) if c.value > 0 => Some(Condition { value: (c.value + n - 1) / n, ..c.clone() }),
        _ => None,
    }
}

/// A rule whose conditions are relaxed for polling `nodes` nodes. A condition that cannot be
/// relaxed is dropped from `all` (wider, never narrower); in `any` it widens the rule to every entry.
pub fn relax_rule(rule: &Rule, merge: &MergeConfig, nodes: usize) -> Rule {
    let relaxed = |c: &Condition| relax(c, merge.mode(&c.column), nodes);
    let mut r = rule.clone();
    r.all = rule.all.iter().filter_map(relaxed).collect();
    r.any = if rule.any.iter().all(|c| relaxed(c).is_some()) {
        rule.any.iter().filter_map(relaxed).collect()
    } else {
        Vec::new()
    };
    r
}

/// The columns one table's rules read, in a fixed order, with their merge modes.
#[derive(Debug, Clone)]
pub struct Columns {
    pub names: Vec<DataField>,
    pub modes: Vec<MergeMode>,
}

impl Columns {
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Rule>, merge: &MergeConfig) -> Columns {
        let mut names: Vec<DataField> = Vec::new();
        for c in rules.into_iter().flat_map(|r| r.conditions()) {
            if !names.contains(&c.column) {
                names.push(c.column.clone());
            }
        }
        let modes = names.iter().map(|n| merge.mode(n)).collect();
        Columns { names, modes }
    }

    pub fn index(&self, column: &DataField) -> Option<usize> {
        self.names.iter().position(|n| n == column)
    }
}

/// One address's values so far, merged over the nodes that reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    pub values: Vec<Option<i128>>,
    /// Which nodes (by index) reported the address.
    pub nodes: Vec<bool>,
    /// Each node's own values (in [`Columns`] order), for the decision's evidence.
    pub each: Vec<Vec<Option<i128>>>,
}

impl Merged {
    pub fn new(columns: usize, nodes: usize) -> Merged {
        Merged { values: vec![None; columns], nodes: vec![false; nodes], each: vec![Vec::new(); nodes] }
    }

    /// Adds node `node`'s values (in [`Columns`] order). A node reporting twice (two queries) is
    /// counted once.
    pub fn add(&mut self, node: usize, values: &[Option<i128>], modes: &[MergeMode]) {
        if std::mem::replace(&mut self.nodes[node], true) {
            return;
        }
        self.each[node] = values.to_vec();
        for ((slot, v), mode) in self.values.iter_mut().zip(values).zip(modes) {
            if let Some(v) = *v {
                *slot = Some(slot.map_or(v, |s| mode.merge(s, v)));
            }
        }
    }

    /// The nodes that have not reported the address.
    pub fn missing(&self) -> impl Iterator<Item = usize> + '_ {
        self.nodes.iter().enumerate().filter(|(_, seen)| !**seen).map(|(i, _)| i)
    }

    /// Node `node`'s own value of `column`, if it reported one.
    pub fn node_value(&self, columns: &Columns, node: usize, column: &str) -> Option<i128> {
        let i = columns.names.iter().position(|n| n.to_string() == column)?;
        self.each.get(node)?.get(i).copied().flatten()
    }

    /// The merged value of `column`.
    pub fn get(&self, columns: &Columns, column: &DataField) -> Option<i128> {
        columns.index(column).and_then(|i| self.values[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cond(s: &str) -> Condition {
        s.parse().unwrap()
    }

    #[test]
    fn default_modes_and_overrides() {
        let m = MergeConfig { enabled: true, columns: [("conn_cur".to_owned(), MergeMode::Max)].into() };
        assert_eq!(m.mode(&"gpt0".parse().unwrap()), MergeMode::Max);
        assert_eq!(m.mode(&"http_req_rate".parse().unwrap()), MergeMode::Sum);
        assert_eq!(m.mode(&"conn_cur".parse().unwrap()), MergeMode::Max);
    }

    #[test]
    fn relaxed_conditions() {
        let s = |c: &str, n| relax(&cond(c), MergeMode::Sum, n).map(|c| c.to_string());
        assert_eq!(s("http_req_rate gt 100", 5).as_deref(), Some("http_req_rate gt 20"));
        assert_eq!(s("http_req_rate gt 100", 3).as_deref(), Some("http_req_rate gt 33"));
        assert_eq!(s("http_req_rate ge 100", 3).as_deref(), Some("http_req_rate ge 34"));
        assert_eq!(s("http_req_rate ge 100", 1).as_deref(), Some("http_req_rate ge 100"));
        assert_eq!(s("http_req_rate lt 100", 3), None);
        assert_eq!(s("http_req_rate eq 100", 3), None);
        let m = relax(&cond("gpt0 gt 0"), MergeMode::Max, 5).unwrap();
        assert_eq!(m.to_string(), "gpt0 gt 0");
        let merge = MergeConfig { enabled: true, ..Default::default() };
        let r = relax_rule(&Rule::parsed(&["http_req_rate gt 100", "conn_cur lt 3"], &[]), &merge, 4);
        assert_eq!(r.all.iter().map(|c| c.to_string()).collect::<Vec<_>>(), ["http_req_rate gt 25"]);
        let r = relax_rule(&Rule::parsed(&[], &["gpt0 gt 0", "conn_cur eq 3"]), &merge, 4);
        assert!(r.any.is_empty() && r.all.is_empty(), "an unrelaxable any widens to every entry");
    }

    #[test]
    fn merging_sums_counters_and_takes_the_largest_tag() {
        let r = Rule::parsed(&["http_req_rate gt 100", "gpt0 ge 0"], &[]);
        let cols = Columns::of([&r], &MergeConfig::default());
        let mut m = Merged::new(cols.names.len(), 3);
        m.add(0, &[Some(40), Some(0)], &cols.modes);
        m.add(2, &[Some(45), Some(1)], &cols.modes);
        m.add(2, &[Some(45), Some(1)], &cols.modes); // a second query of the same node
        assert_eq!(m.get(&cols, &"http_req_rate".parse().unwrap()), Some(85));
        assert_eq!(m.get(&cols, &"gpt0".parse().unwrap()), Some(1));
        assert_eq!(m.missing().collect::<Vec<_>>(), [1]);
        assert!(!r.matches_by(|c| m.get(&cols, &c.column)));
        m.add(1, &[Some(16), None], &cols.modes);
        assert!(r.matches_by(|c| m.get(&cols, &c.column)));
    }

    proptest! {
        /// The relaxed filter never loses an address whose merged value satisfies the condition.
        #[test]
        fn relaxed_filter_finds_every_merged_match(
            values in proptest::collection::vec(0i64..1000, 1..8),
            threshold in 0i64..3000,
            ge in any::<bool>(),
        ) {
            let op = if ge { "ge" } else { "gt" };
            let c = cond(&format!("http_req_rate {op} {threshold}"));
            let sum: i64 = values.iter().sum();
            if c.holds_on(Some(sum.into())) {
                match relax(&c, MergeMode::Sum, values.len()) {
                    Some(r) => prop_assert!(values.iter().any(|v| r.holds_on(Some((*v).into())))),
                    None => prop_assert!(ge && threshold == 0),
                }
            }
        }
    }
}
