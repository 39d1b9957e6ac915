//! The console's HTML, as maud templates: one function per page or live fragment, taking the data
//! the handler gathered and returning markup. No I/O here. maud escapes every value it writes, so
//! a reason holding `<script>` or bidi-override characters shows as text; reasons, keys and rule
//! names are also wrapped in `<bdi>`, so an override cannot reorder the text around them.

use maud::{html, Markup, DOCTYPE};

use super::chart::{self, Activity};
use super::session::Session;
use crate::api::AllowView;
use crate::config::tokens::Role;
use crate::ops::explain::ExplainView;
use crate::ops::listing::{BlockQuery, Page, SortKey, Summary};
use crate::ops::view::{BreakerView, HistoryView};
use crate::ops::{AuditView, BlockView, Outcome};

/// Which entry of the navigation is the current page.
#[derive(Clone, Copy, PartialEq)]
pub enum Nav {
    Overview,
    Blocks,
    Audit,
    Allow,
    None,
}

/// One page: navigation, who is logged in (with the logout form), the unreachable-daemon banner
/// the script shows, and `body`.
pub fn layout(title: &str, who: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · stickwarden" }
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body {
                header.top {
                    span.brand { "stickwarden" }
                    @if let Some(s) = who {
                        nav {
                            (link("/ui/", "Overview", Nav::Overview))
                            (link("/ui/blocks", "Blocks", Nav::Blocks))
                            (link("/ui/audit", "Audit", Nav::Audit))
                            (link("/ui/allow", "Allowlist", Nav::Allow))
                        }
                        form.search method="get" action="/ui/blocks" {
                            input type="search" name="q" placeholder="address, network or key" aria-label="Find an address, a network or a table key";
                        }
                        span.who { (s.name) " (" (role(s.role)) ")" }
                        form.logout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                div #offline .banner hidden { }
                main { (body) }
            }
        }
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
    }
}

/// Text from outside (reasons, keys, rule names, actors), isolated from the text around it.
fn text(s: &str) -> Markup {
    html! { bdi { (s) } }
}

fn key_link(key: &str) -> Markup {
    // A network's page is its address's: the first address holds what covers the network.
    let addr = key.split('/').next().unwrap_or(key);
    html! { a href={ "/ui/address/" (addr) } { (text(key)) } }
}

fn remaining(s: u64) -> String {
    crate::time::human(std::time::Duration::from_secs(s))
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        Nav::None,
        html! {
            section.login {
                h1 { "Log in" }
                p { "Paste your API token. It is sent once, in this form's body, and never shown in an address." }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                form method="post" action="/ui/login" {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

pub fn message(title: &str, who: Option<&Session>, text_: &str) -> Markup {
    layout(title, who, Nav::None, html! { h1 { (title) } p.error role="alert" { (text(text_)) } })
}

/// What the overview shows, gathered by the handler.
pub struct Overview {
    pub targets: Vec<TargetState>,
    pub breaker: Option<BreakerView>,
    pub tracked: Option<u64>,
    pub summary: Summary,
    pub activity: std::sync::Arc<Activity>,
    pub at: String,
}

pub struct TargetState {
    pub name: String,
    pub up: bool,
    pub unconfirmed: usize,
}

pub fn overview(who: &Session, o: &Overview) -> Markup {
    layout(
        "Overview",
        Some(who),
        Nav::Overview,
        html! {
            h1 { "Overview" }
            noscript { p.note { "Live updates need JavaScript: reload the page to refresh it." } }
            div data-live="/ui/live/overview" { (overview_live(o)) }
        },
    )
}

pub fn overview_live(o: &Overview) -> Markup {
    html! {
        p.updated { "As of " time { (o.at) } }
        div.cards {
            section.card {
                h2 { "Targets" }
                table {
                    thead { tr { th { "target" } th { "state" } th { "unconfirmed" } } }
                    tbody {
                        @for t in &o.targets {
                            tr {
                                td { (text(&t.name)) }
                                td { @if t.up { span.ok { "up" } } @else { span.bad { "down" } } }
                                td { @if t.unconfirmed > 0 { span.warn { (t.unconfirmed) } } @else { "0" } }
                            }
                        }
                    }
                }
            }
            section.card {
                h2 { "Circuit breaker" }
                @match &o.breaker {
                    Some(b) => {
                        p { span.bad { "open" } " since " time { (b.open_since) } }
                        p { (text(&b.reason)) }
                        p.note { "Automatic blocks are suspended; manual actions still work." }
                    }
                    None => { p { span.ok { "closed" } ": automatic blocks are enforced." } }
                }
                @if let Some(n) = o.tracked { p { (n) " clients tracked by the watched tables." } }
            }
            section.card {
                h2 { "Active blocks: " (o.summary.total) }
                @if o.summary.dry_run > 0 { p.note { (o.summary.dry_run) " of them dry-run (not enforced)." } }
                table {
                    thead { tr { th { "by level" } th { "blocks" } } }
                    tbody { @for (l, n) in &o.summary.by_level { tr { td { a href={ "/ui/blocks?level=" (l) } { "level " (l) } } td { (n) } } } }
                }
                table {
                    thead { tr { th { "by rule" } th { "blocks" } } }
                    tbody {
                        @for (r, n) in &o.summary.by_rule {
                            tr { td { a href={ "/ui/blocks?rule=" (urlencode(r)) } { (text(r)) } } td { (n) } }
                        }
                    }
                }
            }
        }
        section.card.wide {
            h2 { "Blocks and releases, last 24 hours" }
            (o.activity.svg())
        }
        div.cards {
            (top_table("Top /24 networks", &o.summary.top_v4))
            (top_table("Top /64 networks", &o.summary.top_v6))
        }
    }
}

fn top_table(title: &str, rows: &[(String, usize)]) -> Markup {
    html! {
        section.card {
            h2 { (title) }
            @if rows.is_empty() { p.note { "None." } } @else {
                table {
                    thead { tr { th { "network" } th { "blocks" } } }
                    tbody { @for (n, c) in rows { tr { td { a href={ "/ui/blocks?q=" (urlencode(n)) } { (n) } } td { (c) } } } }
                }
            }
        }
    }
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query string of `q` (its fields that are set).
pub fn query_string(q: &BlockQuery) -> String {
    let v = serde_json::to_value(q).unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, v) in m {
            let s = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            parts.push(format!("{k}={}", urlencode(&s)));
        }
    }
    parts.join("&")
}

pub fn blocks(who: &Session, q: &BlockQuery, page: &Page, rules: &[String], error: Option<&str>) -> Markup {
    let qs = query_string(q);
    let sel = |v: &Option<String>, want: &str| v.as_deref().unwrap_or("") == want;
    layout(
        "Blocks",
        Some(who),
        Nav::Blocks,
        html! {
            h1 { "Active blocks" }
            form.filters method="get" action="/ui/blocks" {
                label { "Address, network or key " input type="search" name="q" value=(q.q.clone().unwrap_or_default()); }
                label { "Rule "
                    select name="rule" {
                        option value="" { "any" }
                        @for r in rules { option value=(r) selected[sel(&q.rule, r)] { (r) } }
                    }
                }
                label { "Level " input type="number" min="0" name="level" value=(q.level.clone().unwrap_or_default()); }
                label { "Source "
                    select name="source" {
                        @for s in ["", "auto", "manual", "import"] { option value=(s) selected[sel(&q.source, s)] { (if s.is_empty() { "any" } else { s }) } }
                    }
                }
                label { "Dry run "
                    select name="dry_run" {
                        @for s in ["", "yes", "no"] { option value=(s) selected[sel(&q.dry_run, s)] { (if s.is_empty() { "any" } else { s }) } }
                    }
                }
                label { input type="checkbox" name="unconfirmed" value="yes" checked[sel(&q.unconfirmed, "yes")]; " not confirmed by every target" }
                @if let Some(s) = q.sort { input type="hidden" name="sort" value=(s.as_str()); }
                @if let Some(o) = &q.order { input type="hidden" name="order" value=(o); }
                button type="submit" { "Filter" }
                a href="/ui/blocks" { "clear" }
            }
            @if let Some(e) = error { p.error role="alert" { (text(e)) } }
            @if who.role == Role::Operator {
                details.act {
                    summary { "Block by hand" }
                    form method="get" action="/ui/confirm/block" {
                        label { "Address or network " input type="text" name="key" required; }
                        label { "for " input type="text" name="duration" value="1h" required; }
                        button type="submit" { "Review…" }
                    }
                }
            }
            noscript { p.note { "Live updates need JavaScript: reload the page to refresh it." } }
            // Filters that are not valid get no live updates: there is nothing to update.
            @if error.is_none() {
                div data-live={ "/ui/live/blocks?" (qs) } { (blocks_live(q, page)) }
            } @else {
                div { (blocks_live(q, page)) }
            }
        },
    )
}

pub fn blocks_live(q: &BlockQuery, page: &Page) -> Markup {
    let with = |f: &dyn Fn(&mut BlockQuery)| {
        let mut q = q.clone();
        f(&mut q);
        format!("/ui/blocks?{}", query_string(&q))
    };
    let current = q.sort.unwrap_or_default();
    let desc = q.order.as_deref() != Some("asc");
    let head = |label: &str, key: SortKey| {
        let next_desc = if current == key { !desc } else { true };
        let href = with(&|q: &mut BlockQuery| {
            q.sort = Some(key);
            q.order = Some(if next_desc { "desc" } else { "asc" }.into());
            q.page = None;
        });
        let mark = if current == key {
            if desc {
                " ▼"
            } else {
                " ▲"
            }
        } else {
            ""
        };
        html! { th { a href=(href) { (label) (mark) } } }
    };
    html! {
        p.count { (page.matched) " of " (page.total) " active blocks · page " (page.page) " of " (page.pages) }
        table.blocks {
            thead {
                tr {
                    (head("key", SortKey::Key))
                    (head("level", SortKey::Level))
                    th { "action" }
                    (head("rule", SortKey::Rule))
                    th { "source" }
                    (head("since", SortKey::Since))
                    (head("until", SortKey::Until))
                    th { "left" }
                    th { "not confirmed on" }
                }
            }
            tbody {
                @for b in &page.rows {
                    tr {
                        td {
                            @if let Some(t) = &b.table {
                                // A key of a table keyed otherwise: no address page to go to.
                                (text(&b.key)) " " span.muted { "in " (text(t)) } " "
                                a href={ "/ui/confirm/unblock?key=" (urlencode(&b.key)) "&table=" (urlencode(t)) } { "unblock…" }
                            } @else {
                                (key_link(&b.key))
                            }
                            @if b.dry_run { " " span.warn { "dry run" } }
                        }
                        td { (b.level) }
                        td { (b.action) }
                        td { (text(&b.rule)) }
                        td { (source_label(b)) }
                        td { time { (b.since) } }
                        td { time { (b.until) } }
                        td { (remaining(b.remaining_s)) }
                        td { @for t in &b.unconfirmed_on { span.warn { (text(t)) } " " } }
                    }
                }
            }
        }
        nav.pager aria-label="pages" {
            @if page.page > 1 {
                a href=(with(&|q: &mut BlockQuery| q.page = Some(1))) { "« first" }
                a rel="prev" href=(with(&|q: &mut BlockQuery| q.page = Some(page.page - 1))) { "‹ previous" }
            }
            span { "page " (page.page) " of " (page.pages) }
            @if page.page < page.pages {
                a rel="next" href=(with(&|q: &mut BlockQuery| q.page = Some(page.page + 1))) { "next ›" }
                a href=(with(&|q: &mut BlockQuery| q.page = Some(page.pages))) { "last »" }
            }
        }
    }
}

fn source_label(b: &BlockView) -> &str {
    if b.source == "manual" && b.rule == "import" {
        "import"
    } else {
        &b.source
    }
}

/// What the address page shows.
pub struct Address {
    pub explain: ExplainView,
    pub history: HistoryView,
    pub allowed: Option<AllowView>,
    pub half_life: std::time::Duration,
    pub score: Option<(f64, u64)>,
    pub offences: Vec<(u64, u32)>,
    pub now: u64,
}

pub fn address(who: &Session, a: &Address) -> Markup {
    let e = &a.explain;
    let operator = who.role == Role::Operator;
    layout(
        &e.key,
        Some(who),
        Nav::None,
        html! {
            h1 { (text(&e.key)) " " span class={ "verdict " (e.verdict.replace(' ', "-")) } { (e.verdict) } }
            @if let Some(b) = &e.breaker { p.error { "The circuit breaker is open: " (text(&b.reason)) } }
            div.cards {
                section.card {
                    h2 { "Block" }
                    @match &e.block {
                        Some(b) => {
                            dl {
                                dt { "blocked as" } dd { (key_link(&b.key)) " (" (b.scope) ")" }
                                dt { "rule" } dd { (text(&b.rule)) ", level " (b.level) }
                                dt { "action" } dd { (b.action) @if b.dry_run { " " span.warn { "dry run: not enforced" } } }
                                dt { "by" } dd { (text(&b.actor)) " (" (source_label(b)) ")" }
                                dt { "since" } dd { time { (b.since) } }
                                dt { "until" } dd { time { (b.until) } " (" (remaining(b.remaining_s)) " left)" }
                                dt { "reason" } dd.reason { (text(&b.reason)) }
                                @if !b.unconfirmed_on.is_empty() {
                                    dt { "not confirmed on" } dd { @for t in &b.unconfirmed_on { span.warn { (text(t)) } " " } }
                                }
                            }
                            @if operator {
                                p.actions {
                                    a.button href={ "/ui/confirm/unblock?key=" (urlencode(&b.key)) } { "Unblock…" }
                                    a.button href={ "/ui/confirm/extend?key=" (urlencode(&b.key)) "&duration=1h" } { "Change its end…" }
                                }
                            }
                        }
                        None => {
                            p { "Not blocked." }
                            @if operator && a.allowed.is_none() {
                                p.actions { a.button href={ "/ui/confirm/block?key=" (urlencode(&e.key)) "&duration=1h" } { "Block by hand…" } }
                            }
                        }
                    }
                    @if let Some(al) = &a.allowed {
                        p { "Allowlisted as " (text(&al.key)) " by " (text(&al.actor)) ": " (text(&al.reason))
                            @if let Some(u) = &al.until { " (until " time { (u) } ")" } }
                    } @else if operator {
                        p.actions { a.button href={ "/ui/confirm/allow?key=" (urlencode(&e.key)) } { "Allow…" } }
                    }
                }
                section.card {
                    h2 { "Evidence at decision time" }
                    @match &e.block {
                        Some(b) if !b.counters.is_empty() => {
                            @if b.nodes.is_empty() {
                                p.note { "The counters that crossed, as the controller read them." }
                            } @else {
                                p.note { "The counters that crossed: merged across the fleet, and each node's own value." }
                            }
                            table.evidence {
                                thead { tr { th { "counter" } th { (if b.nodes.is_empty() { "value" } else { "merged" }) }
                                    @for n in b.nodes.keys() { th { (text(n)) } } } }
                                tbody { @for (k, v) in &b.counters { tr { td { (k) } td { (v) }
                                    @for n in b.nodes.values() { td { @if let Some(x) = n.get(k) { (x) } @else { "–" } } } } } }
                            }
                        }
                        Some(_) => { p.note { "A manual or imported block: no counters." } }
                        None => { p.note { "No block in force." } }
                    }
                }
                section.card {
                    h2 { "Score and next step" }
                    p { "Score now " strong { (format!("{:.1}", e.score)) } " of a threshold of " (format!("{:.0}", e.threshold))
                        "; " (e.offences_in_window) " offence(s) within the forgiveness window." }
                    p { "A next offence gets level " (e.next_level) ": " (e.next_action) " for "
                        (remaining(e.next_duration_s)) "." }
                }
            }
            section.card.wide {
                h2 { "Score over time" }
                (chart::score_svg(&a.offences, a.score, a.half_life, e.threshold, a.now))
                p.note { "Dots: offences, where the score reached the threshold (dashed) and started again from 0, with the level they got. Line: the score gathered since, decaying with the half-life." }
            }
            section.card.wide {
                h2 { "HAProxy now" }
                table {
                    thead { tr { th { "target" } th { "table" } th { "entry" } th { "counters" } th { "rules" } } }
                    tbody {
                        @for t in &e.tables {
                            tr {
                                td { (text(&t.target)) } td { (text(&t.table)) }
                                td { @if let Some(err) = &t.error { span.bad { (text(err)) } } @else if t.found { "present" } @else { "none" } }
                                td { @for (k, v) in &t.counters { code { (k) "=" (v) } " " } }
                                td { @for r in &t.rules { span class=(if r.matched { "bad" } else { "ok" }) { (text(&r.rule)) @if r.matched { " matches" } } " " } }
                            }
                        }
                    }
                }
            }
            section.card.wide {
                h2 { "History" }
                (audit_table(&a.history.events))
            }
        },
    )
}

pub fn audit_table(rows: &[AuditView]) -> Markup {
    html! {
        @if rows.is_empty() { p.note { "No record." } } @else {
            table.audit {
                thead { tr { th { "id" } th { "time" } th { "event" } th { "key" } th { "rule" } th { "action" } th { "actor" } th { "reason" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (r.id) } td { time { (r.at) } } td { (r.event) }
                            td { @if let Some(k) = &r.key { (key_link(k)) } }
                            td { (text(&r.rule)) } td { (r.action) } td { (text(&r.actor)) } td.reason { (text(&r.reason)) }
                        }
                    }
                }
            }
        }
    }
}

/// The audit page's filters, as they arrive.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct AuditForm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

pub fn audit(who: &Session, f: &AuditForm, rows: &[AuditView], older: Option<u64>, error: Option<&str>) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let mut export = f.clone();
    export.before = None;
    let qs = |f: &AuditForm| {
        let j = serde_json::to_value(f).unwrap_or_default();
        j.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        format!("{k}={}", urlencode(v.as_str().map_or_else(|| v.to_string(), str::to_owned).as_str()))
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            })
            .unwrap_or_default()
    };
    layout(
        "Audit",
        Some(who),
        Nav::Audit,
        html! {
            h1 { "Audit log" }
            form.filters method="get" action="/ui/audit" {
                label { "Since " input type="text" name="since" placeholder="1h or 2026-12-01T00:00:00Z" value=(v(&f.since)); }
                label { "Actor " input type="text" name="actor" value=(v(&f.actor)); }
                label { "Event "
                    select name="event" {
                        option value="" { "any" }
                        @for e in EVENTS { option value=(e) selected[f.event.as_deref() == Some(*e)] { (e) } }
                    }
                }
                label { "Key " input type="text" name="key" placeholder="address or network" value=(v(&f.key)); }
                button type="submit" { "Filter" }
                a href="/ui/audit" { "clear" }
            }
            p.exports { "Export what the filters select: "
                a href={ "/ui/audit.csv?" (qs(&export)) } download { "CSV" } " · "
                a href={ "/ui/audit.jsonl?" (qs(&export)) } download { "JSON Lines" } }
            @if let Some(e) = error { p.error role="alert" { (text(e)) } }
            p.note { "Newest first." }
            (audit_table(rows))
            @if let Some(id) = older {
                nav.pager { a rel="next" href={ "/ui/audit?" (qs(&AuditForm { before: Some(id), ..f.clone() })) } { "older ›" } }
            }
        },
    )
}

/// Every audit event name, for the filter.
pub const EVENTS: &[&str] = &[
    "block",
    "release",
    "would_block",
    "would_release",
    "expiry_changed",
    "allow",
    "disallow",
    "breaker_open",
    "breaker_closed",
    "action_failed",
    "target_restarted",
    "repaired",
    "recovered",
    "restored",
];

pub fn allowlist(who: &Session, rows: &[AllowView]) -> Markup {
    let operator = who.role == Role::Operator;
    layout(
        "Allowlist",
        Some(who),
        Nav::Allow,
        html! {
            h1 { "Allowlist" }
            p.note { "Addresses and networks stickwarden never blocks. Entries by " code { "config" } " come from stickwarden.toml and are changed there." }
            table {
                thead { tr { th { "key" } th { "reason" } th { "by" } th { "until" } @if operator { th {} } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { (key_link(&r.key)) } td.reason { (text(&r.reason)) } td { (text(&r.actor)) }
                            td { @if let Some(u) = &r.until { time { (u) } } @else { "never ends" } }
                            @if operator { td { @if r.actor != "config" {
                                a.button href={ "/ui/confirm/disallow?key=" (urlencode(&r.key)) } { "Remove…" } } } }
                        }
                    }
                }
            }
            @if operator {
                details.act {
                    summary { "Allow an address or network" }
                    form method="get" action="/ui/confirm/allow" {
                        label { "Address or network " input type="text" name="key" required; }
                        label { "for (empty: no end) " input type="text" name="duration"; }
                        button type="submit" { "Review…" }
                    }
                }
            }
        },
    )
}

/// What an action will change, for its confirmation page.
pub struct Confirm {
    pub action: &'static str,
    pub title: String,
    pub changes: Vec<String>,
    pub key: String,
    /// The table of a table key (empty for an address or network).
    pub table: String,
    pub duration: String,
    pub grace: String,
    /// Which optional fields the form has.
    pub asks_duration: bool,
    pub asks_grace: bool,
}

pub fn confirm(who: &Session, c: &Confirm) -> Markup {
    layout(
        &c.title,
        Some(who),
        Nav::None,
        html! {
            h1 { (c.title) }
            section.card.wide {
                h2 { "What will change" }
                ul.changes { @for ch in &c.changes { li { (text(ch)) } } }
                form.confirm method="post" action={ "/ui/act/" (c.action) } {
                    input type="hidden" name="csrf" value=(who.csrf);
                    input type="hidden" name="key" value=(c.key);
                    @if !c.table.is_empty() { input type="hidden" name="table" value=(c.table); }
                    @if c.asks_duration {
                        label { "Duration " input type="text" name="duration" value=(c.duration); }
                    }
                    @if c.asks_grace {
                        label { "Grace (optional: no automatic block for this long) " input type="text" name="grace" value=(c.grace); }
                    }
                    label { "Reason (required, kept in the audit log) "
                        input #reason type="text" name="reason" required maxlength="500"; }
                    button.primary type="submit" { "Confirm" }
                    " "
                    @if c.table.is_empty() {
                        a href={ "/ui/address/" (c.key.split('/').next().unwrap_or_default()) } { "Cancel" }
                    } @else {
                        a href="/ui/blocks" { "Cancel" }
                    }
                }
            }
        },
    )
}

/// One target's state for an action's keys.
pub struct Confirmation {
    pub target: String,
    /// `confirmed`, `waiting` or `failed`.
    pub state: &'static str,
    pub detail: String,
}

pub fn done(who: &Session, title: &str, o: &Outcome, states: &[Confirmation], live: Option<String>) -> Markup {
    layout(
        title,
        Some(who),
        Nav::None,
        html! {
            h1 { (title) }
            section.card.wide {
                @if !o.blocked.is_empty() { p { "Blocked: " @for b in &o.blocked { (key_link(&b.key)) " until " time { (b.until) } " " } } }
                @if !o.released.is_empty() { p { "Released: " @for k in &o.released { (key_link(k)) " " } } }
                @if !o.allowed.is_empty() { p { "Allowlist changed: " @for k in &o.allowed { (key_link(k)) " " } } }
                @if !o.skipped.is_empty() { p { "Left alone: " @for (k, why) in &o.skipped { (text(k)) " (" (text(why)) ") " } } }
                @if !o.failures.is_empty() {
                    div.error role="alert" {
                        p { "HAProxy did not confirm everything (the decision is recorded and retried):" }
                        ul { @for f in &o.failures { li { (text(f)) } } }
                    }
                }
                h2 { "On each HAProxy target" }
                @if let Some(url) = live {
                    div data-live=(url) { (confirmations(states)) }
                } @else { (confirmations(states)) }
            }
        },
    )
}

pub fn confirmations(states: &[Confirmation]) -> Markup {
    html! {
        table.confirm {
            thead { tr { th { "target" } th { "state" } th { "detail" } } }
            tbody {
                @for s in states {
                    tr {
                        td { (text(&s.target)) }
                        td { span class=(match s.state { "confirmed" => "ok", "failed" => "bad", _ => "warn" }) { (s.state) } }
                        td { (text(&s.detail)) }
                    }
                }
            }
        }
    }
}

/// The page's script and stylesheet, embedded in the binary.
pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");
