//! Alarm-management KPIs (ISA-18.2 / IEC 62682 and EEMUA 191), computed by
//! the same function for the live journal (`GET /api/v1/kpis`) and for a
//! replay: from a list of alarm events (annunciations, clears, acks) and
//! pages sent, over a span. Pure: the caller gathers the events.
//!
//! - annunciation rate: per hour (mean, peak) and per 10 minutes (peak);
//!   EEMUA 191 calls ≤ 6 per hour "very likely acceptable" and > 30 per hour
//!   over-demanding; ISA-18.2 puts the manageable peak at 10 per 10 minutes;
//! - flood: a 10-minute period with more than 10 annunciations (ISA-18.2),
//!   as the share of the span spent in flood;
//! - chattering: an alarm (site, source, condition) annunciated 3 or more
//!   times within 60 s;
//! - stale: an occurrence active for more than 24 h;
//! - bad actors: the 10 alarms annunciated most, with their share;
//! - priority distribution against the ISA-18.2 guide (about 80 % low, 15 %
//!   medium, 5 % high; critical and high together here);
//! - time to acknowledge (median, 90th percentile);
//! - pages per on-call person per night (17:00–09:00 local).

use super::Action;
use crate::device::Priority;
use crate::model::Timestamp;
use chrono::Duration;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The alarm became active and was shown to operators (a raise or a
    /// re-raise; not suppressed, shelved, out of service or from late data).
    Annunciated,
    Cleared,
    Acked,
}

/// What a journal transition is for the KPIs: `action` and the state it
/// went `to`, and whether it came from late data. The same for the live
/// journal and a replay.
pub fn classify(action: Action, to: &str, late: bool) -> Option<EventKind> {
    match action {
        // Shown to operators: not suppressed, shelved, out of service, or
        // found in data that arrived after the fact.
        Action::Raise if !late && matches!(to, "unack_active" | "ack_active") => Some(EventKind::Annunciated),
        Action::Clear => Some(EventKind::Cleared),
        Action::Ack => Some(EventKind::Acked),
        // Named one by one, so a new action is a decision here, not a default.
        Action::Raise
        | Action::Shelve
        | Action::Unshelve
        | Action::Suppress
        | Action::Unsuppress
        | Action::OutOfService
        | Action::ReturnToService
        | Action::Late
        | Action::Confirm
        | Action::Command => None,
    }
}

#[derive(Debug, Clone)]
pub struct AlarmEvent {
    pub at: Timestamp,
    /// The occurrence.
    pub alarm: String,
    pub site: String,
    pub source: String,
    pub condition: String,
    pub priority: Priority,
    pub kind: EventKind,
}

/// A notification sent to a person.
#[derive(Debug, Clone)]
pub struct Page {
    pub at: Timestamp,
    pub person: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BadActor {
    pub site: String,
    pub source: String,
    pub condition: String,
    pub count: usize,
    /// Share of all annunciations, percent.
    pub share_pct: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PriorityShare {
    pub priority: &'static str,
    pub count: usize,
    pub share_pct: f64,
    /// ISA-18.2's guide for this priority, percent.
    pub guide_pct: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NightPages {
    pub person: String,
    /// Local date of the evening the night began.
    pub night: String,
    pub pages: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Kpis {
    pub from: Timestamp,
    pub to: Timestamp,
    pub hours: f64,
    pub annunciations: usize,
    pub per_hour_mean: f64,
    pub per_hour_peak: usize,
    pub per_10min_peak: usize,
    /// 10-minute periods with more than 10 annunciations.
    pub flood_periods: usize,
    pub time_in_flood_pct: f64,
    /// Alarms annunciated 3 or more times within 60 s.
    pub chattering: Vec<BadActor>,
    /// Occurrences active for more than 24 h (up to `to` if still active).
    pub stale: usize,
    pub bad_actors: Vec<BadActor>,
    /// Share of the ten worst actors in all annunciations, percent.
    pub bad_actors_share_pct: f64,
    pub priorities: Vec<PriorityShare>,
    pub acked: usize,
    pub ack_median_s: Option<f64>,
    pub ack_p90_s: Option<f64>,
    pub pages: usize,
    /// Pages per person and night, worst first.
    pub pages_per_night: Vec<NightPages>,
    pub pages_per_night_max: usize,
}

fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        (n as f64 * 1000.0 / of as f64).round() / 10.0
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

/// The KPIs of `events` and `pages` within `[from, to)`. `utc_offset_hours`
/// places the nights.
pub fn compute(events: &[AlarmEvent], pages: &[Page], from: Timestamp, to: Timestamp, utc_offset_hours: i32) -> Kpis {
    let inside = |t: &Timestamp| *t >= from && *t < to;
    let mut ann: Vec<&AlarmEvent> = events
        .iter()
        .filter(|e| e.kind == EventKind::Annunciated && inside(&e.at))
        .collect();
    ann.sort_by_key(|e| e.at);
    let n = ann.len();
    let span_ms = (to - from).num_milliseconds().max(1);
    let hours = span_ms as f64 / 3_600_000.0;

    // Fixed buckets from `from`: hours and 10-minute periods.
    let bucket = |t: Timestamp, ms: i64| ((t - from).num_milliseconds() / ms) as usize;
    let mut per_h: HashMap<usize, usize> = HashMap::new();
    let mut per_10: HashMap<usize, usize> = HashMap::new();
    for e in &ann {
        *per_h.entry(bucket(e.at, 3_600_000)).or_default() += 1;
        *per_10.entry(bucket(e.at, 600_000)).or_default() += 1;
    }
    let periods = ((span_ms + 599_999) / 600_000).max(1) as usize;
    let flood_periods = per_10.values().filter(|c| **c > 10).count();

    type Key = (String, String, String);
    let key = |e: &AlarmEvent| -> Key { (e.site.clone(), e.source.clone(), e.condition.clone()) };
    let mut by_key: BTreeMap<Key, Vec<Timestamp>> = BTreeMap::new();
    for e in &ann {
        by_key.entry(key(e)).or_default().push(e.at);
    }
    let actor = |k: &Key, count: usize| BadActor {
        site: k.0.clone(),
        source: k.1.clone(),
        condition: k.2.clone(),
        count,
        share_pct: pct(count, n),
    };
    let mut chattering: Vec<BadActor> = by_key
        .iter()
        .filter(|(_, ts)| ts.windows(3).any(|w| w[2] - w[0] <= Duration::seconds(60)))
        .map(|(k, ts)| actor(k, ts.len()))
        .collect();
    chattering.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.site.cmp(&b.site)));
    let mut bad: Vec<BadActor> = by_key.iter().map(|(k, ts)| actor(k, ts.len())).collect();
    bad.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.site, &a.source, &a.condition).cmp(&(&b.site, &b.source, &b.condition)))
    });
    bad.truncate(10);
    let bad_share = pct(bad.iter().map(|b| b.count).sum(), n);

    // Occurrences: first annunciation, clear, ack.
    #[derive(Default)]
    struct Occ {
        raised: Option<Timestamp>,
        cleared: Option<Timestamp>,
        acked: Option<Timestamp>,
    }
    let mut occ: HashMap<&str, Occ> = HashMap::new();
    for e in events.iter().filter(|e| e.at < to) {
        let o = occ.entry(e.alarm.as_str()).or_default();
        match e.kind {
            EventKind::Annunciated => {
                o.raised.get_or_insert(e.at);
            }
            EventKind::Cleared => o.cleared = Some(e.at),
            EventKind::Acked => {
                o.acked.get_or_insert(e.at);
            }
        }
    }
    let stale = occ
        .values()
        .filter(|o| {
            o.raised.is_some_and(|r| {
                let end = o.cleared.filter(|c| *c >= r).unwrap_or(to);
                end - r > Duration::hours(24) && end > from
            })
        })
        .count();
    let mut ack_s: Vec<f64> = occ
        .values()
        .filter_map(|o| match (o.raised, o.acked) {
            (Some(r), Some(a)) if a >= r && inside(&r) => Some((a - r).num_milliseconds() as f64 / 1000.0),
            _ => None,
        })
        .collect();
    ack_s.sort_by(|a, b| a.total_cmp(b));

    let count_p = |p: &[Priority]| ann.iter().filter(|e| p.contains(&e.priority)).count();
    let priorities = vec![
        ("high_and_critical", count_p(&[Priority::Critical, Priority::High]), 5.0),
        ("medium", count_p(&[Priority::Medium]), 15.0),
        ("low", count_p(&[Priority::Low]), 80.0),
    ]
    .into_iter()
    .map(|(priority, count, guide_pct)| PriorityShare {
        priority,
        count,
        share_pct: pct(count, n),
        guide_pct,
    })
    .collect();

    // Nights: 17:00 to 09:00 local, named by the evening's date.
    let mut nights: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut paged = 0;
    for p in pages.iter().filter(|p| inside(&p.at)) {
        paged += 1;
        let local = p.at + Duration::hours(utc_offset_hours as i64);
        let h = chrono::Timelike::hour(&local);
        let night = match h {
            17..=23 => local.date_naive(),
            0..=8 => local.date_naive() - chrono::Days::new(1),
            _ => continue,
        };
        *nights.entry((p.person.clone(), night.to_string())).or_default() += 1;
    }
    let mut pages_per_night: Vec<NightPages> = nights
        .into_iter()
        .map(|((person, night), pages)| NightPages { person, night, pages })
        .collect();
    pages_per_night.sort_by(|a, b| {
        b.pages
            .cmp(&a.pages)
            .then_with(|| (&a.night, &a.person).cmp(&(&b.night, &b.person)))
    });

    Kpis {
        from,
        to,
        hours: (hours * 100.0).round() / 100.0,
        annunciations: n,
        per_hour_mean: ((n as f64 / hours) * 100.0).round() / 100.0,
        per_hour_peak: per_h.values().copied().max().unwrap_or(0),
        per_10min_peak: per_10.values().copied().max().unwrap_or(0),
        flood_periods,
        time_in_flood_pct: pct(flood_periods, periods),
        chattering,
        stale,
        bad_actors: bad,
        bad_actors_share_pct: bad_share,
        priorities,
        acked: ack_s.len(),
        ack_median_s: quantile(&ack_s, 0.5),
        ack_p90_s: quantile(&ack_s, 0.9),
        pages: paged,
        pages_per_night_max: pages_per_night.first().map_or(0, |p| p.pages),
        pages_per_night,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ev(t: Timestamp, id: &str, site: &str, cond: &str, p: Priority, kind: EventKind) -> AlarmEvent {
        AlarmEvent {
            at: t,
            alarm: id.into(),
            site: site.into(),
            source: site.into(),
            condition: cond.into(),
            priority: p,
            kind,
        }
    }

    #[test]
    fn rates_flood_chattering_stale_bad_actors_priorities_acks_and_nights() {
        let t0 = at("2026-12-01T00:00:00Z");
        let mut e = Vec::new();
        // A flood: 12 stations lose power within 5 minutes (critical).
        for i in 0..12 {
            let id = format!("p{i}");
            let t = t0 + Duration::seconds(20 * i);
            e.push(ev(
                t,
                &id,
                &format!("MP-{i:04}"),
                "POWER_FAIL",
                Priority::Critical,
                EventKind::Annunciated,
            ));
            e.push(ev(
                t + Duration::minutes(3),
                &id,
                "",
                "",
                Priority::Critical,
                EventKind::Acked,
            ));
            e.push(ev(
                t + Duration::minutes(40),
                &id,
                "",
                "",
                Priority::Critical,
                EventKind::Cleared,
            ));
        }
        // A chattering level: one occurrence re-raised 4 times in 40 s (low).
        for i in 0..4 {
            e.push(ev(
                t0 + Duration::hours(2) + Duration::seconds(10 * i),
                "c1",
                "MP-0100",
                "HIGH_LEVEL",
                Priority::Low,
                EventKind::Annunciated,
            ));
        }
        e.push(ev(
            t0 + Duration::hours(2) + Duration::minutes(1),
            "c1",
            "MP-0100",
            "HIGH_LEVEL",
            Priority::Low,
            EventKind::Cleared,
        ));
        // Stale: raised at 03:00 and never cleared in a 2-day span.
        e.push(ev(
            t0 + Duration::hours(3),
            "s1",
            "B17",
            "pressure_l",
            Priority::Medium,
            EventKind::Annunciated,
        ));
        // Raised and cleared within the day: not stale.
        e.push(ev(
            t0 + Duration::hours(4),
            "s2",
            "B18",
            "pressure_l",
            Priority::Medium,
            EventKind::Annunciated,
        ));
        e.push(ev(
            t0 + Duration::hours(5),
            "s2",
            "B18",
            "pressure_l",
            Priority::Medium,
            EventKind::Cleared,
        ));
        let to = t0 + Duration::days(2);
        let pages = vec![
            // 18:00 and 02:00 Tokyo on the night of 2026-12-01, one at noon.
            Page {
                at: at("2026-12-01T09:00:00Z"),
                person: "tanaka".into(),
            },
            Page {
                at: at("2026-12-01T17:00:00Z"),
                person: "tanaka".into(),
            },
            Page {
                at: at("2026-12-02T03:00:00Z"),
                person: "tanaka".into(),
            },
        ];
        let k = compute(&e, &pages, t0, to, 9);
        assert_eq!(k.annunciations, 18);
        assert_eq!(k.hours, 48.0);
        assert_eq!(k.per_10min_peak, 12);
        assert_eq!(k.flood_periods, 1);
        assert_eq!(k.time_in_flood_pct, pct(1, 288));
        assert_eq!(k.chattering.len(), 1);
        assert_eq!((k.chattering[0].site.as_str(), k.chattering[0].count), ("MP-0100", 4));
        assert_eq!(k.bad_actors[0].condition, "HIGH_LEVEL", "the worst actor first");
        assert_eq!(k.bad_actors[0].share_pct, pct(4, 18));
        assert_eq!(k.stale, 1);
        let hc = &k.priorities[0];
        assert_eq!((hc.priority, hc.count, hc.guide_pct), ("high_and_critical", 12, 5.0));
        assert_eq!(k.acked, 12);
        assert_eq!(k.ack_median_s, Some(180.0));
        assert_eq!(k.pages, 3);
        assert_eq!(k.pages_per_night_max, 2, "{:?}", k.pages_per_night);
        assert_eq!(k.pages_per_night[0].night, "2026-12-01");
    }

    #[test]
    fn an_empty_span_has_zeros_not_errors() {
        let t0 = at("2026-12-01T00:00:00Z");
        let k = compute(&[], &[], t0, t0 + Duration::hours(1), 9);
        assert_eq!((k.annunciations, k.per_hour_mean, k.flood_periods), (0, 0.0, 0));
        assert_eq!(k.ack_median_s, None);
    }
}
