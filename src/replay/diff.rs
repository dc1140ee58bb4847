//! What a candidate rule set changes against the configured one: alarm
//! occurrences added, removed, and moved in time. Occurrences are matched per
//! `(site, source, condition)`: in raise order, a configured occurrence pairs
//! with the candidate one whose active span overlaps it (or, failing that,
//! raised within `NEAR` of it); what pairs with nothing was added or removed.

use super::run::Occurrence;
use crate::model::Timestamp;
use chrono::Duration;
use serde::Serialize;
use std::collections::BTreeMap;

/// Raises this close are the same episode seen by a differently tuned rule.
const NEAR_S: i64 = 3600;

#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub site: String,
    pub source: String,
    pub condition: String,
    pub configured: Span,
    pub candidate: Span,
    /// Candidate minus configured, seconds (negative: the candidate raised earlier).
    pub raised_shift_s: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub id: String,
    pub raised_at: Timestamp,
    pub cleared_at: Option<Timestamp>,
    /// A notification about it would have gone out (the dry run's routing;
    /// who and when is in the run's notifications).
    pub paged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub id: String,
    pub site: String,
    pub source: String,
    pub condition: String,
    pub priority: crate::device::Priority,
    pub raised_at: Timestamp,
    pub cleared_at: Option<Timestamp>,
    pub paged: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub added: Vec<Listed>,
    pub removed: Vec<Listed>,
    pub changed: Vec<Moved>,
    /// Occurrences someone would have been notified about: configured, candidate.
    pub pages: (usize, usize),
}

fn paged(o: &Occurrence) -> bool {
    o.alarm.paged
}

fn listed(o: &Occurrence) -> Listed {
    Listed {
        id: o.alarm.id.clone(),
        site: o.alarm.site.to_string(),
        source: o.alarm.source.clone(),
        condition: o.alarm.condition.clone(),
        priority: o.alarm.priority,
        raised_at: o.alarm.raised_at,
        cleared_at: o.alarm.cleared_at,
        paged: paged(o),
    }
}

fn span(o: &Occurrence) -> Span {
    Span {
        id: o.alarm.id.clone(),
        raised_at: o.alarm.raised_at,
        cleared_at: o.alarm.cleared_at,
        paged: paged(o),
    }
}

fn pairs(a: &Occurrence, b: &Occurrence, end: Timestamp) -> bool {
    let (a0, a1) = (a.alarm.raised_at, a.alarm.cleared_at.unwrap_or(end));
    let (b0, b1) = (b.alarm.raised_at, b.alarm.cleared_at.unwrap_or(end));
    (a0 <= b1 && b0 <= a1) || (a0 - b0).num_seconds().abs() <= NEAR_S
}

pub fn diff(configured: &[Occurrence], candidate: &[Occurrence]) -> Diff {
    type Key = (String, String, String);
    let key = |o: &Occurrence| -> Key {
        (
            o.alarm.site.to_string(),
            o.alarm.source.clone(),
            o.alarm.condition.clone(),
        )
    };
    let end = configured
        .iter()
        .chain(candidate)
        .map(|o| o.alarm.cleared_at.unwrap_or(o.alarm.raised_at))
        .max()
        .unwrap_or_default()
        + Duration::seconds(1);
    let mut by_key: BTreeMap<Key, (Vec<&Occurrence>, Vec<&Occurrence>)> = BTreeMap::new();
    for o in configured {
        by_key.entry(key(o)).or_default().0.push(o);
    }
    for o in candidate {
        by_key.entry(key(o)).or_default().1.push(o);
    }
    let mut d = Diff {
        pages: (
            configured.iter().filter(|o| paged(o)).count(),
            candidate.iter().filter(|o| paged(o)).count(),
        ),
        ..Default::default()
    };
    for ((site, source, condition), (a, b)) in by_key {
        let mut taken = vec![false; b.len()];
        for x in a {
            let m = (0..b.len()).find(|&j| !taken[j] && pairs(x, b[j], end));
            match m {
                Some(j) => {
                    taken[j] = true;
                    let (sa, sb) = (span(x), span(b[j]));
                    if (sa.raised_at, sa.cleared_at, sa.paged) != (sb.raised_at, sb.cleared_at, sb.paged) {
                        d.changed.push(Moved {
                            site: site.clone(),
                            source: source.clone(),
                            condition: condition.clone(),
                            raised_shift_s: (sb.raised_at - sa.raised_at).num_seconds(),
                            configured: sa,
                            candidate: sb,
                        });
                    }
                }
                None => d.removed.push(listed(x)),
            }
        }
        for (j, y) in b.iter().enumerate() {
            if !taken[j] {
                d.added.push(listed(y));
            }
        }
    }
    let order = |l: &Listed| (l.raised_at, l.site.clone(), l.condition.clone());
    d.added.sort_by_key(order);
    d.removed.sort_by_key(order);
    d.changed
        .sort_by_key(|m| (m.configured.raised_at, m.site.clone(), m.condition.clone()));
    d
}
