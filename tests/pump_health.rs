//! Pump health over simulated weeks, in virtual time and without a broker:
//! the notifier simulator's status messages are decoded with the shipped
//! profile (as the pipeline does) and fed to the pump-health analytics. A
//! healthy fleet raises nothing; a worn pump and a ragging pump are found.

use chrono::{DateTime, Duration, Utc};
use mizuban::device::{decode, Profile};
use mizuban::health::{Instant, StationHealth};
use mizuban_sim::mps::{MpsNotifier, MpsOptions};
use mizuban_sim::{Device, Scenario};
use std::collections::BTreeMap;
use std::path::Path;

fn profile() -> Profile {
    Profile::parse(Path::new("mps"), include_str!("../devices/akita-mps-notifier.toml")).unwrap()
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Runs a station for `days`, injecting `events` at their day, and returns the
/// health conditions raised: (condition, day raised).
fn simulate(o: MpsOptions, days: i64, events: &[(i64, Scenario)]) -> Vec<(String, f64)> {
    let p = profile();
    let mut sim = MpsNotifier::new(o);
    let mut health = StationHealth::default();
    let mut raised = Vec::new();
    let mut t = t0();
    let end = t0() + Duration::days(days);
    let mut pending: Vec<(i64, Scenario)> = events.to_vec();
    while t < end {
        t += Duration::seconds(10);
        let day = (t - t0()).num_seconds() as f64 / 86_400.0;
        pending.retain(|(d, s)| {
            if day >= *d as f64 {
                sim.inject(s.clone(), t);
                false
            } else {
                true
            }
        });
        for m in sim.step(t) {
            if !m.topic.ends_with("/status") {
                continue;
            }
            let Some(d) = decode(&p, &m.topic, &m.payload, t, 1 << 20).unwrap() else {
                continue;
            };
            let mut by_t: BTreeMap<DateTime<Utc>, Instant> = BTreeMap::new();
            for r in &d.readings {
                if let Some(v) = r.value {
                    by_t.entry(r.t).or_default().set(r.point.as_str(), v);
                }
            }
            for (rt, values) in by_t {
                for c in health.update(rt, &values, Some(1.77)).changes {
                    if c.active {
                        raised.push((c.condition, day));
                    }
                }
            }
        }
    }
    raised
}

fn station(i: u64) -> MpsOptions {
    let mut o = MpsOptions::new(&format!("MP-{i:04}"), &format!("AKT-MPN-{i:04}"));
    o.seed = i;
    o.inflow_m3_min = 0.05 + (i % 10) as f64 * 0.02;
    o
}

#[test]
fn a_healthy_fleet_raises_nothing_in_five_weeks() {
    // Inflows from 0.07 to 0.23 m3/min (x1.6 at the morning peak) against 0.45 m3/min pumps.
    for i in [1, 4, 7, 9] {
        let raised = simulate(station(i), 35, &[]);
        assert_eq!(raised, vec![], "station {i}: false alarms");
    }
}

#[test]
fn a_worn_pump_is_found_by_its_current_drift() {
    // Five healthy weeks to learn the baseline, then pump 1 wears 3 % a day.
    let raised = simulate(
        station(3),
        50,
        &[(
            35,
            Scenario::PumpWear {
                pump: 1,
                pct_per_day: 3.0,
            },
        )],
    );
    let drift: Vec<&(String, f64)> = raised.iter().filter(|(c, _)| c == "p1_current_drift").collect();
    assert_eq!(drift.len(), 1, "{raised:?}");
    let day = drift[0].1;
    // +25 % takes a little over 8 days of wear at 3 %/day.
    assert!((43.0..=46.0).contains(&day), "found on day {day:.1}");
    assert!(
        raised.iter().all(|(c, _)| c.starts_with("p1_current_drift")),
        "nothing else: {raised:?}"
    );
}

#[test]
fn a_ragging_pump_is_found_within_hours() {
    let raised = simulate(station(5), 36, &[(35, Scenario::Ragging { pump: 2 })]);
    let drift: Vec<&(String, f64)> = raised.iter().filter(|(c, _)| c == "p2_current_drift").collect();
    assert_eq!(drift.len(), 1, "{raised:?}");
    assert!(drift[0].1 < 35.5, "found within 12 h of ragging: day {:.2}", drift[0].1);
}
