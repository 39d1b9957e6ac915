//! Server-side filters derived from the rules, so that only candidates travel.
//!
//! HAProxy ANDs up to four `data.` filters per `show table`. A rule's `all` conditions become one
//! query (the first four; the rest are checked on our side); a rule made only of `any` conditions
//! needs one query per condition (OR). Queries that another query already covers are dropped, and
//! the entries of every query are evaluated against every rule, so the union is exact.
//!
//! A condition on a column HAProxy cannot filter on (see [`crate::columns`]) is left to our side:
//! it is dropped from its `all` query, and an `any` rule with one makes the query the whole table.

use super::{Condition, Rule};
use crate::proto::command::MAX_FILTERS;
use crate::proto::{DataField, Filter};

/// The queries that together return every entry that any of `rules` can match, with every column
/// filtered under its printed name. An empty query means the whole table.
pub fn queries<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Vec<Vec<Filter>> {
    queries_as(rules, |c| Some(c.clone()))
}

/// [`queries`], with `name` giving the filter name of each column (`None`: not filterable).
pub fn queries_as<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    name: impl Fn(&DataField) -> Option<DataField>,
) -> Vec<Vec<Filter>> {
    queries_by(rules, |c| name(&c.column).map(|field| Filter { field, op: c.op, value: c.value }))
}

/// [`queries`] with each condition's filter made by `filter` (`None`: HAProxy cannot filter on it,
/// so the query is widened).
pub fn queries_by<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    filter: impl Fn(&Condition) -> Option<Filter>,
) -> Vec<Vec<Filter>> {
    let mut out: Vec<Vec<Filter>> = Vec::new();
    for rule in rules {
        if rule.all.is_empty() && rule.any.is_empty() {
            out.push(Vec::new()); // a rule of no conditions (a relaxed one) reads every entry
        } else if rule.all.is_empty() {
            out.extend(rule.any.iter().map(|c| filter(c).into_iter().collect()));
        } else {
            out.push(rule.all.iter().filter_map(&filter).take(MAX_FILTERS).collect());
        }
    }
    // A query whose filters include all of another's returns a subset of it: keep the wider one.
    let covers = |wide: &Vec<Filter>, narrow: &Vec<Filter>| wide.iter().all(|f| narrow.contains(f));
    let mut kept: Vec<Vec<Filter>> = Vec::new();
    for q in out {
        if kept.iter().any(|k| covers(k, &q)) {
            continue;
        }
        kept.retain(|k| !covers(&q, k));
        kept.push(q);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(q: &[Vec<Filter>]) -> Vec<String> {
        q.iter().map(|f| f.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ")).collect()
    }

    #[test]
    fn all_is_one_query_any_is_several() {
        let r = [
            Rule::parsed(&["http_req_rate gt 100", "conn_cur gt 2"], &[]),
            Rule::parsed(&[], &["gpt0 gt 0", "http_err_rate gt 20"]),
        ];
        assert_eq!(
            text(&queries(&r)),
            ["data.http_req_rate gt 100 data.conn_cur gt 2", "data.gpt0 gt 0", "data.http_err_rate gt 20"]
        );
    }

    #[test]
    fn at_most_four_filters_and_covered_queries_dropped() {
        let five = ["gpc0 gt 1", "gpc1 gt 1", "conn_cur gt 1", "conn_rate gt 1", "sess_rate gt 1"];
        assert_eq!(queries(&[Rule::parsed(&five, &[])])[0].len(), 4);
        // `gpt0 gt 0` covers `gpt0 gt 0 AND conn_cur gt 5`, in either order.
        let r = [Rule::parsed(&["gpt0 gt 0", "conn_cur gt 5"], &[]), Rule::parsed(&["gpt0 gt 0"], &[])];
        assert_eq!(text(&queries(&r)), ["data.gpt0 gt 0"]);
        let r = [
            Rule::parsed(&["gpt0 gt 0"], &[]),
            Rule::parsed(&["gpt0 gt 0", "conn_cur gt 5"], &[]),
            Rule::parsed(&["gpt0 gt 0"], &[]),
        ];
        assert_eq!(text(&queries(&r)), ["data.gpt0 gt 0"]);
        // A rule with `any` only and the same condition as another's `all`: one query.
        let r = [Rule::parsed(&["gpt0 gt 0"], &[]), Rule::parsed(&[], &["gpt0 gt 0"])];
        assert_eq!(queries(&r).len(), 1);
    }

    #[test]
    fn unfilterable_columns_widen_the_query() {
        let rename = |c: &DataField| match c.as_str() {
            "gpt1" => None,
            "gpt0" => Some("gpt".parse().unwrap()),
            _ => Some(c.clone()),
        };
        let r = [Rule::parsed(&["gpt1 gt 0", "gpt0 gt 0"], &[])];
        assert_eq!(text(&queries_as(&r, rename)), ["data.gpt gt 0"]);
        // An `any` condition that cannot be filtered needs the whole table, which covers the rest.
        let r = [Rule::parsed(&["conn_cur gt 5"], &[]), Rule::parsed(&[], &["gpt1 gt 0", "conn_rate gt 9"])];
        assert_eq!(queries_as(&r, rename), [Vec::<Filter>::new()]);
    }
}
