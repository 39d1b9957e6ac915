//! Reading `rules/*.toml`: raw serde structs with `deny_unknown_fields`, then the checks serde
//! cannot do, each reported at the file, line and column of the offending value.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Action, Actions, Condition, Policy, Rule, RuleSet, Step};
use crate::checked::error::{read, Source};
use crate::checked::values::Dur;
use crate::checked::{ConfigError, Location};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    score: Option<Spanned<RawScore>>,
    ladder: Option<Spanned<RawLadder>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    table: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    all: Vec<Condition>,
    #[serde(default)]
    any: Vec<Condition>,
    weight: Spanned<f64>,
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScore {
    threshold: Spanned<f64>,
    half_life: Dur,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLadder {
    forgiveness: Dur,
    #[serde(default = "one")]
    growth: Spanned<f64>,
    max_duration: Option<Spanned<Dur>>,
    steps: Spanned<Vec<RawStep>>,
}

fn one() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: Spanned<Vec<Action>>,
    duration: Dur,
}

/// Loads every `*.toml` file of `dir` (in name order) into one checked rule set.
pub fn load_dir(dir: &Path) -> Result<RuleSet, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read { path: dir.to_owned(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigError::File {
            path: dir.to_owned(),
            message: "no rule files (*.toml) in this directory".into(),
        });
    }
    let mut rules: Vec<Rule> = Vec::new();
    let mut score: Option<(Location, RawScore)> = None;
    let mut ladder: Option<(Location, RawLadder)> = None;
    for path in &files {
        let text = read(path)?;
        let src = Source { path, text: &text };
        let raw: RawFile = src.parse()?;
        for r in raw.rule {
            let rule = check_rule(&src, r.into_inner())?;
            if let Some(prev) = rules.iter().find(|p| p.name == rule.name) {
                return Err(rule.at.error(format!("rule '{}' is already defined at {}", rule.name, prev.at)));
            }
            rules.push(rule);
        }
        if let Some(s) = raw.score {
            if let Some((prev, _)) = &score {
                return Err(src.error(&s.span(), format!("[score] is already defined at {prev}")));
            }
            score = Some((src.locate(&s.span()), s.into_inner()));
        }
        if let Some(l) = raw.ladder {
            if let Some((prev, _)) = &ladder {
                return Err(src.error(&l.span(), format!("[ladder] is already defined at {prev}")));
            }
            ladder = Some((src.locate(&l.span()), l.into_inner()));
        }
        // Checks that need the file's text run while it is at hand.
        if let Some((at, s)) = &score {
            if at.path == *path {
                check_score(&src, s)?;
            }
        }
        if let Some((at, l)) = &ladder {
            if at.path == *path {
                check_ladder(&src, l)?;
            }
        }
    }
    if rules.is_empty() {
        return Err(ConfigError::File { path: dir.to_owned(), message: "no [[rule]] in any rule file".into() });
    }
    let mut policy = Policy::default();
    if let Some((_, s)) = score {
        policy.threshold = s.threshold.into_inner();
        policy.half_life = s.half_life.0;
    }
    if let Some((_, l)) = ladder {
        policy.forgiveness = l.forgiveness.0;
        policy.growth = l.growth.into_inner();
        policy.steps = l
            .steps
            .into_inner()
            .into_iter()
            .map(|s| Step { actions: Actions::new(s.action.into_inner()), duration: s.duration.0 })
            .collect();
        policy.max_duration = l.max_duration.map_or_else(
            || policy.steps.iter().map(|s| s.duration).max().unwrap_or_default().max(policy.max_duration),
            |m| m.into_inner().0,
        );
    }
    Ok(RuleSet { rules, policy })
}

fn check_rule(src: &Source<'_>, r: RawRule) -> Result<Rule, ConfigError> {
    let name = r.name.get_ref().trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(
            src.error(&r.name.span(), "a rule name is non-empty and uses only letters, digits, '-', '_' and '.'")
        );
    }
    if r.table.get_ref().trim().is_empty() {
        return Err(src.error(&r.table.span(), "expected a stick table name"));
    }
    let weight = *r.weight.get_ref();
    if !(weight.is_finite() && weight > 0.0) {
        return Err(src.error(&r.weight.span(), "weight must be a number greater than zero"));
    }
    if r.all.is_empty() && r.any.is_empty() {
        return Err(src.error(&r.name.span(), format!("rule '{name}' has no condition: give 'all' or 'any'")));
    }
    Ok(Rule {
        name: name.to_owned(),
        at: src.locate(&r.name.span()),
        table: r.table.into_inner().trim().to_owned(),
        description: r.description,
        all: r.all,
        any: r.any,
        weight,
        dry_run: r.dry_run,
    })
}

fn check_score(src: &Source<'_>, s: &RawScore) -> Result<(), ConfigError> {
    let t = *s.threshold.get_ref();
    if !(t.is_finite() && t > 0.0) {
        return Err(src.error(&s.threshold.span(), "threshold must be a number greater than zero"));
    }
    Ok(())
}

fn check_ladder(src: &Source<'_>, l: &RawLadder) -> Result<(), ConfigError> {
    if l.steps.get_ref().is_empty() {
        return Err(src.error(&l.steps.span(), "the ladder needs at least one step"));
    }
    for s in l.steps.get_ref() {
        if s.action.get_ref().is_empty() {
            return Err(src.error(
                &s.action.span(),
                "a step needs at least one action: \"tag\", \"acl\", \"map:CLASS\" or \"kill\"",
            ));
        }
        if s.action.get_ref() == &[Action::Kill] {
            return Err(src.error(&s.action.span(), "\"kill\" alone blocks nothing: add \"tag\" or \"acl\""));
        }
    }
    let g = *l.growth.get_ref();
    if !(g.is_finite() && (1.0..=100.0).contains(&g)) {
        return Err(src.error(&l.growth.span(), "growth must be between 1 (no growth) and 100"));
    }
    if let Some(m) = &l.max_duration {
        let longest = l.steps.get_ref().iter().map(|s| s.duration).max();
        if longest.is_some_and(|d| d > *m.get_ref()) {
            return Err(src.error(&m.span(), "max_duration is shorter than a step's duration"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<RuleSet, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        load_dir(dir.path()).map_err(|e| e.to_string().replace(&dir.path().display().to_string(), "DIR"))
    }

    const FLOOD: &str =
        "[[rule]]\nname = \"flood\"\ntable = \"ft_web\"\nall = [\"http_req_rate gt 100\"]\nweight = 100\n";

    #[test]
    fn loads_rules_and_policy_from_several_files() {
        let policy = "[score]\nthreshold = 50\nhalf_life = \"1m\"\n[ladder]\nforgiveness = \"1h\"\ngrowth = 1.5\n\
                      steps = [{ action = [\"tag\"], duration = \"2s\" }, { action = [\"acl\", \"tag\"], duration = \"4s\" }]\n";
        let set = load(&[("a.toml", FLOOD), ("policy.toml", policy)]).unwrap();
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].at.line, 2);
        assert_eq!(set.policy.threshold, 50.0);
        assert_eq!(set.policy.steps[1].actions.to_string(), "tag+acl");
        assert_eq!(set.policy.max_duration, std::time::Duration::from_secs(7 * 86_400));
        assert_eq!(set.tables(), ["ft_web"]);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let cases: &[(&str, &str)] = &[
            (
                "[[rule]]\nname = \"x\"\ntable = \"t\"\nall = [\"http_req_rate gt lots\"]\nweight = 1\n",
                "DIR/r.toml:4:7: condition 'http_req_rate gt lots': 'lots' is not an integer",
            ),
            (
                "[[rule]]\nname = \"x\"\ntable = \"t\"\nall = [\"gpt0 gt 0\"]\nweight = -1\n",
                "DIR/r.toml:5:10: weight must be a number greater than zero",
            ),
            ("[[rule]]\nname = \"x\"\ntable = \"t\"\nweight = 1\n", "DIR/r.toml:2:8: rule 'x' has no condition"),
            (
                "[[rule]]\nname = \"x\"\ntable = \"t\"\nall = [\"gpt0 gt 0\"]\nweight = 1\ncolour = 1\n",
                "DIR/r.toml:6:1: unknown field `colour`",
            ),
            (
                "[ladder]\nforgiveness = \"1h\"\nsteps = [{ action = [\"ban\"], duration = \"1m\" }]\n",
                "DIR/r.toml:3:21: unknown action 'ban': expected one of tag, acl, kill, map:tarpit",
            ),
            ("[ladder]\nforgiveness = \"soon\"\nsteps = []\n", "DIR/r.toml:2:15: 'soon' is not a duration"),
            ("[ladder]\nforgiveness = \"1h\"\nsteps = []\n", "DIR/r.toml:3:9: the ladder needs at least one step"),
            (
                "[ladder]\nforgiveness = \"1h\"\nsteps = [{ action = [\"kill\"], duration = \"1m\" }]\n",
                "DIR/r.toml:3:21: \"kill\" alone blocks nothing",
            ),
            ("[score]\nthreshold = 0\nhalf_life = \"1m\"\n", "DIR/r.toml:2:13: threshold must be"),
            ("[[rule]]\nname = \"x\"\n", "DIR/r.toml:1:1: missing field `table`"),
            // Durations have a ceiling: no wrap to a 0 s block, no instant past year 9999.
            (
                "[ladder]\nforgiveness = \"1h\"\nsteps = [{ action = [\"tag\"], duration = \"500000000000y\" }]\n",
                "DIR/r.toml:3:",
            ),
            (
                "[ladder]\nforgiveness = \"1h\"\nsteps = [{ action = [\"tag\"], duration = \"20000y\" }]\n",
                "DIR/r.toml:3:41: '20000y': a duration is at most 3650d (10 years)",
            ),
            (
                "[ladder]\nforgiveness = \"1h\"\nmax_duration = \"11y\"\nsteps = [{ action = [\"tag\"], duration = \"1h\" }]\n",
                "DIR/r.toml:3:16: '11y': a duration is at most 3650d (10 years)",
            ),
            ("[score]\nthreshold = 1\nhalf_life = \"10000000d\"\n", "DIR/r.toml:3:13: '10000000d': a duration is at most"),
        ];
        for (text, want) in cases {
            let got = load(&[("a.toml", FLOOD), ("r.toml", text)]).unwrap_err();
            assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn duplicates_and_empty_sets_are_refused() {
        let err = load(&[("a.toml", FLOOD), ("b.toml", FLOOD)]).unwrap_err();
        assert!(err.starts_with("DIR/b.toml:2:8: rule 'flood' is already defined at DIR/a.toml:2:8"), "{err}");
        let score = "[score]\nthreshold = 1\nhalf_life = \"1m\"\n";
        let err = load(&[("a.toml", &format!("{FLOOD}{score}")), ("b.toml", score)]).unwrap_err();
        assert!(err.starts_with("DIR/b.toml:1:1: [score] is already defined at DIR/a.toml:6:1"), "{err}");
        assert!(load(&[]).unwrap_err().contains("no rule files"));
        assert!(load(&[("a.toml", "")]).unwrap_err().contains("no [[rule]]"));
    }
}
