//! The console's two charts, drawn on the server as inline SVG (no script, no external resource,
//! readable with JavaScript off): blocks and releases per hour over the last 24 hours, stacked by
//! rule, and an address's score over time (its offences, the stored score decaying with the
//! policy's half-life, the threshold). Colours come from the stylesheet through classes (the
//! Content-Security-Policy allows no inline style); every label is escaped by maud.

use std::collections::BTreeMap;
use std::time::Duration;

use maud::{html, Markup};

use crate::store::{AuditRecord, Event};
use crate::time::{ms, Millis};

/// Hours in the activity chart.
pub const HOURS: usize = 24;
const HOUR: Millis = 3_600_000;
/// Rules given their own colour; the rest share the last.
const COLOURS: usize = 6;

/// Blocks and releases per hour and rule over the last [`HOURS`] hours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// The start of the first hour.
    pub start: Millis,
    pub blocks: BTreeMap<String, [u32; HOURS]>,
    pub releases: BTreeMap<String, [u32; HOURS]>,
}

impl Activity {
    /// An empty chart of the [`HOURS`] hours up to the one holding `now`.
    pub fn new(now: Millis) -> Activity {
        Activity { start: (now / HOUR + 1).saturating_sub(HOURS as u64) * HOUR, ..Default::default() }
    }

    /// Whether this chart still covers the 24 hours up to `now` (else a new one is needed).
    pub fn current(&self, now: Millis) -> bool {
        Activity::new(now).start == self.start
    }

    /// Counts `r` if it is a block or release within the chart; returns false once records are
    /// older than the chart (the caller reads newest first and stops there).
    pub fn add(&mut self, r: &AuditRecord) -> bool {
        if r.at < self.start {
            return false;
        }
        let hour = (((r.at - self.start) / HOUR) as usize).min(HOURS - 1);
        let map = match r.event {
            Event::Block | Event::WouldBlock => &mut self.blocks,
            Event::Release | Event::WouldRelease => &mut self.releases,
            _ => return true,
        };
        map.entry(r.rule.clone()).or_insert([0; HOURS])[hour] += 1;
        true
    }

    fn total(map: &BTreeMap<String, [u32; HOURS]>, hour: usize) -> u32 {
        map.values().map(|h| h[hour]).sum()
    }

    /// The chart: blocks above the axis, releases below, one colour per rule.
    pub fn svg(&self) -> Markup {
        const W: f64 = 720.0;
        const H: f64 = 220.0;
        const MID: f64 = 130.0;
        let peak = (0..HOURS)
            .map(|h| Activity::total(&self.blocks, h).max(Activity::total(&self.releases, h)))
            .max()
            .unwrap_or(0)
            .max(1);
        let (up, down) = (MID - 16.0, H - MID - 24.0);
        let slot = (W - 40.0) / HOURS as f64;
        let rules: Vec<&String> = {
            let mut r: Vec<&String> = self.blocks.keys().chain(self.releases.keys()).collect();
            r.sort();
            r.dedup();
            r
        };
        let colour = |rule: &String| rules.iter().position(|r| *r == rule).unwrap_or(0).min(COLOURS - 1);
        let bars = |map: &BTreeMap<String, [u32; HOURS]>, above: bool| {
            let mut out = Vec::new();
            for h in 0..HOURS {
                let mut at = MID;
                for (rule, counts) in map {
                    let n = counts[h];
                    if n == 0 {
                        continue;
                    }
                    let len = f64::from(n) / f64::from(peak) * if above { up } else { down };
                    let y = if above { at - len } else { at };
                    at = if above { at - len } else { at + len };
                    let title = format!("{rule}: {n} {}", if above { "block(s)" } else { "release(s)" });
                    out.push((40.0 + h as f64 * slot + 1.0, y, len.max(0.5), colour(rule), above, title));
                }
            }
            out
        };
        let hour_label = |h: usize| crate::time::rfc3339(self.start + h as u64 * HOUR)[11..16].to_owned();
        html! {
            svg.chart viewBox={"0 0 " (W) " " (H)} role="img" aria-label="Blocks and releases per hour over the last 24 hours" {
                text.axis x="0" y="14" { (peak) }
                text.axis x="0" y=(MID + 4.0) { "0" }
                text.axis x="0" y=(H - 26.0) { (peak) }
                line.axis x1="40" x2=(W) y1=(MID) y2=(MID) {}
                @for (x, y, len, c, above, title) in bars(&self.blocks, true).into_iter().chain(bars(&self.releases, false)) {
                    rect class={ "c" (c) @if !above { " release" } } x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                        width=(format!("{:.1}", slot - 2.0)) height=(format!("{len:.1}")) { title { (title) } }
                }
                @for h in (0..HOURS).step_by(3) {
                    text.axis x=(format!("{:.1}", 40.0 + h as f64 * slot)) y=(H - 4.0) { (hour_label(h)) }
                }
                text.axis x=(W - 150.0) y="14" { "▲ blocks  ▼ releases" }
            }
            ul.legend {
                @for r in &rules {
                    li { span class={ "swatch c" (colour(r)) } {} (r) }
                }
                @if rules.is_empty() { li { "No block or release in the last 24 hours." } }
            }
        }
    }
}

/// An address's score over time: its offences (the score reaching the threshold, with the ladder
/// level they got; the score then starts again from 0), the score gathered since, decaying from
/// when it was last computed through the next two half-lives, and the threshold.
pub fn score_svg(
    offences: &[(Millis, u32)],
    score: Option<(f64, Millis)>,
    half_life: Duration,
    threshold: f64,
    now: Millis,
) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 48.0;
    let hl = ms(half_life).max(1);
    let first = offences.iter().map(|o| o.0).chain(score.map(|s| s.1)).min().unwrap_or(now).min(now.saturating_sub(hl));
    let end = now + 2 * hl;
    let span = (end - first).max(1) as f64;
    let x = |t: Millis| LEFT + (t.saturating_sub(first)) as f64 / span * (W - LEFT - 8.0);
    let top = score.map_or(0.0, |s| s.0).max(threshold) * 1.15;
    let y = |v: f64| H - 24.0 - v / top * (H - 40.0);
    let curve: Vec<String> = match score.filter(|s| s.0 > 0.0) {
        Some((value, at)) => (0..=48)
            .map(|i| {
                let t = at + (end.saturating_sub(at)) * i / 48;
                let v = value * 0.5f64.powf(t.saturating_sub(at) as f64 / hl as f64);
                format!("{:.1},{:.1}", x(t), y(v))
            })
            .collect(),
        None => Vec::new(),
    };
    html! {
        svg.chart viewBox={"0 0 " (W) " " (H)} role="img" aria-label="Score over time" {
            line.threshold x1=(LEFT) x2=(W) y1=(format!("{:.1}", y(threshold))) y2=(format!("{:.1}", y(threshold))) {}
            text.axis x="0" y=(format!("{:.1}", y(threshold) + 4.0)) { (format!("{threshold:.0}")) }
            text.axis x="0" y=(H - 20.0) { "0" }
            line.axis x1=(LEFT) x2=(W) y1=(H - 24.0) y2=(H - 24.0) {}
            line.now x1=(format!("{:.1}", x(now))) x2=(format!("{:.1}", x(now))) y1="8" y2=(H - 24.0) {}
            text.axis x=(format!("{:.1}", x(now) + 3.0)) y="16" { "now" }
            @if !curve.is_empty() { polyline.score points=(curve.join(" ")) {} }
            @for (at, level) in offences {
                // An offence is the score reaching the threshold; the score then starts again at 0.
                line.reset x1=(format!("{:.1}", x(*at))) x2=(format!("{:.1}", x(*at))) y1=(format!("{:.1}", y(threshold))) y2=(H - 24.0) {}
                circle.offence cx=(format!("{:.1}", x(*at))) cy=(format!("{:.1}", y(threshold))) r="5" {
                    title { "offence at " (crate::time::rfc3339(*at)) ", level " (level) }
                }
                text.axis x=(format!("{:.1}", x(*at) + 6.0)) y=(format!("{:.1}", y(threshold) - 6.0)) { "L" (level) }
            }
            text.axis x=(LEFT) y=(H - 4.0) { (crate::time::rfc3339(first)) }
            text.axis x=(W - 170.0) y=(H - 4.0) { (crate::time::rfc3339(end)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(event: Event, rule: &str, at: Millis) -> AuditRecord {
        let mut r = AuditRecord::note(event, at, "stickwarden", String::new());
        r.rule = rule.into();
        r
    }

    #[test]
    fn activity_counts_by_hour_and_rule_and_stops_at_its_start() {
        let now = 100 * HOUR + 1_000;
        let mut a = Activity::new(now);
        assert_eq!(a.start, 77 * HOUR);
        assert!(a.add(&rec(Event::Block, "flood", now)));
        assert!(a.add(&rec(Event::Block, "flood", now - 10)));
        assert!(a.add(&rec(Event::Release, "scan", 77 * HOUR)));
        assert!(a.add(&rec(Event::Allow, "", 80 * HOUR)), "other events are skipped, not the end");
        assert!(!a.add(&rec(Event::Block, "flood", 77 * HOUR - 1)), "older than the chart");
        assert_eq!(a.blocks["flood"][23], 2);
        assert_eq!(a.releases["scan"][0], 1);
        assert_eq!(a.blocks.len(), 1);
    }

    #[test]
    fn labels_are_escaped_in_the_svg() {
        let mut a = Activity::new(10 * HOUR);
        a.add(&rec(Event::Block, "<script>x</script>", 10 * HOUR));
        let svg = a.svg().into_string();
        assert!(svg.contains("&lt;script&gt;x&lt;/script&gt;") && !svg.contains("<script>"));
    }

    #[test]
    fn the_score_curve_decays_from_the_stored_score() {
        let hl = Duration::from_secs(600);
        let svg = score_svg(&[(1_000, 1)], Some((200.0, 1_000)), hl, 100.0, 2_000).into_string();
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains("<polyline"));
        let none = score_svg(&[], None, hl, 100.0, 2_000).into_string();
        assert!(!none.contains("<polyline"));
    }
}
