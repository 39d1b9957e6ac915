//! Active blocks as the review console lists them: a checked query (search by address or network,
//! filters by rule, level, source, dry run and unconfirmed targets, a sort, a page), run over any
//! set of blocks, and the overview's summary (blocks by level and rule, the busiest /24 and /64
//! networks). Pure functions: the running controller calls them over its index of active blocks,
//! so a page of 100,000 blocks costs one pass and a sort of references, never a store scan.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;

use crate::key::Key;
use serde::{Deserialize, Serialize};

use super::{parse_key, BlockView, OpError};
use crate::store::{Block, Origin};
use crate::time::Millis;

/// Rows per page, at most.
pub const MAX_PER_PAGE: usize = 500;
/// Rows per page unless asked otherwise.
pub const PER_PAGE: usize = 50;
/// Networks in each top list of the summary.
pub const TOP: usize = 10;

/// What a block listing is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortKey {
    /// When it started (the default, newest first).
    #[default]
    Since,
    Until,
    Key,
    Level,
    Rule,
}

impl SortKey {
    pub const ALL: [SortKey; 5] = [SortKey::Since, SortKey::Until, SortKey::Key, SortKey::Level, SortKey::Rule];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Since => "since",
            SortKey::Until => "until",
            SortKey::Key => "key",
            SortKey::Level => "level",
            SortKey::Rule => "rule",
        }
    }
}

/// A listing query as it arrives (query string): every field optional, all text.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BlockQuery {
    /// An address (finds the blocks that cover it) or a network (the blocks it overlaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// `auto`, `manual` or `import`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `yes` (dry-run blocks only) or `no` (enforced only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<String>,
    /// `yes`: only blocks some target has not confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<SortKey>,
    /// `asc` or `desc` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// 1-based.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_page: Option<usize>,
}

/// How blocks are searched: an address finds what covers it, a network what it overlaps, any
/// other text the table keys equal to it.
#[derive(Debug, Clone, PartialEq)]
pub enum Search {
    Addr(std::net::IpAddr),
    Net(IpNet),
    Key(String),
}

/// A checked [`BlockQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct Listing {
    pub search: Option<Search>,
    pub rule: Option<String>,
    pub level: Option<u32>,
    pub source: Option<&'static str>,
    pub dry_run: Option<bool>,
    pub unconfirmed: bool,
    pub sort: SortKey,
    pub desc: bool,
    /// 0-based.
    pub page: usize,
    pub per_page: usize,
}

fn yes_no(field: &str, v: Option<&str>) -> Result<Option<bool>, OpError> {
    match v.map(str::trim) {
        None | Some("") | Some("any") => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(other) => Err(OpError::bad("invalid_request", format!("{field}: '{other}' is not yes, no or any"))),
    }
}

fn filled(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty() && *s != "any")
}

impl BlockQuery {
    pub fn check(&self) -> Result<Listing, OpError> {
        let search = match filled(&self.q) {
            None => None,
            Some(q) => match crate::net::parse_net(q) {
                Ok(net) if crate::net::is_host(&net) => Some(Search::Addr(net.addr())),
                Ok(net) => Some(Search::Net(net)),
                // Text written like an address that is not one is a mistake, reported as such;
                // anything else is a table key.
                Err(_) if looks_like_address(q) => Some(Search::Net(parse_key(q)?)),
                Err(_) if q.len() > MAX_SEARCH => {
                    return Err(OpError::bad(
                        "invalid_request",
                        format!("the search text is longer than {MAX_SEARCH} bytes: not an address, network or key"),
                    ))
                }
                Err(_) => Some(Search::Key(q.to_owned())),
            },
        };
        let level = filled(&self.level)
            .map(|l| {
                l.parse::<u32>().map_err(|_| OpError::bad("invalid_request", format!("level: '{l}' is not a number")))
            })
            .transpose()?;
        let source = match filled(&self.source) {
            None => None,
            Some("auto") => Some("auto"),
            Some("manual") => Some("manual"),
            Some("import") => Some("import"),
            Some(other) => {
                return Err(OpError::bad("invalid_request", format!("source: '{other}' is not auto, manual or import")))
            }
        };
        let desc = match filled(&self.order) {
            None | Some("desc") => true,
            Some("asc") => false,
            Some(other) => return Err(OpError::bad("invalid_request", format!("order: '{other}' is not asc or desc"))),
        };
        let per_page = self.per_page.unwrap_or(PER_PAGE);
        if per_page == 0 || per_page > MAX_PER_PAGE {
            return Err(OpError::bad("invalid_request", format!("per_page: 1 to {MAX_PER_PAGE}")));
        }
        Ok(Listing {
            search,
            rule: filled(&self.rule).map(str::to_owned),
            level,
            source,
            dry_run: yes_no("dry_run", self.dry_run.as_deref())?,
            unconfirmed: yes_no("unconfirmed", self.unconfirmed.as_deref())?.unwrap_or(false),
            sort: self.sort.unwrap_or_default(),
            desc,
            page: self.page.unwrap_or(1).max(1) - 1,
            per_page,
        })
    }
}

/// Where a block came from, as the console filters it: `auto`, `manual` or `import`.
pub fn source_of(b: &Block) -> &'static str {
    match b.source {
        Origin::Auto => "auto",
        Origin::Manual if b.rule == "import" => "import",
        Origin::Manual => "manual",
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Active blocks in all.
    pub total: usize,
    /// Blocks the query matched.
    pub matched: usize,
    /// 1-based.
    pub page: usize,
    pub pages: usize,
    pub rows: Vec<BlockView>,
}

/// The longest text searched for as a table key.
const MAX_SEARCH: usize = 1024;

/// `10.0.0.300`, `10.0.0.1/33`, `2001:db8::g`: what someone meant as an address or network (digits
/// and dots, or hex digits and colons, and a prefix), not a table key.
fn looks_like_address(q: &str) -> bool {
    let v4 = q.contains('.') && q.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'/');
    let v6 = q.contains(':') && q.bytes().all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'/'));
    v4 || v6
}

impl Listing {
    fn matches(&self, b: &Block, lagging: &HashMap<Key, Vec<String>>) -> bool {
        let found = match &self.search {
            None => true,
            Some(Search::Addr(a)) => b.covers(*a),
            Some(Search::Net(n)) => b.key.net().is_some_and(|k| crate::net::overlaps(k, n)),
            Some(Search::Key(k)) => matches!(&b.key, Key::Table(t) if t.key == *k),
        };
        found
            && self.rule.as_ref().is_none_or(|r| &b.rule == r)
            && self.level.is_none_or(|l| b.level == l)
            && self.source.is_none_or(|s| source_of(b) == s)
            && self.dry_run.is_none_or(|d| b.dry_run == d)
            && (!self.unconfirmed || lagging.contains_key(&b.key))
    }

    fn compare(&self, a: &Block, b: &Block) -> Ordering {
        let primary = match self.sort {
            SortKey::Since => a.since.cmp(&b.since),
            SortKey::Until => a.until.cmp(&b.until),
            SortKey::Key => a.key.cmp(&b.key),
            SortKey::Level => a.level.cmp(&b.level),
            SortKey::Rule => a.rule.cmp(&b.rule),
        };
        // Ties broken by key: the same query always gives the same pages.
        let o = primary.then_with(|| a.key.cmp(&b.key));
        if self.desc {
            o.reverse()
        } else {
            o
        }
    }

    /// The page this listing asks for, out of `blocks`.
    pub fn select<'a>(
        &self,
        blocks: impl Iterator<Item = &'a Block>,
        now: Millis,
        lagging: &HashMap<Key, Vec<String>>,
    ) -> Page {
        let mut total = 0;
        let mut hits: Vec<&Block> = Vec::new();
        for b in blocks {
            total += 1;
            if self.matches(b, lagging) {
                hits.push(b);
            }
        }
        let matched = hits.len();
        let pages = matched.div_ceil(self.per_page).max(1);
        let page = self.page.min(pages - 1);
        let start = page * self.per_page;
        let end = (start + self.per_page).min(matched);
        // Only what comes before the page's end needs ordering.
        if end < matched {
            hits.select_nth_unstable_by(end, |a, b| self.compare(a, b));
            hits.truncate(end);
        }
        hits.sort_unstable_by(|a, b| self.compare(a, b));
        let rows = hits[start.min(hits.len())..]
            .iter()
            .map(|b| BlockView {
                unconfirmed_on: lagging.get(&b.key).cloned().unwrap_or_default(),
                ..BlockView::of(b, now)
            })
            .collect();
        Page { total, matched, page: page + 1, pages, rows }
    }
}

/// What the overview shows of the active blocks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub total: usize,
    pub dry_run: usize,
    pub by_level: BTreeMap<u32, usize>,
    pub by_rule: BTreeMap<String, usize>,
    pub by_source: BTreeMap<String, usize>,
    /// The /24 networks holding the most blocked IPv4 addresses or networks, most first.
    pub top_v4: Vec<(String, usize)>,
    /// The same for IPv6, by /64.
    pub top_v6: Vec<(String, usize)>,
}

/// The summary of `blocks`.
pub fn summary<'a>(blocks: impl Iterator<Item = &'a Block>) -> Summary {
    let mut s = Summary::default();
    let mut v4: HashMap<IpNet, usize> = HashMap::new();
    let mut v6: HashMap<IpNet, usize> = HashMap::new();
    for b in blocks {
        s.total += 1;
        s.dry_run += usize::from(b.dry_run);
        *s.by_level.entry(b.level).or_default() += 1;
        *s.by_rule.entry(b.rule.clone()).or_default() += 1;
        *s.by_source.entry(source_of(b).to_owned()).or_default() += 1;
        // Table keys have no network to count them in.
        let Some(&key) = b.key.net() else { continue };
        let (map, len) = match key {
            IpNet::V4(_) => (&mut v4, 24),
            IpNet::V6(_) => (&mut v6, 64),
        };
        // A network broader than the bucket is its own line.
        let bucket =
            if key.prefix_len() >= len { IpNet::new(key.addr(), len).map(|n| n.trunc()).unwrap_or(key) } else { key };
        *map.entry(bucket).or_default() += 1;
    }
    s.top_v4 = top(v4);
    s.top_v6 = top(v6);
    s
}

fn top(counts: HashMap<IpNet, usize>) -> Vec<(String, usize)> {
    let mut v: Vec<(IpNet, usize)> = counts.into_iter().collect();
    v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().take(TOP).map(|(n, c)| (n.to_string(), c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Action, Actions};

    fn block(key: &str, since: Millis, rule: &str, level: u32, source: Origin) -> Block {
        Block {
            key: Key::Net(crate::net::parse_net(key).unwrap()),
            level,
            actions: Actions::new(vec![Action::Tag]),
            rule: rule.into(),
            reason: "test".into(),
            source,
            actor: "stickwarden".into(),
            since,
            until: since + 60_000,
            counters: Vec::new(),
            dry_run: false,
            place: None,
            nodes: Vec::new(),
        }
    }

    fn sample() -> Vec<Block> {
        let mut v: Vec<Block> = (0..120)
            .map(|i| block(&format!("10.0.{}.{}", i / 100, i % 100), 1_000 + i, "flood", 1, Origin::Auto))
            .collect();
        v.push(block("192.0.2.0/24", 5_000, "manual", 0, Origin::Manual));
        v.push(block("2001:db8::1", 6_000, "import", 0, Origin::Manual));
        v[3].dry_run = true;
        v[4].level = 2;
        v
    }

    fn run(q: BlockQuery, blocks: &[Block]) -> Page {
        q.check().unwrap().select(blocks.iter(), 0, &HashMap::new())
    }

    #[test]
    fn pages_are_sorted_newest_first_and_cover_every_match_once() {
        let blocks = sample();
        let mut seen = Vec::new();
        for page in 1..=3 {
            let p = run(BlockQuery { page: Some(page), ..Default::default() }, &blocks);
            assert_eq!((p.total, p.matched, p.pages, p.page), (122, 122, 3, page));
            seen.extend(p.rows.into_iter().map(|r| r.since));
        }
        assert_eq!(seen.len(), 122);
        assert!(seen.windows(2).all(|w| w[0] >= w[1]), "newest first");
        // A page beyond the last shows the last.
        assert_eq!(run(BlockQuery { page: Some(99), ..Default::default() }, &blocks).page, 3);
        let asc = BlockQuery { sort: Some(SortKey::Key), order: Some("asc".into()), ..Default::default() };
        let p = run(asc, &blocks);
        assert_eq!(p.rows[0].key, "10.0.0.0");
        assert_eq!(p.rows[1].key, "10.0.0.1");
    }

    #[test]
    fn an_address_finds_the_network_block_that_covers_it() {
        let blocks = sample();
        let p = run(BlockQuery { q: Some("192.0.2.77".into()), ..Default::default() }, &blocks);
        assert_eq!(p.rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["192.0.2.0/24"]);
        let p = run(BlockQuery { q: Some("::ffff:10.0.1.5".into()), ..Default::default() }, &blocks);
        assert_eq!(p.rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["10.0.1.5"]);
        let p = run(BlockQuery { q: Some("10.0.1.0/24".into()), ..Default::default() }, &blocks);
        assert_eq!(p.matched, 20);
    }

    #[test]
    fn filters_combine() {
        let blocks = sample();
        let q = |f: fn(&mut BlockQuery)| {
            let mut q = BlockQuery::default();
            f(&mut q);
            run(q, &blocks).matched
        };
        assert_eq!(q(|q| q.source = Some("import".into())), 1);
        assert_eq!(q(|q| q.source = Some("manual".into())), 1);
        assert_eq!(q(|q| q.source = Some("auto".into())), 120);
        assert_eq!(q(|q| q.level = Some("2".into())), 1);
        assert_eq!(q(|q| q.dry_run = Some("yes".into())), 1);
        assert_eq!(q(|q| q.rule = Some("flood".into())), 120);
        let mut lagging = HashMap::new();
        lagging.insert(blocks[7].key.clone(), vec!["edge-2".to_owned()]);
        let p = BlockQuery { unconfirmed: Some("yes".into()), ..Default::default() }.check().unwrap().select(
            blocks.iter(),
            0,
            &lagging,
        );
        assert_eq!((p.matched, p.rows[0].unconfirmed_on.clone()), (1, vec!["edge-2".to_owned()]));
    }

    #[test]
    fn bad_queries_are_refused_with_what_was_wrong() {
        let e = |q: BlockQuery| q.check().unwrap_err().to_string();
        assert!(e(BlockQuery { q: Some("10.0.0.300".into()), ..Default::default() }).contains("10.0.0.300"));
        assert!(e(BlockQuery { level: Some("x".into()), ..Default::default() }).starts_with("level"));
        assert!(e(BlockQuery { source: Some("robot".into()), ..Default::default() }).starts_with("source"));
        assert!(e(BlockQuery { per_page: Some(100_000), ..Default::default() }).starts_with("per_page"));
        assert!(e(BlockQuery { order: Some("up".into()), ..Default::default() }).starts_with("order"));
    }

    #[test]
    fn the_summary_counts_by_level_rule_and_network() {
        let s = summary(sample().iter());
        assert_eq!((s.total, s.dry_run), (122, 1));
        assert_eq!(s.by_level[&1], 119);
        assert_eq!(s.by_rule["flood"], 120);
        assert_eq!(s.by_source["import"], 1);
        assert_eq!(s.top_v4[0], ("10.0.0.0/24".to_owned(), 100));
        assert_eq!(s.top_v4[1], ("10.0.1.0/24".to_owned(), 20));
        assert_eq!(s.top_v6, [("2001:db8::/64".to_owned(), 1)]);
    }
}
