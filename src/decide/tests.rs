//! The decider on exact, made-up instants: no clock, no store, no socket. Each test feeds inputs
//! and reads the effects and the state, as the controller would apply them.

use std::time::Duration;

use super::*;
use crate::checked::Location;
use crate::rules::{MapClass, RuleSet, Step};

const S: Millis = 1_000;
const M: Millis = 60 * S;
/// A start far from zero, as real instants are.
const T0: Millis = 1_800_000_000_000;

fn rule(name: &str, weight: f64) -> Rule {
    Rule {
        name: name.into(),
        table: "ft_web".into(),
        description: String::new(),
        all: vec!["http_req_rate gt 100".parse().unwrap()],
        any: vec![],
        weight,
        dry_run: false,
        at: Location { path: "r.toml".into(), line: 1, column: 1 },
    }
}

/// A soft first step and a hard second: `map:challenge` for 10 minutes, then tag and ACL for an
/// hour, offences forgiven after a day.
fn config(edit: impl FnOnce(&mut Config)) -> Arc<Config> {
    let step = |a: Vec<Action>, secs| Step { actions: Actions::new(a), duration: Duration::from_secs(secs) };
    let policy = crate::rules::Policy {
        threshold: 100.0,
        half_life: Duration::from_secs(60),
        forgiveness: Duration::from_secs(86_400),
        steps: vec![step(vec![Action::Map(MapClass::Challenge)], 600), step(vec![Action::Tag, Action::Acl], 3600)],
        growth: 2.0,
        max_duration: Duration::from_secs(7 * 86_400),
    };
    let mut cfg = Config::offline(RuleSet { rules: vec![rule("http-flood", 100.0)], policy });
    cfg.block.table = Some("ft_web".into());
    cfg.block.acl = Some("/etc/haproxy/blocked.acl".parse().unwrap());
    cfg.block.map = Some("/etc/haproxy/responses.map".parse().unwrap());
    edit(&mut cfg);
    Arc::new(cfg)
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(s: &str) -> Key {
    Key::Net(net::parse_net(s).unwrap())
}

fn net(s: &str) -> IpNet {
    net::parse_net(s).unwrap()
}

fn seen(a: &str) -> Observation {
    Observation {
        key: Key::host(addr(a)),
        rules: vec![0],
        counters: vec![("http_req_rate".into(), 150)],
        nodes: vec![],
    }
}

/// A poll at `now` in which every address of `addrs` matched the flood rule, each with the
/// history `history` keeps (updated from the writes, as the store would be).
fn poll(d: &mut Decider, history: &mut HashMap<Key, Offender>, addrs: &[&str], now: Millis) -> Effects {
    let batch = addrs.iter().map(|a| seen(a)).collect();
    let scored = d.candidates(now, batch, now).into_iter().map(|o| {
        let h = history.get(&o.key).cloned();
        (o, h)
    });
    let fx = d.step(Input::Scored { polled_at: now, scored: scored.collect(), population: None }, now).unwrap();
    for w in &fx.writes {
        match w {
            Write::Offender(a, o) | Write::Decide { offender: Some((a, o)), .. } => {
                history.insert(a.clone(), o.clone());
            }
            _ => {}
        }
    }
    fx
}

fn tick(d: &mut Decider, now: Millis) -> Effects {
    d.step(Input::Tick { population: None }, now).unwrap()
}

fn confirmed(d: &mut Decider, job: &Dispatch, now: Millis) -> Effects {
    let outcome = JobOutcome { what: "release", release: true, failures: vec![], refused: vec![], polled_at: None };
    d.step(Input::Done { block: job.block.clone(), outcome }, now).unwrap()
}

fn events(fx: &Effects) -> Vec<(Event, String)> {
    fx.writes
        .iter()
        .filter_map(|w| match w {
            Write::Decide { rec, .. } | Write::Release { rec, .. } | Write::Audit(rec) => {
                Some((rec.event, rec.key.as_ref().map(Key::to_string).unwrap_or_default()))
            }
            Write::Offender(..) => None,
        })
        .collect()
}

fn released_keys(fx: &Effects) -> Vec<String> {
    fx.jobs
        .iter()
        .filter_map(|d| match &d.job {
            Job::Release { key, .. } => Some(key.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offence_is_recorded_durably_then_applied_in_one_job_and_not_scored_again() {
    let mut d = Decider::new(config(|_| {}), vec![]);
    let mut h = HashMap::new();
    let fx = poll(&mut d, &mut h, &["10.0.0.1", "10.0.0.2"], T0);
    assert!(fx.durable, "decisions are flushed before any job");
    assert_eq!(events(&fx), [(Event::Block, "10.0.0.1".into()), (Event::Block, "10.0.0.2".into())]);
    assert_eq!(fx.decisions, [("http-flood".into(), "block"), ("http-flood".into(), "block")]);
    assert_eq!(fx.jobs.len(), 1, "one pipelined job for the poll");
    let Job::ApplyMany { blocks, fresh: true, .. } = &fx.jobs[0].job else { panic!("{:?}", fx.jobs[0].job) };
    assert_eq!(blocks.iter().map(|(k, a)| (k.to_string(), a.to_string())).collect::<Vec<_>>().len(), 2);
    assert_eq!(fx.jobs[0].polled_at, Some(T0));
    let b = d.block(&key("10.0.0.1")).unwrap();
    assert_eq!((b.level, b.actions.to_string(), b.since, b.until), (1, "map:challenge".into(), T0, T0 + 10 * M));
    assert_eq!(b.reason, "score crossed 100 (http_req_rate=150)");
    // The next poll still sees them: blocked already, not scored, nothing written.
    let fx = poll(&mut d, &mut h, &["10.0.0.1", "10.0.0.2"], T0 + S);
    assert!(fx.writes.is_empty() && fx.jobs.is_empty() && !fx.durable);
}

/// The ladder starts soft and hardens: a challenge for 10 minutes, released on the dot, then the
/// second offence within the forgiveness window gets tag and ACL for an hour.
#[test]
fn the_ladder_starts_soft_and_hardens_with_releases_on_the_dot() {
    let mut d = Decider::new(config(|_| {}), vec![]);
    let mut h = HashMap::new();
    poll(&mut d, &mut h, &["10.0.0.1"], T0);
    assert!(tick(&mut d, T0 + 10 * M - 1).jobs.is_empty(), "released early");
    let fx = tick(&mut d, T0 + 10 * M);
    assert_eq!(released_keys(&fx), ["10.0.0.1"]);
    let Job::Release { actions, .. } = &fx.jobs[0].job else { unreachable!() };
    assert_eq!(actions.to_string(), "map:challenge");
    assert!(tick(&mut d, T0 + 10 * M + S).jobs.is_empty(), "a release in flight is not sent twice");
    // Still in the index until HAProxy confirms: the address is not scored meanwhile.
    assert!(poll(&mut d, &mut h, &["10.0.0.1"], T0 + 10 * M + S).writes.is_empty());
    let done = confirmed(&mut d, &fx.jobs[0], T0 + 10 * M + 2 * S);
    assert_eq!(events(&done), [(Event::Release, "10.0.0.1".into())]);
    assert!(d.block(&key("10.0.0.1")).is_none());
    // A poll that started before the release saw the counters it cleared: ignored.
    assert!(poll(&mut d, &mut h, &["10.0.0.1"], T0 + 10 * M + 2 * S).writes.is_empty());
    // The next one counts: second offence, the hard step.
    let fx = poll(&mut d, &mut h, &["10.0.0.1"], T0 + 11 * M);
    assert_eq!(events(&fx), [(Event::Block, "10.0.0.1".into())]);
    let b = d.block(&key("10.0.0.1")).unwrap();
    assert_eq!((b.level, b.actions.to_string(), b.until), (2, "tag+acl".into(), T0 + 11 * M + 60 * M));
    // A day after the last offence all is forgiven: soft again.
    let fx = tick(&mut d, T0 + 71 * M);
    confirmed(&mut d, &fx.jobs[0], T0 + 71 * M);
    poll(&mut d, &mut h, &["10.0.0.1"], T0 + 11 * M + 86_400 * S + 1);
    assert_eq!(d.block(&key("10.0.0.1")).unwrap().actions.to_string(), "map:challenge");
}

#[test]
fn a_failed_release_is_retried_after_its_delay_exactly() {
    let mut d = Decider::new(config(|_| {}), vec![]);
    poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0);
    let fx = tick(&mut d, T0 + 10 * M);
    let outcome = JobOutcome {
        what: "release",
        release: true,
        failures: vec!["lb1: connection refused".into()],
        refused: vec![key("10.0.0.1")],
        polled_at: None,
    };
    let failed = d.step(Input::Done { block: fx.jobs[0].block.clone(), outcome }, T0 + 10 * M + S).unwrap();
    assert_eq!(events(&failed), [(Event::ActionFailed, "10.0.0.1".into())]);
    assert!(d.block(&key("10.0.0.1")).is_some(), "still blocked: not taken for released");
    assert!(tick(&mut d, T0 + 10 * M + S + RELEASE_RETRY - 1).jobs.is_empty());
    assert_eq!(released_keys(&tick(&mut d, T0 + 10 * M + S + RELEASE_RETRY)), ["10.0.0.1"]);
}

#[test]
fn the_breaker_opens_at_its_floor_suppresses_and_closes_a_quiet_minute_later() {
    let mut d = Decider::new(config(|c| c.safety.breaker_floor = 2), vec![]);
    let mut h = HashMap::new();
    let fx = poll(&mut d, &mut h, &["10.0.0.1", "10.0.0.2", "10.0.0.3"], T0);
    assert_eq!(
        events(&fx),
        [(Event::Block, "10.0.0.1".into()), (Event::Block, "10.0.0.2".into()), (Event::BreakerOpen, String::new())]
    );
    assert_eq!(fx.decisions.last().unwrap(), &("http-flood".into(), "suppressed"));
    let (since, reason) = fx.breaker.clone().unwrap().unwrap();
    assert_eq!(since, T0);
    assert!(reason.starts_with("2 automatic blocks within a minute reached the limit of 2"), "{reason}");
    assert!(d.breaker_open());
    // The suppressed offence is not counted for the ladder.
    assert!(h[&key("10.0.0.3")].offences.is_empty());
    assert!(tick(&mut d, T0 + M - 1).breaker.is_none(), "still within the minute");
    let fx = tick(&mut d, T0 + M);
    assert_eq!(fx.breaker, Some(None));
    assert_eq!(events(&fx), [(Event::BreakerClosed, String::new())]);
}

#[test]
fn dry_run_decides_and_releases_in_the_audit_only() {
    let mut d = Decider::new(config(|c| c.dry_run = true), vec![]);
    let fx = poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0);
    assert_eq!(events(&fx), [(Event::WouldBlock, "10.0.0.1".into())]);
    assert!(fx.jobs.is_empty(), "nothing sent to HAProxy");
    let fx = tick(&mut d, T0 + 10 * M);
    assert_eq!(events(&fx), [(Event::WouldRelease, "10.0.0.1".into())]);
    assert!(fx.jobs.is_empty());
    assert!(d.block(&key("10.0.0.1")).is_none());
}

#[test]
fn allowlisted_addresses_are_never_scored_and_a_manual_block_of_them_changes_nothing() {
    let entry = AllowEntry {
        net: net("10.0.0.0/24"),
        reason: "office".into(),
        actor: "alice".into(),
        since: T0,
        until: Some(T0 + M),
    };
    let mut d = Decider::new(config(|_| {}), vec![entry]);
    assert!(poll(&mut d, &mut HashMap::new(), &["10.0.0.7"], T0).writes.is_empty());
    let op = Manual::Block {
        key: key("10.0.0.7"),
        duration: Duration::from_secs(60),
        reason: "r".into(),
        allow_broad: false,
    };
    let e = d.step(Input::Manual { op: op.clone(), actor: "bob".into() }, T0).unwrap_err();
    assert_eq!(e.to_string(), "10.0.0.7 is allowlisted (office): remove it from the allowlist first");
    assert_eq!(d.active().count(), 0);
    // The entry ends at T0 + 1 min: the same block is then taken, written durably before its job.
    let fx = d.step(Input::Manual { op, actor: "bob".into() }, T0 + M).unwrap();
    assert!(fx.durable);
    assert_eq!(events(&fx), [(Event::Block, "10.0.0.7".into())]);
    assert!(fx.jobs[0].notify, "the operator waits for HAProxy's answer");
    assert_eq!(fx.reply.blocked[0].action, "tag+acl");
}

#[test]
fn unblock_with_grace_allows_first_then_releases_and_says_who() {
    let mut d = Decider::new(config(|_| {}), vec![]);
    poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0);
    let op = Manual::Unblock { key: key("10.0.0.1"), reason: "customer".into(), grace: Some(Duration::from_secs(600)) };
    let fx = d.step(Input::Manual { op, actor: "alice".into() }, T0 + S).unwrap();
    assert_eq!(fx.allow_put.len(), 1);
    assert_eq!(fx.allow_put[0].until, Some(T0 + S + 600 * S));
    assert_eq!(released_keys(&fx), ["10.0.0.1"]);
    let done = confirmed(&mut d, &fx.jobs[0], T0 + 2 * S);
    let Write::Release { rec, .. } = &done.writes[0] else { panic!() };
    assert_eq!((rec.actor.as_str(), rec.reason.as_str(), rec.source), ("alice", "unblocked: customer", Origin::Manual));
    // Within the grace period the address is not scored; after it, it is.
    assert!(poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0 + 2 * M).writes.is_empty());
    assert!(!poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0 + 11 * M).writes.is_empty());
    // Unknown keys: not found, nothing changes.
    let op = Manual::Unblock { key: key("10.9.9.9"), reason: "r".into(), grace: None };
    assert!(matches!(d.step(Input::Manual { op, actor: "a".into() }, T0), Err(OpError::NotFound(_))));
    let op = Manual::Disallow { key: net("10.9.9.9"), reason: "r".into() };
    assert!(matches!(d.step(Input::Manual { op, actor: "a".into() }, T0), Err(OpError::NotFound(_))));
}

#[test]
fn a_stored_block_reaching_a_protected_address_ends_at_the_first_tick() {
    let mut d = Decider::new(
        config(|c| {
            c.safety
                .never_block
                .push(crate::config::Protected { net: net("10.0.0.5"), why: "the monitoring host".into() })
        }),
        vec![],
    );
    let mut b = Block {
        key: key("10.0.0.0/24"),
        level: 0,
        actions: Actions::new(vec![Action::Acl]),
        rule: "manual".into(),
        reason: "r".into(),
        source: Origin::Manual,
        actor: "alice".into(),
        since: T0 - M,
        until: T0 + 60 * M,
        counters: vec![],
        dry_run: false,
        place: None,
        nodes: vec![],
    };
    d.load(b.clone(), T0);
    assert_eq!(d.block(&b.key).unwrap().until, T0);
    assert!(d.block(&b.key).unwrap().place.is_some(), "its place is today's [block]");
    let fx = tick(&mut d, T0);
    assert_eq!(released_keys(&fx), ["10.0.0.0/24"]);
    let done = confirmed(&mut d, &fx.jobs[0], T0 + S);
    let Write::Release { rec, .. } = &done.writes[0] else { panic!() };
    assert_eq!(rec.reason, "unblocked: reaches a protected address (the monitoring host)");
    // Reapply after a start skips what has ended.
    b.key = key("10.0.1.0/24");
    d.load(b, T0);
    let fx = d.step(Input::Reapply { only: None }, T0 + 61 * M).unwrap();
    assert!(fx.jobs.is_empty());
}

#[test]
fn reconcile_puts_back_what_is_missing_and_removes_only_owned_leftovers() {
    let mut d = Decider::new(
        config(|c| c.rules.policy.steps[0].actions = Actions::new(vec![Action::Tag, Action::Acl])),
        vec![],
    );
    poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0);
    let actual = |read_at| Actual {
        target: "lb1".into(),
        read_at,
        acl: Some([net("10.0.0.9"), net("10.0.0.8")].into_iter().collect()),
        tagged: Some([addr("10.0.0.1")].into_iter().collect()),
        mapped: Some(HashMap::new()),
    };
    // Read within the margin after the decision: not compared yet.
    let fx = d.step(Input::Actual { actual: actual(T0 + S), owned: Vec::new() }, T0 + S).unwrap();
    assert!(fx.jobs.is_empty());
    let a = actual(T0 + 10 * S);
    let leftovers = d.leftovers(&a);
    assert_eq!(leftovers.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), [key("10.0.0.8"), key("10.0.0.9")]);
    // As the store answers: stickwarden put .9 there, not .8.
    let owned = leftovers.into_iter().filter(|(k, _)| *k == key("10.0.0.9")).collect();
    let fx = d.step(Input::Actual { actual: a, owned }, T0 + 10 * S).unwrap();
    let jobs: Vec<String> = fx
        .jobs
        .iter()
        .map(|d| match &d.job {
            Job::Forget => "forget".to_owned(),
            Job::Apply { key, actions, kill, .. } => format!("apply {key} {actions} kill={kill}"),
            Job::Release { key, actions, .. } => format!("release {key} {actions}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(jobs, ["forget", "apply 10.0.0.1 acl kill=false", "release 10.0.0.9 acl"]);
    assert!(fx.jobs.iter().all(|j| j.only.as_deref() == Some("lb1")));
    assert_eq!(fx.repairs, ["lb1", "lb1"]);
    assert_eq!(events(&fx), [(Event::Repaired, "10.0.0.1".into()), (Event::Repaired, "10.0.0.9".into())]);
}

#[test]
fn offenders_of_one_prefix_within_the_window_block_the_prefix() {
    let mut d = Decider::new(
        config(|c| {
            c.aggregate = Some(crate::config::Aggregate {
                ipv4_prefix: 24,
                ipv6_prefix: 64,
                offenders: 3,
                window: Duration::from_secs(600),
                duration: Duration::from_secs(3600),
            })
        }),
        vec![],
    );
    let mut h = HashMap::new();
    poll(&mut d, &mut h, &["10.1.1.1", "10.1.1.2"], T0);
    assert!(d.block(&key("10.1.1.0/24")).is_none());
    let fx = poll(&mut d, &mut h, &["10.1.1.3"], T0 + 599 * S);
    assert_eq!(events(&fx), [(Event::Block, "10.1.1.3".into()), (Event::Block, "10.1.1.0/24".into())]);
    let b = d.block(&key("10.1.1.0/24")).unwrap();
    assert_eq!((b.actions.to_string(), b.until), ("acl".into(), T0 + 599 * S + 3600 * S));
    // Covered by the prefix now: a new address of it is not scored.
    assert!(poll(&mut d, &mut h, &["10.1.1.200"], T0 + 600 * S).writes.is_empty());
}

#[test]
fn an_import_skips_allowlisted_and_blocked_keys_and_goes_out_as_one_acl_job() {
    let entry = AllowEntry { net: net("10.0.0.5"), reason: "office".into(), actor: "a".into(), since: T0, until: None };
    let mut d = Decider::new(config(|_| {}), vec![entry]);
    poll(&mut d, &mut HashMap::new(), &["10.0.0.1"], T0);
    let keys = ["10.0.0.1", "10.0.0.5", "10.0.0.6", "10.0.0.6", "10.0.1.0/24"].map(net).to_vec();
    let op = Manual::Import { keys, duration: Duration::from_secs(3600), reason: "feed".into(), allow_broad: false };
    let fx = d.step(Input::Manual { op, actor: "a".into() }, T0 + S).unwrap();
    assert!(fx.durable);
    let skipped: Vec<&str> = fx.reply.skipped.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(skipped, ["10.0.0.1", "10.0.0.5", "10.0.0.6"]);
    let Job::ImportAcl { keys, .. } = &fx.jobs[0].job else { panic!() };
    assert_eq!(keys, &[net("10.0.0.6"), net("10.0.1.0/24")]);
    // One key too broad refuses the whole import: nothing changes.
    let op = Manual::Import {
        keys: vec![net("10.0.0.7"), net("10.0.0.0/8")],
        duration: Duration::from_secs(60),
        reason: "r".into(),
        allow_broad: false,
    };
    let before = d.active().count();
    assert!(matches!(
        d.step(Input::Manual { op, actor: "a".into() }, T0),
        Err(OpError::BadInput { code: "too_broad", .. })
    ));
    assert_eq!(d.active().count(), before);
}
