//! `mizuban replay --report FILE.html`: the replay as one self-contained
//! page for a person — nothing fetched when it is opened (styles inline,
//! charts as generated SVG). Summary, KPIs side by side, alarms over time,
//! and for each site where the rule sets differ its trend with both sets'
//! alarms marked. Times in the utility's zone, with the zone shown.

use super::run::{Occurrence, Trends, BUCKETS};
use super::Output;
use crate::alarm::kpi::{classify, EventKind, Kpis};
use crate::config::Config;
use crate::model::Timestamp;
use chrono::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

const COLOURS: [&str; 2] = ["#1f5fbf", "#d9730d"];
/// Sites drawn with their trend (the rest are listed).
const MAX_SITES: usize = 24;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Zone(i32);

impl Zone {
    fn fmt(&self, t: Timestamp) -> String {
        (t + Duration::hours(self.0 as i64))
            .format("%Y-%m-%d %H:%M")
            .to_string()
    }
    fn name(&self) -> String {
        format!("UTC{:+}", self.0)
    }
}

fn annunciations(alarms: &[Occurrence]) -> Vec<Timestamp> {
    alarms
        .iter()
        .flat_map(|o| o.changes.iter())
        .filter(|c| classify(c.action, c.to, c.late) == Some(EventKind::Annunciated))
        .map(|c| c.at)
        .collect()
}

/// Five time labels along the x axis at height `y`, the outer ones kept
/// inside the chart.
fn time_axis(s: &mut String, z: &Zone, (from, to): (Timestamp, Timestamp), (left, width): (f64, f64), y: f64) {
    let span = (to - from).num_milliseconds();
    for k in 0..=4 {
        let _ = write!(
            s,
            r#"<text x="{x:.0}" y="{y}" class="ax" text-anchor="{a}">{l}</text>"#,
            a = ["start", "middle", "middle", "middle", "end"][k as usize],
            x = left + width * k as f64 / 4.0,
            l = z.fmt(from + Duration::milliseconds(span * k / 4))
        );
    }
}

/// Bars per run over the span: hourly up to three days, then daily, then weekly.
fn alarms_chart(out: &Output, from: Timestamp, to: Timestamp, z: &Zone) -> String {
    let span_h = ((to - from).num_minutes() as f64 / 60.0).max(1.0);
    let (step, unit) = if span_h <= 72.0 {
        (Duration::hours(1), "hour")
    } else if span_h <= 24.0 * 120.0 {
        (Duration::days(1), "day")
    } else {
        (Duration::weeks(1), "week")
    };
    let n = (((to - from).num_seconds() as f64 / step.num_seconds() as f64).ceil() as usize).max(1);
    let runs: Vec<Vec<usize>> = out
        .runs
        .iter()
        .map(|r| {
            let mut b = vec![0usize; n];
            for t in annunciations(&r.run.alarms) {
                let i = ((t - from).num_seconds() / step.num_seconds()).clamp(0, n as i64 - 1) as usize;
                b[i] += 1;
            }
            b
        })
        .collect();
    let max = runs.iter().flatten().copied().max().unwrap_or(0).max(1);
    let (w, h, left, bottom) = (900.0, 220.0, 40.0, 30.0);
    let plot_w = w - left - 10.0;
    let plot_h = h - bottom - 10.0;
    let slot = plot_w / n as f64;
    let bar = slot / runs.len().max(1) as f64;
    let mut s = format!(
        r#"<svg class="chart alarms" viewBox="0 0 {w} {h}" role="img" aria-label="alarms per {unit}"><title>Alarms annunciated per {unit}</title>"#
    );
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{y}" x2="{x2}" y2="{y}" stroke="#888"/><text x="{tx}" y="18" class="ax" text-anchor="end">{max}</text><text x="{tx}" y="{y}" class="ax" text-anchor="end">0</text>"##,
        y = 10.0 + plot_h,
        x2 = w - 10.0,
        tx = left - 4.0
    );
    for (ri, b) in runs.iter().enumerate() {
        for (i, c) in b.iter().enumerate().filter(|(_, c)| **c > 0) {
            let bh = *c as f64 / max as f64 * plot_h;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.2}" height="{bh:.1}" fill="{col}"><title>{run}: {c} at {t}</title></rect>"#,
                x = left + i as f64 * slot + ri as f64 * bar,
                y = 10.0 + plot_h - bh,
                bw = (bar * 0.9).max(0.5),
                col = COLOURS[ri % 2],
                run = esc(&out.runs[ri].run.name),
                t = z.fmt(from + step * i as i32),
            );
        }
    }
    time_axis(&mut s, z, (from, to), (left, plot_w), h - 8.0);
    s.push_str("</svg>");
    s
}

/// One point's trend (min–max band) with each run's alarm spans of the site
/// as a strip: the first run above, the second below.
fn trend_chart(
    point: &str,
    band: &[(f32, f32)],
    spans: &[Vec<(Timestamp, Timestamp)>],
    tr: &Trends,
    z: &Zone,
) -> String {
    let vals: Vec<f32> = band
        .iter()
        .flat_map(|(a, b)| [*a, *b])
        .filter(|v| !v.is_nan())
        .collect();
    let lo = vals.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = vals.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (lo, hi) = if lo.is_finite() {
        (lo, if hi > lo { hi } else { lo + 1.0 })
    } else {
        (0.0, 1.0)
    };
    let (w, h, left) = (900.0, 170.0, 56.0);
    let (top, plot_h) = (22.0, 110.0);
    let plot_w = w - left - 10.0;
    let x_of = |i: f64| left + plot_w * i / BUCKETS as f64;
    let y_of = |v: f32| top + plot_h - ((v - lo) / (hi - lo)) as f64 * plot_h;
    let mut s = format!(
        r#"<svg class="chart trend" viewBox="0 0 {w} {h}" role="img" aria-label="{p}"><title>{p}</title>"#,
        p = esc(point)
    );
    let span = (tr.to - tr.from).num_milliseconds().max(1) as f64;
    let x_t = |t: Timestamp| left + plot_w * ((t - tr.from).num_milliseconds() as f64 / span).clamp(0.0, 1.0);
    for (ri, list) in spans.iter().enumerate() {
        let y = if ri == 0 { 4.0 } else { top + plot_h + 6.0 };
        for (a, b) in list {
            let _ = write!(
                s,
                r#"<rect class="span run{ri}" x="{x:.1}" y="{y}" width="{bw:.1}" height="12" fill="{col}" opacity="0.8"><title>{a} – {b}</title></rect>"#,
                x = x_t(*a),
                bw = (x_t(*b) - x_t(*a)).max(1.5),
                col = COLOURS[ri % 2],
                a = z.fmt(*a),
                b = z.fmt(*b),
            );
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{top}" width="{bw:.1}" height="{plot_h}" fill="{col}" opacity="0.08"/>"#,
                x = x_t(*a),
                bw = (x_t(*b) - x_t(*a)).max(1.0),
                col = COLOURS[ri % 2],
            );
        }
    }
    let mut upper = String::new();
    let mut lower = Vec::new();
    for (i, (a, b)) in band.iter().enumerate().filter(|(_, (a, _))| !a.is_nan()) {
        let x = x_of(i as f64 + 0.5);
        let _ = write!(upper, "{x:.1},{:.1} ", y_of(*b));
        lower.push(format!("{x:.1},{:.1}", y_of(*a)));
    }
    lower.reverse();
    let _ = write!(
        s,
        r##"<polygon points="{upper}{lower}" fill="#555" fill-opacity="0.35" stroke="#333" stroke-width="1"/>"##,
        lower = lower.join(" ")
    );
    let _ = write!(
        s,
        r#"<text x="{tx}" y="{y1:.0}" class="ax" text-anchor="end">{hi}</text><text x="{tx}" y="{y0:.0}" class="ax" text-anchor="end">{lo}</text>"#,
        tx = left - 4.0,
        y1 = top + 8.0,
        y0 = top + plot_h,
        hi = hi,
        lo = lo
    );
    time_axis(&mut s, z, (tr.from, tr.to), (left, plot_w), h - 4.0);
    s.push_str("</svg>");
    s
}

/// Each time an occurrence was active (a chattering one is active many
/// times), in event time.
fn active_periods(o: &Occurrence, end: Timestamp) -> Vec<(Timestamp, Timestamp)> {
    let mut out = Vec::new();
    let mut since = None;
    for c in &o.changes {
        let t = c.event_time.unwrap_or(c.at);
        match c.action {
            crate::alarm::Action::Raise => {
                since.get_or_insert(t);
            }
            crate::alarm::Action::Clear => {
                if let Some(s) = since.take() {
                    out.push((s, t.max(s)));
                }
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, end));
    }
    out
}

fn kpi_rows(k: &[&Kpis]) -> String {
    let mut s = String::new();
    let mut row = |name: &str, f: &dyn Fn(&Kpis) -> String| {
        let _ = write!(s, "<tr><th>{}</th>", esc(name));
        for x in k {
            let _ = write!(s, "<td>{}</td>", esc(&f(x)));
        }
        s.push_str("</tr>");
    };
    row("Alarms annunciated", &|k| k.annunciations.to_string());
    row("Per hour, mean (EEMUA 191: ≤ 6 acceptable)", &|k| {
        format!("{:.2}", k.per_hour_mean)
    });
    row("Per hour, peak", &|k| k.per_hour_peak.to_string());
    row("Per 10 minutes, peak (ISA-18.2: ≤ 10)", &|k| {
        k.per_10min_peak.to_string()
    });
    row("Flood periods (> 10 in 10 min)", &|k| k.flood_periods.to_string());
    row("Time in flood", &|k| format!("{} %", k.time_in_flood_pct));
    row("Chattering alarms (≥ 3 in 60 s)", &|k| k.chattering.len().to_string());
    row("Stale alarms (active > 24 h)", &|k| k.stale.to_string());
    row("Ten worst actors' share", &|k| format!("{} %", k.bad_actors_share_pct));
    for (i, p) in ["high + critical (guide 5 %)", "medium (guide 15 %)", "low (guide 80 %)"]
        .iter()
        .enumerate()
    {
        row(&format!("Priority {p}"), &|k| {
            k.priorities
                .get(i)
                .map_or(String::new(), |x| format!("{} ({} %)", x.count, x.share_pct))
        });
    }
    s
}

/// The page, from the replay's output and the trends it kept.
pub fn render(out: &Output, trends: &Trends, cfg: &Config) -> String {
    let z = Zone(cfg.service.utc_offset_hours);
    let (from, to) = (trends.from, trends.to);
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>mizuban replay {f} – {t}</title><style>
body{{font-family:system-ui,"Noto Sans CJK JP",sans-serif;margin:1.5rem;max-width:960px;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1rem}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}}
th{{background:#f4f4f4;font-weight:600}}.chart{{width:100%;height:auto;border:1px solid #ddd;margin:.25rem 0 1rem}}
.ax{{font-size:10px;fill:#555}}.key span{{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;vertical-align:middle}}
h2{{margin-top:2rem;border-bottom:1px solid #ddd}}code{{background:#f4f4f4;padding:0 .2em}}</style></head><body>
<h1>Replay {f} – {t} <small>({zone})</small></h1>"#,
        f = esc(&z.fmt(from)),
        t = esc(&z.fmt(to)),
        zone = z.name()
    );
    let c = &out.capture;
    let _ = write!(
        h,
        r#"<h2 id="summary">Summary</h2><table class="summary"><tr><th>Inputs</th><td>{} ({} MQTT, {} Modbus polls, {} failed polls)</td></tr><tr><th>Readings</th><td>{}</td></tr><tr><th>Rejected before the rules</th><td>{}</td></tr>"#,
        c.inputs,
        c.mqtt,
        c.polls,
        c.poll_errors,
        c.readings,
        esc(&if c.rejected.is_empty() {
            "none".to_string()
        } else {
            c.rejected
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    );
    for r in &out.runs {
        let _ = write!(
            h,
            "<tr><th>{} rules</th><td>{} alarm occurrences, {} late samples</td></tr>",
            esc(&r.run.name),
            r.run.alarms.len(),
            r.run.late_samples
        );
    }
    if let Some(d) = &out.diff {
        let _ = write!(
            h,
            "<tr><th>Candidate against configured</th><td>{} added, {} removed, {} moved; occurrences someone would have been notified about: {} → {}</td></tr>",
            d.added.len(),
            d.removed.len(),
            d.changed.len(),
            d.pages.0,
            d.pages.1
        );
    }
    h.push_str("</table>");

    h.push_str(r#"<h2 id="kpis">Alarm-management KPIs</h2><table class="kpis"><tr><th></th>"#);
    for r in &out.runs {
        let _ = write!(h, "<th>{}</th>", esc(&r.run.name));
    }
    h.push_str("</tr>");
    h.push_str(&kpi_rows(&out.runs.iter().map(|r| &r.kpis).collect::<Vec<_>>()));
    h.push_str("</table>");

    // Who would have been woken: the dry run's messages, per rule set.
    h.push_str(r#"<h2 id="notifications">Notifications that would have gone out</h2>"#);
    if out.runs.iter().all(|r| r.run.notifications.is_empty()) {
        h.push_str("<p>None (no route took these alarms, or no notification configuration).</p>");
    }
    const LISTED: usize = 200;
    for r in out.runs.iter().filter(|r| !r.run.notifications.is_empty()) {
        let _ = write!(
            h,
            r#"<h3>{} rules: {} messages{}</h3><table class="notifications"><tr><th>When</th><th>What</th></tr>"#,
            esc(&r.run.name),
            r.run.notifications.len(),
            if r.run.held_notifications > 0 {
                format!(", {} held by the rate limit for a summary", r.run.held_notifications)
            } else {
                String::new()
            }
        );
        for m in r.run.notifications.iter().take(LISTED) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&z.fmt(m.at)),
                esc(&super::describe(m, &r.run.alarms, cfg.service.utc_offset_hours))
            );
        }
        h.push_str("</table>");
        if r.run.notifications.len() > LISTED {
            let _ = write!(
                h,
                "<p>… and {} more (the JSON output lists every one).</p>",
                r.run.notifications.len() - LISTED
            );
        }
    }

    h.push_str(r#"<h2 id="over-time">Alarms over time</h2><p class="key">"#);
    for (i, r) in out.runs.iter().enumerate() {
        let _ = write!(
            h,
            r#"<span style="background:{}"></span>{}"#,
            COLOURS[i % 2],
            esc(&r.run.name)
        );
    }
    h.push_str("</p>");
    h.push_str(&alarms_chart(out, from, to, &z));

    // Sites where the rule sets differ (or, with one rule set, the sites
    // with the most alarms), each with its trend and both sets' alarms.
    let mut sites: Vec<String> = Vec::new();
    let mut sources: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if let Some(d) = &out.diff {
        for l in d.added.iter().chain(&d.removed) {
            sources.entry(l.site.clone()).or_default().insert(l.source.clone());
        }
        for m in &d.changed {
            sources.entry(m.site.clone()).or_default().insert(m.source.clone());
        }
    } else {
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for o in out.runs.iter().flat_map(|r| &r.run.alarms) {
            *count.entry(o.alarm.site.to_string()).or_default() += 1;
            sources
                .entry(o.alarm.site.to_string())
                .or_default()
                .insert(o.alarm.source.clone());
        }
        let mut v: Vec<_> = count.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sources.retain(|s, _| v.iter().take(MAX_SITES).any(|(x, _)| x == s));
    }
    sites.extend(sources.keys().cloned());
    let title = if out.diff.is_some() {
        "Sites where the rule sets differ"
    } else {
        "Sites with the most alarms"
    };
    let _ = write!(h, r#"<h2 id="sites">{title}</h2>"#);
    if sites.is_empty() {
        h.push_str("<p>None.</p>");
    }
    for site in sites.iter().take(MAX_SITES) {
        let name = cfg.site(site).map(|s| s.name.clone()).unwrap_or_default();
        let _ = write!(
            h,
            r#"<h3 class="site">{} <small>{}</small></h3>"#,
            esc(site),
            esc(&name)
        );
        let spans: Vec<Vec<(Timestamp, Timestamp)>> = out
            .runs
            .iter()
            .map(|r| {
                r.run
                    .alarms
                    .iter()
                    .filter(|o| o.alarm.site.as_str() == site)
                    .flat_map(|o| active_periods(o, to))
                    .collect()
            })
            .collect();
        // The points the differing alarms are about; for a device's own
        // conditions, the site's points with a trend.
        let mut points: Vec<&String> = sources[site]
            .iter()
            .filter_map(|src| trends.points.get_key_value(src).map(|(k, _)| k))
            .collect();
        if points.is_empty() {
            let mut all: Vec<&String> = trends
                .points
                .keys()
                .filter(|p| p.split_once('.').is_some_and(|(s, _)| s == site))
                .collect();
            all.sort();
            points = all.into_iter().take(2).collect();
        }
        for p in points {
            h.push_str(&trend_chart(p, &trends.points[p], &spans, trends, &z));
        }
        h.push_str(
            "<table class=\"site-alarms\"><tr><th>rules</th><th>condition</th><th>raised</th><th>cleared</th></tr>",
        );
        for (ri, r) in out.runs.iter().enumerate() {
            for o in r.run.alarms.iter().filter(|o| o.alarm.site.as_str() == site).take(40) {
                let _ = write!(
                    h,
                    r#"<tr><td style="color:{}">{}</td><td title="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
                    COLOURS[ri % 2],
                    esc(&r.run.name),
                    esc(&o.alarm.source),
                    esc(&o.alarm.condition),
                    z.fmt(o.alarm.raised_at),
                    o.alarm.cleared_at.map(|c| z.fmt(c)).unwrap_or_else(|| "—".into())
                );
            }
        }
        h.push_str("</table>");
    }
    if sites.len() > MAX_SITES {
        let _ = write!(
            h,
            "<p>And {} more sites: {}</p>",
            sites.len() - MAX_SITES,
            esc(&sites[MAX_SITES..].join(", "))
        );
    }
    h.push_str("<p><small>Generated by mizuban replay. Times are the utility's local time; raise and clear times are the devices' event times.</small></p></body></html>\n");
    h
}
