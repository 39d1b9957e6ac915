//! The review console: HTML pages under `/ui/` on the API's listeners, for security teams to see
//! who is blocked and why, and (operators) to act. Server-rendered with maud, chosen because its
//! templates are Rust code checked by the compiler (a missing field is a build error, not a blank
//! page), everything it writes is escaped unless marked otherwise, and it adds two small crates
//! and no runtime template files. A little embedded script refreshes the overview and the blocks
//! page; everything reads the same with JavaScript off.
//!
//! | route | role | what |
//! |---|---|---|
//! | `GET /ui/login`, `POST /ui/login`, `POST /ui/logout` | none | token in, session cookie out ([`session`]) |
//! | `GET /ui/` (+ `/ui/live/overview`) | viewer | targets, breaker, blocks by level and rule, 24 h chart, top networks |
//! | `GET /ui/blocks` (+ `/ui/live/blocks`) | viewer | active blocks: search, filters, sort, server-side pages |
//! | `GET /ui/address/{addr}` | viewer | verdict, block, evidence, score chart, next step, HAProxy now, history |
//! | `GET /ui/audit`, `/ui/audit.csv`, `/ui/audit.jsonl` | viewer | the audit log, filtered, paged, exported |
//! | `GET /ui/allow` | viewer | the allowlist |
//! | `GET /ui/confirm/{action}` | operator | what an action will change, and its form (reason required) |
//! | `POST /ui/act/{action}` | operator + CSRF token | unblock, block, extend, allow, disallow |
//! | `GET /ui/live/confirm?key=` | viewer | each target's confirmation of a key |
//!
//! Every answer carries a Content-Security-Policy allowing only the console's own origin (no
//! inline script or style), `X-Frame-Options: DENY` and `Cache-Control: no-store`. A POST whose
//! `Origin` is another site's is refused before anything else.

pub mod chart;
pub mod pages;
pub mod session;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use serde::Deserialize;

use crate::api::{allow_list, ApiError, ApiState};
use crate::config::tokens::Role;
use crate::key::Key;
use crate::ops::listing::{BlockQuery, Search};
use crate::ops::{self, AuditQuery, AuditView, Manual, OpError};
use crate::time::{now_ms, rfc3339, Millis};
use chart::Activity;
use pages::{Confirm, Confirmation};
use session::{Session, Sessions};

/// What the console's handlers reach: everything the API's do, and the console's own state.
#[derive(Clone)]
pub struct ConsoleState {
    pub api: ApiState,
    pub console: Arc<Console>,
}

impl std::ops::Deref for ConsoleState {
    type Target = ApiState;

    fn deref(&self) -> &ApiState {
        &self.api
    }
}

/// The console's own state beside the API's: sessions, and the 24-hour chart with the newest
/// audit id it counts.
#[derive(Debug)]
pub struct Console {
    pub sessions: Sessions,
    activity: Mutex<Option<(Option<u64>, Arc<Activity>)>>,
}

/// Audit records per page of the audit page.
pub const AUDIT_PAGE: usize = 100;
/// Audit records read at most for one page of a filtered audit listing.
pub const AUDIT_SCAN: usize = 200_000;
/// How long a failed login waits before it is answered.
const LOGIN_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

impl Console {
    pub fn new(session_ttl: std::time::Duration) -> Console {
        Console { sessions: Sessions::new(session_ttl), activity: Mutex::new(None) }
    }
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes on the API's state, with a new session store lasting `session_ttl`.
pub fn router(api: ApiState, session_ttl: std::time::Duration) -> Router {
    let state = ConsoleState { api, console: Arc::new(Console::new(session_ttl)) };
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(overview))
        .route("/ui/live/overview", get(overview_live))
        .route("/ui/blocks", get(blocks))
        .route("/ui/live/blocks", get(blocks_live))
        .route("/ui/address/{addr}", get(address))
        .route("/ui/audit", get(audit))
        .route("/ui/audit.csv", get(|State(s), h, q| audit_export(s, h, q, Export::Csv)))
        .route("/ui/audit.jsonl", get(|State(s), h, q| audit_export(s, h, q, Export::JsonLines)))
        .route("/ui/allow", get(allowlist))
        .route("/ui/confirm/{action}", get(confirm))
        .route("/ui/act/{action}", post(act))
        .route("/ui/live/confirm", get(confirm_live))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/console.css", get(|| async { asset("text/css; charset=utf-8", pages::CSS) }))
        .route("/ui/static/console.js", get(|| async { asset("text/javascript; charset=utf-8", pages::JS) }))
        .layer(axum::middleware::from_fn(guard))
        .with_state(state)
}

/// Security headers on every console answer, and cross-site POSTs refused. (`Referrer-Policy:
/// same-origin`, not `no-referrer`: with the latter, browsers send `Origin: null` on the pages'
/// own form posts.)
async fn guard(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST && !same_origin(req.headers()) {
        return (StatusCode::FORBIDDEN, "cross-site request refused").into_response();
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Whether a POST comes from the console's own pages: no `Origin` (not a browser's cross-site
/// request) or one naming the `Host` it was sent to.
fn same_origin(h: &HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let host = h.get(header::HOST).and_then(|o| o.to_str().ok()).unwrap_or("");
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn html(status: StatusCode, m: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], m.into_string()).into_response()
}

/// The session of the request's cookie, if it is open.
fn session(s: &ConsoleState, h: &HeaderMap) -> Option<(String, Session)> {
    let cookie = h.get(header::COOKIE)?.to_str().ok()?;
    let id = session::cookie_value(cookie)?;
    s.console.sessions.get(id, now_ms()).map(|sess| (id.to_owned(), sess))
}

/// Why a request gets no page: no session (a page goes to the login page, a live fragment gets
/// 401 so that its script says the session ended), or a viewer asking for an operator's page.
enum Refused {
    Login,
    Expired,
    Viewer(Session),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Login => Redirect::to("/ui/login").into_response(),
            Refused::Expired => (StatusCode::UNAUTHORIZED, "log in again").into_response(),
            Refused::Viewer(sess) => {
                let m = format!("'{}' is a viewer: only an operator can change blocks and the allowlist.", sess.name);
                html(StatusCode::FORBIDDEN, pages::message("Not allowed", Some(&sess), &m))
            }
        }
    }
}

/// A page's session.
fn viewer(s: &ConsoleState, h: &HeaderMap, live: bool) -> Result<Session, Refused> {
    match session(s, h) {
        Some((_, sess)) => Ok(sess),
        None if live => Err(Refused::Expired),
        None => Err(Refused::Login),
    }
}

fn operator(s: &ConsoleState, h: &HeaderMap) -> Result<Session, Refused> {
    let sess = viewer(s, h, false)?;
    if sess.role < Role::Operator {
        return Err(Refused::Viewer(sess));
    }
    Ok(sess)
}

/// A query string that does not parse (`per_page=abc`): said, never read as no filter at all.
fn query<T: Default>(q: Result<Query<T>, QueryRejection>) -> (T, Option<OpError>) {
    match q {
        Ok(Query(q)) => (q, None),
        Err(r) => (T::default(), Some(OpError::bad("invalid_request", r.body_text()))),
    }
}

/// An operator action's or query's error as a page, with the API's status for it.
fn failed(who: &Session, e: OpError) -> Response {
    let e = ApiError::from(e);
    html(e.status, pages::message("That did not work", Some(who), &e.message))
}

async fn login_page(State(s): State<ConsoleState>, h: HeaderMap) -> Response {
    if session(&s, &h).is_some() {
        return Redirect::to("/ui/").into_response();
    }
    html(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): State<ConsoleState>, h: HeaderMap, form: Result<Form<LoginForm>, FormRejection>) -> Response {
    let Ok(Form(f)) = form else {
        return html(StatusCode::BAD_REQUEST, pages::login(Some("Paste a token.")));
    };
    let Some(token) = s.tokens.find(f.token.trim().as_bytes()) else {
        tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
        tracing::warn!("console: a login with an unknown token was refused");
        return html(StatusCode::UNAUTHORIZED, pages::login(Some("That token is not valid.")));
    };
    let (id, _) = match s.console.sessions.start(&token.name, token.role, now_ms()) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "console: cannot make a session id");
            return html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::login(Some("The daemon cannot start a session; see its log.")),
            );
        }
    };
    tracing::info!(actor = %token.name, "console: logged in");
    let secure = h.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = session::set_cookie(&id, s.console.sessions.ttl(), secure);
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/ui/".to_owned())]).into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(s): State<ConsoleState>, h: HeaderMap, form: Result<Form<CsrfForm>, FormRejection>) -> Response {
    if let Some((id, sess)) = session(&s, &h) {
        if !form.is_ok_and(|Form(f)| sess.csrf_ok(&f.csrf)) {
            return html(
                StatusCode::FORBIDDEN,
                pages::message("Not allowed", Some(&sess), "The form is stale: reload the page."),
            );
        }
        s.console.sessions.end(&id);
        tracing::info!(actor = %sess.name, "console: logged out");
    }
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, session::clear_cookie()), (header::LOCATION, "/ui/login".to_owned())])
        .into_response()
}

async fn overview_data(s: &ConsoleState) -> Result<pages::Overview, OpError> {
    let unconfirmed = s.handle.lag().unconfirmed();
    let targets = s
        .clients
        .iter()
        .map(|(n, _)| pages::TargetState {
            name: n.clone(),
            up: s.metrics.target_up.get_or_create(&crate::metrics::Metrics::target(n)).get() == 1,
            unconfirmed: unconfirmed.get(n).copied().unwrap_or(0),
        })
        .collect();
    let census = s.handle.census();
    Ok(pages::Overview {
        targets,
        breaker: census.breaker(),
        tracked: census.population(),
        summary: s.handle.summary().await?,
        activity: activity(s).await?,
        at: rfc3339(now_ms()),
    })
}

/// Audit records read per slice of [`scan_back`].
const SLICE: usize = 2_000;

/// Gives `f` the audit records newest first from before id `before` until it returns false, in
/// slices of [`SLICE`] on the daemon's own thread with a yield between: polls and actuation go on
/// meanwhile, and no worker thread grows a malloc arena of its own from sled's pages (+36 MB at
/// 100,000 records, measured).
async fn scan_back(
    store: &crate::store::Store,
    mut before: Option<u64>,
    mut f: impl FnMut(crate::store::AuditRecord) -> bool,
) -> Result<(), OpError> {
    loop {
        let (mut n, mut go_on, mut last) = (0, true, None);
        store.audit_back(before, &mut |r| {
            n += 1;
            last = Some(r.id);
            go_on = f(r);
            go_on && n < SLICE
        })?;
        if !go_on || n < SLICE {
            return Ok(());
        }
        before = last;
        tokio::task::yield_now().await;
    }
}

/// The 24-hour chart, kept up to date a few records at a time: each request reads only the audit
/// records newer than the last it saw (a new chart is read whole when the hour changes).
async fn activity(s: &ConsoleState) -> Result<Arc<Activity>, OpError> {
    let now = now_ms();
    let cached = s.console.activity.lock().expect("activity lock").clone();
    let (mut a, seen) = match cached {
        Some((seen, a)) if a.current(now) => ((*a).clone(), seen),
        _ => (Activity::new(now), None),
    };
    let mut newest = seen;
    scan_back(&s.store, None, |r| {
        if seen.is_some_and(|s| r.id <= s) {
            return false;
        }
        newest = newest.max(Some(r.id));
        a.add(&r)
    })
    .await?;
    let made = Arc::new(a);
    *s.console.activity.lock().expect("activity lock") = Some((newest, made.clone()));
    Ok(made)
}

async fn overview(State(s): State<ConsoleState>, h: HeaderMap) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match overview_data(&s).await {
        Ok(o) => html(StatusCode::OK, pages::overview(&who, &o)),
        Err(e) => failed(&who, e),
    }
}

async fn overview_live(State(s): State<ConsoleState>, h: HeaderMap) -> Response {
    if let Err(r) = viewer(&s, &h, true) {
        return r.into_response();
    }
    match overview_data(&s).await {
        Ok(o) => html(StatusCode::OK, pages::overview_live(&o)),
        Err(e) => (ApiError::from(e).status, "unavailable").into_response(),
    }
}

async fn blocks_page(s: &ConsoleState, q: &BlockQuery) -> Result<(ops::listing::Page, Vec<String>), OpError> {
    let listing = q.check()?;
    let page = s.handle.blocks_page(listing).await?;
    let mut rules: Vec<String> = s.cfg.rules.rules.iter().map(|r| r.name.clone()).collect();
    rules.extend(["manual".to_owned(), "import".to_owned(), "subnet-aggregate".to_owned()]);
    rules.sort();
    rules.dedup();
    Ok((page, rules))
}

async fn blocks(State(s): State<ConsoleState>, h: HeaderMap, q: Result<Query<BlockQuery>, QueryRejection>) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let (q, bad) = query(q);
    let listed = match bad {
        Some(e) => Err(e),
        None => blocks_page(&s, &q).await,
    };
    match listed {
        Ok((page, rules)) => html(StatusCode::OK, pages::blocks(&who, &q, &page, &rules, None)),
        Err(e @ OpError::BadInput { .. }) => {
            // The filters with what was wrong, over an empty listing.
            let all = BlockQuery::default();
            match blocks_page(&s, &all).await {
                Ok((mut page, rules)) => {
                    page.rows.clear();
                    page.matched = 0;
                    html(StatusCode::BAD_REQUEST, pages::blocks(&who, &q, &page, &rules, Some(&e.to_string())))
                }
                Err(e) => failed(&who, e),
            }
        }
        Err(e) => failed(&who, e),
    }
}

async fn blocks_live(
    State(s): State<ConsoleState>,
    h: HeaderMap,
    q: Result<Query<BlockQuery>, QueryRejection>,
) -> Response {
    if let Err(r) = viewer(&s, &h, true) {
        return r.into_response();
    }
    let (q, bad) = query(q);
    if let Some(e) = bad {
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    match blocks_page(&s, &q).await {
        Ok((page, _)) => html(StatusCode::OK, pages::blocks_live(&q, &page)),
        Err(e) => (ApiError::from(e).status, "unavailable").into_response(),
    }
}

async fn address(State(s): State<ConsoleState>, h: HeaderMap, Path(addr): Path<String>) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match address_data(&s, &addr).await {
        Ok(a) => html(StatusCode::OK, pages::address(&who, &a)),
        Err(e) => failed(&who, e),
    }
}

async fn address_data(s: &ConsoleState, addr: &str) -> Result<pages::Address, OpError> {
    let addr: IpAddr = ops::parse_addr(addr)?;
    let key = Key::host(addr);
    let now = now_ms();
    let mut explain = ops::explain::explain(&s.cfg, &s.store, &s.clients, &key, now).await?;
    explain.breaker = s.handle.census().breaker();
    if let Some(b) = explain.block.as_mut() {
        let covering = crate::net::parse_net(&b.key).map_err(|m| OpError::bad("invalid_address", m))?;
        b.unconfirmed_on = s.handle.lag().lagging_on(&Key::Net(covering));
    }
    // Point lookups and the address's own records through the key index: short enough for the
    // daemon's thread.
    let (history, offender) = (ops::history(&s.store, &key, now)?, s.store.offender(&key)?);
    let allowed = allow_list(&s.cfg, &s.store)?
        .into_iter()
        .find(|a| crate::net::parse_net(&a.key).is_ok_and(|n| crate::net::covers_addr(&n, addr)));
    Ok(pages::Address {
        explain,
        history,
        allowed,
        half_life: s.cfg.rules.policy.half_life,
        score: offender.as_ref().filter(|o| o.score.at > 0).map(|o| (o.score.value, o.score.at)),
        offences: offender.map(|o| o.offences.iter().map(|x| (x.at, x.level)).collect()).unwrap_or_default(),
        now,
    })
}

/// The audit page's filters, checked: which records it keeps.
struct AuditFilter {
    since: Millis,
    key: Option<Key>,
    actor: Option<String>,
    event: Option<crate::store::Event>,
}

impl AuditFilter {
    fn of(f: &pages::AuditForm, now: Millis) -> Result<AuditFilter, OpError> {
        let q = AuditQuery {
            since: f.since.clone(),
            key: f.key.clone(),
            table: None,
            actor: f.actor.clone(),
            event: f.event.clone(),
        };
        let q = blank_to_none(q);
        let (since, key, event) = ops::audit_filters(&q, now)?;
        Ok(AuditFilter { since, key, actor: q.actor, event })
    }

    fn keeps(&self, r: &crate::store::AuditRecord) -> bool {
        r.at >= self.since
            && self.key.as_ref().is_none_or(|k| r.key.as_ref().is_some_and(|rk| rk.overlaps(k)))
            && self.actor.as_ref().is_none_or(|a| &r.actor == a)
            && self.event.is_none_or(|e| r.event == e)
    }

    /// An address's records, newest first, read through the key index (when the key is one).
    fn about_one(&self, store: &crate::store::Store) -> Result<Option<Vec<crate::store::AuditRecord>>, OpError> {
        let Some(addr) = self.key.as_ref().and_then(Key::addr) else { return Ok(None) };
        let mut all = store.audit_covering(addr)?;
        all.retain(|r| self.keeps(r));
        all.reverse();
        Ok(Some(all))
    }
}

/// Newest-first audit records the filters select, [`AUDIT_PAGE`] at most, before id `before`;
/// and the id to go on from when there are more.
async fn audit_rows(
    s: &ConsoleState,
    f: &pages::AuditForm,
    now: Millis,
) -> Result<(Vec<AuditView>, Option<u64>), OpError> {
    let filter = AuditFilter::of(f, now)?;
    let mut rows = Vec::new();
    let mut more = None;
    match filter.about_one(&s.store)? {
        Some(mut all) => {
            all.retain(|r| f.before.is_none_or(|b| r.id < b));
            if all.len() > AUDIT_PAGE {
                more = Some(all[AUDIT_PAGE - 1].id);
                all.truncate(AUDIT_PAGE);
            }
            rows.extend(all.iter().map(AuditView::of));
        }
        None => {
            let mut scanned = 0;
            let mut last = None;
            scan_back(&s.store, f.before, |r| {
                scanned += 1;
                last = Some(r.id);
                if r.at < filter.since {
                    last = None;
                    return false;
                }
                if filter.keeps(&r) {
                    if rows.len() == AUDIT_PAGE {
                        more = rows.last().map(|v: &AuditView| v.id);
                        return false;
                    }
                    rows.push(AuditView::of(&r));
                }
                scanned < AUDIT_SCAN
            })
            .await?;
            if scanned >= AUDIT_SCAN && more.is_none() {
                more = last; // read on from there on the next page
            }
        }
    }
    Ok((rows, more))
}

fn blank_to_none(q: AuditQuery) -> AuditQuery {
    let f = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    AuditQuery { since: f(q.since), key: f(q.key), table: f(q.table), actor: f(q.actor), event: f(q.event) }
}

async fn audit(
    State(s): State<ConsoleState>,
    h: HeaderMap,
    q: Result<Query<pages::AuditForm>, QueryRejection>,
) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let (f, bad) = query(q);
    let rows = match bad {
        Some(e) => Err(e),
        None => audit_rows(&s, &f, now_ms()).await,
    };
    match rows {
        Ok((rows, older)) => html(StatusCode::OK, pages::audit(&who, &f, &rows, older, None)),
        Err(e @ OpError::BadInput { .. }) => {
            html(StatusCode::BAD_REQUEST, pages::audit(&who, &f, &[], None, Some(&e.to_string())))
        }
        Err(e) => failed(&who, e),
    }
}

/// How an export is written.
#[derive(Clone, Copy)]
enum Export {
    Csv,
    JsonLines,
}

impl Export {
    fn write(self, out: &mut Vec<u8>, r: &crate::store::AuditRecord) {
        let view = AuditView::of(r);
        match self {
            Export::Csv => csv_row(out, &view),
            Export::JsonLines => {
                serde_json::to_writer(&mut *out, &view).expect("views serialize");
                out.push(b'\n');
            }
        }
    }
}

/// Every audit record the filters select, newest first, streamed as it is read: a slice of
/// [`SLICE`] records at a time on the daemon's thread, so that an export of the whole log never
/// sits in memory.
async fn audit_export(
    s: ConsoleState,
    h: HeaderMap,
    q: Result<Query<pages::AuditForm>, QueryRejection>,
    how: Export,
) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let (f, bad) = query(q);
    if let Some(e) = bad {
        return failed(&who, e);
    }
    let filter = match AuditFilter::of(&f, now_ms()) {
        Ok(filter) => filter,
        Err(e) => return failed(&who, e),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
    let store = s.store.clone();
    tokio::spawn(async move {
        let mut head = Vec::new();
        if let Export::Csv = how {
            head.extend_from_slice(CSV_HEADER.as_bytes());
        }
        let one = match filter.about_one(&store) {
            Ok(one) => one,
            Err(e) => {
                tracing::error!(error = %e, "audit export: store error; answer cut short");
                return;
            }
        };
        if let Some(all) = one {
            for r in &all {
                how.write(&mut head, r);
            }
            let _ = tx.send(head.into()).await;
            return;
        }
        let mut before = None;
        loop {
            let (mut buf, mut n, mut done, mut last) = (std::mem::take(&mut head), 0, false, None);
            let read = store.audit_back(before, &mut |r| {
                n += 1;
                last = Some(r.id);
                if r.at < filter.since {
                    done = true;
                    return false;
                }
                if filter.keeps(&r) {
                    how.write(&mut buf, &r);
                }
                n < SLICE
            });
            if let Err(e) = read {
                tracing::error!(error = %e, "audit export: store error; answer cut short");
                return;
            }
            if !buf.is_empty() && tx.send(buf.into()).await.is_err() {
                return; // the browser went away
            }
            if done || n < SLICE {
                return;
            }
            before = last;
            tokio::task::yield_now().await;
        }
    });
    let (name, kind) = match how {
        Export::Csv => ("audit.csv", "text/csv; charset=utf-8"),
        Export::JsonLines => ("audit.jsonl", crate::api::client::NDJSON),
    };
    let disposition = format!("attachment; filename=\"{name}\"");
    let body = axum::body::Body::from_stream(crate::api::Chunks(rx));
    ([(header::CONTENT_TYPE, kind.to_owned()), (header::CONTENT_DISPOSITION, disposition)], body).into_response()
}

/// The first line of a CSV export.
const CSV_HEADER: &str = "id,at,event,key,rule,action,level,duration_s,source,actor,reason,counters\r\n";

/// One audit record as a CSV line (RFC 4180). A cell a spreadsheet would take for a formula (`=`,
/// `+`, `-`, `@` first) is written with a leading `'`: a reason is text an attacker may have chosen.
fn csv_row(out: &mut Vec<u8>, r: &AuditView) {
    fn cell(out: &mut Vec<u8>, v: &str) {
        let guarded = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{v}") } else { v.to_owned() };
        if guarded.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(guarded.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(guarded.as_bytes());
        }
    }
    let counters: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let fields = [
        r.id.to_string(),
        r.at.clone(),
        r.event.clone(),
        r.key.clone().unwrap_or_default(),
        r.rule.clone(),
        r.action.clone(),
        r.level.to_string(),
        r.duration_s.to_string(),
        r.source.clone(),
        r.actor.clone(),
        r.reason.clone(),
        counters.join(" "),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        cell(out, f);
    }
    out.extend_from_slice(b"\r\n");
}

async fn allowlist(State(s): State<ConsoleState>, h: HeaderMap) -> Response {
    let who = match viewer(&s, &h, false) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match allow_list(&s.cfg, &s.store) {
        Ok(rows) => html(StatusCode::OK, pages::allowlist(&who, &rows)),
        Err(e) => failed(&who, e),
    }
}

/// The fields of an action's confirmation page and form.
#[derive(Debug, Default, Deserialize)]
struct ActionFields {
    #[serde(default)]
    key: String,
    /// The table of a key of a table keyed otherwise (empty for an address or network).
    #[serde(default)]
    table: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    grace: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    csrf: String,
}

fn opt(s: &str) -> Option<String> {
    Some(s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The checked action of `name` with `f`'s fields.
fn manual(name: &str, f: &ActionFields) -> Result<Manual, OpError> {
    let (key, reason, table) = (f.key.trim().to_owned(), f.reason.clone(), opt(&f.table));
    match name {
        "unblock" => ops::UnblockRequest { key, table, reason, grace: opt(&f.grace) }.check(),
        "block" => ops::BlockRequest { key, table, duration: f.duration.clone(), reason, allow_broad: false }.check(),
        "extend" => ops::ExtendRequest { key, table, duration: f.duration.clone(), reason }.check(),
        "allow" => ops::AllowRequest { key, reason, duration: opt(&f.duration) }.check_add(),
        "disallow" => ops::AllowRequest { key, reason, duration: None }.check_remove(),
        other => Err(OpError::NotFound(format!("no action '{other}'"))),
    }
}

async fn confirm(
    State(s): State<ConsoleState>,
    h: HeaderMap,
    Path(action): Path<String>,
    Query(f): Query<ActionFields>,
) -> Response {
    let who = match operator(&s, &h) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    match confirm_page(&s, &action, &f).await {
        Ok(c) => html(StatusCode::OK, pages::confirm(&who, &c)),
        Err(e) => failed(&who, e),
    }
}

/// What `action` on `f` will change, worked out without changing anything.
async fn confirm_page(s: &ConsoleState, action: &str, f: &ActionFields) -> Result<Confirm, OpError> {
    // Checked with a placeholder reason: the reason is asked on this page.
    let probe = ActionFields {
        key: f.key.clone(),
        table: f.table.clone(),
        duration: f.duration.clone(),
        grace: f.grace.clone(),
        reason: "review".into(),
        csrf: String::new(),
    };
    let targets: Vec<&str> = s.cfg.targets.iter().map(|t| t.name.as_str()).collect();
    let on = format!("on {}", targets.join(", "));
    let now = now_ms();
    let until = |d: std::time::Duration| rfc3339(now + crate::time::ms(d));
    let mut c = Confirm {
        action: "",
        title: String::new(),
        changes: Vec::new(),
        key: f.key.trim().to_owned(),
        table: f.table.trim().to_owned(),
        duration: f.duration.clone(),
        grace: f.grace.clone(),
        asks_duration: false,
        asks_grace: false,
    };
    let describe = |b: &crate::store::Block| {
        format!(
            "its block: rule {}, level {}, {} since {} until {}",
            b.rule,
            b.level,
            b.actions,
            rfc3339(b.since),
            rfc3339(b.until)
        )
    };
    let checked = |key: &Key| ops::checked_key(&s.cfg, key);
    match (action, manual(action, &probe)?) {
        ("unblock", Manual::Unblock { key, grace, .. }) => {
            let key = checked(&key)?;
            let b = s.store.block(&key)?.ok_or_else(|| OpError::NotFound(format!("{key} is not blocked")))?;
            c.action = "unblock";
            c.title = format!("Unblock {key}");
            c.changes.push(if b.dry_run {
                format!("{key} is released now (a dry-run block: nothing to remove from HAProxy).")
            } else {
                format!("{key} is released now: {} removed {on}.", b.actions)
            });
            c.changes.push(describe(&b));
            c.changes.push(match grace {
                Some(g) => format!(
                    "The rules will not block it again for {} (an allowlist entry that ends on its own).",
                    crate::time::human(g)
                ),
                None => "The rules may block it again at its next offence (give a grace to prevent that).".into(),
            });
            c.asks_grace = true;
        }
        ("block", Manual::Block { key, duration, .. }) => {
            let key = checked(&key)?;
            c.action = "block";
            c.title = format!("Block {key}");
            // As the controller applies a manual block: the tag for an address, the ACL for any
            // address or network; a table key's tag in its own table.
            let tag = key.is_single() && (key.table().is_some() || s.cfg.block.table.is_some());
            let acts = match (tag, s.cfg.block.acl.is_some() && key.net().is_some()) {
                (true, true) => "tag and ACL entry",
                (true, false) => "tag",
                (false, true) => "ACL entry",
                (false, false) => {
                    return Err(OpError::Conflict("a network needs [block] acl in the configuration".into()))
                }
            };
            c.changes.push(format!(
                "{key} is blocked for {} (until {}): {acts} {on}.",
                crate::time::human(duration),
                until(duration)
            ));
            if let Some(old) = s.store.block(&key)? {
                c.changes.push(format!("It replaces {} (what it did stays in place).", describe(&old)));
            }
            if let Some(a) = allow_list(&s.cfg, &s.store)?
                .iter()
                .find(|a| crate::net::parse_net(&a.key).is_ok_and(|n| key.overlaps(&Key::Net(n))))
            {
                c.changes.push(format!(
                    "Refused: it reaches the allowlist entry {} ({}); remove that first.",
                    a.key, a.reason
                ));
            }
            c.asks_duration = true;
        }
        ("extend", Manual::Extend { key, duration, .. }) => {
            let key = checked(&key)?;
            let b = s.store.block(&key)?.ok_or_else(|| OpError::NotFound(format!("{key} is not blocked")))?;
            c.action = "extend";
            c.title = format!("Change the end of the block of {key}");
            let new_until = now + crate::time::ms(duration);
            let verb = if new_until >= b.until { "extended" } else { "shortened" };
            c.changes.push(format!("The block ends at {} instead of {} ({verb}).", until(duration), rfc3339(b.until)));
            c.changes.push(format!("{}; rule, level and actions stay; HAProxy is not touched.", describe(&b)));
            c.asks_duration = true;
        }
        ("allow", Manual::Allow { key, duration, .. }) => {
            c.action = "allow";
            c.title = format!("Allow {}", crate::net::display(&key));
            c.changes.push(match duration {
                Some(d) => format!("{} is never blocked until {}.", crate::net::display(&key), until(d)),
                None => format!("{} is never blocked, until the entry is removed.", crate::net::display(&key)),
            });
            let listing = ops::listing::Listing { search: Some(Search::Net(key)), ..BlockQuery::default().check()? };
            let covered = s.handle.blocks_page(listing).await?;
            if covered.matched > 0 {
                let keys: Vec<&str> = covered.rows.iter().map(|b| b.key.as_str()).collect();
                c.changes.push(format!(
                    "{} active block(s) it reaches are released {on}: {}{}",
                    covered.matched,
                    keys.join(", "),
                    if covered.matched > keys.len() { ", …" } else { "" }
                ));
            }
            c.asks_duration = true;
        }
        ("disallow", Manual::Disallow { key, .. }) => {
            c.action = "disallow";
            c.title = format!("Remove {} from the allowlist", crate::net::display(&key));
            c.changes
                .push(format!("{} is no longer allowlisted: the rules may block it again.", crate::net::display(&key)));
        }
        _ => return Err(OpError::NotFound(format!("no action '{action}'"))),
    }
    Ok(c)
}

async fn act(
    State(s): State<ConsoleState>,
    h: HeaderMap,
    Path(action): Path<String>,
    form: Result<Form<ActionFields>, FormRejection>,
) -> Response {
    let who = match operator(&s, &h) {
        Ok(w) => w,
        Err(r) => return r.into_response(),
    };
    let Some(Form(f)) = form.ok().filter(|Form(f)| who.csrf_ok(&f.csrf)) else {
        return html(
            StatusCode::FORBIDDEN,
            pages::message("Not allowed", Some(&who), "The form is stale or forged: reload the page."),
        );
    };
    let op = match manual(&action, &f) {
        Ok(op) => op,
        Err(e) => return failed(&who, e),
    };
    // Moving a block's end and removing an allowlist entry send nothing to HAProxy.
    let sends = !matches!(op, Manual::Extend { .. } | Manual::Disallow { .. });
    tracing::info!(actor = %who.name, action = %action, "console action");
    let outcome = match s.handle.manual(op, &who.name).await {
        Ok(o) => o,
        Err(e) => return failed(&who, e),
    };
    let table = opt(&f.table);
    let mut touched: Vec<Key> = outcome
        .blocked
        .iter()
        .map(|b| (b.table.clone(), b.key.as_str()))
        .chain(outcome.released.iter().map(|k| (table.clone(), k.as_str())))
        .filter_map(|(t, k)| ops::parse_block_key(t.as_deref(), k).ok())
        .collect();
    if !sends {
        touched.clear();
    }
    let states = states(&s, &touched, &outcome.failures);
    // The live view follows addresses and networks (its query names no table).
    let nets: Vec<String> = touched.iter().filter(|k| k.net().is_some()).map(Key::text).collect();
    let live = (!nets.is_empty()).then(|| format!("/ui/live/confirm?key={}", pages::urlencode(&nets.join(","))));
    let title = match action.as_str() {
        "unblock" => "Unblocked",
        "block" => "Blocked",
        "extend" => "Block end changed",
        "allow" => "Allowed",
        _ => "Removed from the allowlist",
    };
    html(StatusCode::OK, pages::done(&who, title, &outcome, &states, live))
}

/// Each target's state for `keys`: refused (its failure), waiting (not confirmed yet) or
/// confirmed; "nothing to send" when the action needed no HAProxy command.
fn states(s: &ConsoleState, keys: &[Key], failures: &[String]) -> Vec<Confirmation> {
    s.cfg
        .targets
        .iter()
        .map(|t| {
            let prefix = format!("{}: ", t.name);
            if keys.is_empty() {
                return Confirmation {
                    target: t.name.clone(),
                    state: "confirmed",
                    detail: "nothing to send to HAProxy".into(),
                };
            }
            if let Some(f) = failures.iter().find(|f| f.starts_with(&prefix)) {
                return Confirmation { target: t.name.clone(), state: "failed", detail: f[prefix.len()..].to_owned() };
            }
            let waiting: Vec<String> = keys
                .iter()
                .filter(|k| s.handle.lag().lagging_on(k).contains(&t.name))
                .map(ToString::to_string)
                .collect();
            if waiting.is_empty() {
                Confirmation {
                    target: t.name.clone(),
                    state: "confirmed",
                    detail: "HAProxy confirmed every command".into(),
                }
            } else {
                Confirmation {
                    target: t.name.clone(),
                    state: "waiting",
                    detail: format!("not confirmed yet: {}", waiting.join(", ")),
                }
            }
        })
        .collect()
}

#[derive(Deserialize)]
struct KeysQuery {
    key: String,
}

async fn confirm_live(State(s): State<ConsoleState>, h: HeaderMap, Query(q): Query<KeysQuery>) -> Response {
    if let Err(r) = viewer(&s, &h, true) {
        return r.into_response();
    }
    let mut keys = Vec::new();
    for k in q.key.split(',').filter(|k| !k.is_empty()).take(100) {
        match ops::parse_key(k) {
            Ok(k) => keys.push(Key::Net(k)),
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }
    html(StatusCode::OK, pages::confirmations(&states(&s, &keys, &[])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut r = AuditView {
            id: 1,
            at: "2026-12-02T12:00:00Z".into(),
            event: "block".into(),
            key: Some("10.0.0.1".into()),
            table: None,
            rule: "flood".into(),
            action: "tag".into(),
            level: 1,
            duration_s: 60,
            source: "manual".into(),
            actor: "ops".into(),
            reason: "=HYPERLINK(\"x\"), \"quoted\"\nline".into(),
            counters: Default::default(),
        };
        r.counters.insert("http_req_rate".into(), 120);
        let mut out = Vec::new();
        csv_row(&mut out, &r);
        let out = format!("{CSV_HEADER}{}", String::from_utf8(out).unwrap());
        let line = out.lines().nth(1).unwrap();
        assert!(line.ends_with("\"'=HYPERLINK(\"\"x\"\"), \"\"quoted\"\""), "{out}");
        assert!(out.contains("line\",http_req_rate=120\r\n"), "{out}");
    }

    #[test]
    fn posts_from_another_origin_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9180"));
        assert!(same_origin(&h), "no Origin: not a browser's cross-site request");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9180"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
