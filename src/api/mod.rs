//! The HTTP API served by `stickwarden run`: `fn router(state) -> Router`, versioned under `/v1`,
//! bearer-token authentication with two roles, and JSON errors with a stable code and a message
//! that never shows internals.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /healthz` | none | liveness, and each target up or down |
//! | `GET /v1/identity?nonce=` | none | the daemon's proof of knowing the tokens ([`auth`]) |
//! | `GET /metrics` | viewer | Prometheus text |
//! | `GET /v1/blocks`, `GET /v1/blocks/{key}` | viewer | active blocks |
//! | `POST /v1/blocks` | operator | manual block (`BlockRequest`) |
//! | `POST /v1/unblock` | operator | `UnblockRequest` |
//! | `POST /v1/extend` | operator | move the end of a block (`ExtendRequest`) |
//! | `GET /v1/allow`, `POST /v1/allow`, `POST /v1/allow/remove` | viewer / operator | the allowlist |
//! | `POST /v1/import` | operator | bulk block (`ImportRequest`) |
//! | `GET /v1/history/{addr}`, `GET /v1/explain/{addr}` | viewer | one address |
//! | `GET /v1/audit?since=&key=&actor=&event=` | viewer | the audit log |
//! | `POST /v1/reconcile` | operator | compare every target with the active blocks now |
//! | `GET /v1/store/backup` | operator | a consistent backup of the store, as JSON Lines |
//! | `/ui/...` | session | the review console ([`crate::console`]), merged in by the caller |
//!
//! Keys in paths are percent-encoded (`10.0.0.0%2F24`). A request body must arrive within
//! [`BODY_TIMEOUT`] (408 `request_timeout`) and stay within [`MAX_BODY`], or [`MAX_IMPORT_BODY`]
//! for `/v1/import` (413 `too_large`).

pub mod auth;
pub mod client;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::config::Config;
use crate::daemon::Handle;
use crate::key::Key;
use crate::metrics::Metrics;
use crate::ops::{self, AllowRequest, AuditQuery, BlockRequest, ExtendRequest, ImportRequest, OpError, UnblockRequest};
use crate::store::Store;
use crate::time::{now_ms, rfc3339};
use auth::{Role, Tokens};

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub handle: Handle,
    pub clients: Arc<Vec<(String, Client)>>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
}

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.into(), message: self.message } };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        let status = match &e {
            OpError::BadInput { .. } => StatusCode::BAD_REQUEST,
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Conflict(_) => StatusCode::CONFLICT,
            OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OpError::Haproxy(_) => StatusCode::BAD_GATEWAY,
            OpError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &e {
            // The store's own words stay in the daemon's log.
            OpError::Store(inner) => {
                tracing::error!(error = %inner, "store failure answering an API request");
                "internal error; see the daemon's log".to_owned()
            }
            other => other.to_string(),
        };
        ApiError { status, code: e.code(), message }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        // Never too large: read_body has read and bounded the body already.
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
    }
}

/// Largest request body, but for imports.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest import body: [`ops::MAX_IMPORT`] entries of the longest form (an IPv6 CIDR, quoted,
/// with its comma) fit.
pub const MAX_IMPORT_BODY: usize = 64 * 1024 * 1024;
/// A request body must have arrived whole within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the request body is larger than {limit} bytes"))
}

/// Reads the whole body before any handler runs, within its size limit and [`BODY_TIMEOUT`]: a
/// client trickling a body, or sending more than is allowed, is answered and dropped without
/// holding a handler.
async fn read_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limit = if req.uri().path() == "/v1/import" { MAX_IMPORT_BODY } else { MAX_BODY };
    let (parts, body) = req.into_parts();
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit).into_response();
    }
    let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit));
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(limit).into_response(),
        Ok(Err(e)) => return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()).into_response(),
        Err(_) => {
            let m = format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs());
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", m).into_response();
        }
    };
    next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
    }
}

/// The authenticated caller: the token's name (the actor in the audit log) and role.
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token '{}' is a {:?}; this needs an operator", self.name, self.role).to_lowercase(),
            ))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| unauthorized("missing bearer token"))?;
        let presented = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| unauthorized("expected 'Authorization: Bearer <token>'"))?;
        let token = state.tokens.find(presented).ok_or_else(|| unauthorized("invalid token"))?;
        Ok(Caller { name: token.name.clone(), role: token.role })
    }
}

/// The API's routes, with `beside` (the review console's, made by the caller: the API does not
/// know the console) under the same body limits.
pub fn router(state: ApiState, beside: Router) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/identity", get(identity))
        .route("/metrics", get(metrics))
        .route("/v1/blocks", get(list_blocks).post(block))
        .route("/v1/blocks/{key}", get(get_block))
        .route("/v1/unblock", post(unblock))
        .route("/v1/extend", post(extend))
        .route("/v1/allow", get(list_allow).post(allow))
        .route("/v1/allow/remove", post(disallow))
        .route("/v1/import", post(import))
        .route("/v1/history/{addr}", get(history))
        .route("/v1/explain/{addr}", get(explain))
        .route("/v1/audit", get(audit))
        .route("/v1/reconcile", post(reconcile))
        .route("/v1/store/backup", get(backup))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // The body is read and bounded by read_body; axum's own 2 MB default would refuse imports.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
        .merge(beside)
        .layer(axum::middleware::from_fn(read_body))
}

async fn healthz(State(s): State<ApiState>) -> Json<serde_json::Value> {
    let unconfirmed = s.handle.lag().unconfirmed();
    let targets: Vec<serde_json::Value> = s
        .clients
        .iter()
        .map(|(n, _)| {
            let up = s.metrics.target_up.get_or_create(&Metrics::target(n)).get() == 1;
            let lagging = unconfirmed.get(n).copied().unwrap_or(0);
            serde_json::json!({ "name": n, "up": up, "unconfirmed": lagging })
        })
        .collect();
    let census = s.handle.census();
    let breaker = match census.breaker() {
        Some(b) => serde_json::json!({ "open": true, "open_since": b.open_since, "reason": b.reason }),
        None => serde_json::json!({ "open": false }),
    };
    let mut body = serde_json::json!({
        "status": "ok",
        "targets": targets,
        "breaker": breaker,
        "tracked_clients": census.population(),
        "time": rfc3339(now_ms()),
    });
    if let Some(ha) = s.handle.ha() {
        body["ha"] = ha.json();
    }
    Json(body)
}

#[derive(Debug, Deserialize)]
struct IdentityQuery {
    nonce: String,
}

/// What `GET /v1/identity` answers: HMAC-SHA256(token, nonce) for every token.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdentityView {
    pub proofs: Vec<String>,
}

async fn identity(
    State(s): State<ApiState>,
    q: Result<Query<IdentityQuery>, QueryRejection>,
) -> Result<Json<IdentityView>, ApiError> {
    let Query(q) = q?;
    if !auth::valid_nonce(&q.nonce) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "nonce: 64 lowercase hex digits"));
    }
    Ok(Json(IdentityView { proofs: s.tokens.proofs(&q.nonce) }))
}

async fn reconcile(
    State(s): State<ApiState>,
    caller: Caller,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    caller.require(Role::Operator)?;
    s.handle.reconcile_now();
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "status": "started" }))))
}

async fn metrics(State(s): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let blocks = s.store.blocks().map_err(OpError::from)?;
    let body = s.metrics.render(&blocks);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response())
}

async fn list_blocks(
    State(s): State<ApiState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let ndjson = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains(client::NDJSON));
    if ndjson {
        return Ok(stream_blocks(&s));
    }
    Ok(Json(ops::blocks_unconfirmed(&s.store, now_ms(), &s.handle.lag().lagging())?).into_response())
}

/// The active blocks as JSON Lines, read from the store a page at a time and sent as they are
/// written: 100,000 blocks never sit whole in memory. On sled the work stays on the daemon's
/// thread in short slices (a worker thread would grow an allocator arena of its own); on
/// PostgreSQL each page is read on the blocking pool while the one before is written, so the
/// daemon's thread never waits on the database. A store error mid-way ends the stream early
/// (the status is already sent); it is logged.
fn stream_blocks(s: &ApiState) -> Response {
    const PAGE: usize = 2_000;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
    let (store, lagging, now) = (s.store.clone(), s.handle.lag().lagging(), now_ms());
    tokio::spawn(async move {
        let shared = store.postgres().is_some();
        let read = |after: Option<crate::key::Key>| {
            let store = store.clone();
            async move {
                if shared {
                    tokio::task::spawn_blocking(move || store.blocks_after(after.as_ref(), PAGE))
                        .await
                        .unwrap_or_else(|_| Err(crate::store::StoreError::Backend("the read task failed".into())))
                } else {
                    store.blocks_after(after.as_ref(), PAGE)
                }
            }
        };
        let mut page = read(None).await;
        loop {
            let page_now = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "listing blocks: store error; answer cut short");
                    return;
                }
            };
            let last = page_now.len() < PAGE;
            let next = (!last).then(|| tokio::spawn(read(page_now.last().map(|b| b.key.clone()))));
            let mut buf = Vec::with_capacity(page_now.len() * 400);
            for b in &page_now {
                let mut view = ops::BlockView::of(b, now);
                view.unconfirmed_on = lagging.get(&b.key).cloned().unwrap_or_default();
                serde_json::to_writer(&mut buf, &view).expect("views serialize");
                buf.push(b'\n');
            }
            if !buf.is_empty() && tx.send(buf.into()).await.is_err() {
                return; // the caller went away
            }
            match next {
                None => return,
                Some(n) => {
                    page = n
                        .await
                        .unwrap_or_else(|_| Err(crate::store::StoreError::Backend("the read task failed".into())))
                }
            }
        }
    });
    ([(header::CONTENT_TYPE, client::NDJSON)], axum::body::Body::from_stream(Chunks(rx))).into_response()
}

/// The store as of one moment, written by the controller to a temp file and sent from it.
async fn backup(State(s): State<ApiState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Operator)?;
    let file = s.handle.backup().await?;
    let mut reader = file
        .reopen()
        .map_err(|e| OpError::Store(crate::store::StoreError::Io(format!("cannot read the backup: {e}"))))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let _keep = file; // deleted when the last chunk is sent
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(buf.into()).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "sending a backup: read error; answer cut short");
                    return;
                }
            }
        }
    });
    tracing::info!(actor = %caller.name, "store backup taken");
    Ok(([(header::CONTENT_TYPE, client::NDJSON)], axum::body::Body::from_stream(Chunks(rx))).into_response())
}

/// A channel of body chunks as the stream axum's body wants.
pub struct Chunks(pub tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<bytes::Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// `?table=NAME`: the key of a path is a key of that table (keyed by string or integer).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InTable {
    table: Option<String>,
}

/// The key a path names: an address or network (`addr_only`: one address), or with `?table=`, a
/// key of that table, checked against its declared type.
fn path_key(cfg: &crate::config::Config, key: &str, t: &InTable, addr_only: bool) -> Result<Key, OpError> {
    if t.table.is_none() && addr_only {
        return ops::parse_addr(key).map(Key::host);
    }
    ops::checked_key(cfg, &ops::parse_block_key(t.table.as_deref(), key)?)
}

async fn get_block(
    State(s): State<ApiState>,
    caller: Caller,
    Path(key): Path<String>,
    t: Result<Query<InTable>, QueryRejection>,
) -> Result<Json<ops::BlockView>, ApiError> {
    caller.require(Role::Viewer)?;
    let key = path_key(&s.cfg, &key, &t?.0, false)?;
    let b = s.store.block(&key).map_err(OpError::from)?;
    let b = b.ok_or_else(|| OpError::NotFound(format!("{key} is not blocked")))?;
    let mut view = ops::BlockView::of(&b, now_ms());
    view.unconfirmed_on = s.handle.lag().lagging_on(&key);
    Ok(Json(view))
}

async fn act(s: &ApiState, caller: &Caller, op: Result<ops::Manual, OpError>) -> Result<Json<ops::Outcome>, ApiError> {
    caller.require(Role::Operator)?;
    Ok(Json(s.handle.manual(op?, &caller.name).await?))
}

async fn block(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<BlockRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ops::Outcome>), ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    Ok((StatusCode::CREATED, act(&s, &caller, req.check()).await?))
}

async fn unblock(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<UnblockRequest>, JsonRejection>,
) -> Result<Json<ops::Outcome>, ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    act(&s, &caller, req.check()).await
}

async fn extend(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<ExtendRequest>, JsonRejection>,
) -> Result<Json<ops::Outcome>, ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    act(&s, &caller, req.check()).await
}

async fn allow(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<AllowRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ops::Outcome>), ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    Ok((StatusCode::CREATED, act(&s, &caller, req.check_add()).await?))
}

async fn disallow(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<AllowRequest>, JsonRejection>,
) -> Result<Json<ops::Outcome>, ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    act(&s, &caller, req.check_remove()).await
}

async fn import(
    State(s): State<ApiState>,
    caller: Caller,
    body: Result<Json<ImportRequest>, JsonRejection>,
) -> Result<Json<ops::Outcome>, ApiError> {
    caller.require(Role::Operator)?;
    let Json(req) = body?;
    act(&s, &caller, req.check()).await
}

/// A query that scans the store (history, audit), on the blocking pool: the daemon's one
/// runtime thread goes on polling and deciding meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, OpError> + Send + 'static) -> Result<T, OpError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(OpError::Store(crate::store::StoreError::Io(format!("query task: {e}")))))
}

/// One allowlist entry as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct AllowView {
    pub key: String,
    pub reason: String,
    /// `config` for entries of stickwarden.toml, else the operator who added it.
    pub actor: String,
    pub until: Option<String>,
}

async fn list_allow(State(s): State<ApiState>, caller: Caller) -> Result<Json<Vec<AllowView>>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(allow_list(&s.cfg, &s.store)?))
}

/// The allowlist: configured entries, then stored ones.
pub fn allow_list(cfg: &Config, store: &Store) -> Result<Vec<AllowView>, OpError> {
    let mut out: Vec<AllowView> = cfg
        .safety
        .never_block
        .iter()
        .map(|p| AllowView {
            key: crate::net::display(&p.net),
            reason: p.why.clone(),
            actor: "config".into(),
            until: None,
        })
        .collect();
    out.extend(cfg.allow.iter().map(|a| AllowView {
        key: crate::net::display(&a.net),
        reason: a.reason.clone(),
        actor: "config".into(),
        until: a.until.map(rfc3339),
    }));
    out.extend(store.allows()?.iter().map(|a| AllowView {
        key: crate::net::display(&a.net),
        reason: a.reason.clone(),
        actor: a.actor.clone(),
        until: a.until.map(rfc3339),
    }));
    Ok(out)
}

async fn history(
    State(s): State<ApiState>,
    caller: Caller,
    Path(addr): Path<String>,
    t: Result<Query<InTable>, QueryRejection>,
) -> Result<Json<ops::HistoryView>, ApiError> {
    caller.require(Role::Viewer)?;
    let key = path_key(&s.cfg, &addr, &t?.0, true)?;
    Ok(Json(blocking(move || ops::history(&s.store, &key, now_ms())).await?))
}

async fn explain(
    State(s): State<ApiState>,
    caller: Caller,
    Path(addr): Path<String>,
    t: Result<Query<InTable>, QueryRejection>,
) -> Result<Json<ops::explain::ExplainView>, ApiError> {
    caller.require(Role::Viewer)?;
    let key = path_key(&s.cfg, &addr, &t?.0, true)?;
    let mut view = ops::explain::explain(&s.cfg, &s.store, &s.clients, &key, now_ms()).await?;
    view.breaker = s.handle.census().breaker();
    Ok(Json(view))
}

async fn audit(
    State(s): State<ApiState>,
    caller: Caller,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<ops::AuditView>>, ApiError> {
    caller.require(Role::Viewer)?;
    let Query(q) = q?;
    Ok(Json(blocking(move || ops::audit(&s.store, &q, now_ms())).await?))
}
