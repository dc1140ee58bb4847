//! Rule definitions (`[[rule]]` in the rules file) and their validation.

use super::Site;
use crate::device::{Priority, Profile};
use crate::model::SiteKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleType {
    Limits,
    HourlyLimits,
    RateOfChange,
    Frozen,
}

/// Which sites a rule applies to; every given criterion must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSelector {
    #[serde(default)]
    pub kind: Option<SiteKind>,
    #[serde(default)]
    pub areas: Vec<String>,
    #[serde(default)]
    pub sites: Vec<String>,
}

impl SiteSelector {
    pub fn matches(&self, s: &Site) -> bool {
        self.kind.is_none_or(|k| k == s.kind)
            && (self.areas.is_empty() || self.areas.contains(&s.area))
            && (self.sites.is_empty() || self.sites.iter().any(|i| i == s.id.as_str()))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(rename = "type")]
    pub rule_type: RuleType,
    #[serde(default)]
    pub applies_to: SiteSelector,
    pub point: String,
    /// Condition name; limit rules append `_hh`, `_h`, `_l`, `_ll`.
    pub condition: String,
    pub en: String,
    pub ja: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub priority: Option<Priority>,
    #[serde(default)]
    pub priorities: Option<HashMap<String, Priority>>,
    // limits
    #[serde(default)]
    pub hh: Option<f64>,
    #[serde(default)]
    pub h: Option<f64>,
    #[serde(default)]
    pub l: Option<f64>,
    #[serde(default)]
    pub ll: Option<f64>,
    #[serde(default)]
    pub deadband: f64,
    #[serde(default)]
    pub on_delay_s: u32,
    #[serde(default)]
    pub off_delay_s: u32,
    // hourly limits: 24 values, local hour 0..23, optionally scaled by a site attr
    #[serde(default)]
    pub high: Option<Vec<f64>>,
    #[serde(default)]
    pub low: Option<Vec<f64>>,
    #[serde(default)]
    pub scale_by: Option<String>,
    // rate of change
    #[serde(default)]
    pub max_rise: Option<f64>,
    #[serde(default)]
    pub max_fall: Option<f64>,
    #[serde(default)]
    pub window_s: Option<u32>,
    // frozen
    #[serde(default)]
    pub duration_s: Option<u32>,
    #[serde(default)]
    pub tolerance: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LimitSet {
    pub hh: Option<f64>,
    pub h: Option<f64>,
    pub l: Option<f64>,
    pub ll: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleKind {
    Limits {
        limits: LimitSet,
    },
    HourlyLimits {
        high: Option<Vec<f64>>,
        low: Option<Vec<f64>>,
        scale_by: Option<String>,
    },
    RateOfChange {
        max_rise: Option<f64>,
        max_fall: Option<f64>,
        window_s: u32,
    },
    Frozen {
        duration_s: u32,
        tolerance: f64,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleSpec {
    pub id: String,
    pub applies_to: SiteSelector,
    pub point: String,
    pub condition: String,
    pub en: String,
    pub ja: String,
    pub unit: String,
    pub kind: RuleKind,
    pub deadband: f64,
    pub on_delay_s: u32,
    pub off_delay_s: u32,
    /// Priority per condition suffix (`hh`, `h`, `l`, `ll`, `high`, `low`,
    /// `rise`, `fall`, or `` for single-condition rules).
    pub priorities: HashMap<String, Priority>,
}

impl RuleSpec {
    pub fn priority(&self, suffix: &str) -> Priority {
        self.priorities.get(suffix).copied().unwrap_or(Priority::Medium)
    }
}

type Problems = Vec<(String, String)>;

pub(super) fn validate(
    r: RawRule,
    profiles: &HashMap<String, Arc<Profile>>,
    sites: &[Arc<Site>],
) -> Result<RuleSpec, Problems> {
    let mut p: Problems = Vec::new();
    let id = r.id.clone();
    let mut bad = |field: &str, msg: String| p.push((field.to_string(), format!("rule {id:?}: {msg}")));
    let matching: Vec<&Arc<Site>> = sites.iter().filter(|s| r.applies_to.matches(s)).collect();
    // A rule that matches no site is allowed: nodes that each own a share of
    // the sites share one rules file.
    for s in &matching {
        if let Some(prof) = profiles.get(&s.profile) {
            if !prof.point_names().contains(&r.point.as_str()) {
                bad(
                    "point",
                    format!(
                        "site {} (profile {}) has no point {:?}; it has {:?}",
                        s.id,
                        s.profile,
                        r.point,
                        prof.point_names()
                    ),
                );
                break;
            }
        }
    }
    // Naming a site or area that is not configured at all is a typo that
    // would silently never alarm.
    for id in &r.applies_to.sites {
        if !sites.iter().any(|s| s.id.as_str() == id) {
            bad(
                "sites",
                format!("applies_to names site {id:?}, which is not configured"),
            );
        }
    }
    for area in &r.applies_to.areas {
        if !sites.iter().any(|s| &s.area == area) {
            bad("areas", format!("applies_to names area {area:?}, which no site is in"));
        }
    }
    if r.deadband < 0.0 {
        bad("deadband", "must not be negative".into());
    }
    let only = |name: &str, present: bool, allowed: bool, bad: &mut dyn FnMut(&str, String)| {
        if present && !allowed {
            bad(name, format!("`{name}` does not apply to rule type {:?}", r.rule_type));
        }
    };
    let t = r.rule_type;
    let is = |x: RuleType| t == x;
    only("hh", r.hh.is_some(), is(RuleType::Limits), &mut bad);
    only("h", r.h.is_some(), is(RuleType::Limits), &mut bad);
    only("l", r.l.is_some(), is(RuleType::Limits), &mut bad);
    only("ll", r.ll.is_some(), is(RuleType::Limits), &mut bad);
    only("high", r.high.is_some(), is(RuleType::HourlyLimits), &mut bad);
    only("low", r.low.is_some(), is(RuleType::HourlyLimits), &mut bad);
    only("scale_by", r.scale_by.is_some(), is(RuleType::HourlyLimits), &mut bad);
    only("max_rise", r.max_rise.is_some(), is(RuleType::RateOfChange), &mut bad);
    only("max_fall", r.max_fall.is_some(), is(RuleType::RateOfChange), &mut bad);
    only("window_s", r.window_s.is_some(), is(RuleType::RateOfChange), &mut bad);
    only("duration_s", r.duration_s.is_some(), is(RuleType::Frozen), &mut bad);

    let kind = match r.rule_type {
        RuleType::Limits => {
            let l = LimitSet {
                hh: r.hh,
                h: r.h,
                l: r.l,
                ll: r.ll,
            };
            if l.hh.is_none() && l.h.is_none() && l.l.is_none() && l.ll.is_none() {
                bad("hh", "a limits rule needs at least one of hh, h, l, ll".into());
            }
            let order = [l.ll, l.l, l.h, l.hh];
            let present: Vec<f64> = order.iter().flatten().copied().collect();
            if present.windows(2).any(|w| w[0] >= w[1]) {
                bad("hh", "limits must satisfy ll < l < h < hh".into());
            }
            RuleKind::Limits { limits: l }
        }
        RuleType::HourlyLimits => {
            for (name, v) in [("high", &r.high), ("low", &r.low)] {
                if let Some(v) = v {
                    if v.len() != 24 {
                        bad(name, format!("needs 24 values (local hours 0..23), has {}", v.len()));
                    }
                }
            }
            if r.high.is_none() && r.low.is_none() {
                bad("high", "an hourly_limits rule needs `high` or `low`".into());
            }
            if let Some(a) = &r.scale_by {
                if let Some(s) = matching.iter().find(|s| !s.attrs.contains_key(a)) {
                    bad("scale_by", format!("site {} has no attribute {a:?}", s.id));
                }
            }
            RuleKind::HourlyLimits {
                high: r.high.clone(),
                low: r.low.clone(),
                scale_by: r.scale_by.clone(),
            }
        }
        RuleType::RateOfChange => {
            let w = r.window_s.unwrap_or(0);
            if w == 0 {
                bad("window_s", "a rate_of_change rule needs window_s > 0".into());
            }
            if r.max_rise.is_none() && r.max_fall.is_none() {
                bad("max_rise", "a rate_of_change rule needs max_rise or max_fall".into());
            }
            RuleKind::RateOfChange {
                max_rise: r.max_rise,
                max_fall: r.max_fall,
                window_s: w,
            }
        }
        RuleType::Frozen => {
            let d = r.duration_s.unwrap_or(0);
            if d == 0 {
                bad("duration_s", "a frozen rule needs duration_s > 0".into());
            }
            RuleKind::Frozen {
                duration_s: d,
                tolerance: r.tolerance,
            }
        }
    };
    let mut priorities = r.priorities.clone().unwrap_or_default();
    if let Some(pr) = r.priority {
        priorities.entry(String::new()).or_insert(pr);
        for k in ["hh", "h", "l", "ll", "high", "low", "rise", "fall"] {
            priorities.entry(k.into()).or_insert(pr);
        }
    }
    if !p.is_empty() {
        return Err(p);
    }
    Ok(RuleSpec {
        id: r.id,
        applies_to: r.applies_to,
        point: r.point,
        condition: r.condition,
        en: r.en,
        ja: r.ja,
        unit: r.unit,
        kind,
        deadband: r.deadband,
        on_delay_s: r.on_delay_s,
        off_delay_s: r.off_delay_s,
        priorities,
    })
}
