//! The rules engine's arithmetic: from the rules an entry matched to an offence and its ladder step.
//!
//! Pure and clock-free: [`assess`] takes `now` and an [`Offender`] and returns a [`Verdict`] when
//! the offender's decaying score crosses the threshold. Two scores are kept: one from enforcing
//! rules, and a shadow one from every rule (dry-run rules included); the shadow score crossing alone
//! gives a dry-run verdict, so a dry-run rule is audited exactly as it would act, and never acts.

use std::time::Duration;

use crate::rules::{Actions, Policy, Rule};
use crate::store::{Offence, Offender};
use crate::time::{ms, Millis};

/// What an offence gets.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Ladder level, 1-based.
    pub level: u32,
    pub actions: Actions,
    pub duration: Duration,
    /// The rule that weighed most in this offence.
    pub rule: String,
    /// Decided for the audit log only.
    pub dry_run: bool,
}

/// Adds the weights of `matched` to the offender's scores at `now` and returns the verdict if a
/// score crossed the threshold. `global_dry_run` makes every rule a dry-run rule. The offence is
/// appended to the offender's history, which is trimmed to its `max_offences` newest.
pub fn assess(
    policy: &Policy,
    o: &mut Offender,
    matched: &[&Rule],
    now: Millis,
    global_dry_run: bool,
    max_offences: usize,
) -> Option<Verdict> {
    let hl = policy.half_life;
    o.last_seen = o.last_seen.max(now);
    let heaviest =
        |enforcing_only: bool| {
            matched
                .iter()
                .filter(|r| !enforcing_only || !(r.dry_run || global_dry_run))
                .fold(None::<&Rule>, |best, r| if best.is_some_and(|b| b.weight >= r.weight) { best } else { Some(r) })
        };
    for r in matched {
        o.shadow.add(now, hl, r.weight);
        if !(r.dry_run || global_dry_run) {
            o.score.add(now, hl, r.weight);
        }
    }
    let (dry_run, rule) = if o.score.at(now, hl) >= policy.threshold {
        o.score = Default::default();
        o.shadow = Default::default();
        (false, heaviest(true)?)
    } else if o.shadow.at(now, hl) >= policy.threshold {
        o.shadow = Default::default();
        (true, heaviest(false)?)
    } else {
        return None;
    };
    let (level, actions, duration) = policy.step_for(offences_in_window(policy, o, now, dry_run) + 1);
    o.offences.push(Offence { at: now, rule: rule.name.clone(), level, dry_run });
    if o.offences.len() > max_offences {
        let extra = o.offences.len() - max_offences;
        o.offences.drain(..extra);
    }
    Some(Verdict { level, actions: actions.clone(), duration, rule: rule.name.clone(), dry_run })
}

/// The offences of `o` within the forgiveness window at `now` that count for the ladder. Enforcing
/// verdicts count enforced offences only, so that turning dry-run off starts afresh; dry-run
/// verdicts (`dry_run`) count them all, as if everything had been enforced.
pub fn offences_in_window(policy: &Policy, o: &Offender, now: Millis, dry_run: bool) -> u32 {
    let since = now.saturating_sub(ms(policy.forgiveness));
    o.offences.iter().filter(|x| x.at >= since && (dry_run || !x.dry_run)).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checked::Location;
    use crate::rules::{Action, Step};

    fn rule(name: &str, weight: f64, dry_run: bool) -> Rule {
        Rule {
            name: name.into(),
            table: "t".into(),
            description: String::new(),
            all: vec!["gpt0 gt 0".parse().unwrap()],
            any: vec![],
            weight,
            dry_run,
            at: Location { path: "r.toml".into(), line: 1, column: 1 },
        }
    }

    fn policy() -> Policy {
        let s = |a: Vec<Action>, secs| Step { actions: Actions::new(a), duration: Duration::from_secs(secs) };
        Policy {
            threshold: 100.0,
            half_life: Duration::from_secs(60),
            forgiveness: Duration::from_secs(3600),
            steps: vec![s(vec![Action::Tag], 60), s(vec![Action::Tag, Action::Acl], 600)],
            growth: 2.0,
            max_duration: Duration::from_secs(1800),
        }
    }

    const S: Millis = 1_000;

    #[test]
    fn score_accumulates_decays_and_resets_on_offence() {
        let (p, r) = (policy(), rule("flood", 60.0, false));
        let mut o = Offender::default();
        assert_eq!(assess(&p, &mut o, &[&r], 0, false, 10), None);
        // 60 s later the first 60 has halved to 30: 90 < 100.
        assert_eq!(assess(&p, &mut o, &[&r], 60 * S, false, 10), None);
        let v = assess(&p, &mut o, &[&r], 61 * S, false, 10).unwrap();
        assert_eq!((v.level, v.duration, v.dry_run, v.rule.as_str()), (1, Duration::from_secs(60), false, "flood"));
        assert_eq!(o.score.value, 0.0);
        assert_eq!(o.offences.len(), 1);
    }

    #[test]
    fn ladder_counts_offences_within_forgiveness_then_grows_to_ceiling() {
        let (p, r) = (policy(), rule("flood", 100.0, false));
        let mut o = Offender::default();
        let levels: Vec<(u32, u64)> = [0, 100, 200, 300, 400]
            .iter()
            .map(|&t| assess(&p, &mut o, &[&r], t * S, false, 10).map(|v| (v.level, v.duration.as_secs())).unwrap())
            .collect();
        assert_eq!(levels, [(1, 60), (2, 600), (2, 1200), (2, 1800), (2, 1800)]);
        // An hour and a bit after the last one, all are forgiven.
        let v = assess(&p, &mut o, &[&r], (400 + 3601) * S, false, 10).unwrap();
        assert_eq!(v.level, 1);
        // History is bounded.
        assert_eq!(assess(&p, &mut o, &[&r], 4100 * S, false, 3).map(|v| v.level), Some(2));
        assert_eq!(o.offences.len(), 3);
    }

    #[test]
    fn dry_run_rules_only_feed_the_shadow_score() {
        let p = policy();
        let (live, dry) = (rule("live", 50.0, false), rule("dry", 80.0, true));
        let mut o = Offender::default();
        let v = assess(&p, &mut o, &[&live, &dry], 0, false, 10).unwrap();
        assert!(v.dry_run);
        assert_eq!(v.rule, "dry");
        assert_eq!(o.score.value, 50.0);
        // The live rule alone crosses on its own later: enforced, level 1 (dry offences not counted).
        let v = assess(&p, &mut o, &[&live], 0, false, 10).unwrap();
        assert!(!v.dry_run);
        assert_eq!((v.level, v.rule.as_str()), (1, "live"));
        // Global dry-run: nothing is enforced, and dry verdicts count every offence.
        let v = assess(&p, &mut o, &[&live, &live], 0, true, 10).unwrap();
        assert_eq!((v.dry_run, v.level), (true, 2));
    }
}
