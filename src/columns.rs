//! How a table column is named in HAProxy's `data.` filters, found by asking HAProxy.
//!
//! `show table` prints array elements with the legacy names (`gpt0 gpt1`, `gpc0_rate`), but the
//! filters that accept them depend on the table and the version: a legacy `store gpt0` table
//! filters on `data.gpt0`; an array `store gpt(2)` table filters its element 0 as `data.gpt` (any
//! version) and element N as `data.gpt[N]` (3.2+ only), and refuses `data.gpt0`. Each candidate
//! name is probed with a filter no entry can match, which fails only if HAProxy does not know the
//! name for this table. A column no name works for cannot be filtered on; rules on it are then
//! evaluated on a wider dump (see [`crate::rules::filters`]).

use crate::client::{Client, ClientError, TableItem};
use crate::proto::{DataField, ErrorKind, Filter, FilterOp, TableSelect};

/// `gpt1` -> (`gpt`, 1); `gpc0_rate` -> (`gpc_rate`, 0); anything else -> None.
pub fn array_element(column: &str) -> Option<(&'static str, u32)> {
    let (base, rest) =
        [("gpc_rate", "gpc"), ("gpt", "gpt"), ("gpc", "gpc")].into_iter().find_map(|(base, prefix)| {
            let rest = column.strip_prefix(prefix)?;
            let digits = if base == "gpc_rate" { rest.strip_suffix("_rate")? } else { rest };
            Some((base, digits))
        })?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, rest.parse().ok()?))
}

/// The names to try for `column`, the printed name first.
pub fn candidates(column: &DataField) -> Vec<DataField> {
    let mut out = vec![column.clone()];
    if let Some((base, n)) = array_element(column.as_str()) {
        out.push(format!("{base}[{n}]").parse().expect("valid field"));
        if n == 0 {
            out.push(base.parse().expect("valid field"));
        }
    }
    out
}

/// The name HAProxy filters `column` by in `table`, or `None` when it knows none.
pub async fn filter_name(client: &Client, table: &str, column: &DataField) -> Result<Option<DataField>, ClientError> {
    for name in candidates(column) {
        let probe = Filter { field: name.clone(), op: FilterOp::Lt, value: i64::MIN };
        let result = match client.show_table(table, TableSelect::Filters(vec![probe])).await {
            Ok(dump) => dump.for_each(|_: TableItem<'_>| {}).await.map(drop),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(Some(name)),
            Err(e)
                if e.haproxy()
                    .is_some_and(|h| matches!(h.kind, ErrorKind::UnknownDataType | ErrorKind::DataTypeNotStored)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(c: &str) -> Vec<String> {
        candidates(&c.parse().unwrap()).iter().map(|f| f.to_string()).collect()
    }

    #[test]
    fn array_elements_have_their_filter_spellings() {
        assert_eq!(names("gpt0"), ["gpt0", "gpt[0]", "gpt"]);
        assert_eq!(names("gpt1"), ["gpt1", "gpt[1]"]);
        assert_eq!(names("gpc12"), ["gpc12", "gpc[12]"]);
        assert_eq!(names("gpc0_rate"), ["gpc0_rate", "gpc_rate[0]", "gpc_rate"]);
        assert_eq!(names("http_req_rate"), ["http_req_rate"]);
        assert_eq!(names("gpc"), ["gpc"]);
        assert_eq!(array_element("gpcx"), None);
        assert_eq!(array_element("gpc_rate"), None);
    }
}
