//! Rules and the escalation policy, loaded from a directory of TOML files (`rules/*.toml`).
//!
//! A [`Rule`] reads columns of one stick table's entries (`http_req_rate gt 100`) and adds its
//! weight to an offender's score when it matches. The [`Policy`] says when a score is an offence
//! (threshold, half-life) and what the n-th offence within the forgiveness window gets (the ladder,
//! with growth and ceiling). Files are parsed into raw serde structs, then checked into these types;
//! every error names the file, line and column. Rule evaluation and the filters sent to HAProxy
//! ([`filters`]) both come from the same [`Condition`]s, so they cannot disagree.

pub mod filters;
mod load;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checked::Location;
use crate::proto::table::Entry;
use crate::proto::{DataField, FilterOp};

pub use load::load_dir;

/// `column op value`, e.g. `http_req_rate gt 100` or `gpt0 >= 1`. The column is named as
/// `show table` prints it (`gpt0`, `gpc1_rate`, `conn_cur`); a rate compares its value over its
/// period. An entry without the column does not match.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Condition {
    pub column: DataField,
    pub op: FilterOp,
    pub value: i64,
}

impl Condition {
    pub fn holds(&self, e: &Entry<'_>) -> bool {
        self.holds_on(self.read(e))
    }

    /// Whether the condition holds on `value`, this condition's column read from anywhere (an
    /// entry, or the merged values of a fleet); a missing column does not match.
    pub fn holds_on(&self, value: Option<i128>) -> bool {
        value.is_some_and(|v| self.op.holds(v, i128::from(self.value)))
    }

    /// The entry's value of this condition's column, if stored and numeric.
    pub fn read(&self, e: &Entry<'_>) -> Option<i128> {
        e.get(self.column.as_str())?.value.as_i128()
    }
}

impl FromStr for Condition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let [column, op, value] = words[..] else {
            return Err(format!("condition '{s}': expected 'column op value', e.g. 'http_req_rate gt 100'"));
        };
        let column = column.strip_prefix("data.").unwrap_or(column);
        let op = match op {
            ">" => FilterOp::Gt,
            ">=" => FilterOp::Ge,
            "<" => FilterOp::Lt,
            "<=" => FilterOp::Le,
            "==" | "=" => FilterOp::Eq,
            "!=" => FilterOp::Ne,
            other => other.parse().map_err(|_| {
                format!("condition '{s}': unknown operator '{other}' (expected gt ge lt le eq ne or > >= < <= == !=)")
            })?,
        };
        Ok(Condition {
            column: column.parse().map_err(|_| format!("condition '{s}': '{column}' is not a column name"))?,
            op,
            value: value.parse().map_err(|_| format!("condition '{s}': '{value}' is not an integer"))?,
        })
    }
}

impl TryFrom<String> for Condition {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.column, self.op.as_str(), self.value)
    }
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub table: String,
    pub description: String,
    /// Every one of these must hold...
    pub all: Vec<Condition>,
    /// ...and, when not empty, at least one of these.
    pub any: Vec<Condition>,
    pub weight: f64,
    /// Matches are scored and audited as "would block", never enforced.
    pub dry_run: bool,
    pub at: Location,
}

impl Rule {
    pub fn matches(&self, e: &Entry<'_>) -> bool {
        self.matches_by(|c| c.read(e))
    }

    /// [`Rule::matches`] on values read by `read` (per condition) instead of from one entry.
    pub fn matches_by(&self, read: impl Fn(&Condition) -> Option<i128>) -> bool {
        let holds = |c: &Condition| c.holds_on(read(c));
        self.all.iter().all(holds) && (self.any.is_empty() || self.any.iter().any(holds))
    }

    pub fn conditions(&self) -> impl Iterator<Item = &Condition> {
        self.all.iter().chain(&self.any)
    }
}

#[cfg(test)]
impl Rule {
    /// A rule `r` of table `t` for unit tests: the conditions parsed, weight 1, at `r.toml:1:1`.
    pub(crate) fn parsed(all: &[&str], any: &[&str]) -> Rule {
        Rule {
            name: "r".into(),
            table: "t".into(),
            description: String::new(),
            all: all.iter().map(|c| c.parse().unwrap()).collect(),
            any: any.iter().map(|c| c.parse().unwrap()).collect(),
            weight: 1.0,
            dry_run: false,
            at: Location { path: "r.toml".into(), line: 1, column: 1 },
        }
    }
}

/// A way to block, chosen per ladder step. Written `tag`, `acl`, `kill`, `map:CLASS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Set the tag counter in the block table; the HAProxy config denies tagged clients.
    Tag,
    /// Add the address or CIDR to the block ACL's runtime patterns.
    Acl,
    /// Also shut down the client's live sessions (HAProxy socket level admin).
    Kill,
    /// Set the key's value in the block map to a response class, which the HAProxy config turns
    /// into a response (docs/haproxy.md: "Graduated responses").
    Map(MapClass),
}

/// The response classes of the `map` action: what HAProxy's configuration does with a client
/// whose address the block map holds with that value. Each has a tested HAProxy snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapClass {
    /// `http-request tarpit`: the request is held, then refused.
    Tarpit,
    /// 429 with `Retry-After`.
    Throttle,
    /// A page a browser passes (it runs a small script that sets a cookie) and a plain script
    /// does not.
    Challenge,
    /// A deny with the configuration's own status and body.
    Deny,
}

impl MapClass {
    pub const ALL: [MapClass; 4] = [MapClass::Tarpit, MapClass::Throttle, MapClass::Challenge, MapClass::Deny];

    /// The value written in the map.
    pub fn as_str(self) -> &'static str {
        match self {
            MapClass::Tarpit => "tarpit",
            MapClass::Throttle => "throttle",
            MapClass::Challenge => "challenge",
            MapClass::Deny => "deny",
        }
    }
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Tag => "tag",
            Action::Acl => "acl",
            Action::Kill => "kill",
            Action::Map(MapClass::Tarpit) => "map:tarpit",
            Action::Map(MapClass::Throttle) => "map:throttle",
            Action::Map(MapClass::Challenge) => "map:challenge",
            Action::Map(MapClass::Deny) => "map:deny",
        }
    }

    /// Every action there is, in its order.
    pub fn all() -> impl Iterator<Item = Action> {
        [Action::Tag, Action::Acl, Action::Kill].into_iter().chain(MapClass::ALL.into_iter().map(Action::Map))
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Action, String> {
        Action::all().find(|a| a.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Action::all().map(Action::as_str).collect();
            format!("unknown action '{s}': expected one of {}", names.join(", "))
        })
    }
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod action_tests {
    use super::*;

    #[test]
    fn actions_are_written_and_read_as_their_names() {
        for a in Action::all() {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Action>(&json).unwrap(), a);
        }
        assert_eq!(serde_json::to_string(&Action::Map(MapClass::Tarpit)).unwrap(), "\"map:tarpit\"");
        let e = "map:captcha".parse::<Action>().unwrap_err();
        assert!(e.contains("map:challenge"), "{e}");
        let a = Actions::new(vec![Action::Map(MapClass::Challenge), Action::Tag]);
        assert_eq!(a.to_string(), "tag+map:challenge");
        assert_eq!(a.map_class(), Some(MapClass::Challenge));
    }
}

/// A set of actions, in their order and without duplicates: a bit each for `tag`, `acl` and `kill`,
/// and the class of its `map:` action (one at most; of several given, the first in order). One
/// byte, inline: the daemon holds a set per active block and per job item, 100,000 of each at
/// scale. Written as the list of their names.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

const TAG: u8 = 1;
const ACL: u8 = 2;
const KILL: u8 = 4;
/// Bits 3 and up: 1 + the class's position in [`MapClass::ALL`]; 0 for no map.
const MAP_SHIFT: u8 = 3;

impl Actions {
    pub fn new(list: Vec<Action>) -> Actions {
        let mut bits = 0u8;
        let mut sorted = list;
        sorted.sort_unstable();
        for a in sorted {
            match a {
                Action::Tag => bits |= TAG,
                Action::Acl => bits |= ACL,
                Action::Kill => bits |= KILL,
                Action::Map(c) if bits >> MAP_SHIFT == 0 => {
                    let i = MapClass::ALL.iter().position(|x| *x == c).expect("every class is listed") as u8;
                    bits |= (i + 1) << MAP_SHIFT;
                }
                Action::Map(_) => {}
            }
        }
        Actions(bits)
    }

    pub fn has(&self, a: Action) -> bool {
        match a {
            Action::Tag => self.0 & TAG != 0,
            Action::Acl => self.0 & ACL != 0,
            Action::Kill => self.0 & KILL != 0,
            Action::Map(c) => self.map_class() == Some(c),
        }
    }

    /// In their order: tag, acl, kill, map.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        let flags = [(TAG, Action::Tag), (ACL, Action::Acl), (KILL, Action::Kill)];
        flags.into_iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, a)| a).chain(self.map_class().map(Action::Map))
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// What of them applies to `key`: all of them for an address or a network; for a key of a
    /// table keyed otherwise, the tag and the map (the ACL and session kills match addresses).
    pub fn for_key(&self, key: &crate::key::Key) -> Actions {
        match key {
            crate::key::Key::Net(_) => self.clone(),
            crate::key::Key::Table(_) => Actions(self.0 & !(ACL | KILL)),
        }
    }

    /// The response class of its `map` action, if it has one.
    pub fn map_class(&self) -> Option<MapClass> {
        let i = self.0 >> MAP_SHIFT;
        (i > 0).then(|| MapClass::ALL[usize::from(i - 1)])
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Actions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Actions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Actions, D::Error> {
        Vec::<Action>::deserialize(d).map(Actions::new)
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Action::as_str).collect();
        f.write_str(&names.join("+"))
    }
}

/// One rung of the escalation ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub actions: Actions,
    pub duration: Duration,
}

/// Scoring and escalation.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A score at or above this is an offence (and the score starts again from zero).
    pub threshold: f64,
    /// A score halves every `half_life` without new matches.
    pub half_life: Duration,
    /// Offences older than this no longer count for the ladder.
    pub forgiveness: Duration,
    pub steps: Vec<Step>,
    /// Past the last step, each further offence multiplies its duration by this (1 = no growth).
    pub growth: f64,
    /// No block lasts longer than this.
    pub max_duration: Duration,
}

impl Default for Policy {
    /// The documented defaults of `docs/rules.md`.
    fn default() -> Policy {
        let step = |actions: Vec<Action>, secs: u64| Step {
            actions: Actions::new(actions),
            duration: Duration::from_secs(secs),
        };
        Policy {
            threshold: 100.0,
            half_life: Duration::from_secs(600),
            forgiveness: Duration::from_secs(86_400),
            steps: vec![
                step(vec![Action::Tag], 600),
                step(vec![Action::Tag, Action::Acl], 3600),
                step(vec![Action::Tag, Action::Acl, Action::Kill], 6 * 3600),
            ],
            growth: 2.0,
            max_duration: Duration::from_secs(7 * 86_400),
        }
    }
}

impl Policy {
    /// What the `n`-th offence within the forgiveness window gets (n >= 1): its ladder level
    /// (1-based, the last step repeating), actions and duration.
    pub fn step_for(&self, n: u32) -> (u32, &Actions, Duration) {
        let n = n.max(1);
        let last = self.steps.len() as u32;
        let level = n.min(last);
        let step = &self.steps[level as usize - 1];
        let extra = n - level;
        let factor = self.growth.powi(extra.min(64) as i32);
        let secs = (step.duration.as_secs_f64() * factor).min(self.max_duration.as_secs_f64());
        (level, &step.actions, Duration::from_secs_f64(secs))
    }

    /// Whether any step uses `a`.
    pub fn uses(&self, a: Action) -> bool {
        self.steps.iter().any(|s| s.actions.has(a))
    }

    /// A response class some step of the ladder sets in the block map, if any does.
    pub fn map_class(&self) -> Option<MapClass> {
        self.steps.iter().find_map(|s| s.actions.map_class())
    }
}

/// Every rule and the policy, as loaded from one directory.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub policy: Policy,
}

impl RuleSet {
    pub fn for_table<'a>(&'a self, table: &'a str) -> impl Iterator<Item = (usize, &'a Rule)> + 'a {
        self.rules.iter().enumerate().filter(move |(_, r)| r.table == table)
    }

    /// The tables the rules read, each once, in first-use order.
    pub fn tables(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.rules {
            if !out.contains(&r.table.as_str()) {
                out.push(&r.table);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_both_spellings() {
        let c: Condition = "http_req_rate > 100".parse().unwrap();
        assert_eq!(c.to_string(), "http_req_rate gt 100");
        assert_eq!("data.gpt0 ge 1".parse::<Condition>().unwrap().to_string(), "gpt0 ge 1");
        assert!("http_req_rate >".parse::<Condition>().unwrap_err().contains("expected 'column op value'"));
        assert!("http_req_rate ~ 1".parse::<Condition>().unwrap_err().contains("unknown operator '~'"));
        assert!("http_req_rate gt x".parse::<Condition>().unwrap_err().contains("'x' is not an integer"));
        assert!("Bad-Name gt 1".parse::<Condition>().unwrap_err().contains("not a column name"));
    }

    #[test]
    fn ladder_steps_growth_and_ceiling() {
        let p = Policy::default();
        assert_eq!(p.step_for(1), (1, &Actions::new(vec![Action::Tag]), Duration::from_secs(600)));
        assert_eq!(p.step_for(2).0, 2);
        assert_eq!(p.step_for(3).2, Duration::from_secs(6 * 3600));
        // Past the last step: 6h * 2, 6h * 4, ... up to the 7-day ceiling.
        assert_eq!(p.step_for(4), (3, &p.steps[2].actions, Duration::from_secs(12 * 3600)));
        assert_eq!(p.step_for(5).2, Duration::from_secs(24 * 3600));
        assert_eq!(p.step_for(9).2, Duration::from_secs(7 * 86_400));
        assert_eq!(p.step_for(u32::MAX).2, Duration::from_secs(7 * 86_400));
        assert_eq!(p.step_for(0).0, 1);
    }
}
