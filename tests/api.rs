//! The HTTP API through its router (no socket), backed by a real controller and a real HAProxy:
//! every route, both roles, and the errors; then each action seen in HAProxy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use stickwarden::api::{router, ApiState};
use stickwarden::config::Config;
use stickwarden::store::Store;
use tower::ServiceExt;

struct Api {
    router: Router,
    store: Store,
    clock: stickwarden::time::Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), stickwarden::store::StoreError>>,
    _setup: Setup,
}

impl Api {
    async fn start(sb: &stickwarden::sandbox::Sandbox, extra: &str) -> Api {
        let s = setup(sb, "", &policy("{ action = [\"tag\"], duration = \"1h\" }"), extra);
        with_api(&s);
        let cfg = Config::load(&s.config).unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(&cfg.store.path, cfg.store.cache_bytes).unwrap();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let metrics = Arc::new(stickwarden::metrics::Metrics::new());
        let tokens = cfg.api.as_ref().unwrap().tokens.clone();
        let shared = Arc::new(cfg.clone());
        let clock = stickwarden::time::Clock::system();
        let task = tokio::spawn(stickwarden::daemon::run_with(
            cfg,
            store.clone(),
            metrics.clone(),
            clock.clone(),
            async move {
                let _ = stop_rx.await;
            },
            move |handle, clients| {
                let _ = ready_tx.send((handle, clients));
            },
        ));
        let (handle, clients) = ready.await.unwrap();
        let state = ApiState { cfg: shared, store: store.clone(), handle, clients: Arc::new(clients), tokens, metrics };
        Api { router: router(state, axum::Router::new()), store, clock, stop: Some(stop), task, _setup: s }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    async fn op(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(OPERATOR_TOKEN), body).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap().unwrap();
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

const READS: [&str; 7] = [
    "/metrics",
    "/v1/blocks",
    "/v1/blocks/10.0.0.1",
    "/v1/allow",
    "/v1/history/10.0.0.1",
    "/v1/explain/10.0.0.1",
    "/v1/audit",
];

fn writes() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "1h", "reason": "r"})),
        ("/v1/unblock", json!({"key": "10.0.0.1", "reason": "r"})),
        ("/v1/allow", json!({"key": "10.0.0.1", "reason": "r"})),
        ("/v1/allow/remove", json!({"key": "10.0.0.1", "reason": "r"})),
        ("/v1/import", json!({"entries": ["10.0.0.1"], "duration": "1h", "reason": "r"})),
        ("/v1/reconcile", json!({})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_token_and_the_role() {
    let sb = haproxy();
    let api = Api::start(&sb, "").await;
    assert_eq!(api.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    for path in READS {
        let (s, v) = api.call("GET", path, None, None).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}");
        let (s, v) = api.call("GET", path, Some("not-a-valid-token-at-all"), None).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}");
        let (s, v) = api.call("GET", path, Some(VIEWER_TOKEN), None).await;
        assert!(s == StatusCode::OK || s == StatusCode::NOT_FOUND, "{path}: {s} {v}");
        let (s2, _) = api.call("GET", path, Some(OPERATOR_TOKEN), None).await;
        assert_eq!(s2, s, "{path}: an operator reads what a viewer reads");
    }
    for (path, body) in writes() {
        let (s, v) = api.call("POST", path, None, Some(body.clone())).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"), "{path}");
        let (s, v) = api.call("POST", path, Some(VIEWER_TOKEN), Some(body)).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{path}");
    }
    // Nothing a refused caller sent changed anything.
    assert!(api.store.blocks().unwrap().is_empty());
    assert!(api.store.audit_since(0).unwrap().is_empty());
    let (s, v) = api.op("GET", "/v1/nope", None).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = api.call("GET", "/metrics", Some(VIEWER_TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.as_str().unwrap().contains("# TYPE stickwarden_decisions counter"), "{v}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_route_is_400_with_a_code_and_changes_nothing() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let api = Api::start(&sb, "").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/blocks", json!({"key": "10.0.0.300", "duration": "1h", "reason": "r"}), "invalid_address"),
        ("/v1/blocks", json!({"key": "10.0.0.1/24", "duration": "1h", "reason": "r"}), "invalid_address"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "0s", "reason": "r"}), "invalid_duration"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "-1h", "reason": "r"}), "invalid_duration"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "999y", "reason": "r"}), "invalid_duration"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "1h", "reason": ""}), "invalid_reason"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "1h", "reason": "x".repeat(501)}), "invalid_reason"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "duration": "1h", "reason": "r", "level": 3}), "invalid_request"),
        ("/v1/blocks", json!({"key": "10.0.0.1", "reason": "r"}), "invalid_request"),
        ("/v1/unblock", json!({"key": "nope", "reason": "r"}), "invalid_address"),
        ("/v1/unblock", json!({"key": "10.0.0.1", "reason": "r", "grace": "0s"}), "invalid_duration"),
        ("/v1/allow", json!({"key": "10.0.0.0/33", "reason": "r"}), "invalid_address"),
        ("/v1/allow", json!({"key": "10.0.0.0/8", "reason": "r", "duration": "2000d"}), "invalid_duration"),
        ("/v1/allow/remove", json!({"key": "10.0.0.0/8", "reason": "r", "duration": "1h"}), "invalid_request"),
        (
            "/v1/import",
            json!({"entries": ["10.0.0.1", "10.0.0.2", "10.0.0.3/31"], "duration": "1h", "reason": "r"}),
            "invalid_address",
        ),
        ("/v1/import", json!({"entries": [], "duration": "1h", "reason": "r"}), "invalid_request"),
    ];
    for (path, body, want) in cases {
        let (s, v) = api.op("POST", path, Some(body.clone())).await;
        assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, want), "{path} {body}: {v}");
    }
    let (s, v) = api
        .op("POST", "/v1/import", Some(json!({"entries": ["10.0.0.1", "bad"], "duration": "1h", "reason": "r"})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["message"], "line 2: 'bad' is not an IPv4 or IPv6 address");
    // Not JSON at all.
    let req = Request::post("/v1/blocks")
        .header("authorization", format!("Bearer {OPERATOR_TOKEN}"))
        .header("content-type", "application/json");
    let resp = api.router.clone().oneshot(req.body(Body::from("{not json")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    for path in [
        "/v1/history/nope",
        "/v1/explain/10.0.0.0%2F24",
        "/v1/blocks/10.0.0.1%2F24",
        "/v1/audit?since=soon",
        "/v1/audit?event=nope",
        "/v1/audit?key=x",
        "/v1/audit?colour=red",
    ] {
        let (s, v) = api.call("GET", path, Some(VIEWER_TOKEN), None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {v}");
    }
    assert!(api.store.blocks().unwrap().is_empty());
    assert!(api.store.audit_since(0).unwrap().is_empty());
    assert!(api.store.allows().unwrap().is_empty());
    assert!(acl(&c, &sb).await.is_empty());
    assert_eq!(gpt0(&c, "10.0.0.1").await, None);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_list_explain_unblock_and_audit_each_visible_in_haproxy() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let api = Api::start(&sb, "").await;

    let (s, v) =
        api.op("POST", "/v1/blocks", Some(json!({"key": "10.0.0.1", "duration": "2h", "reason": "ticket 42"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["failures"], json!([]));
    let b = &v["blocked"][0];
    assert_eq!(
        (b["key"].as_str(), b["scope"].as_str(), b["action"].as_str()),
        (Some("10.0.0.1"), Some("ip"), Some("tag+acl"))
    );
    assert_eq!(
        (b["source"].as_str(), b["actor"].as_str(), b["rule"].as_str()),
        (Some("manual"), Some("ops"), Some("manual"))
    );
    // Confirmed before the answer: in HAProxy now.
    assert_eq!(gpt0(&c, "10.0.0.1").await, Some(1));
    assert_eq!(acl(&c, &sb).await, ["10.0.0.1"]);
    // A network: ACL only.
    let (s, _) =
        api.op("POST", "/v1/blocks", Some(json!({"key": "192.0.2.0/24", "duration": "1h", "reason": "botnet"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(acl(&c, &sb).await, ["10.0.0.1", "192.0.2.0/24"]);

    let (_, list) = api.call("GET", "/v1/blocks", Some(VIEWER_TOKEN), None).await;
    let keys: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["10.0.0.1", "192.0.2.0/24"]);
    // The same list as JSON Lines, streamed: one object a line, equal to the array's elements
    // (remaining_s aside, which can tick between the two reads).
    let req = Request::builder()
        .uri("/v1/blocks")
        .header("authorization", format!("Bearer {VIEWER_TOKEN}"))
        .header("accept", "application/x-ndjson")
        .body(Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("remaining_s");
        v
    };
    let lines: Vec<Value> =
        String::from_utf8_lossy(&bytes).lines().map(|l| strip(serde_json::from_str(l).unwrap())).collect();
    let array: Vec<Value> = list.as_array().unwrap().iter().cloned().map(strip).collect();
    assert_eq!(lines, array);
    let (s, one) = api.call("GET", "/v1/blocks/192.0.2.0%2F24", Some(VIEWER_TOKEN), None).await;
    assert_eq!((s, one["scope"].as_str()), (StatusCode::OK, Some("cidr")));
    for field in ["key", "scope", "level", "action", "rule", "reason", "source", "actor", "since", "until"] {
        assert!(one.get(field).is_some(), "block without {field}: {one}");
    }
    let (_, x) = api.call("GET", "/v1/explain/192.0.2.7", Some(VIEWER_TOKEN), None).await;
    assert_eq!(x["verdict"], "blocked");
    assert_eq!(x["block"]["key"], "192.0.2.0/24");

    let (s, v) = api
        .op("POST", "/v1/unblock", Some(json!({"key": "10.0.0.1", "reason": "false positive", "grace": "10m"})))
        .await;
    assert_eq!((s, &v["released"]), (StatusCode::OK, &json!(["10.0.0.1"])), "{v}");
    assert_eq!(acl(&c, &sb).await, ["192.0.2.0/24"]);
    assert_eq!(gpt0(&c, "10.0.0.1").await, None);
    let (s, v) = api.op("POST", "/v1/unblock", Some(json!({"key": "10.0.0.1", "reason": "again"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    // The grace period is an allowlist entry: a manual block of it is refused until removed.
    let (s, v) = api.op("POST", "/v1/blocks", Some(json!({"key": "10.0.0.1", "duration": "1h", "reason": "r"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");

    let (_, log) = api.call("GET", "/v1/audit?key=10.0.0.1", Some(VIEWER_TOKEN), None).await;
    let events: Vec<(&str, &str)> =
        log.as_array().unwrap().iter().map(|r| (r["event"].as_str().unwrap(), r["actor"].as_str().unwrap())).collect();
    assert_eq!(events, [("block", "ops"), ("allow", "ops"), ("release", "ops")]);
    let (_, h) = api.call("GET", "/v1/history/10.0.0.1", Some(VIEWER_TOKEN), None).await;
    assert_eq!(h["events"].as_array().unwrap().len(), 3);
    assert!(h["block"].is_null());
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_releases_what_it_covers_and_import_is_atomic_in_the_acl() {
    let sb = haproxy();
    let c = admin(&sb).await;
    let api = Api::start(&sb, "[[allow]]\ncidr = \"198.51.100.0/24\"\nreason = \"office\"\n").await;

    let (s, v) = api.op("POST", "/v1/import", Some(json!({"entries": ["10.1.0.1", "10.1.0.2", "# c", "", "10.2.0.0/16", "198.51.100.7"], "duration": "1h", "reason": "feed"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["blocked"].as_array().unwrap().len(), 3);
    assert_eq!(v["skipped"][0][0], "198.51.100.7");
    assert_eq!(acl(&c, &sb).await, ["10.1.0.1", "10.1.0.2", "10.2.0.0/16"]);

    // Allowing a network releases the blocks inside it.
    let (s, v) =
        api.op("POST", "/v1/allow", Some(json!({"key": "10.1.0.0/24", "reason": "partner", "duration": "1d"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut released: Vec<&str> = v["released"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    released.sort();
    assert_eq!(released, ["10.1.0.1", "10.1.0.2"]);
    assert_eq!(acl(&c, &sb).await, ["10.2.0.0/16"]);
    let (_, list) = api.call("GET", "/v1/allow", Some(VIEWER_TOKEN), None).await;
    let keys: Vec<&str> = list.as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["127.0.0.1", "::1", "198.51.100.0/24", "10.1.0.0/24"]);

    let (s, v) = api.op("POST", "/v1/allow/remove", Some(json!({"key": "198.51.100.0/24", "reason": "r"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"), "config entries stay");
    let (s, _) = api.op("POST", "/v1/allow/remove", Some(json!({"key": "10.1.0.0/24", "reason": "done"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.op("POST", "/v1/allow/remove", Some(json!({"key": "10.1.0.0/24", "reason": "done"}))).await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

    let (_, m) = api.call("GET", "/metrics", Some(VIEWER_TOKEN), None).await;
    assert!(m.as_str().unwrap().contains("stickwarden_active_blocks{action=\"acl\",source=\"manual\"} 1"), "{m}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_on_demand_and_health_of_each_target() {
    let mut sb = haproxy();
    let c = admin(&sb).await;
    let api = Api::start(&sb, "").await; // reconcile_interval: the default minute
    let (s, _) = api.op("POST", "/v1/blocks", Some(json!({"key": "10.7.0.1", "duration": "1h", "reason": "r"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    api.clock.skip(Duration::from_secs(3)); // older than the reconciler's margin
    let acl_ref = sb.block_acl().display().to_string().parse().unwrap();
    c.del_acl(&acl_ref, "10.7.0.1".parse().unwrap()).await.unwrap();
    let (s, v) = api.op("POST", "/v1/reconcile", None).await;
    assert_eq!((s, &v["status"]), (StatusCode::ACCEPTED, &json!("started")));
    assert!(
        eventually(Duration::from_secs(3), || async { acl(&c, &sb).await == ["10.7.0.1"] }).await,
        "not repaired on demand"
    );

    let (_, h) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(h["targets"], json!([{"name": "sandbox", "up": true, "unconfirmed": 0}]));
    sb.stop();
    assert!(
        eventually(Duration::from_secs(3), || async {
            api.call("GET", "/healthz", None, None).await.1["targets"][0]["up"] == json!(false)
        })
        .await,
        "a stopped HAProxy is not reported down"
    );
    api.stop().await;
}

/// HAProxy down while a new block is decided: the daemon stays up, reports the target down,
/// records the decision (answering that HAProxy has not confirmed it), and once HAProxy is back
/// applies everything, the blocks from before the outage included. A 1 s outage, and one of 15 s:
/// the client's reconnection backoff (100 ms doubling) reaches its 10 s ceiling after 12.7 s, so
/// a longer outage exercises nothing more (the revival skips whatever backoff is left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_from_an_outage_holds_every_block_within_a_poll_interval() {
    let mut sb = haproxy();
    let api = Api::start(&sb, "").await;
    let mut keys: Vec<String> = Vec::new();
    for (n, outage) in [1u64, 15].into_iter().enumerate() {
        let before = format!("10.8.{n}.1");
        let (s, _) =
            api.op("POST", "/v1/blocks", Some(json!({"key": before, "duration": "1h", "reason": "before"}))).await;
        assert_eq!(s, StatusCode::CREATED);
        sb.stop();
        let down_at = std::time::Instant::now();
        assert!(
            eventually(Duration::from_secs(3), || async {
                api.call("GET", "/healthz", None, None).await.1["targets"][0]["up"] == json!(false)
            })
            .await
        );
        // Decided during the outage: recorded, reported unconfirmed, applied when HAProxy is back.
        let during = format!("10.8.{n}.2");
        let (s, v) =
            api.op("POST", "/v1/blocks", Some(json!({"key": during, "duration": "1h", "reason": "during"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(v["failures"][0].as_str().unwrap().contains("not confirmed by HAProxy"), "{v}");
        tokio::time::sleep(Duration::from_secs(outage).saturating_sub(down_at.elapsed())).await;
        assert!(!api.task.is_finished(), "the daemon gave up during the outage");
        keys.extend([before, during]);
        keys.sort();

        sb.restart().unwrap();
        let back = std::time::Instant::now();
        let c = admin(&sb).await;
        let all_there = || async {
            let mut tagged = true;
            for k in &keys {
                tagged &= gpt0(&c, k).await == Some(1);
            }
            tagged && acl(&c, &sb).await == keys
        };
        assert!(eventually(Duration::from_secs(15), all_there).await, "not everything applied after {outage} s down");
        let took = back.elapsed();
        eprintln!("outage of {outage} s: every block back {} ms after HAProxy answered", took.as_millis());
        // One poll interval (250 ms here) plus the re-apply; before, the actuator's and the
        // client's backoffs made this 1.9 s, 7.5 s and 12.5 s.
        assert!(took < Duration::from_millis(1_000), "{outage} s down: blocks back only after {took:?}");
        assert_eq!(api.call("GET", "/healthz", None, None).await.1["targets"][0]["up"], json!(true));
    }
    assert_eq!(api.store.blocks().unwrap().len(), 4);
    api.stop().await;
}
