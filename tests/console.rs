//! The review console in a real browser (headless Chromium through WebDriver), against a real
//! `stickwarden run` and a real HAProxy with real traffic from loopback clients. Each test also
//! writes screenshots of the pages it visits to `target/console-screenshots/` (and to
//! `$CONSOLE_SCREENSHOTS` when set: that is how `docs/console/` is refreshed).

mod common;

use std::time::Duration;

use common::browser::{http, Browser};
use common::*;
use stickwarden::sandbox::Sandbox;

/// Adds `[api]` on a free loopback TCP port (the browser's way in) with the test tokens, and
/// returns the port.
fn with_tcp_api(s: &Setup) -> u16 {
    let sock = with_api(s); // writes the tokens file and an [api] section on a Unix socket
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let cfg = cfg.replace(&format!("listen = [\"{sock}\"]"), &format!("listen = [\"127.0.0.1:{port}\"]"));
    std::fs::write(&s.config, cfg).unwrap();
    port
}

/// The daemon as a real process, its console answering on `port`.
async fn console_daemon(s: &Setup) -> (Daemon, u16) {
    let port = with_tcp_api(s);
    let d = spawn_daemon(s);
    let up =
        eventually(
            Duration::from_secs(10),
            || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
        )
        .await;
    assert!(up, "the console never listened on {port}");
    (Daemon(Some(d)), port)
}

/// Stops the daemon on drop, also when the test fails.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut d) = self.0.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn shot(b: &Browser, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
    b.screenshot(&dir.join(format!("{name}.png")));
    if let Ok(docs) = std::env::var("CONSOLE_SCREENSHOTS") {
        b.screenshot(&std::path::Path::new(&docs).join(format!("{name}.png")));
    }
}

fn login(b: &Browser, port: u16, token: &str) {
    b.goto(&format!("http://127.0.0.1:{port}/ui/login"));
    b.type_into("#token", token);
    b.click("form[action='/ui/login'] button");
    assert!(b.wait_for_text("Overview", Duration::from_secs(10)), "not logged in: {}", b.body_text());
}

fn base(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn sandbox_and_setup(steps: &str) -> (Sandbox, Setup) {
    let sb = haproxy();
    let s = setup(&sb, "", &policy(steps), "");
    (sb, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_roles_and_forged_posts() {
    let (_sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (_d, port) = console_daemon(&s).await;

    // Over plain HTTP: what the browser does not show.
    let (status, head, _) = http(port, "GET", "/ui/", &[], b"");
    assert_eq!(status, 303, "no session: to the login page\n{head}");
    assert!(head.contains("location: /ui/login"), "{head}");
    let (status, head, _) = http(port, "GET", "/ui/live/overview", &[], b"");
    assert_eq!(status, 401, "a live fragment without a session is refused\n{head}");
    let form = format!("token={VIEWER_TOKEN}");
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, head, _) = http(port, "POST", "/ui/login", &[ct, ("X-Forwarded-Proto", "https")], form.as_bytes());
    assert_eq!(status, 303);
    let cookie = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap().to_owned();
    for want in ["HttpOnly", "SameSite=Strict", "Path=/ui/", "Max-Age=", "Secure"] {
        assert!(cookie.contains(want), "{want} missing in {cookie}");
    }
    assert!(!cookie.contains(VIEWER_TOKEN), "the token never travels back");
    let (_, head, _) = http(port, "POST", "/ui/login", &[ct], form.as_bytes());
    assert!(!head.contains("Secure"), "not Secure over plain HTTP: {head}");
    let csp = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-security-policy:")).unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    // A cross-site POST is refused before anything else.
    let (status, _, _) = http(port, "POST", "/ui/login", &[ct, ("Origin", "http://evil.example")], form.as_bytes());
    assert_eq!(status, 403);

    let b = Browser::start();
    b.goto(&format!("{}/ui/", base(port)));
    assert!(b.url().ends_with("/ui/login"), "sent to the login page: {}", b.url());
    shot(&b, "login");
    b.type_into("#token", "not-a-token-at-all-0000");
    b.click("form[action='/ui/login'] button");
    assert!(b.wait_for_text("That token is not valid", Duration::from_secs(5)), "{}: {}", b.url(), b.source());
    assert!(b.url().ends_with("/ui/login"));

    login(&b, port, VIEWER_TOKEN);
    assert!(b.body_text().contains("view (viewer)"));
    assert_eq!(b.run("return document.cookie;"), "", "the session cookie is HttpOnly: scripts never see it");
    b.goto(&format!("{}/ui/blocks", base(port)));
    assert!(b.try_find("details.act").is_none(), "a viewer sees no action");
    b.goto(&format!("{}/ui/allow", base(port)));
    assert!(b.try_find("details.act").is_none() && !b.body_text().contains("Remove…"));
    // A forged POST from the viewer's session, even with the session's own CSRF token: 403, and
    // nothing changes.
    let forged = b.run_async(
        "const done = arguments[arguments.length - 1];
         const csrf = document.querySelector('form.logout input[name=csrf]').value;
         const body = new URLSearchParams({csrf, key: '10.20.30.40', duration: '1h', reason: 'forged'});
         fetch('/ui/act/block', {method: 'POST', body}).then(r => done(r.status)).catch(e => done(String(e)));",
    );
    assert_eq!(forged, 403);
    b.goto(&format!("{}/ui/confirm/block?key=10.20.30.40&duration=1h", base(port)));
    assert!(b.body_text().contains("only an operator"), "{}", b.body_text());
    let o = sw(&s, &["blocks", "--json"]);
    assert!(!out(&o).contains("10.20.30.40"), "nothing was blocked: {}", out(&o));

    // An operator's page without the CSRF token is refused too.
    b.click("form.logout button");
    assert!(b.wait_for_text("Log in", Duration::from_secs(5)));
    login(&b, port, OPERATOR_TOKEN);
    let no_csrf = b.run_async(
        "const done = arguments[arguments.length - 1];
         const body = new URLSearchParams({key: '10.20.30.40', duration: '1h', reason: 'no token'});
         fetch('/ui/act/block', {method: 'POST', body}).then(r => done(r.status));",
    );
    assert_eq!(no_csrf, 403);

    // Logout ends the session on the server: the old page's live updates are refused.
    b.click("form.logout button");
    assert!(b.wait_for_text("Log in", Duration::from_secs(5)));
    b.goto(&format!("{}/ui/", base(port)));
    assert!(b.url().ends_with("/ui/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abuser_is_reviewed_and_unblocked_by_an_operator() {
    let (sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (d, port) = console_daemon(&s).await;
    let b = Browser::start();
    login(&b, port, OPERATOR_TOKEN);

    // Real abuse from 127.0.0.2; 127.0.0.3 browses normally.
    flood(&sb, 1, 150).await;
    assert_eq!(get(&sb, 2).await, 200);
    let blocked = eventually(Duration::from_secs(10), || async { get(&sb, 1).await == 403 }).await;
    assert!(blocked, "the flooder was never blocked");

    // The overview updates by itself (live), without a reload.
    assert!(b.wait_for_text("Active blocks: 1", Duration::from_secs(10)), "{}", b.body_text());
    assert!(b.body_text().contains("http-flood"));
    // The 24-hour chart counts the block under its rule.
    let charted = eventually(Duration::from_secs(10), || {
        let b = &b;
        async move { b.text("ul.legend").contains("http-flood") }
    })
    .await;
    assert!(charted, "the chart's legend: {}", b.text("ul.legend"));
    assert!(b.source().contains("<rect class=\"c0\""), "a bar for it");
    shot(&b, "overview");

    b.goto(&format!("{}/ui/blocks", base(port)));
    let row = b.text("table.blocks tbody tr");
    assert!(row.contains("127.0.0.2") && row.contains("http-flood"), "{row}");
    shot(&b, "blocks");

    b.click("table.blocks tbody tr a");
    assert!(b.wait_for_text("Evidence at decision time", Duration::from_secs(5)));
    assert!(b.url().ends_with("/ui/address/127.0.0.2"), "{}", b.url());
    let page = b.body_text();
    assert!(page.contains("blocked"), "{page}");
    // The counters that crossed, at decision time.
    let evidence = b.text("section.card:nth-of-type(2)");
    let rate: i64 = evidence
        .lines()
        .find_map(|l| l.strip_prefix("http_req_rate").map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no http_req_rate in the evidence: {evidence}"));
    assert!(rate > 100, "the rate that crossed the rule's 100: {rate}");
    assert!(page.contains("HAProxy now") && page.contains("http_req_rate="), "live counters: {page}");
    shot(&b, "address");

    b.click("a.button[href^='/ui/confirm/unblock']");
    assert!(b.wait_for_text("is released now", Duration::from_secs(5)), "{}", b.body_text());
    b.type_into("input[name=grace]", "10m");
    b.type_into("#reason", "false positive: load test by the web team");
    shot(&b, "confirm");
    b.click("form.confirm button.primary");
    assert!(b.wait_for_text("Unblocked", Duration::from_secs(15)), "{}", b.body_text());
    assert!(b.text("table.confirm tbody").contains("confirmed"), "{}", b.body_text());
    assert_eq!(get(&sb, 1).await, 200, "the next request from the address is served");

    b.goto(&format!("{}/ui/audit?actor=ops", base(port)));
    let audit = b.text("table.audit tbody");
    assert!(audit.contains("release") && audit.contains("false positive"), "{audit}");
    shot(&b, "audit");
    // Exports of what the filters select.
    let csv = b.run_async(
        "const done = arguments[arguments.length - 1];
         fetch('/ui/audit.csv?actor=ops').then(r => r.text()).then(done);",
    );
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("id,at,event,key,") && csv.contains(",release,127.0.0.2,"), "{csv}");
    let jsonl = b.run_async(
        "const done = arguments[arguments.length - 1];
         fetch('/ui/audit.jsonl?event=release').then(r => r.text()).then(done);",
    );
    let first: serde_json::Value = serde_json::from_str(jsonl.as_str().unwrap().lines().next().unwrap()).unwrap();
    assert_eq!((first["actor"].as_str(), first["key"].as_str()), (Some("ops"), Some("127.0.0.2")));

    // The grace shows on the allowlist.
    b.goto(&format!("{}/ui/allow", base(port)));
    assert!(b.body_text().contains("grace after unblock"), "{}", b.body_text());
    shot(&b, "allowlist");

    // The daemon goes away: the open overview says so, and keeps its last figures.
    b.goto(&format!("{}/ui/", base(port)));
    assert!(b.wait_for_text("Active blocks: 0", Duration::from_secs(10)), "{}", b.body_text());
    drop(d);
    assert!(b.wait_for_text("The daemon is unreachable since", Duration::from_secs(10)), "{}", b.body_text());
    assert!(b.body_text().contains("Active blocks: 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_reads_the_same_without_javascript() {
    let (sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (_d, port) = console_daemon(&s).await;
    flood(&sb, 1, 150).await;
    let blocked = eventually(Duration::from_secs(10), || async { get(&sb, 1).await == 403 }).await;
    assert!(blocked, "the flooder was never blocked");
    let b = Browser::start_without_javascript();
    login(&b, port, VIEWER_TOKEN);
    assert_eq!(b.try_find("script:not([src])"), None, "no inline script anywhere");
    assert!(b.body_text().contains("Active blocks: 1"), "{}", b.body_text());
    assert!(b.body_text().contains("Live updates need JavaScript"), "the page says how to refresh it");
    b.goto(&format!("{}/ui/blocks?q=127.0.0.2", base(port)));
    assert_eq!(b.text("table.blocks tbody tr td"), "127.0.0.2");
    b.click("table.blocks tbody tr a");
    assert!(b.wait_for_text("Evidence at decision time", Duration::from_secs(5)));
    assert!(b.text("table.audit tbody").contains("block"));
    b.goto(&format!("{}/ui/audit", base(port)));
    assert!(b.text("table.audit tbody").contains("127.0.0.2"));
    b.click("form.logout button");
    assert!(b.wait_for_text("Log in", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_hostile_reasons_changes_of_end_and_100000_blocks() {
    let (_sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (_d, port) = console_daemon(&s).await;
    // 100,000 imported blocks, through the API as an operator would.
    let list = s.dir.path().join("list.txt");
    let text: String = (0..100_000).map(|i| format!("{}\n", stickwarden::sandbox::nth_addr(i))).collect();
    std::fs::write(&list, text).unwrap();
    let o = sw(&s, &["import", list.to_str().unwrap(), "--for", "2h", "--reason", "threat feed"]);
    assert_eq!(o.status.code(), Some(0), "{}", out(&o));

    let b = Browser::start();
    login(&b, port, OPERATOR_TOKEN);
    // A network blocked by hand through the console, with a hostile reason.
    let hostile = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=1\"> \u{202E}evil\u{202C} end";
    b.goto(&format!("{}/ui/blocks", base(port)));
    b.click("details.act summary");
    assert!(b.wait_for_text("Review", Duration::from_secs(5)));
    b.type_into("details.act input[name=key]", "10.250.8.0/24");
    b.type_into("details.act input[name=duration]", "30m");
    b.click("details.act button");
    assert!(b.wait_for_text("is blocked for 30m", Duration::from_secs(5)), "{}", b.body_text());
    b.type_into("#reason", hostile);
    b.click("form.confirm button.primary");
    assert!(b.wait_for_text("Blocked", Duration::from_secs(15)), "{}", b.body_text());

    // An address inside the /24 finds the network's block.
    b.goto(&format!("{}/ui/blocks?q=10.250.8.77", base(port)));
    let rows = b.text("table.blocks tbody");
    assert!(rows.starts_with("10.250.8.0/24"), "{rows}");
    assert_eq!(rows.lines().count(), 1, "{rows}");
    b.click("table.blocks tbody tr a");
    assert!(b.wait_for_text("Evidence at decision time", Duration::from_secs(5)));
    let reason = b.text("dd.reason");
    assert_eq!(reason, hostile, "the reason is shown as the text it is");
    assert!(b.run("return window.pwned === undefined;").as_bool().unwrap(), "no script of the reason ran");
    assert!(b.source().contains("&lt;script&gt;"), "escaped in the page");

    // Change its end: 3 hours from now instead of 30 minutes.
    b.click("a.button[href^='/ui/confirm/extend']");
    assert!(b.wait_for_text("instead of", Duration::from_secs(5)), "{}", b.body_text());
    b.type_into("input[name=duration]", "3h");
    b.type_into("#reason", "still scanning");
    b.click("form.confirm button.primary");
    assert!(b.wait_for_text("Block end changed", Duration::from_secs(15)), "{}", b.body_text());
    let o = sw(&s, &["blocks", "--json"]);
    let line = out(&o).lines().find(|l| l.contains("10.250.8.0/24")).unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["remaining_s"].as_u64().unwrap() > 2 * 3600, "{line}");
    b.goto(&format!("{}/ui/audit?event=expiry_changed", base(port)));
    assert!(b.text("table.audit tbody").contains("still scanning"));

    // Paging through 100,001 blocks: first page, next, last.
    b.goto(&format!("{}/ui/blocks?sort=key&order=asc", base(port)));
    assert!(b.text("p.count").starts_with("100001 of 100001 active blocks · page 1 of 2001"), "{}", b.text("p.count"));
    assert_eq!(b.text("table.blocks tbody tr td"), "10.0.0.0");
    b.click("nav.pager a[rel=next]");
    assert!(b.wait_for_text("page 2 of 2001", Duration::from_secs(5)));
    assert_eq!(b.text("table.blocks tbody tr td"), "10.0.0.50");
    b.click("nav.pager a:last-child");
    assert!(b.wait_for_text("page 2001 of 2001", Duration::from_secs(5)), "{}", b.text("p.count"));
    assert!(b.try_find("nav.pager a[rel=next]").is_none());
    assert!(b.text("table.blocks tbody").contains("10.250.8.0/24"));
    // Filters: the manual block alone, then the imports.
    b.goto(&format!("{}/ui/blocks?source=manual", base(port)));
    assert!(b.text("p.count").starts_with("1 of 100001"));
    b.goto(&format!("{}/ui/blocks?source=import&per_page=10", base(port)));
    assert!(b.text("p.count").starts_with("100000 of 100001 active blocks · page 1 of 10000"));
    // A bad filter says what was wrong.
    b.goto(&format!("{}/ui/blocks?q=10.0.0.300", base(port)));
    assert!(b.text("p.error").contains("10.0.0.300"));

    // Allow an address, then remove the entry.
    b.goto(&format!("{}/ui/confirm/allow?key=192.0.2.10&duration=1h", base(port)));
    b.type_into("#reason", "partner monitoring");
    b.click("form.confirm button.primary");
    assert!(b.wait_for_text("Allowed", Duration::from_secs(15)));
    b.goto(&format!("{}/ui/allow", base(port)));
    assert!(b.body_text().contains("partner monitoring"));
    b.click("a.button[href^='/ui/confirm/disallow']");
    assert!(b.wait_for_text("no longer allowlisted", Duration::from_secs(5)));
    b.type_into("#reason", "contract ended");
    b.click("form.confirm button.primary");
    assert!(b.wait_for_text("Removed from the allowlist", Duration::from_secs(15)));
    b.goto(&format!("{}/ui/allow", base(port)));
    assert!(!b.body_text().contains("partner monitoring"));

    // The export streams every record it selects, across many slices of the log: 100,001 blocks.
    let cookie = session_cookie(port, OPERATOR_TOKEN);
    let (status, _, body) = http(port, "GET", "/ui/audit.jsonl?event=block", &[("Cookie", &cookie)], b"");
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 100_001);
    assert!(lines[0].contains("10.250.8.0/24"), "newest first: {}", lines[0]);
    let ids: Vec<u64> =
        lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "each record once, newest first");
    let (_, _, csv) = http(port, "GET", "/ui/audit.csv?actor=ops", &[("Cookie", &cookie)], b"");
    assert_eq!(
        csv.lines().count(),
        1 + 100_000 + 1 + 1 + 2,
        "header, import, block, change of end, allow and its removal"
    );
}

/// The session cookie of a login with `token`, for plain HTTP requests.
fn session_cookie(port: u16, token: &str) -> String {
    let form = format!("token={token}");
    let (status, head, _) =
        http(port, "POST", "/ui/login", &[("Content-Type", "application/x-www-form-urlencoded")], form.as_bytes());
    assert_eq!(status, 303, "{head}");
    let line = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap();
    line.split_once(':').unwrap().1.trim().split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_and_hostile_requests_change_nothing() {
    let (_sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (_d, port) = console_daemon(&s).await;
    let ops = session_cookie(port, OPERATOR_TOKEN);
    let get = |path: &str| http(port, "GET", path, &[("Cookie", &ops)], b"");
    let csrf = {
        let (_, _, page) = get("/ui/");
        let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
        page[at..at + 64].to_owned()
    };
    let post = |path: &str, form: &str| {
        http(
            port,
            "POST",
            path,
            &[("Cookie", &ops), ("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
    };

    // Bad filters and addresses: 400 with what was wrong.
    for (path, want) in [
        ("/ui/blocks?per_page=100000", "per_page"),
        ("/ui/blocks?level=high", "level"),
        ("/ui/blocks?per_page=lots", "per_page"),
        ("/ui/audit?before=yesterday", "before"),
        ("/ui/audit.jsonl?before=x", "before"),
        (&format!("/ui/blocks?q={}", "a".repeat(10_000)), "longer than 1024 bytes"),
        ("/ui/blocks?q=10.0.0.300", "is not an IPv4 or IPv6 address"),
        ("/ui/address/not-an-address", "is not an IPv4 or IPv6 address"),
        ("/ui/address/10.0.0.0%2F24", "expected one address"),
        ("/ui/audit?since=yesterday-ish", "yesterday-ish"),
        ("/ui/audit.csv?event=nope", "unknown event"),
        ("/ui/live/confirm?key=10.0.0.300", "10.0.0.300"),
    ] {
        let (status, _, body) = get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(want), "{path}: '{want}' not in {body}");
    }
    assert_eq!(get("/ui/blocks?page=999999999").0, 200, "a page beyond the last shows the last");
    assert_eq!(get("/ui/confirm/nope?key=10.0.0.1").0, 404);
    // A garbage cookie is no session.
    let (status, _, _) = http(port, "GET", "/ui/", &[("Cookie", "stickwarden_session=00ff")], b"");
    assert_eq!(status, 303);

    // Actions that must be refused: every address there is, a block with no reason, an unblock of
    // what is not blocked, a duration beyond the limit, an unknown action.
    for (path, form, status, want) in [
        ("/ui/act/block", format!("csrf={csrf}&key=0.0.0.0%2F0&duration=1h&reason=all"), 400, "every IPv4 client"),
        ("/ui/act/block", format!("csrf={csrf}&key=10.1.2.3&duration=1h&reason=+"), 400, "a reason is required"),
        ("/ui/act/unblock", format!("csrf={csrf}&key=10.1.2.3&reason=x"), 404, "is not blocked"),
        ("/ui/act/extend", format!("csrf={csrf}&key=10.1.2.3&duration=1h&reason=x"), 404, "is not blocked"),
        ("/ui/act/block", format!("csrf={csrf}&key=10.1.2.3&duration=400d&reason=x"), 400, "at most"),
        ("/ui/act/launch", format!("csrf={csrf}&key=10.1.2.3&reason=x"), 404, "no action"),
    ] {
        let (got, _, body) = post(path, &form);
        assert_eq!(got, status, "{path} {form}: {body}");
        assert!(body.contains(want), "{path} {form}: '{want}' not in {body}");
    }
    // A body beyond the API's limit is refused before any handler.
    let (status, _, _) = post("/ui/login", &"x".repeat(100_000));
    assert_eq!(status, 413);
    let o = sw(&s, &["blocks", "--json"]);
    assert_eq!(out(&o).trim(), "", "nothing was blocked");
    let o = sw(&s, &["audit", "--json"]);
    assert!(!out(&o).contains("\"ops\""), "nothing was audited for ops: {}", out(&o));
}

/// docs/console.md is true: its `[api]` example loads, and the security headers it lists are the
/// ones every answer carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_guide_is_true() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console.md")).unwrap();
    let block = |lang: &str| {
        let start = doc.find(&format!("```{lang}\n")).unwrap() + 4 + lang.len();
        doc[start..start + doc[start..].find("```").unwrap()].to_owned()
    };
    let (_sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    let (_d, port) = console_daemon(&s).await;
    let (_, head, _) = http(port, "GET", "/ui/login", &[], b"");
    for line in block("http").lines() {
        assert!(head.lines().any(|h| h.eq_ignore_ascii_case(line)), "documented header '{line}' not sent:\n{head}");
    }
    // The example [api] section, with this setup's tokens file.
    let tokens = s.dir.path().join("tokens.toml");
    let example = block("toml").replace("/etc/stickwarden/tokens.toml", tokens.to_str().unwrap());
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let cfg = &cfg[..cfg.find("\n[api]").unwrap()];
    std::fs::write(&s.config, format!("{cfg}\n{example}")).unwrap();
    let loaded = stickwarden::config::Config::load(&s.config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.api.unwrap().console_session, Duration::from_secs(8 * 3600));
}

/// An action HAProxy refuses on a target shows that target as failed, with HAProxy's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_shows_on_the_target_that_refused() {
    let (sb, s) = sandbox_and_setup("{ action = [\"tag\", \"acl\"], duration = \"1h\" }");
    // An ACL file this HAProxy never loaded.
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, cfg.replace(&sb.block_acl().display().to_string(), "/nonexistent/blocked.acl")).unwrap();
    let (_d, port) = console_daemon(&s).await;
    let ops = session_cookie(port, OPERATOR_TOKEN);
    let (_, _, page) = http(port, "GET", "/ui/", &[("Cookie", &ops)], b"");
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let form = format!("csrf={}&key=10.9.9.9&duration=1h&reason=refused", &page[at..at + 64]);
    let ct = ("Content-Type", "application/x-www-form-urlencoded");
    let (status, _, body) = http(port, "POST", "/ui/act/block", &[("Cookie", &ops), ct], form.as_bytes());
    assert_eq!(status, 200, "{body}");
    let row = &body[body.find("<table class=\"confirm\">").unwrap()..];
    assert!(row.contains("sandbox") && row.contains(">failed<") && row.contains("ACL"), "{row}");
    assert!(body.contains("HAProxy did not confirm everything"), "{body}");
    // The tag went out all the same, and the decision is recorded.
    assert_eq!(gpt0(&admin(&sb).await, "10.9.9.9").await, Some(1));
}
