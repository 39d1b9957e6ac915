//! The enforcement loop end to end: the controller (in this process, or the real binary) against
//! a real HAProxy, with real HTTP from loopback source addresses playing different clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use stickwarden::key::Key;
use stickwarden::store::{Event, Store};

const INTERVAL: Duration = Duration::from_millis(INTERVAL_MS);
/// The daemon's housekeeping period (releases are looked for this often).
const TICK: Duration = Duration::from_millis(250);

fn events(store: &Store, key: &str) -> Vec<(Event, String, u32)> {
    store
        .audit_since(0)
        .unwrap()
        .into_iter()
        .filter(|r| r.key.as_ref().is_some_and(|k| k.to_string() == key))
        .map(|r| (r.event, r.rule, r.level))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooder_gets_403_within_two_intervals_normal_and_allowlisted_clients_do_not() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let allow = "[[allow]]\ncidr = \"127.0.0.4\"\nreason = \"load tester\"\n";
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), allow);
    let d = Daemon::start(&s);

    // The normal client makes one request every 200 ms throughout.
    let normal_sb_port = sb.web_port;
    let normal = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                stickwarden::sandbox::http_get(stickwarden::sandbox::client_addr(2), normal_sb_port).await.unwrap(),
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        statuses
    });
    // 150 requests within a second or so: well past the shipped http-flood rule's 100 per 10 s.
    let (flooded, allowed) = tokio::join!(flood(&sb, 1, 150), flood(&sb, 3, 150));
    let crossed = Instant::now();
    assert_eq!(allowed, [(200, 150)], "the allowlisted client is never denied");
    assert!(flooded.iter().any(|&(s, _)| s == 200), "{flooded:?}");

    assert!(eventually(Duration::from_secs(3), || async { get(&sb, 1).await == 403 }).await, "flooder never blocked");
    let took = crossed.elapsed();
    // Two poll intervals, plus the time of the HTTP round trips that observe it.
    assert!(took <= 2 * INTERVAL + Duration::from_millis(300), "403 only after {took:?}");

    // The allowlisted client floods on and is still served; the normal one never saw a 403.
    assert_eq!(flood(&sb, 3, 50).await, [(200, 50)]);
    assert!(normal.await.unwrap().iter().all(|&s| s == 200));
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(1));
    assert_eq!(gpt0(&c, "127.0.0.3").await, Some(0));
    assert_eq!(gpt0(&c, "127.0.0.4").await, Some(0));

    let store = d.stop().await;
    let blocks = store.blocks().unwrap();
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert_eq!(blocks[0].key.to_string(), "127.0.0.2");
    assert_eq!(blocks[0].rule, "http-flood");
    assert!(blocks[0].counters.iter().any(|(k, v)| k == "http_req_rate" && *v > 100), "{:?}", blocks[0].counters);
    assert_eq!(events(&store, "127.0.0.2"), [(Event::Block, "http-flood".to_owned(), 1)]);
    assert!(events(&store, "127.0.0.4").is_empty());
}

/// Real durations (10 minutes, then an hour), on the daemon's clock: the test skips them instead
/// of sleeping, so the checks just before and just after each end have a minute of margin, not
/// a fraction of a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_offence_climbs_the_ladder_and_release_brings_service_back_on_time() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let steps = "{ action = [\"tag\"], duration = \"10m\" }, { action = [\"tag\", \"acl\"], duration = \"1h\" }";
    let s = setup(&sb, "", &policy(steps), "");
    let d = Daemon::start(&s);
    let skip_to = |t: u64| d.clock.skip(Duration::from_millis(t.saturating_sub(d.clock.now())));

    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    assert_eq!(get(&sb, 1).await, 403);
    assert!(acl(&c, &sb).await.is_empty(), "level 1 is a tag only");
    let first = d.store.blocks().unwrap().remove(0);
    assert_eq!((first.level, first.until - first.since), (1, 600_000));

    // A minute before its end: still denied, after the housekeeping ticks of that instant.
    skip_to(first.until - 60_000);
    tokio::time::sleep(4 * TICK).await;
    assert_eq!(get(&sb, 1).await, 403, "released early");
    // At its end: tag back to 0 and the entry cleared (its counters with it), served again.
    skip_to(first.until);
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await.is_none() }).await);
    assert!(eventually(Duration::from_secs(1), || async { d.store.blocks().unwrap().is_empty() }).await);
    assert_eq!(get(&sb, 1).await, 200);

    // A second offence within the forgiveness window: level 2, tag and ACL.
    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    let second = d.store.blocks().unwrap().remove(0);
    assert_eq!((second.level, second.actions.to_string().as_str()), (2, "tag+acl"));
    assert_eq!(second.until - second.since, 3_600_000);
    assert!(second.since >= first.until, "the first block ran its full time");
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(1));
    assert_eq!(get(&sb, 1).await, 403);

    // Still denied a minute before its end, served again once it has come.
    skip_to(second.until - 60_000);
    tokio::time::sleep(4 * TICK).await;
    assert_eq!(get(&sb, 1).await, 403, "released early");
    skip_to(second.until);
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await.is_empty() }).await, "released late");
    assert!(
        eventually(Duration::from_secs(1), || async { gpt0(&c, "127.0.0.2").await.is_none() }).await,
        "entry cleared"
    );
    assert_eq!(get(&sb, 1).await, 200);

    let store = d.stop().await;
    assert!(store.blocks().unwrap().is_empty());
    let ev: Vec<(Event, u32)> = events(&store, "127.0.0.2").into_iter().map(|(e, _, l)| (e, l)).collect();
    assert_eq!(ev, [(Event::Block, 1), (Event::Release, 1), (Event::Block, 2), (Event::Release, 2)]);
    let released: Vec<u64> =
        store.audit_since(0).unwrap().iter().filter(|r| r.event == Event::Release).map(|r| r.at).collect();
    assert!(released[0] >= first.until && released[1] >= second.until, "released before the end: {released:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_step_closes_the_offenders_live_connection_only() {
    use tokio::io::AsyncReadExt;
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"kill\"], duration = \"1h\" }"), "");
    // Live TCP streams through ft_tcp: one from the offender, one from a bystander.
    let mut offender =
        stickwarden::sandbox::connect_from(stickwarden::sandbox::client_addr(1), sb.tcp_port).await.unwrap();
    let mut bystander =
        stickwarden::sandbox::connect_from(stickwarden::sandbox::client_addr(2), sb.tcp_port).await.unwrap();
    assert!(
        eventually(Duration::from_secs(2), || async {
            c.show_sess().await.unwrap().iter().filter(|s| s.frontend.as_deref() == Some("ft_tcp")).count() == 2
        })
        .await
    );
    let d = Daemon::start(&s);

    flood(&sb, 1, 150).await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), offender.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the offender's connection is still open: {closed:?}");
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(1));
    let alive = tokio::time::timeout(Duration::from_millis(300), bystander.read(&mut buf)).await;
    assert!(alive.is_err(), "the bystander's connection was closed too: {alive:?}");
    d.stop().await;
}

/// Offenders seen in the same poll go out as one pipelined job; what HAProxy refuses of it (here
/// every `add acl`, the ACL file being one HAProxy does not know) is audited block by block, and
/// the rest of the job (the tags) is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_part_of_a_polls_blocks_is_audited_for_each_block() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, cfg.replace(&sb.block_acl().display().to_string(), "/nonexistent/other.lst")).unwrap();
    // Both cross before the daemon's first poll: one poll, one batch.
    flood(&sb, 1, 150).await;
    flood(&sb, 2, 150).await;
    let d = Daemon::start(&s);
    let failed = |store: &Store, key: &str| events(store, key).iter().any(|(e, ..)| *e == Event::ActionFailed);
    assert!(
        eventually(Duration::from_secs(5), || async { failed(&d.store, "127.0.0.2") && failed(&d.store, "127.0.0.3") })
            .await,
        "no action_failed record for each block"
    );
    assert_eq!((gpt0(&c, "127.0.0.2").await, gpt0(&c, "127.0.0.3").await), (Some(1), Some(1)));
    let store = d.stop().await;
    assert_eq!(store.blocks().unwrap().len(), 2, "the blocks stay, to be repaired");
    let rec = store.audit_since(0).unwrap().into_iter().find(|r| r.event == Event::ActionFailed).unwrap();
    assert!(rec.reason.contains("refused"), "{}", rec.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_in_haproxy_but_audits_what_it_would_do() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "dry_run = true", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    let acl_before = acl(&c, &sb).await;

    flood(&sb, 1, 150).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            d.store.audit_since(0).unwrap().iter().any(|r| r.event == Event::WouldBlock)
        })
        .await
    );
    tokio::time::sleep(2 * INTERVAL).await;
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(0), "dry run set the tag");
    assert_eq!(acl(&c, &sb).await, acl_before, "dry run touched the ACL");
    assert_eq!(get(&sb, 1).await, 200);

    let store = d.stop().await;
    assert_eq!(events(&store, "127.0.0.2"), [(Event::WouldBlock, "http-flood".to_owned(), 1)]);
    let b = store.blocks().unwrap();
    assert!(b.len() == 1 && b[0].dry_run, "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subnet_aggregation_puts_the_prefix_in_the_acl() {
    let sb = haproxy();
    let c = admin(&sb).await;
    // A /30 of loopback clients: a /24 would hold 127.0.0.1, this host's loopback, which no block
    // may reach (the aggregation is refused then).
    let agg = "[aggregate]\nipv4_prefix = 30\noffenders = 2\nwindow = \"1m\"\nduration = \"1h\"\n";
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), agg);
    let d = Daemon::start(&s);

    flood(&sb, 5, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.6").await == Some(1) }).await);
    assert!(acl(&c, &sb).await.is_empty(), "one offender is not a subnet");
    flood(&sb, 6, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.4/30"] }).await);
    // The whole prefix is denied now, a client that never offended included; outside it, not.
    assert_eq!(get(&sb, 3).await, 403);
    assert_eq!(get(&sb, 1).await, 200);

    let store = d.stop().await;
    let agg = events(&store, "127.0.0.4/30");
    assert_eq!(agg, [(Event::Block, "subnet-aggregate".to_owned(), 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_in_use_at_release_is_untagged_at_once_and_cleared_when_free() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    // A live connection through ft_tcp, tracked in ft_web: the offender's entry is in use.
    let held = stickwarden::sandbox::connect_from(stickwarden::sandbox::client_addr(1), sb.tcp_port).await.unwrap();
    let d = Daemon::start(&s);

    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    // The entry cannot be cleared, so its counters survive the release: let its rate fade to 0
    // meanwhile (as a client that stopped would), or it is rightly blocked again at once.
    let key = stickwarden::proto::TableKey::parse(stickwarden::proto::KeyType::Ip, "127.0.0.2").unwrap();
    c.set_table("ft_web", key, &[("http_req_rate".parse().unwrap(), 0), ("http_err_rate".parse().unwrap(), 0)])
        .await
        .unwrap();
    d.clock.skip(Duration::from_secs(3600));
    // Released: the tag is 0 at once, but `clear table` answers "Entry currently in use".
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(0) }).await);
    // The store records the release once HAProxy confirmed it: a moment after the tag changed.
    assert!(eventually(Duration::from_secs(1), || async { d.store.blocks().unwrap().is_empty() }).await);
    assert_eq!(get(&sb, 1).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(0), "an entry in use cannot be cleared");
    // Once the connection is gone the retried clear goes through.
    drop(held);
    assert!(
        eventually(Duration::from_secs(4), || async { gpt0(&c, "127.0.0.2").await.is_none() }).await,
        "never cleared"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_stops_automatic_blocks_past_its_limit() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let s =
        setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "[safety]\nmax_blocks_per_minute = 1\n");
    let d = Daemon::start(&s);

    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    flood(&sb, 2, 150).await;
    assert!(
        eventually(Duration::from_secs(3), || async {
            d.store.audit_since(0).unwrap().iter().any(|r| r.event == Event::BreakerOpen)
        })
        .await
    );
    tokio::time::sleep(4 * INTERVAL).await;
    assert_eq!(gpt0(&c, "127.0.0.3").await, Some(0), "blocked past the breaker");
    assert_eq!(get(&sb, 2).await, 200);
    let store = d.stop().await;
    assert!(events(&store, "127.0.0.3").is_empty());
    // Not counted as an offence either: it was never acted on.
    let o = store.offender(&Key::host("127.0.0.3".parse().unwrap())).unwrap().unwrap();
    assert!(o.offences.is_empty(), "{o:?}");
}

/// The actuator's governor: with 4 commands a second (bursts of 4), 12 tags and the one
/// key-type lookup cannot take less than (13 - 4) / 4 s. A lower bound: it cannot flake on a slow
/// machine.
#[tokio::test]
async fn actuator_is_rate_limited() {
    use stickwarden::actuator::{Actuator, Job};
    use stickwarden::rules::{Action, Actions};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let mut cfg = stickwarden::config::Config::load(&s.config).unwrap();
    cfg.targets[0].commands_per_second = 4;
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let a = Actuator::spawn(&cfg.targets[0], c.clone(), stop_rx, Default::default());
    let place = |a: &Actions| std::sync::Arc::new(stickwarden::store::Place::of(&cfg.block, a));
    let started = Instant::now();
    let mut replies = Vec::new();
    for i in 0..12u8 {
        let key = Key::Net(stickwarden::net::parse_net(&format!("10.9.0.{i}")).unwrap());
        let actions = Actions::new(vec![Action::Tag]);
        replies.push(a.submit(Job::Apply { key, place: place(&actions), actions, kill: false }).unwrap());
    }
    for r in replies {
        r.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2200), "12 tags at 4/s took only {took:?}");
    for i in 0..12 {
        assert_eq!(gpt0(&c, &format!("10.9.0.{i}")).await, Some(1));
    }
    // Putting back what HAProxy lost is not limited: 200 tags at "4 a second" go at once.
    let blocks: Vec<_> = (0..200u32)
        .map(|i| (Key::host(stickwarden::sandbox::nth_addr(i).into()), Actions::new(vec![Action::Tag])))
        .collect();
    let started = Instant::now();
    a.run(Job::ApplyMany { blocks, place: place(&Actions::new(vec![Action::Tag])), fresh: false }).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "re-apply was rate limited: {:?}", started.elapsed());
    assert_eq!(gpt0(&c, "10.0.0.199").await, Some(1));
    // A poll's new blocks, one pipelined job, are limited like any command: 12 tags cannot take
    // less than (12 - 4) / 4 s.
    let fresh: Vec<_> = (0..12u8)
        .map(|i| {
            (Key::Net(stickwarden::net::parse_net(&format!("10.9.1.{i}")).unwrap()), Actions::new(vec![Action::Tag]))
        })
        .collect();
    let started = Instant::now();
    a.run(Job::ApplyMany { blocks: fresh, place: place(&Actions::new(vec![Action::Tag])), fresh: true }).await.unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "a poll's 12 tags at 4/s took only {took:?}");
    assert_eq!(gpt0(&c, "10.9.1.11").await, Some(1));
}

/// HAProxy refusing one action (here the tag: a column the table does not store) does not keep
/// the others from being applied, and the refusal comes back classified.
#[tokio::test]
async fn a_refused_tag_does_not_keep_the_acl_entry_from_being_added() {
    use stickwarden::actuator::{Actuator, Job};
    use stickwarden::proto::ErrorKind;
    use stickwarden::rules::{Action, Actions};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let mut cfg = stickwarden::config::Config::load(&s.config).unwrap();
    cfg.block.tag = "gpc0".parse().unwrap(); // ft_web stores gpt0, not gpc0
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let a = Actuator::spawn(&cfg.targets[0], c.clone(), stop_rx, Default::default());
    let place = |a: &Actions| std::sync::Arc::new(stickwarden::store::Place::of(&cfg.block, a));
    let key = Key::Net(stickwarden::net::parse_net("10.0.0.3").unwrap());
    let both = Actions::new(vec![Action::Tag, Action::Acl]);
    let e = a
        .run(Job::Apply { key: key.clone(), place: place(&both), actions: both.clone(), kill: false })
        .await
        .unwrap_err();
    assert_eq!(e.haproxy().map(|h| h.kind), Some(ErrorKind::DataTypeNotStored), "{e}");
    assert_eq!(acl(&c, &sb).await, ["10.0.0.3"]);
    // Applying again adds no duplicate ACL entry (HAProxy itself would accept one).
    let _ = a.run(Job::Apply { key: key.clone(), place: place(&both), actions: both, kill: false }).await;
    assert_eq!(acl(&c, &sb).await, ["10.0.0.3"]);
    let acl_only = Actions::new(vec![Action::Acl]);
    a.run(Job::Release { key: key.clone(), place: place(&acl_only), actions: acl_only.clone() }).await.unwrap();
    assert!(acl(&c, &sb).await.is_empty());
    // Releasing what is already gone is not an error.
    a.run(Job::Release { key, place: place(&acl_only), actions: acl_only }).await.unwrap();
}

/// Rules on an array table (`store gpc(3),gpt(2)`): element 0 is filtered as `data.gpc`, element
/// 1 cannot be filtered before HAProxy 3.2 and is evaluated on a whole-table dump; both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_array_elements_are_polled_with_the_filters_haproxy_knows() {
    use stickwarden::proto::{KeyType, TableKey};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let rules = "[[rule]]\nname = \"gpc-elem0\"\ntable = \"t_arr\"\nall = [\"gpc0 gt 5\"]\nweight = 100\n\n\
                 [[rule]]\nname = \"gpt-elem1\"\ntable = \"t_arr\"\nany = [\"gpt1 ge 1\"]\nweight = 100\n";
    std::fs::write(s.dir.path().join("rules/arrays.toml"), rules).unwrap();
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let plan = stickwarden::poll::plan(&c, "t_arr", &cfg.rules).await.unwrap();
    let plan: Vec<String> =
        plan.iter().map(|q| q.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" ")).collect();
    if version(&sb) < (3, 2) {
        assert_eq!(plan, [""], "gpt1 cannot be filtered: the whole table, once");
    }

    let d = Daemon::start(&s);
    for (ip, n) in [("10.5.0.1", 7), ("10.5.0.2", 3)] {
        c.set_table("t_arr", TableKey::parse(KeyType::Ip, ip).unwrap(), &[("gpc".parse().unwrap(), n)]).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "10.5.0.1").await == Some(1) }).await);
    assert_eq!(gpt0(&c, "10.5.0.2").await, None, "gpc0 = 3 is under the rule's 5");
    let store = d.stop().await;
    assert_eq!(events(&store, "10.5.0.1"), [(Event::Block, "gpc-elem0".to_owned(), 1)]);
}

/// HAProxy stopped (an outage), then started again: it comes back empty, and every active block is
/// put back without restarting the controller, which stayed up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_outage_and_restart_put_every_active_block_back() {
    let mut sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    let c = admin(&sb).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    assert_eq!(gpt0(&c, "127.0.0.2").await, Some(1));

    sb.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sb.restart().unwrap();
    let c = admin(&sb).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            acl(&c, &sb).await == ["127.0.0.2"] && gpt0(&c, "127.0.0.2").await == Some(1)
        })
        .await,
        "blocks not back after the restart"
    );
    assert_eq!(get(&sb, 1).await, 403);
    let store = d.stop().await;
    let log = store.audit_since(0).unwrap();
    let restarts: Vec<&str> =
        log.iter().filter(|r| r.event == Event::TargetRestarted).map(|r| r.reason.as_str()).collect();
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(restarts[0].ends_with("1 active block(s) re-applied"), "{restarts:?}");
    assert_eq!(store.blocks().unwrap().len(), 1, "no block lost or duplicated");
}

/// Drift behind stickwarden's back (an ACL pattern deleted by hand, a tag reset, as an evicted
/// entry would be) is found by the reconciler and put back; a pattern it did not put there stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_puts_back_what_went_missing_and_leaves_the_rest() {
    use stickwarden::proto::{AclPattern, KeyType, TableKey};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s =
        setup(&sb, "reconcile_interval = \"1s\"", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    let acl_ref = sb.block_acl().display().to_string().parse().unwrap();
    c.add_acl(&acl_ref, "192.0.2.99".parse::<AclPattern>().unwrap()).await.unwrap(); // not ours
    tokio::time::sleep(Duration::from_millis(2500)).await;

    c.del_acl(&acl_ref, "127.0.0.2".parse::<AclPattern>().unwrap()).await.unwrap();
    c.set_table("ft_web", TableKey::parse(KeyType::Ip, "127.0.0.2").unwrap(), &[("gpt0".parse().unwrap(), 0)])
        .await
        .unwrap();
    assert_eq!(get(&sb, 1).await, 200, "the block is really gone from HAProxy");
    assert!(
        eventually(Duration::from_secs(4), || async {
            acl(&c, &sb).await == ["127.0.0.2", "192.0.2.99"] && gpt0(&c, "127.0.0.2").await == Some(1)
        })
        .await,
        "not repaired"
    );
    assert_eq!(get(&sb, 1).await, 403);
    let store = d.stop().await;
    let repaired: Vec<String> = store
        .audit_since(0)
        .unwrap()
        .iter()
        .filter(|r| r.event == Event::Repaired)
        .map(|r| r.actions.to_string())
        .collect();
    assert_eq!(repaired, ["tag+acl"]);
}

/// A master-worker HAProxy (`-W -S`) reloaded through its master socket: the new worker starts
/// with no tag and no runtime ACL entry, and gets every active block back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_worker_reload_gets_every_active_block_back() {
    let sb = haproxy_with(&stickwarden::sandbox::SandboxOptions { master_worker: true, ..Default::default() });
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    let c = admin(&sb).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    let old_pid = c.show_info().await.unwrap().pid().unwrap();

    sb.reload(old_pid).unwrap();
    let c = admin(&sb).await;
    assert_ne!(c.show_info().await.unwrap().pid(), Some(old_pid), "a new worker answers");
    assert!(
        eventually(Duration::from_secs(3), || async {
            acl(&c, &sb).await == ["127.0.0.2"] && gpt0(&c, "127.0.0.2").await == Some(1)
        })
        .await,
        "blocks not back after the reload"
    );
    assert_eq!(get(&sb, 1).await, 403);
    let store = d.stop().await;
    assert!(store.audit_since(0).unwrap().iter().any(|r| r.event == Event::TargetRestarted));
}

/// 1,000 active blocks (tag and ACL), a master-worker reload, then a full stop and start: every
/// one is back each time, compared one by one, within a poll interval of HAProxy answering (plus
/// the time to send them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_blocks_come_back_after_a_reload_and_a_restart() {
    use std::collections::BTreeSet;
    use stickwarden::client::TableItem;
    use stickwarden::proto::TableSelect;
    use stickwarden::rules::{Action, Actions};
    use stickwarden::store::{AuditRecord, Block, Origin};
    let mut sb = haproxy_with(&stickwarden::sandbox::SandboxOptions { master_worker: true, ..Default::default() });
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let keys: Vec<String> = (0..1000u32).map(|i| format!("10.20.{}.{}", i / 250, i % 250 + 1)).collect();
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let store = Store::open(&cfg.store.path, cfg.store.cache_bytes).unwrap();
    {
        let now = stickwarden::time::now_ms();
        let blocks: Vec<Block> = keys
            .iter()
            .map(|k| Block {
                key: Key::Net(stickwarden::net::parse_net(k).unwrap()),
                level: 1,
                actions: Actions::new(vec![Action::Tag, Action::Acl]),
                rule: "http-flood".into(),
                reason: "test".into(),
                source: Origin::Auto,
                actor: "test".into(),
                since: now,
                until: now + 3_600_000,
                counters: vec![],
                dry_run: false,
                place: None,
                nodes: Vec::new(),
            })
            .collect();
        store.decide_many(&blocks, |b| AuditRecord::of(Event::Block, b, now)).unwrap();
        store.flush().unwrap();
    }
    let want: BTreeSet<String> = keys.iter().cloned().collect();
    let acl_file = sb.block_acl().display().to_string();
    let state = |c: stickwarden::Client| {
        let acl_path = acl_file.clone();
        async move {
            let acl: BTreeSet<String> =
                c.show_acl(&acl_path.parse().unwrap()).await.unwrap().into_iter().map(|e| e.pattern).collect();
            let mut tagged = BTreeSet::new();
            let dump =
                c.show_table("ft_web", TableSelect::Filters(vec!["data.gpt0 eq 1".parse().unwrap()])).await.unwrap();
            dump.for_each(|i| {
                if let TableItem::Entry(e) = i {
                    tagged.insert(String::from_utf8_lossy(e.raw_key()).into_owned());
                }
            })
            .await
            .unwrap();
            (acl, tagged)
        }
    };
    let d = Daemon::start_on(&s, store);
    let c = admin(&sb).await;
    assert!(
        eventually(Duration::from_secs(5), || async { state(c.clone()).await == (want.clone(), want.clone()) }).await,
        "not applied at start"
    );

    let old_pid = c.show_info().await.unwrap().pid().unwrap();
    sb.reload(old_pid).unwrap();
    let answered = std::time::Instant::now();
    let c = admin(&sb).await;
    assert!(
        eventually(Duration::from_secs(5), || async { state(c.clone()).await == (want.clone(), want.clone()) }).await,
        "not all back after the reload"
    );
    let took = answered.elapsed();
    eprintln!("1,000 blocks back {took:?} after the new worker answered");
    assert!(took < INTERVAL + Duration::from_millis(750), "1,000 blocks back only after {took:?}");

    // The same after a full stop and start.
    sb.restart().unwrap();
    let answered = std::time::Instant::now();
    let c = admin(&sb).await;
    assert!(
        eventually(Duration::from_secs(5), || async { state(c.clone()).await == (want.clone(), want.clone()) }).await,
        "not all back after a stop and start"
    );
    let took = answered.elapsed();
    eprintln!("1,000 blocks back {took:?} after the restarted HAProxy answered");
    assert!(took < INTERVAL + Duration::from_millis(750), "1,000 blocks back only after {took:?}");
    let store = d.stop().await;
    assert_eq!(store.blocks().unwrap().len(), 1000, "none lost, none added");
}

/// Shutdown while HAProxy is down and a release is in flight: the daemon waits the bounded grace
/// period, not forever, and the unconfirmed release stays in the store for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_haproxy_down_is_bounded_and_keeps_the_unconfirmed_release() {
    let mut sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    let c = admin(&sb).await;
    assert!(eventually(Duration::from_secs(3), || async { gpt0(&c, "127.0.0.2").await == Some(1) }).await);
    sb.stop();
    d.clock.skip(Duration::from_secs(3600));
    tokio::time::sleep(4 * TICK).await; // the release is due, and cannot be sent
    let started = Instant::now();
    let store = d.stop().await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "shutdown took {took:?}");
    assert_eq!(store.blocks().unwrap().len(), 1, "the unconfirmed release must stay to be done at the next start");
    assert!(!store.audit_since(0).unwrap().iter().any(|r| r.event == Event::Release));
}

/// A block the store no longer has (a store restored from an older backup) but HAProxy still
/// holds: the reconciler removes its ACL entry and tag, because stickwarden put them there; a
/// pattern and a tag it never put there stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciler_removes_its_own_leftovers_only() {
    use stickwarden::proto::{AclPattern, KeyType, TableKey};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s =
        setup(&sb, "reconcile_interval = \"1s\"", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let d = Daemon::start(&s);
    flood(&sb, 1, 150).await;
    assert!(eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["127.0.0.2"] }).await);
    let store = d.stop().await;
    // Not stickwarden's: a pattern and a tag set by hand.
    let acl_ref = sb.block_acl().display().to_string().parse().unwrap();
    c.add_acl(&acl_ref, "192.0.2.99".parse::<AclPattern>().unwrap()).await.unwrap();
    c.set_table("ft_web", TableKey::parse(KeyType::Ip, "10.9.9.9").unwrap(), &[("gpt0".parse().unwrap(), 1)])
        .await
        .unwrap();
    // Its rate fades (or the next daemon would rightly block it again at once).
    let k2 = TableKey::parse(KeyType::Ip, "127.0.0.2").unwrap();
    c.set_table("ft_web", k2, &[("http_req_rate".parse().unwrap(), 0), ("http_err_rate".parse().unwrap(), 0)])
        .await
        .unwrap();
    // The store forgets the block, as an older backup would.
    let b = store.blocks().unwrap().remove(0);
    store.release(&b.key, b.since, stickwarden::store::AuditRecord::of(Event::Release, &b, 0)).unwrap();
    store.flush().unwrap();

    let d = Daemon::start_on(&s, store);
    assert!(
        eventually(Duration::from_secs(5), || async {
            acl(&c, &sb).await == ["192.0.2.99"] && gpt0(&c, "127.0.0.2").await.is_none_or(|v| v == 0)
        })
        .await,
        "leftover not removed"
    );
    assert_eq!(gpt0(&c, "10.9.9.9").await, Some(1), "a tag it never set was touched");
    let store = d.stop().await;
    let reasons: Vec<String> =
        store.audit_since(0).unwrap().iter().filter(|r| r.event == Event::Repaired).map(|r| r.reason.clone()).collect();
    assert_eq!(reasons, ["sandbox: leftover tag+acl of an ended block, removed"]);
}

/// An actuator whose lease ended (a leader that lost the lead on a shared store) sends nothing:
/// its jobs fail with a clear error and HAProxy holds nothing of them; renewed, it acts again.
#[tokio::test]
async fn an_actuator_without_a_lease_sends_nothing() {
    use stickwarden::actuator::{Actuator, Job};
    use stickwarden::rules::{Action, Actions};
    let sb = haproxy();
    let c = admin(&sb).await;
    let s = setup(&sb, "", &policy("{ action = [\"tag\", \"acl\"], duration = \"1h\" }"), "");
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let lease = stickwarden::lease::Lease::ended();
    let a = Actuator::spawn_leased(&cfg.targets[0], c.clone(), stop_rx, Default::default(), lease.clone());
    let actions = Actions::new(vec![Action::Tag, Action::Acl]);
    let place = std::sync::Arc::new(stickwarden::store::Place::of(&cfg.block, &actions));
    let job = |addr: &str| Job::Apply {
        key: Key::Net(stickwarden::net::parse_net(addr).unwrap()),
        place: place.clone(),
        actions: actions.clone(),
        kill: false,
    };
    let e = a.run(job("10.9.0.1")).await.unwrap_err();
    assert!(matches!(e, stickwarden::client::ClientError::NotLeader), "{e}");
    assert!(e.to_string().contains("no longer leads"), "{e}");
    let many: Vec<_> =
        (0..50u32).map(|i| (Key::host(stickwarden::sandbox::nth_addr(i).into()), actions.clone())).collect();
    let e = a.run(Job::ApplyMany { blocks: many, place: place.clone(), fresh: false }).await.unwrap_err();
    assert!(matches!(e, stickwarden::client::ClientError::NotLeader), "{e}");
    assert_eq!(gpt0(&c, "10.9.0.1").await.unwrap_or(0), 0);
    assert_eq!(gpt0(&c, "10.0.0.7").await.unwrap_or(0), 0);
    assert!(acl(&c, &sb).await.is_empty());
    lease.renew(std::time::Instant::now(), Duration::from_secs(60));
    a.run(job("10.9.0.1")).await.unwrap();
    assert_eq!(gpt0(&c, "10.9.0.1").await, Some(1));
    assert_eq!(acl(&c, &sb).await, ["10.9.0.1"]);
}
