//! Analytics: everything that turns a site's readings into alarm conditions
//! and derived readings, behind one interface. The engine hands each analytic
//! the readings a message brought (accepted, deduplicated, in event-time
//! order per point); the analytic answers with findings as values. It never
//! touches the registry, the store or the clock: the engine applies the
//! findings in order, so a replay at any speed finds the same.
//!
//! Two kinds exist today: the configured rules of a site (`Rules`) and pump
//! health (`PumpHealth`). A new analytic (minimum night flow, a leak trend) is
//! one more implementation of [`Analytic`] and one line in [`for_site`].

use crate::alarm::{AlarmOrigin, RaiseSpec};
use crate::config::{Config, Site};
use crate::model::{PointId, Quality, Reading, SiteKind, Timestamp};
use crate::rules::{Evaluator, RuleState};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A condition that became active (`active`) or inactive at event time `t`.
#[derive(Debug, Clone)]
pub struct Finding {
    pub spec: RaiseSpec,
    pub t: Timestamp,
    pub active: bool,
}

/// An episode found in data that arrived out of order: for review, never a
/// live change.
#[derive(Debug, Clone)]
pub struct LateFinding {
    pub spec: RaiseSpec,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// What one analytic made of one message's readings.
#[derive(Debug, Default)]
pub struct Findings {
    pub changes: Vec<Finding>,
    pub late: Vec<LateFinding>,
    /// Readings computed from the message's (stored and trended like any point).
    pub derived: Vec<Reading>,
    /// Samples older than what the analytic already evaluated.
    pub late_samples: u64,
}

/// The site an analytic is bound to, as it needs to build its findings.
pub struct SiteRef<'a> {
    pub site: &'a Site,
    /// Arrival time of the message, carried into derived readings.
    pub arrived: Timestamp,
}

pub trait Analytic: Send {
    /// Sees one message's accepted readings of this site.
    fn observe(&mut self, at: &SiteRef<'_>, readings: &[Reading], out: &mut Findings);
    /// `(key, json)` of state changed since the last call, to persist so a
    /// restart resumes the same timers and windows.
    fn take_state(&mut self, out: &mut Vec<(String, String)>);
}

/// State is plain data (strings, numbers, times, string-keyed maps):
/// serializing it cannot fail.
fn state_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// Restores a persisted state, or starts fresh when there is none or it no
/// longer parses (a changed rule kind).
fn restore<T: serde::de::DeserializeOwned + Default>(states: &mut HashMap<String, String>, key: &str) -> T {
    states
        .remove(key)
        .and_then(|j| {
            serde_json::from_str(&j)
                .map_err(|e| tracing::warn!(%key, error = %e, "stored analytic state unreadable; starting fresh"))
                .ok()
        })
        .unwrap_or_default()
}

/// The analytics that apply to a site, with their persisted state.
pub fn for_site(cfg: &Config, site: &Site, states: &mut HashMap<String, String>) -> Vec<Box<dyn Analytic>> {
    let mut out: Vec<Box<dyn Analytic>> = Vec::new();
    let rules = Rules::new(cfg, site, states);
    if !rules.bound.is_empty() {
        out.push(Box::new(rules));
    }
    if site.kind == SiteKind::PumpStation {
        out.push(Box::new(PumpHealth::new(site, states)));
    }
    out
}

struct BoundRule {
    key: String,
    point: PointId,
    eval: Evaluator,
    state: RuleState,
    dirty: bool,
}

/// The configured rules of one site, each bound to its point.
pub struct Rules {
    bound: Vec<BoundRule>,
}

impl Rules {
    fn new(cfg: &Config, site: &Site, states: &mut HashMap<String, String>) -> Self {
        let bound = cfg
            .rules
            .iter()
            .filter(|r| r.applies_to.matches(site))
            .map(|r| {
                let point = PointId::new(&site.id, &r.point).expect("validated at config load");
                let key = format!("{}|{}", r.id, point);
                BoundRule {
                    state: restore(states, &key),
                    key,
                    point,
                    eval: Evaluator::new(r.clone(), site, cfg.service.utc_offset_hours),
                    dirty: false,
                }
            })
            .collect();
        Self { bound }
    }
}

impl Analytic for Rules {
    fn observe(&mut self, at: &SiteRef<'_>, readings: &[Reading], out: &mut Findings) {
        // Out-of-order samples that break a limit, per (rule, condition):
        // (first, last, last value, limit).
        let mut late: BTreeMap<(usize, String), (Timestamp, Timestamp, f64, f64)> = BTreeMap::new();
        for r in readings {
            for (i, br) in self.bound.iter_mut().enumerate().filter(|(_, br)| br.point == r.point) {
                if br.eval.is_out_of_order(&br.state, r.t) {
                    out.late_samples += 1;
                    if let (Some(v), Quality::Good) = (r.value, r.quality) {
                        for (cond, limit) in br.eval.violations(r.t, v) {
                            let e = late.entry((i, cond)).or_insert((r.t, r.t, v, limit));
                            e.0 = e.0.min(r.t);
                            e.1 = e.1.max(r.t);
                            e.2 = v;
                        }
                    }
                    continue;
                }
                br.dirty = true;
                for tr in br.eval.evaluate(&mut br.state, r.t, r.value, r.quality) {
                    out.changes.push(Finding {
                        spec: RaiseSpec {
                            site: at.site.id.clone(),
                            device: at.site.device.clone(),
                            source: r.point.to_string(),
                            condition: tr.condition.clone(),
                            origin: AlarmOrigin::Rule,
                            priority: tr.priority,
                            value: tr.value,
                            limit: tr.limit,
                            message: tr.en,
                            message_ja: tr.ja,
                            suppressed_by: vec![],
                        },
                        t: tr.t,
                        active: tr.active,
                    });
                }
            }
        }
        for ((i, cond), (from, to, v, limit)) in late {
            let br = &self.bound[i];
            out.late.push(LateFinding {
                spec: RaiseSpec {
                    site: at.site.id.clone(),
                    device: at.site.device.clone(),
                    source: br.point.to_string(),
                    condition: cond,
                    origin: AlarmOrigin::Rule,
                    priority: br.eval.rule.priority(""),
                    value: Some(v),
                    limit: Some(limit),
                    message: format!("{} (late data)", br.eval.rule.en),
                    message_ja: format!("{}（遅延データ）", br.eval.rule.ja),
                    suppressed_by: vec![],
                },
                from,
                to,
            });
        }
    }

    fn take_state(&mut self, out: &mut Vec<(String, String)>) {
        for br in self.bound.iter_mut().filter(|b| b.dirty) {
            br.dirty = false;
            out.push((br.key.clone(), state_json(&br.state)));
        }
    }
}

/// Pump health of a two-pump station (see `crate::health`), fed instant by
/// instant from the same readings.
pub struct PumpHealth {
    key: String,
    health: crate::health::StationHealth,
    dirty: bool,
    /// The site's derived point ids, by name, made once.
    ids: Vec<(&'static str, PointId)>,
}

impl PumpHealth {
    fn new(site: &Site, states: &mut HashMap<String, String>) -> Self {
        let key = format!("health|{}", site.id);
        Self {
            health: restore(states, &key),
            key,
            dirty: false,
            ids: crate::health::DERIVED_POINTS
                .iter()
                .filter_map(|p| Some((*p, PointId::new(&site.id, p).ok()?)))
                .collect(),
        }
    }
}

impl Analytic for PumpHealth {
    fn observe(&mut self, at: &SiteRef<'_>, readings: &[Reading], out: &mut Findings) {
        let site = at.site;
        // The station's instants, in event time (a status has one; a backlog
        // or a Modbus poll may have several).
        let mut instants: Vec<(Timestamp, crate::health::Instant)> = Vec::new();
        for r in readings.iter().filter(|r| r.quality == Quality::Good) {
            let Some(v) = r.value else { continue };
            let i = match instants.iter().position(|(t, _)| *t == r.t) {
                Some(i) => i,
                None => {
                    instants.push((r.t, Default::default()));
                    instants.len() - 1
                }
            };
            instants[i].1.set(r.point.local(), v);
        }
        instants.sort_by_key(|(t, _)| *t);
        // The state is persisted after every message with readings, as before
        // the split (a message without run states still moves nothing, but
        // writing it keeps the stored copy current).
        self.dirty = true;
        let area = site.attrs.get("well_area_m2").copied();
        for (t, values) in instants.iter().filter(|(_, v)| v.run.iter().any(Option::is_some)) {
            let t = *t;
            let o = self.health.update(t, values, area);
            for (name, v) in o.readings {
                if let Some((_, point)) = self.ids.iter().find(|(n, _)| *n == name) {
                    out.derived.push(Reading {
                        point: point.clone(),
                        t,
                        value: Some(v),
                        quality: Quality::Good,
                        arrived: at.arrived,
                    });
                }
            }
            for c in o.changes {
                let pump = c.condition.split('_').next().unwrap_or("pump").to_string();
                // A pump the controller already reports faulted, or a power
                // cut, explains its health symptoms: suppressed, not flooded.
                let parents = vec![format!("{}_FAULT", pump.to_uppercase()), "POWER_FAIL".to_string()];
                out.changes.push(Finding {
                    spec: RaiseSpec {
                        site: site.id.clone(),
                        device: site.device.clone(),
                        source: format!("{}.{pump}", site.id),
                        condition: c.condition,
                        origin: AlarmOrigin::Rule,
                        priority: c.priority,
                        value: c.value,
                        limit: c.limit,
                        message: c.en,
                        message_ja: c.ja,
                        suppressed_by: parents,
                    },
                    t,
                    active: c.active,
                });
            }
        }
    }

    fn take_state(&mut self, out: &mut Vec<(String, String)>) {
        if std::mem::take(&mut self.dirty) {
            out.push((self.key.clone(), state_json(&self.health)));
        }
    }
}
