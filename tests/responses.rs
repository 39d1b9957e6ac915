//! Graduated responses (`map:CLASS` ladder steps) against a real HAProxy running the lines
//! `stickwarden haproxy-config` prints for them ([`stickwarden::haproxy_side::map_lines`]): a
//! flood from 127.0.0.2 puts its address in the block map with the step's class, and real HTTP
//! shows what each class does; release and the reconciler act on the map too.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use stickwarden::rules::MapClass;
use stickwarden::sandbox::{Sandbox, SandboxOptions, MAP_FILE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A sandbox whose `ft_web` carries the generated lines of every class, and a daemon whose ladder
/// gives `class` for an hour.
fn sandbox(class: MapClass) -> (Sandbox, Setup) {
    let lines = stickwarden::haproxy_side::map_lines(MAP_FILE, &MapClass::ALL);
    let sb = haproxy_with(&SandboxOptions { map_lines: lines, ..Default::default() });
    let step = format!("{{ action = [\"map:{}\"], duration = \"1h\" }}", class.as_str());
    let extra = format!("map = \"{}\"\n", sb.block_map().display());
    let s = setup(&sb, "reconcile_interval = \"1s\"", &policy(&step), &extra);
    (sb, s)
}

/// One `GET /` from `src` with `headers`: status, head and body.
async fn request(sb: &Sandbox, src: IpAddr, headers: &str) -> (u16, String, String) {
    let mut s = stickwarden::sandbox::connect_from(src, sb.web_port).await.unwrap();
    let req = format!("GET / HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// What the block map holds for `key`.
async fn mapped(sb: &Sandbox, key: &str) -> Option<String> {
    let c = admin(sb).await;
    let map = sb.block_map().display().to_string().parse().unwrap();
    c.show_map(&map).await.unwrap().into_iter().find(|e| e.key == key).map(|e| e.value)
}

/// Floods from 127.0.0.2 until the daemon maps it as `class`.
async fn offend(sb: &Sandbox, class: MapClass) {
    flood(sb, 1, 150).await;
    let done = eventually(Duration::from_secs(5), || async {
        mapped(sb, "127.0.0.2").await.as_deref() == Some(class.as_str())
    })
    .await;
    assert!(done, "127.0.0.2 was never mapped as {}", class.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarpit_holds_the_request_for_the_configured_time() {
    let (sb, s) = sandbox(MapClass::Tarpit);
    let cfg = stickwarden::config::Config::load(&s.config).unwrap();
    let findings = stickwarden::check::check_all(&cfg).await;
    assert!(findings.iter().all(|(_, f)| f.ok), "{findings:?}");
    assert!(findings.iter().any(|(_, f)| f.what == format!("map {} is loaded", sb.block_map().display())));
    let d = Daemon::start(&s);
    offend(&sb, MapClass::Tarpit).await;
    let t = Instant::now();
    let (status, _, _) = request(&sb, stickwarden::sandbox::client_addr(1), "").await;
    let held = t.elapsed();
    assert_eq!(status, 429);
    assert!(held >= Duration::from_millis(4_900), "held only {held:?} (timeout tarpit 5s)");
    let t = Instant::now();
    assert_eq!(request(&sb, stickwarden::sandbox::client_addr(2), "").await.0, 200, "other clients are served");
    assert!(t.elapsed() < Duration::from_secs(2), "and not held");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_answers_429_with_retry_after() {
    let (sb, s) = sandbox(MapClass::Throttle);
    let d = Daemon::start(&s);
    offend(&sb, MapClass::Throttle).await;
    let (status, head, body) = request(&sb, stickwarden::sandbox::client_addr(1), "").await;
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("\r\nretry-after: 30"), "{head}");
    assert_eq!(body, "slow down");
    assert_eq!(request(&sb, stickwarden::sandbox::client_addr(2), "").await.0, 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_is_passed_by_a_client_that_follows_it_only() {
    let (sb, s) = sandbox(MapClass::Challenge);
    let d = Daemon::start(&s);
    offend(&sb, MapClass::Challenge).await;
    let abuser = stickwarden::sandbox::client_addr(1);
    // A plain script: it gets the page, never the content, however often it asks.
    for _ in 0..3 {
        let (status, _, body) = request(&sb, abuser, "").await;
        assert_eq!(status, 200);
        assert!(body.contains("<script>document.cookie='sw_proof=") && body != "ok", "{body}");
    }
    // A wrong cookie is no pass.
    let (_, _, body) = request(&sb, abuser, "Cookie: sw_proof=0123456789ABCDEF\r\n").await;
    assert!(body.contains("<script>"), "{body}");
    // A client that follows the page: it sets the cookie the page says, and is served.
    let (_, _, page) = request(&sb, abuser, "").await;
    let proof = page.split("sw_proof=").nth(1).unwrap().split(';').next().unwrap().to_owned();
    let (status, _, body) = request(&sb, abuser, &format!("Cookie: sw_proof={proof}\r\n")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The cookie is the address's: another client cannot borrow it (it is not challenged, but a
    // second challenged address would not pass with it either).
    let c = admin(&sb).await;
    let map = sb.block_map().display().to_string().parse().unwrap();
    c.execute(&stickwarden::proto::Command::AddMap {
        map,
        key: stickwarden::proto::MapKey::Pattern("127.0.0.4".parse().unwrap()),
        value: "challenge".into(),
    })
    .await
    .unwrap();
    let (_, _, body) =
        request(&sb, stickwarden::sandbox::client_addr(3), &format!("Cookie: sw_proof={proof}\r\n")).await;
    assert!(body.contains("<script>"), "another address's cookie passed: {body}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_answers_its_status_and_body_and_release_and_repair_act_on_the_map() {
    let (sb, s) = sandbox(MapClass::Deny);
    let (daemon, _sock) = running_daemon(&s).await;
    offend(&sb, MapClass::Deny).await;
    let abuser = stickwarden::sandbox::client_addr(1);
    let (status, _, body) = request(&sb, abuser, "").await;
    assert_eq!((status, body.as_str()), (403, "access denied"));

    // Deleted by hand: the reconciler puts it back.
    let c = admin(&sb).await;
    let map = sb.block_map().display().to_string().parse().unwrap();
    let key = stickwarden::proto::MapKey::Pattern("127.0.0.2".parse().unwrap());
    c.execute(&stickwarden::proto::Command::DelMap { map, key }).await.unwrap();
    assert_eq!(request(&sb, abuser, "").await.0, 200, "really gone");
    let back =
        eventually(Duration::from_secs(5), || async { mapped(&sb, "127.0.0.2").await.as_deref() == Some("deny") })
            .await;
    assert!(back, "not repaired");
    assert_eq!(request(&sb, abuser, "").await.0, 403);

    // Released by an operator: the entry goes, and the client is served.
    let o = sw(&s, &["unblock", "127.0.0.2", "--reason", "test over", "--grace", "10m"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));
    assert_eq!(mapped(&sb, "127.0.0.2").await, None);
    assert_eq!(request(&sb, abuser, "").await.0, 200);
    let o = sw(&s, &["audit", "--event", "repaired", "--json"]);
    assert!(out(&o).contains("map:deny"), "the repair is audited: {}", out(&o));
    stop_daemon(daemon);
}

/// A ladder with a map step needs `[block] map`: refused at load, naming it.
#[test]
fn a_map_step_without_a_map_file_is_refused() {
    let sb = haproxy();
    let s = setup(&sb, "", &policy("{ action = [\"map:challenge\"], duration = \"10m\" }"), "");
    let e = stickwarden::config::Config::load(&s.config).unwrap_err().to_string();
    assert!(e.contains("\"map:challenge\"") && e.contains("[block] has no map"), "{e}");
    let s = setup(&sb, "", &policy("{ action = [\"map:captcha\"], duration = \"10m\" }"), "");
    let e = stickwarden::config::Config::load(&s.config).unwrap_err().to_string();
    assert!(e.contains("unknown action 'map:captcha'") && e.contains("map:tarpit"), "{e}");
}
