//! The Runtime API client against a real HAProxy: every command, its success and its errors, on
//! ip, ipv6, integer, string and array tables, plus pipelining and reconnection.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use stickwarden::client::TableItem;
use stickwarden::proto::{AclPattern, AclRef, DataField, ErrorKind, KeyType, TableKey, TableSelect};
use stickwarden::sandbox;
use stickwarden::{Client, ClientError, ClientOptions};
use tokio::io::AsyncReadExt;

/// An entry as owned strings: key (unescaped) and `name -> value` of its data columns.
type Row = (String, BTreeMap<String, String>);

async fn dump(client: &Client, table: &str, select: TableSelect) -> Result<Vec<Row>, ClientError> {
    let mut rows = Vec::new();
    client
        .show_table(table, select)
        .await?
        .for_each(|item| {
            if let TableItem::Entry(e) = item {
                let data = e
                    .columns()
                    .map(|c| {
                        (
                            c.name.to_owned(),
                            c.value.as_i128().map_or_else(|| format!("{:?}", c.value), |v| v.to_string()),
                        )
                    })
                    .collect();
                rows.push((String::from_utf8_lossy(&e.key_bytes()).into_owned(), data));
            }
        })
        .await?;
    Ok(rows)
}

fn field(name: &str) -> DataField {
    name.parse().unwrap()
}

fn kind(e: &ClientError) -> ErrorKind {
    e.haproxy().unwrap_or_else(|| panic!("not a HAProxy error: {e}")).kind
}

#[tokio::test]
async fn show_info_and_table_list() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let info = c.show_info().await.unwrap();
    assert_eq!(info.pid(), Some(sb.pid() as u64));
    assert!(info.version().unwrap().starts_with(&sb.version[..3]), "{:?} vs {}", info.version(), sb.version);
    let tables = c.list_tables().await.unwrap();
    let types: BTreeMap<_, _> = tables.iter().map(|t| (t.name.as_str(), t.key_type.as_str())).collect();
    assert_eq!(types["ft_web"], "ip");
    assert_eq!(types["t_v6"], "ipv6");
    assert_eq!(types["t_int"], "integer");
    assert_eq!(types["t_str"], "string");
    assert_eq!(types["t_bin"], "binary");
    assert_eq!(c.table_key_type("t_str").await.unwrap(), KeyType::String { len: None });
    let err = c.table_key_type("nosuch").await.unwrap_err();
    assert_eq!(kind(&err), ErrorKind::NoSuchTable);
}

#[tokio::test]
async fn set_show_clear_on_an_ip_table() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let key = TableKey::parse(KeyType::Ip, "10.1.2.3").unwrap();
    // Several fields in one command.
    c.set_table("ft_web", key.clone(), &[(field("gpt0"), 1), (field("http_req_rate"), 50)]).await.unwrap();
    let rows = dump(&c, "ft_web", TableSelect::Key(key.clone())).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "10.1.2.3");
    assert_eq!(rows[0].1["gpt0"], "1");
    assert_eq!(rows[0].1["http_req_rate"], "50");

    // Filters are evaluated by HAProxy: only the matching entry travels.
    let other = TableKey::parse(KeyType::Ip, "10.1.2.4").unwrap();
    c.set_table("ft_web", other.clone(), &[(field("gpt0"), 0)]).await.unwrap();
    let all = dump(&c, "ft_web", TableSelect::All).await.unwrap();
    assert_eq!(all.len(), 2);
    let filters = vec!["data.gpt0 gt 0".parse().unwrap(), "data.http_req_rate ge 10".parse().unwrap()];
    let tagged = dump(&c, "ft_web", TableSelect::Filters(filters)).await.unwrap();
    assert_eq!(tagged.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["10.1.2.3"]);

    c.clear_table_key("ft_web", key.clone()).await.unwrap();
    assert!(dump(&c, "ft_web", TableSelect::Key(key.clone())).await.unwrap().is_empty());
    // Clearing a missing key is silent success.
    c.clear_table_key("ft_web", key).await.unwrap();
    assert_eq!(dump(&c, "ft_web", TableSelect::All).await.unwrap().len(), 1);
}

#[tokio::test]
async fn ipv6_integer_string_and_array_tables() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;

    // ipv6: an IPv4 client is stored as ::ffff:a.b.c.d on every version.
    for k in ["2001:db8::1", "10.0.0.1"] {
        c.set_table("t_v6", TableKey::parse(KeyType::Ipv6, k).unwrap(), &[(field("gpc0"), 5)]).await.unwrap();
    }
    let mut keys: Vec<String> = dump(&c, "t_v6", TableSelect::All).await.unwrap().into_iter().map(|r| r.0).collect();
    keys.sort();
    assert_eq!(keys, ["2001:db8::1", "::ffff:10.0.0.1"]);

    // integer, up to u32::MAX.
    let k = TableKey::parse(KeyType::Integer, "4294967295").unwrap();
    c.set_table("t_int", k.clone(), &[(field("gpc0"), 3)]).await.unwrap();
    let rows = dump(&c, "t_int", TableSelect::Key(k)).await.unwrap();
    assert_eq!((rows[0].0.as_str(), rows[0].1["gpc0"].as_str()), ("4294967295", "3"));

    // string: spaces, '=', '\', ';' and a tab survive the round trip.
    let ty = KeyType::String { len: Some(32) };
    let nasty = "a b=c\\d;e\tf";
    let k = TableKey::parse(ty, nasty).unwrap();
    c.set_table("t_str", k.clone(), &[(field("gpc0"), 7)]).await.unwrap();
    let rows = dump(&c, "t_str", TableSelect::Key(k.clone())).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, nasty);
    let all = dump(&c, "t_str", TableSelect::All).await.unwrap();
    assert_eq!(all.len(), 1, "exactly one entry was created: {all:?}");
    c.clear_table_key("t_str", k).await.unwrap();
    assert!(dump(&c, "t_str", TableSelect::All).await.unwrap().is_empty());

    // array table `store gpc(3),gpt(2),gpc_rate(3,10s)`: `data.gpc` / `data.gpt` is element 0.
    let k = TableKey::parse(KeyType::Ip, "10.0.0.9").unwrap();
    c.set_table("t_arr", k.clone(), &[(field("gpc"), 4), (field("gpt"), 1)]).await.unwrap();
    let rows = dump(&c, "t_arr", TableSelect::Key(k)).await.unwrap();
    let d = &rows[0].1;
    assert_eq!((d["gpc0"].as_str(), d["gpc1"].as_str(), d["gpc2"].as_str()), ("4", "0", "0"));
    assert_eq!((d["gpt0"].as_str(), d["gpt1"].as_str()), ("1", "0"));
    assert_eq!(d["gpc2_rate"], "0");
    let hits = dump(&c, "t_arr", TableSelect::Filters(vec!["data.gpc gt 3".parse().unwrap()])).await.unwrap();
    assert_eq!(hits.len(), 1);
}

#[tokio::test]
async fn table_errors_are_typed_and_change_nothing() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let key = TableKey::parse(KeyType::Ip, "10.1.2.5").unwrap();
    let before = dump(&c, "ft_web", TableSelect::All).await.unwrap();

    let e = c.set_table("nosuch", key.clone(), &[(field("gpt0"), 1)]).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::NoSuchTable);
    assert!(e.to_string().contains("set table nosuch key 10.1.2.5"), "{e}");
    let e = dump(&c, "nosuch", TableSelect::All).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::NoSuchTable);
    let e = c.clear_table_key("nosuch", key.clone()).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::NoSuchTable);

    let e = dump(&c, "ft_web", TableSelect::Filters(vec!["data.nosuch gt 0".parse().unwrap()])).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::UnknownDataType);
    let e = dump(&c, "ft_web", TableSelect::Filters(vec!["data.gpc0 gt 0".parse().unwrap()])).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::DataTypeNotStored);
    // Five filters never leave the client.
    let five = vec!["data.gpt0 gt 0".parse().unwrap(); 5];
    assert!(matches!(dump(&c, "ft_web", TableSelect::Filters(five)).await, Err(ClientError::Command(_))));

    // HAProxy creates the entry before it checks data arguments; the error is still reported.
    let e = c.set_table("ft_web", key.clone(), &[(field("gpc0"), 1)]).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::DataTypeNotStored);
    let e = c.set_table("ft_web", key.clone(), &[(field("nosuch"), 1)]).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::UnknownDataType);
    c.clear_table_key("ft_web", key).await.unwrap();

    // Keys HAProxy would mangle are refused before sending.
    assert!(TableKey::parse(KeyType::Ip, "999.1.1.1").is_err());
    assert!(TableKey::parse(KeyType::Integer, "abc").is_err());
    assert_eq!(dump(&c, "ft_web", TableSelect::All).await.unwrap(), before);
    // The connection is still good after all those errors.
    assert!(c.show_info().await.is_ok());
}

#[tokio::test]
async fn access_levels() {
    let sb = common::haproxy();
    let user = Client::connect(sb.user().parse().unwrap(), ClientOptions::default()).await.unwrap();
    // Headers are visible at level user, contents are not.
    assert!(!user.list_tables().await.unwrap().is_empty());
    let e = dump(&user, "ft_web", TableSelect::All).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::PermissionDenied);
    let e = user.set_table("ft_web", TableKey::parse(KeyType::Ip, "10.0.0.1").unwrap(), &[(field("gpt0"), 1)]).await;
    assert_eq!(kind(&e.unwrap_err()), ErrorKind::PermissionDenied);

    let oper = Client::connect(sb.operator().parse().unwrap(), ClientOptions::default()).await.unwrap();
    assert!(dump(&oper, "ft_web", TableSelect::All).await.is_ok());
    let e = oper.shutdown_session(0x1).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn acl_commands_and_their_effect_on_traffic() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let acl = AclRef::File(sb.block_acl().display().to_string());
    let listed = c.list_acls().await.unwrap();
    assert!(listed.iter().any(|a| a.file.as_deref() == Some(acl.to_string().as_str())), "{listed:?}");

    let client = sandbox::client_addr(3);
    assert_eq!(sandbox::http_get(client, sb.web_port).await.unwrap(), 200);
    c.add_acl(&acl, AclPattern::addr(client)).await.unwrap();
    c.add_acl(&acl, "10.20.0.0/16".parse().unwrap()).await.unwrap();
    let patterns: Vec<String> = c.show_acl(&acl).await.unwrap().into_iter().map(|e| e.pattern).collect();
    assert_eq!(patterns, [client.to_string(), "10.20.0.0/16".to_owned()]);
    assert!(c.get_acl(&acl, client).await.unwrap());
    assert!(c.get_acl(&acl, "10.20.3.4".parse().unwrap()).await.unwrap());
    assert!(!c.get_acl(&acl, "10.21.0.1".parse().unwrap()).await.unwrap());
    assert_eq!(sandbox::http_get(client, sb.web_port).await.unwrap(), 403);

    c.del_acl(&acl, AclPattern::addr(client)).await.unwrap();
    assert_eq!(sandbox::http_get(client, sb.web_port).await.unwrap(), 200);
    let e = c.del_acl(&acl, AclPattern::addr(client)).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::KeyNotFound);
    let e = c.add_acl(&AclRef::File("/nonexistent.lst".into()), AclPattern::addr(client)).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::UnknownAcl);
    assert!("notanip".parse::<AclPattern>().is_err());

    // Atomic replacement: a prepared version is invisible until committed.
    let v = c.prepare_acl(&acl).await.unwrap();
    let pipelined = c
        .pipeline(&[
            stickwarden::proto::Command::AddAcl {
                acl: acl.clone(),
                version: Some(v),
                pattern: "10.30.0.1".parse().unwrap(),
            },
            stickwarden::proto::Command::AddAcl {
                acl: acl.clone(),
                version: Some(v),
                pattern: "10.30.0.2".parse().unwrap(),
            },
        ])
        .await;
    assert!(pipelined.iter().all(Result::is_ok), "{pipelined:?}");
    let live: Vec<String> = c.show_acl(&acl).await.unwrap().into_iter().map(|e| e.pattern).collect();
    assert_eq!(live, ["10.20.0.0/16"]);
    c.commit_acl(&acl, v).await.unwrap();
    let live: Vec<String> = c.show_acl(&acl).await.unwrap().into_iter().map(|e| e.pattern).collect();
    assert_eq!(live, ["10.30.0.1", "10.30.0.2"]);
}

#[tokio::test]
async fn sessions_are_listed_and_killed() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let src = sandbox::client_addr(4);
    let mut held = sandbox::connect_from(src, sb.tcp_port).await.unwrap();
    // Wait until HAProxy has accepted the connection as a stream.
    let mut ours = Vec::new();
    for _ in 0..50 {
        ours = c.show_sess().await.unwrap().into_iter().filter(|s| s.client_ip() == Some(src)).collect();
        if !ours.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ours.len(), 1, "the held connection is one stream");
    assert_eq!(ours[0].frontend.as_deref(), Some("ft_tcp"));
    c.shutdown_session(ours[0].ptr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await.expect("closed within 5 s");
    assert!(matches!(n, Ok(0) | Err(_)), "the connection was closed: {n:?}");
    let e = c.shutdown_session(ours[0].ptr).await.unwrap_err();
    assert_eq!(kind(&e), ErrorKind::NoSuchSession);
}

#[tokio::test]
async fn thousands_of_commands_pipelined_on_one_connection() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    let cmds: Vec<_> = (0..5000u32)
        .map(|i| stickwarden::proto::Command::SetTable {
            table: "ft_web".into(),
            key: TableKey::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            fields: vec![(field("gpt0"), (i % 2) as u64), (field("http_req_rate"), i as u64)],
        })
        .collect();
    let results = c.pipeline(&cmds).await;
    assert_eq!(results.len(), 5000);
    assert!(results.iter().all(Result::is_ok));
    let tagged = dump(&c, "ft_web", TableSelect::Filters(vec!["data.gpt0 eq 1".parse().unwrap()])).await.unwrap();
    assert_eq!(tagged.len(), 2500);
    assert!(tagged.iter().all(|(_, d)| d["http_req_rate"].parse::<u32>().unwrap() % 2 == 1));

    // Many tasks sharing one client: answers go to the right asker.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let c = c.clone();
        set.spawn(async move {
            let key = TableKey::Ip(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let rows = dump(&c, "ft_web", TableSelect::Key(key)).await.unwrap();
            (i, rows[0].1["http_req_rate"].clone())
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, rate) = r.unwrap();
        assert_eq!(rate, i.to_string());
    }
}

/// A long dump and a long pipelined batch on one connection at once: HAProxy writes the dump while
/// the batch's commands wait unread, so the client must keep reading while it writes. Both finish,
/// every command confirmed (no write left blocked until the read timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_dump_and_a_long_pipelined_batch_share_one_connection() {
    let sb = common::haproxy();
    let c = common::admin(&sb).await;
    stickwarden::sandbox::fill_table(&c, "ft_web", 100_000, 10).await.unwrap();
    let started = std::time::Instant::now();
    let reader = c.clone();
    let dumping = tokio::spawn(async move { dump(&reader, "ft_web", TableSelect::All).await.unwrap().len() });
    let cmds: Vec<_> = (0..50_000u32)
        .map(|i| stickwarden::proto::Command::SetTable {
            table: "ft_web".into(),
            key: TableKey::Ip(stickwarden::sandbox::nth_addr(i)),
            fields: vec![(field("gpt0"), 2)],
        })
        .collect();
    let results = c.pipeline(&cmds).await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(dumping.await.unwrap(), 100_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "stalled: {:?}", started.elapsed());
    let twos = dump(&c, "ft_web", TableSelect::Filters(vec!["data.gpt0 eq 2".parse().unwrap()])).await.unwrap();
    assert_eq!(twos.len(), 50_000);
}

#[tokio::test]
async fn reconnects_after_haproxy_restarts() {
    let mut sb = common::haproxy();
    let opts = ClientOptions { backoff_min: Duration::from_millis(50), ..ClientOptions::default() };
    let c = Client::connect(sb.admin().parse().unwrap(), opts).await.unwrap();
    let pid1 = c.show_info().await.unwrap().pid();

    sb.stop();
    // While HAProxy is gone, requests fail quickly with a connection error, never hang.
    let e = tokio::time::timeout(Duration::from_secs(5), c.show_info()).await.expect("no hang").unwrap_err();
    assert!(
        matches!(e, ClientError::Connect(_) | ClientError::Disconnected(_) | ClientError::Unavailable { .. }),
        "{e}"
    );

    sb.restart().unwrap();
    let mut info = None;
    for _ in 0..40 {
        match c.show_info().await {
            Ok(i) => {
                info = Some(i);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let pid2 = info.expect("reconnected within 2 s").pid();
    assert_ne!(pid1, pid2);
}

#[tokio::test]
async fn unreachable_target_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("unix:{}", dir.path().join("none.sock").display());
    let e = Client::connect(target.parse().unwrap(), ClientOptions::default()).await.err().unwrap();
    assert!(matches!(e, ClientError::Connect(_)), "{e}");
}

/// `set timeout cli` keeps an idle connection open past HAProxy's `stats timeout`: the stream
/// that answers after the idle period is the one opened before it (its age says so). Without
/// it HAProxy would close the connection after 1 s and the client would quietly open a new one.
#[tokio::test]
async fn idle_connection_outlives_stats_timeout() {
    let sb = common::haproxy_with(&sandbox::SandboxOptions { stats_timeout_secs: Some(1), ..Default::default() });
    let c = common::admin(&sb).await;
    c.show_info().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let body = c.execute(&stickwarden::proto::Command::ShowSess).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    let cli = text.lines().find(|l| l.contains("proto=unix_stream")).unwrap_or_else(|| panic!("{text}"));
    let age: u64 = cli
        .split(' ')
        .find_map(|w| w.strip_prefix("age=")?.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no age in {cli}"));
    assert!(age >= 2, "the connection was reopened: {cli}");
}

/// A HAProxy that stops answering (frozen with SIGSTOP) fails pending requests after the read
/// timeout instead of hanging them, and the client recovers once it answers again. A write is
/// used because writes are never retried (a read-only command would be retried once, and that
/// retry would meet the connect timeout instead).
#[tokio::test]
async fn frozen_haproxy_hits_the_read_timeout() {
    let sb = common::haproxy();
    let opts = ClientOptions {
        read_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let c = Client::connect(sb.admin().parse().unwrap(), opts).await.unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &sb.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    };
    let key = TableKey::parse(KeyType::Ip, "10.9.9.9").unwrap();
    signal("-STOP");
    // The stop is asynchronous: wait until the kernel shows the process stopped (state T).
    let stat = format!("/proc/{}/stat", sb.pid());
    let stopped = || {
        std::fs::read_to_string(&stat)
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('T')))
    };
    for _ in 0..100 {
        if stopped() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(stopped(), "haproxy did not stop");
    let started = std::time::Instant::now();
    let res = c.set_table("ft_web", key, &[(field("gpt0"), 1)]).await;
    let elapsed = started.elapsed();
    signal("-CONT");
    let e = res.unwrap_err();
    // On the open connection the read timeout fires; if the connection had to be reopened (it is
    // under heavy load), the connect timeout does: either way a bounded failure, never a hang.
    assert!(
        matches!(&e, ClientError::Disconnected(why) if why.contains("no answer"))
            || matches!(&e, ClientError::ConnectTimeout(_)),
        "{e:?}"
    );
    assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(c.show_info().await.is_ok());
}

/// A peer that accepts connections but never answers is a connect timeout, not a hang.
#[tokio::test]
async fn silent_peer_is_a_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap(); // never accepts, never answers
    let opts = ClientOptions { connect_timeout: Duration::from_millis(300), ..ClientOptions::default() };
    let started = std::time::Instant::now();
    let e = Client::connect(format!("unix:{}", path.display()).parse().unwrap(), opts).await.err().unwrap();
    assert!(matches!(e, ClientError::ConnectTimeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
