//! Pump health: preventive-maintenance analytics for a two-pump station,
//! computed the same way whether the readings came from the notifier's MQTT
//! status or from the controller's Modbus registers. Pure and in event time:
//! `update(t, values)` takes the station's run states, currents and level at
//! one instant and returns derived readings (stored and trended like any
//! point) and the health conditions that changed.
//!
//! Conditions per pump N: `pN_starts_high` (more than 6 starts in the last
//! hour), `pN_long_run` (one run longer than 2 h), `pN_idle` (no start for 16
//! cycles of its partner: alternation broken), `pN_current_drift` (mean
//! running current of its last 10 runs more than 25 % off its own baseline:
//! the runs of the 30 days before the last week), `pN_no_current` (running,
//! i.e. commanded, but drawing no current for 30 s: fail to run).

use crate::device::Priority;
use crate::model::Timestamp;
use chrono::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, VecDeque};

pub const MAX_STARTS_PER_H: usize = 6;
pub const MAX_RUN_S: i64 = 2 * 3600;
pub const IDLE_CYCLES: u32 = 16;
pub const DRIFT: f64 = 0.25;
pub const RECENT_RUNS: usize = 10;
pub const NO_CURRENT_S: i64 = 30;
/// Below this a running pump draws no current (amps).
pub const NO_CURRENT_A: f64 = 0.5;

/// Derived points, per pump (`p1_…`, `p2_…`) and per station.
pub const DERIVED_POINTS: &[&str] = &[
    "p1_starts_h",
    "p2_starts_h",
    "p1_run_s",
    "p2_run_s",
    "p1_run_current",
    "p2_run_current",
    "p1_current_drift",
    "p2_current_drift",
    "p1_duty",
    "p2_duty",
    "inflow_est_m3h",
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PumpState {
    running: bool,
    run_started: Option<Timestamp>,
    starts: VecDeque<Timestamp>,
    cur_sum: f64,
    cur_n: u32,
    no_current_since: Option<Timestamp>,
    /// Partner starts since this pump last started.
    partner_cycles: u32,
    /// (end time, mean running current) of runs in the last 30 days.
    runs: VecDeque<(Timestamp, f64)>,
    /// The baseline as a running sum: how many runs at the front of `runs`
    /// ended before the baseline window's end, and their summed currents.
    /// Summing a month of runs at every stop was an eighth of a year's
    /// replay. Not stored: rebuilt from `runs` at the first stop after a
    /// restart.
    #[serde(skip)]
    base: Option<(usize, f64)>,
    /// (end time, run seconds) in the last 24 h, for the duty share.
    run_secs: VecDeque<(Timestamp, f64)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StationHealth {
    pumps: [PumpState; 2],
    /// Level and time when the last run ended (both pumps stopped).
    last_stop: Option<(Timestamp, f64)>,
    active: BTreeSet<String>,
    /// Newest instant fed; older ones (backlog) are history only.
    pub last_t: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthChange {
    pub condition: String,
    pub active: bool,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub priority: Priority,
    pub en: String,
    pub ja: String,
}

/// What one instant of a station said: the points health reads, by pump.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Instant {
    /// `p1_run`, `p2_run` (0/1).
    pub run: [Option<f64>; 2],
    /// `p1_current`, `p2_current` (A).
    pub current: [Option<f64>; 2],
    /// `level` (cm).
    pub level: Option<f64>,
}

impl Instant {
    /// Takes `value` if `point` (a local point name) is one health reads;
    /// `false` if it is not.
    pub fn set(&mut self, point: &str, value: f64) -> bool {
        let slot = match point {
            "p1_run" => &mut self.run[0],
            "p2_run" => &mut self.run[1],
            "p1_current" => &mut self.current[0],
            "p2_current" => &mut self.current[1],
            "level" => &mut self.level,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

#[derive(Debug, Default)]
pub struct HealthOut {
    /// Derived readings by point name (one of `DERIVED_POINTS`).
    pub readings: Vec<(&'static str, f64)>,
    pub changes: Vec<HealthChange>,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

// Condition names per pump index, checked at every instant (not formatted each time).
const NO_CURRENT: [&str; 2] = ["p1_no_current", "p2_no_current"];
const LONG_RUN: [&str; 2] = ["p1_long_run", "p2_long_run"];
const IDLE: [&str; 2] = ["p1_idle", "p2_idle"];
const STARTS_HIGH: [&str; 2] = ["p1_starts_high", "p2_starts_high"];
const CURRENT_DRIFT: [&str; 2] = ["p1_current_drift", "p2_current_drift"];
// Derived point names per pump index.
const STARTS_H: [&str; 2] = ["p1_starts_h", "p2_starts_h"];
const RUN_S: [&str; 2] = ["p1_run_s", "p2_run_s"];
const RUN_CURRENT: [&str; 2] = ["p1_run_current", "p2_run_current"];
const DUTY: [&str; 2] = ["p1_duty", "p2_duty"];

impl StationHealth {
    /// Sets condition `cond` to `on`; the texts are made only when it changes
    /// (this runs for every instant of a running pump).
    fn set(
        &mut self,
        out: &mut HealthOut,
        cond: &str,
        on: bool,
        value: Option<f64>,
        limit: Option<f64>,
        texts: impl FnOnce() -> (Priority, String, String),
    ) {
        if on == self.active.contains(cond) {
            return;
        }
        if on {
            self.active.insert(cond.to_string());
        } else {
            self.active.remove(cond);
        }
        let texts = texts();
        out.changes.push(HealthChange {
            condition: cond.to_string(),
            active: on,
            value,
            limit,
            priority: texts.0,
            en: texts.1,
            ja: texts.2,
        });
    }

    /// Feeds one instant of the station: what the message had of the run
    /// states, currents and level.
    /// `well_area_m2` turns the level rise between cycles into inflow.
    pub fn update(&mut self, t: Timestamp, values: &Instant, well_area_m2: Option<f64>) -> HealthOut {
        let mut out = HealthOut::default();
        if self.last_t.is_some_and(|l| t <= l) {
            return out;
        }
        self.last_t = Some(t);
        let level = values.level;
        let mut any_start = false;
        for n in 0..2 {
            let Some(run) = values.run[n].map(|v| v > 0.5) else {
                continue;
            };
            let current = values.current[n];
            let was = self.pumps[n].running;
            if run && !was {
                any_start = true;
                let p = &mut self.pumps[n];
                p.running = true;
                p.run_started = Some(t);
                p.cur_sum = 0.0;
                p.cur_n = 0;
                p.partner_cycles = 0;
                p.starts.push_back(t);
                while p.starts.front().is_some_and(|s| t - *s > Duration::hours(1)) {
                    p.starts.pop_front();
                }
                let per_h = p.starts.len();
                out.readings.push((STARTS_H[n], per_h as f64));
                self.pumps[1 - n].partner_cycles += 1;
                let partner_idle = self.pumps[1 - n].partner_cycles;
                self.set(
                    &mut out,
                    IDLE[1 - n],
                    partner_idle >= IDLE_CYCLES && !self.pumps[1 - n].running,
                    Some(partner_idle as f64),
                    Some(IDLE_CYCLES as f64),
                    || {
                        (
                            Priority::Medium,
                            format!(
                                "Pump {} has not started for {partner_idle} cycles of its partner",
                                2 - n
                            ),
                            format!("{}号ポンプ交互運転異常（{partner_idle}サイクル未始動）", 2 - n),
                        )
                    },
                );
                self.set(&mut out, IDLE[n], false, None, None, || {
                    (Priority::Medium, String::new(), String::new())
                });
                self.set(
                    &mut out,
                    STARTS_HIGH[n],
                    per_h > MAX_STARTS_PER_H,
                    Some(per_h as f64),
                    Some(MAX_STARTS_PER_H as f64),
                    || {
                        (
                            Priority::Medium,
                            format!("Pump {} started {per_h} times in an hour", n + 1),
                            format!("{}号ポンプ始動頻度過多（{per_h}回/時）", n + 1),
                        )
                    },
                );
            }
            if run {
                let p = &mut self.pumps[n];
                if let Some(c) = current {
                    p.cur_sum += c;
                    p.cur_n += 1;
                    if c < NO_CURRENT_A {
                        p.no_current_since.get_or_insert(t);
                    } else {
                        p.no_current_since = None;
                    }
                }
                let no_cur = p
                    .no_current_since
                    .is_some_and(|s| (t - s).num_seconds() >= NO_CURRENT_S);
                let long = p.run_started.map(|s| (t - s).num_seconds()).unwrap_or(0);
                self.set(&mut out, NO_CURRENT[n], no_cur, current, Some(NO_CURRENT_A), || {
                    (
                        Priority::High,
                        format!("Pump {} running but drawing no current (fail to run)", n + 1),
                        format!("{}号ポンプ始動不良（電流なし）", n + 1),
                    )
                });
                self.set(
                    &mut out,
                    LONG_RUN[n],
                    long > MAX_RUN_S,
                    Some(long as f64 / 60.0),
                    Some(MAX_RUN_S as f64 / 60.0),
                    || {
                        (
                            Priority::High,
                            format!("Pump {} running continuously for over 2 h", n + 1),
                            format!("{}号ポンプ連続運転2時間超過", n + 1),
                        )
                    },
                );
            }
            if !run && was {
                let p = &mut self.pumps[n];
                p.running = false;
                p.no_current_since = None;
                let secs = p
                    .run_started
                    .map(|s| (t - s).num_milliseconds() as f64 / 1000.0)
                    .unwrap_or(0.0);
                out.readings.push((RUN_S[n], secs));
                p.run_secs.push_back((t, secs));
                while p.run_secs.front().is_some_and(|(e, _)| t - *e > Duration::hours(24)) {
                    p.run_secs.pop_front();
                }
                let avg = (p.cur_n > 0).then(|| p.cur_sum / p.cur_n as f64);
                if let Some(avg) = avg {
                    out.readings.push((RUN_CURRENT[n], avg));
                    p.runs.push_back((t, avg));
                    while p.runs.front().is_some_and(|(e, _)| t - *e > Duration::days(37)) {
                        let (_, v) = p.runs.pop_front().expect("checked");
                        // The front run is the oldest: in the baseline if any run is.
                        if let Some((k, sum)) = p.base.as_mut().filter(|(k, _)| *k > 0) {
                            *k -= 1;
                            *sum -= v;
                        }
                    }
                    // Baseline: runs of the 30 days before the last week, so a
                    // slow wear of the last days stands out against it. Runs
                    // are in time order, so those are a prefix, and it only
                    // grows at its end as time goes on.
                    let week_ago = t - Duration::days(7);
                    let (k, sum) = p.base.get_or_insert((0, 0.0));
                    while p.runs.get(*k).is_some_and(|(e, _)| *e < week_ago) {
                        *sum += p.runs[*k].1;
                        *k += 1;
                    }
                    let (k, sum) = (*k, *sum);
                    if k >= 50 {
                        let base = sum / k as f64;
                        let recent = mean(p.runs.iter().rev().take(RECENT_RUNS).map(|r| r.1)).expect("just pushed");
                        let drift = (recent - base) / base;
                        out.readings.push((CURRENT_DRIFT[n], drift * 100.0));
                        self.set(
                            &mut out,
                            CURRENT_DRIFT[n],
                            drift.abs() > DRIFT,
                            Some(drift * 100.0),
                            Some(DRIFT * 100.0),
                            || {
                                (
                                    Priority::Medium,
                                    format!(
                                        "Pump {} running current {:+.0} % from its baseline",
                                        n + 1,
                                        drift * 100.0
                                    ),
                                    format!("{}号ポンプ運転電流変動（基準比{:+.0}%）", n + 1, drift * 100.0),
                                )
                            },
                        );
                    }
                }
                let mine: f64 = self.pumps[n].run_secs.iter().map(|r| r.1).sum();
                let theirs: f64 = self.pumps[1 - n].run_secs.iter().map(|r| r.1).sum();
                if mine + theirs > 0.0 {
                    out.readings.push((DUTY[n], 100.0 * mine / (mine + theirs)));
                }
                self.set(&mut out, LONG_RUN[n], false, None, None, || {
                    (Priority::High, String::new(), String::new())
                });
                self.set(&mut out, NO_CURRENT[n], false, None, None, || {
                    (Priority::High, String::new(), String::new())
                });
            }
        }
        // Inflow from the level rise between the end of one cycle and the start of the next.
        let both_stopped = !self.pumps[0].running && !self.pumps[1].running;
        if let Some(l) = level {
            if any_start {
                if let (Some((t0, l0)), Some(area)) = (self.last_stop, well_area_m2) {
                    let secs = (t - t0).num_milliseconds() as f64 / 1000.0;
                    if secs > 0.0 && l > l0 {
                        out.readings
                            .push(("inflow_est_m3h", (l - l0) / 100.0 * area / secs * 3600.0));
                    }
                }
                self.last_stop = None;
            } else if both_stopped && self.last_stop.is_none() {
                self.last_stop = Some((t, l));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(s: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2025, 7, 1, 0, 0, 0).unwrap() + Duration::seconds(s)
    }
    fn v(p1: bool, p2: bool, c1: f64, c2: f64, level: f64) -> Instant {
        Instant {
            run: [Some(p1 as u8 as f64), Some(p2 as u8 as f64)],
            current: [Some(c1), Some(c2)],
            level: Some(level),
        }
    }

    #[test]
    fn every_derived_name_is_a_derived_point() {
        for n in [STARTS_H, RUN_S, RUN_CURRENT, CURRENT_DRIFT, DUTY].iter().flatten() {
            assert!(DERIVED_POINTS.contains(n), "{n}");
        }
        assert!(DERIVED_POINTS.contains(&"inflow_est_m3h"));
    }

    /// The baseline kept as a running sum gives what summing the runs afresh
    /// gives (a restarted station sums afresh), over months of cycles with
    /// runs leaving the window, and drift is raised by a wearing pump.
    #[test]
    fn running_baseline_agrees_with_a_fresh_sum_and_finds_wear() {
        let mut live = StationHealth::default();
        let mut restarted: Option<StationHealth> = None;
        let (mut compared, mut raised) = (0, false);
        for cycle in 0..(60 * 48) {
            let s = cycle * 1800;
            // Current creeps up in the last two weeks: wear.
            let day = s / 86_400;
            let amps = 7.0 + (cycle % 7) as f64 * 0.05 + if day >= 46 { 3.0 } else { 0.0 };
            if cycle == 40 * 48 {
                let json = serde_json::to_string(&live).unwrap();
                restarted = Some(serde_json::from_str(&json).unwrap());
            }
            let mut outs = vec![];
            for h in std::iter::once(&mut live).chain(restarted.as_mut()) {
                h.update(at(s), &v(false, false, 0.0, 0.0, 40.0), None);
                h.update(at(s + 60), &v(true, false, amps, 0.0, 90.0), None);
                outs.push(h.update(at(s + 300), &v(false, false, 0.0, 0.0, 40.0), None));
            }
            let drift = |o: &HealthOut| o.readings.iter().find(|r| r.0 == "p1_current_drift").map(|r| r.1);
            if let [a, b] = &outs[..] {
                let (a, b) = (drift(a).unwrap(), drift(b).unwrap());
                assert!((a - b).abs() < 1e-9, "cycle {cycle}: {a} vs {b}");
                compared += 1;
            }
            raised |= outs[0]
                .changes
                .iter()
                .any(|c| c.condition == "p1_current_drift" && c.active);
        }
        assert!(compared > 900, "{compared}");
        assert!(raised, "a 40 % rise in running current is drift");
    }

    #[test]
    fn starts_per_hour_run_time_duty_inflow() {
        let mut h = StationHealth::default();
        let mut changes = vec![];
        let mut readings = vec![];
        // 8 cycles in an hour, all on pump 1 (pump 2 idle): starts high, and after 16 cycles pump 2 idle.
        let mut s = 0;
        for _ in 0..17 {
            h.update(at(s), &v(false, false, 0.0, 0.0, 40.0), Some(1.77));
            let o = h.update(at(s + 240), &v(true, false, 7.0, 0.0, 90.0), Some(1.77));
            readings.extend(o.readings);
            changes.extend(o.changes);
            let o = h.update(at(s + 420), &v(false, false, 0.0, 0.0, 40.0), Some(1.77));
            readings.extend(o.readings);
            changes.extend(o.changes);
            s += 450;
        }
        let names: Vec<(String, bool)> = changes.iter().map(|c| (c.condition.clone(), c.active)).collect();
        assert_eq!(
            names,
            vec![("p1_starts_high".to_string(), true), ("p2_idle".to_string(), true)]
        );
        let run_s = readings.iter().find(|r| r.0 == "p1_run_s").unwrap().1;
        assert_eq!(run_s, 180.0);
        assert_eq!(readings.iter().find(|r| r.0 == "p1_duty").unwrap().1, 100.0);
        // 50 cm over 240 s in 1.77 m2 = 13.3 m3/h
        let inflow = readings.iter().find(|r| r.0 == "inflow_est_m3h").unwrap().1;
        assert!((inflow - 13.275).abs() < 0.01, "{inflow}");
    }

    #[test]
    fn long_run_and_fail_to_run() {
        let mut h = StationHealth::default();
        h.update(at(0), &v(true, false, 0.0, 0.0, 90.0), None);
        let o = h.update(at(20), &v(true, false, 0.0, 0.0, 90.0), None);
        assert!(o.changes.is_empty(), "not yet 30 s");
        let o = h.update(at(40), &v(true, false, 0.1, 0.0, 90.0), None);
        assert_eq!(o.changes[0].condition, "p1_no_current");
        let o = h.update(at(7300), &v(true, false, 7.0, 0.0, 90.0), None);
        let c: Vec<(&str, bool)> = o.changes.iter().map(|c| (c.condition.as_str(), c.active)).collect();
        assert_eq!(c, vec![("p1_no_current", false), ("p1_long_run", true)]);
        let o = h.update(at(7310), &v(false, false, 0.0, 0.0, 40.0), None);
        assert_eq!(
            o.changes
                .iter()
                .map(|c| (c.condition.as_str(), c.active))
                .collect::<Vec<_>>(),
            vec![("p1_long_run", false)]
        );
    }
}
