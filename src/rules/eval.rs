use crate::config::{RuleKind, RuleSpec, Site};
use crate::device::Priority;
use crate::model::{Quality, Timestamp};
use chrono::{Duration, Timelike};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The local hour of day (0..23) of an event time.
pub fn local_hour(t: Timestamp, utc_offset_hours: i32) -> u32 {
    (t + Duration::hours(utc_offset_hours as i64)).hour()
}

/// A condition of a rule changing state at an event time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleTransition {
    pub condition: String,
    pub active: bool,
    pub t: Timestamp,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub priority: Priority,
    pub en: String,
    pub ja: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CondState {
    pub active: bool,
    /// When the opposite state started to hold; the transition happens once it
    /// has held for the on/off delay.
    pub pending_since: Option<Timestamp>,
}

/// Everything a rule remembers about its point. Serialized into the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub last_t: Option<Timestamp>,
    pub conds: BTreeMap<String, CondState>,
    /// Recent good values for rate of change.
    pub window: VecDeque<(Timestamp, f64)>,
    /// Since when the value has stayed within the tolerance of this reference.
    pub frozen_ref: Option<(Timestamp, f64)>,
}

/// A rule bound to one site.
#[derive(Debug, Clone)]
pub struct Evaluator {
    pub rule: Arc<RuleSpec>,
    pub scale: f64,
    pub utc_offset_hours: i32,
}

/// What one limit check wants, before delays.
struct Want {
    suffix: &'static str,
    active: bool,
    limit: f64,
}

fn high(value: f64, limit: f64, deadband: f64, was: bool) -> bool {
    if was {
        value > limit - deadband
    } else {
        value > limit
    }
}
fn low(value: f64, limit: f64, deadband: f64, was: bool) -> bool {
    if was {
        value < limit + deadband
    } else {
        value < limit
    }
}

impl Evaluator {
    pub fn new(rule: Arc<RuleSpec>, site: &Site, utc_offset_hours: i32) -> Self {
        let scale = match &rule.kind {
            RuleKind::HourlyLimits { scale_by: Some(a), .. } => site.attrs.get(a).copied().unwrap_or(1.0),
            _ => 1.0,
        };
        Self {
            rule,
            scale,
            utc_offset_hours,
        }
    }

    pub fn condition_name(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.rule.condition.clone()
        } else {
            format!("{}_{}", self.rule.condition, suffix)
        }
    }

    /// Every condition name this rule can raise.
    pub fn condition_names(&self) -> Vec<String> {
        let suffixes: Vec<&str> = match &self.rule.kind {
            RuleKind::Limits { limits } => [("hh", limits.hh), ("h", limits.h), ("l", limits.l), ("ll", limits.ll)]
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(s, _)| *s)
                .collect(),
            RuleKind::HourlyLimits { high, low, .. } => {
                let mut v = vec![];
                if high.is_some() {
                    v.push("high")
                }
                if low.is_some() {
                    v.push("low")
                }
                v
            }
            RuleKind::RateOfChange { max_rise, max_fall, .. } => {
                let mut v = vec![];
                if max_rise.is_some() {
                    v.push("rise")
                }
                if max_fall.is_some() {
                    v.push("fall")
                }
                v
            }
            RuleKind::Frozen { .. } => vec![""],
        };
        suffixes.into_iter().map(|s| self.condition_name(s)).collect()
    }

    /// True when this reading is older than what the rule has already seen: it
    /// goes to history and to late review, not through the live state.
    pub fn is_out_of_order(&self, state: &RuleState, t: Timestamp) -> bool {
        state.last_t.is_some_and(|l| t <= l)
    }

    /// The limit checks of this rule for one value, ignoring delays and history.
    /// Used for late review of out-of-order data.
    pub fn violations(&self, t: Timestamp, value: f64) -> Vec<(String, f64)> {
        self.wants(&RuleState::default(), t, value)
            .into_iter()
            .filter(|w| w.active)
            .map(|w| (self.condition_name(w.suffix), w.limit))
            .collect()
    }

    fn wants(&self, state: &RuleState, t: Timestamp, v: f64) -> Vec<Want> {
        let r = &self.rule;
        let db = r.deadband;
        let was = |suffix: &str| state.conds.get(&self.condition_name(suffix)).is_some_and(|c| c.active);
        let mut out = Vec::new();
        match &r.kind {
            RuleKind::Limits { limits } => {
                if let Some(l) = limits.hh {
                    out.push(Want {
                        suffix: "hh",
                        active: high(v, l, db, was("hh")),
                        limit: l,
                    });
                }
                if let Some(l) = limits.h {
                    out.push(Want {
                        suffix: "h",
                        active: high(v, l, db, was("h")),
                        limit: l,
                    });
                }
                if let Some(l) = limits.l {
                    out.push(Want {
                        suffix: "l",
                        active: low(v, l, db, was("l")),
                        limit: l,
                    });
                }
                if let Some(l) = limits.ll {
                    out.push(Want {
                        suffix: "ll",
                        active: low(v, l, db, was("ll")),
                        limit: l,
                    });
                }
            }
            RuleKind::HourlyLimits { high: hi, low: lo, .. } => {
                let h = local_hour(t, self.utc_offset_hours) as usize;
                if let Some(hv) = hi {
                    let l = hv[h] * self.scale;
                    out.push(Want {
                        suffix: "high",
                        active: high(v, l, db, was("high")),
                        limit: l,
                    });
                }
                if let Some(lv) = lo {
                    let l = lv[h] * self.scale;
                    out.push(Want {
                        suffix: "low",
                        active: low(v, l, db, was("low")),
                        limit: l,
                    });
                }
            }
            RuleKind::RateOfChange {
                max_rise,
                max_fall,
                window_s,
            } => {
                let from = t - Duration::seconds(*window_s as i64);
                let recent = state.window.iter().filter(|(wt, _)| *wt >= from && *wt < t);
                let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
                for (_, x) in recent {
                    min = min.min(*x);
                    max = max.max(*x);
                }
                if let Some(l) = max_rise {
                    let rise = if min.is_finite() { v - min } else { 0.0 };
                    out.push(Want {
                        suffix: "rise",
                        active: high(rise, *l, db, was("rise")),
                        limit: *l,
                    });
                }
                if let Some(l) = max_fall {
                    let fall = if max.is_finite() { max - v } else { 0.0 };
                    out.push(Want {
                        suffix: "fall",
                        active: high(fall, *l, db, was("fall")),
                        limit: *l,
                    });
                }
            }
            RuleKind::Frozen { duration_s, tolerance } => {
                let active = match state.frozen_ref {
                    Some((since, rv)) if (v - rv).abs() <= *tolerance => {
                        (t - since).num_seconds() >= *duration_s as i64
                    }
                    _ => false,
                };
                out.push(Want {
                    suffix: "",
                    active,
                    limit: *duration_s as f64,
                });
            }
        }
        out
    }

    /// Feeds one in-order reading. Readings of `bad`/`uncertain` quality do not
    /// drive limits (a faulty sensor must not page anyone) but do break a
    /// frozen-value run, since the device evidently reported something else.
    pub fn evaluate(
        &self,
        state: &mut RuleState,
        t: Timestamp,
        value: Option<f64>,
        quality: Quality,
    ) -> Vec<RuleTransition> {
        let mut out = Vec::new();
        if self.is_out_of_order(state, t) {
            return out;
        }
        state.last_t = Some(t);
        let v = match (value, quality) {
            (Some(v), Quality::Good) => v,
            _ => {
                state.frozen_ref = None;
                return out;
            }
        };
        let r = &self.rule;
        for w in self.wants(state, t, v) {
            let name = self.condition_name(w.suffix);
            let cs = state.conds.entry(name.clone()).or_default();
            if w.active == cs.active {
                cs.pending_since = None;
                continue;
            }
            let delay = if w.active { r.on_delay_s } else { r.off_delay_s } as i64;
            let since = *cs.pending_since.get_or_insert(t);
            if (t - since).num_seconds() >= delay {
                cs.active = w.active;
                cs.pending_since = None;
                let label = if w.suffix.is_empty() {
                    String::new()
                } else {
                    format!(" {}", w.suffix.to_uppercase())
                };
                out.push(RuleTransition {
                    condition: name,
                    active: w.active,
                    t,
                    value: Some(v),
                    limit: Some(w.limit),
                    priority: r.priority(w.suffix),
                    en: format!(
                        "{}{}: {} {} (limit {:.3} {})",
                        r.en,
                        label,
                        trim(v),
                        r.unit,
                        w.limit,
                        r.unit
                    ),
                    ja: format!(
                        "{}{}：{} {}（設定 {:.3} {}）",
                        r.ja,
                        label,
                        trim(v),
                        r.unit,
                        w.limit,
                        r.unit
                    ),
                });
            }
        }
        // Windows are updated after the checks so a value is compared with the past.
        if let RuleKind::RateOfChange { window_s, .. } = &r.kind {
            state.window.push_back((t, v));
            let keep_from = t - Duration::seconds(*window_s as i64);
            while state.window.front().is_some_and(|(wt, _)| *wt < keep_from) {
                state.window.pop_front();
            }
        }
        if let RuleKind::Frozen { tolerance, .. } = &r.kind {
            match state.frozen_ref {
                Some((_, rv)) if (v - rv).abs() <= *tolerance => {}
                _ => state.frozen_ref = Some((t, v)),
            }
        }
        out
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LimitSet, SiteSelector};
    use crate::model::{DeviceId, SiteId, SiteKind};
    use chrono::{TimeZone, Utc};

    fn site() -> Site {
        Site {
            id: SiteId::new("B01").unwrap(),
            kind: SiteKind::Dma,
            name: "b".into(),
            name_en: "b".into(),
            area: "a".into(),
            lat: 0.0,
            lon: 0.0,
            device: DeviceId::new("D1").unwrap(),
            profile: "p".into(),
            attrs: [("mean_flow".to_string(), 100.0)].into_iter().collect(),
            modbus: None,
        }
    }

    fn rule(kind: RuleKind, deadband: f64, on: u32, off: u32) -> Arc<RuleSpec> {
        Arc::new(RuleSpec {
            id: "r".into(),
            applies_to: SiteSelector::default(),
            point: "p".into(),
            condition: "pressure".into(),
            en: "Pressure".into(),
            ja: "圧力".into(),
            unit: "MPa".into(),
            kind,
            deadband,
            on_delay_s: on,
            off_delay_s: off,
            priorities: Default::default(),
        })
    }

    fn t(min: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2025, 1, 21, 0, 0, 0).unwrap() + Duration::minutes(min)
    }

    fn run(e: &Evaluator, st: &mut RuleState, vals: &[(i64, f64)]) -> Vec<(String, bool, i64)> {
        vals.iter()
            .flat_map(|(m, v)| e.evaluate(st, t(*m), Some(*v), Quality::Good))
            .map(|tr| (tr.condition, tr.active, (tr.t - t(0)).num_minutes()))
            .collect()
    }

    #[test]
    fn limits_with_deadband() {
        let lim = LimitSet {
            hh: None,
            h: None,
            l: Some(0.18),
            ll: Some(0.147),
        };
        let e = Evaluator::new(rule(RuleKind::Limits { limits: lim }, 0.01, 0, 0), &site(), 9);
        let mut st = RuleState::default();
        let got = run(
            &e,
            &mut st,
            &[
                (0, 0.30),
                (5, 0.17),
                (10, 0.185),
                (15, 0.195),
                (20, 0.12),
                (25, 0.16),
                (30, 0.30),
            ],
        );
        assert_eq!(
            got,
            vec![
                ("pressure_l".into(), true, 5),
                // 0.185 is inside the deadband: stays active; 0.195 clears.
                ("pressure_l".into(), false, 15),
                ("pressure_l".into(), true, 20),
                ("pressure_ll".into(), true, 20),
                ("pressure_ll".into(), false, 25),
                ("pressure_l".into(), false, 30),
            ]
        );
    }

    #[test]
    fn on_and_off_delays_in_event_time() {
        let lim = LimitSet {
            hh: Some(0.74),
            h: None,
            l: None,
            ll: None,
        };
        let e = Evaluator::new(rule(RuleKind::Limits { limits: lim }, 0.0, 600, 300), &site(), 9);
        let mut st = RuleState::default();
        // A single spike (chattering) never raises; a sustained one raises after 10 min.
        let got = run(
            &e,
            &mut st,
            &[
                (0, 0.8),
                (5, 0.5),
                (10, 0.8),
                (15, 0.8),
                (20, 0.8),
                (25, 0.5),
                (30, 0.5),
            ],
        );
        assert_eq!(
            got,
            vec![("pressure_hh".into(), true, 20), ("pressure_hh".into(), false, 30)]
        );
        // Timers are part of the state: a restored state continues them.
        let mut st2 = RuleState::default();
        run(&e, &mut st2, &[(0, 0.8), (5, 0.8)]);
        let mut restored: RuleState = serde_json::from_str(&serde_json::to_string(&st2).unwrap()).unwrap();
        assert_eq!(
            run(&e, &mut restored, &[(10, 0.8)]),
            vec![("pressure_hh".into(), true, 10)]
        );
    }

    #[test]
    fn hourly_profile_uses_local_time() {
        let mut high = vec![2.0; 24];
        high[3] = 0.5; // 03:00 local: ceiling 50 m3/h for mean 100
        let e = Evaluator::new(
            rule(
                RuleKind::HourlyLimits {
                    high: Some(high),
                    low: None,
                    scale_by: Some("mean_flow".into()),
                },
                0.0,
                0,
                0,
            ),
            &site(),
            9,
        );
        let mut st = RuleState::default();
        // 18:00 UTC = 03:00 JST
        let at = |h: i64, m: i64| {
            Utc.with_ymd_and_hms(2025, 1, 21, 0, 0, 0).unwrap() + Duration::hours(h) + Duration::minutes(m)
        };
        assert!(e.evaluate(&mut st, at(18, 0), Some(60.0), Quality::Good)[0].active);
        // 23:00 UTC = 08:00 JST: 60 m3/h is fine
        let tr = e.evaluate(&mut st, at(23, 0), Some(60.0), Quality::Good);
        assert_eq!(tr.len(), 1);
        assert!(!tr[0].active);
        assert_eq!(local_hour(at(18, 0), 9), 3);
    }

    #[test]
    fn rate_of_change_and_frozen() {
        let e = Evaluator::new(
            rule(
                RuleKind::RateOfChange {
                    max_rise: Some(30.0),
                    max_fall: None,
                    window_s: 900,
                },
                0.0,
                0,
                0,
            ),
            &site(),
            9,
        );
        let mut st = RuleState::default();
        let got = run(
            &e,
            &mut st,
            &[(0, 40.0), (5, 42.0), (10, 110.0), (15, 111.0), (20, 112.0), (30, 112.0)],
        );
        assert_eq!(
            got,
            vec![("pressure_rise".into(), true, 10), ("pressure_rise".into(), false, 30)]
        );

        let f = Evaluator::new(
            rule(
                RuleKind::Frozen {
                    duration_s: 3600,
                    tolerance: 0.0005,
                },
                0.0,
                0,
                0,
            ),
            &site(),
            9,
        );
        let mut st = RuleState::default();
        let vals: Vec<(i64, f64)> = (0..=13).map(|i| (i * 5, 0.412)).chain([(70, 0.42)]).collect();
        assert_eq!(
            run(&f, &mut st, &vals),
            vec![("pressure".into(), true, 60), ("pressure".into(), false, 70)]
        );
    }

    #[test]
    fn bad_quality_and_out_of_order_do_not_drive_limits() {
        let lim = LimitSet {
            hh: None,
            h: None,
            l: Some(0.18),
            ll: None,
        };
        let e = Evaluator::new(rule(RuleKind::Limits { limits: lim }, 0.0, 0, 0), &site(), 9);
        let mut st = RuleState::default();
        assert!(e.evaluate(&mut st, t(0), Some(0.01), Quality::Bad).is_empty());
        assert!(e.evaluate(&mut st, t(5), None, Quality::Bad).is_empty());
        assert!(e.evaluate(&mut st, t(10), Some(0.3), Quality::Good).is_empty());
        assert!(e.is_out_of_order(&st, t(7)));
        assert!(e.evaluate(&mut st, t(7), Some(0.01), Quality::Good).is_empty());
        assert_eq!(e.violations(t(7), 0.01), vec![("pressure_l".to_string(), 0.18)]);
    }
}
