//! Per-site state the engine keeps: the device's comm state (persisted), the
//! dedup windows, the latest value per point, and the site's analytics; and
//! the status a site shows on the board, derived from it and its alarms.

use super::analytic::Analytic;
use super::dedup::{MessageDedup, SampleDedup};
use crate::alarm::{Alarm, AlarmState, COMM_LOSS};
use crate::config::Site;
use crate::device::Profile;
use crate::model::{PointId, Quality, SiteId, Timestamp};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatestValue {
    pub t: Timestamp,
    pub value: Option<f64>,
    pub quality: Quality,
}

/// What the board shows of a site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteStatus {
    pub id: String,
    /// `ok`, `alarm`, `comm_loss` or `out_of_service`.
    pub status: &'static str,
    pub last_seen: Option<Timestamp>,
    pub online: Option<bool>,
    pub boot: Option<u64>,
    pub values: BTreeMap<String, LatestValue>,
}

/// Per-device state that must survive a restart (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct DeviceState {
    /// Arrival time of the last message (master station clock).
    pub last_seen: Option<Timestamp>,
    /// The interval the device said it reports at now.
    pub interval_s: Option<u32>,
    pub online: Option<bool>,
    pub boot: Option<u64>,
    /// Event time of the last applied state per device condition; older
    /// reports of that condition are late.
    /// (As stored; while running, `SiteState::cond_t` holds it.)
    pub cond_t: BTreeMap<String, Timestamp>,
    /// Recent episodes (raise, clear) per device condition. A late report that
    /// falls inside a known episode is the same episode seen again (MQTT does
    /// not order messages across topics: an event and a status bit word can
    /// arrive in either order), not a new finding.
    #[serde(default)]
    pub episodes: BTreeMap<String, VecDeque<(Timestamp, Option<Timestamp>)>>,
}

impl DeviceState {
    pub fn known_episode(&self, code: &str, t: Timestamp) -> bool {
        self.episodes
            .get(code)
            .is_some_and(|eps| eps.iter().any(|(from, to)| *from <= t && to.is_none_or(|to| t <= to)))
    }
    pub fn episode(&mut self, code: &str, from: Timestamp, to: Option<Timestamp>) {
        let eps = self.episodes.entry(code.to_string()).or_default();
        eps.push_back((from, to));
        while eps.len() > 16 {
            eps.pop_front();
        }
    }
    pub fn episode_end(&mut self, code: &str, to: Timestamp) {
        if let Some((_, end @ None)) = self.episodes.get_mut(code).and_then(|e| e.back_mut()) {
            *end = Some(to);
        }
    }
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}

pub(super) struct SiteState {
    pub site: Arc<Site>,
    pub profile: Arc<Profile>,
    pub analytics: Vec<Box<dyn Analytic>>,
    pub dev: DeviceState,
    pub dev_dirty: bool,
    pub msgs: MessageDedup,
    pub samples: SampleDedup,
    pub values: BTreeMap<String, LatestValue>,
    /// The site's point ids by local name, made once: a point's id is shared
    /// by every reading of it (the names come from the profile, so the set
    /// is bounded).
    pub point_ids: FxHashMap<Box<str>, PointId>,
    /// `dev.cond_t` by the profile's condition index: every status word
    /// reports every bit condition, and a map lookup by name for each was
    /// a cache miss each.
    pub cond_t: Vec<Option<Timestamp>>,
}

impl SiteState {
    /// `dev.cond_t` as the running index (at start, from what was stored).
    pub fn index_cond_t(profile: &Profile, dev: &DeviceState) -> Vec<Option<Timestamp>> {
        profile
            .conditions
            .iter()
            .map(|c| dev.cond_t.get(&c.code).copied())
            .collect()
    }

    /// The device state to store, `cond_t` brought up to date.
    pub fn device_json(&mut self) -> String {
        for (c, t) in self.profile.conditions.iter().zip(&self.cond_t) {
            if let Some(t) = t {
                self.dev.cond_t.insert(c.code.clone(), *t);
            }
        }
        self.dev.json()
    }

    /// The id of this site's point `local`, or `None` if the name is not a
    /// valid point name.
    pub fn point_id(&mut self, local: &str) -> Option<PointId> {
        if let Some(p) = self.point_ids.get(local) {
            return Some(p.clone());
        }
        let p = PointId::new(&self.site.id, local).ok()?;
        self.point_ids.insert(local.into(), p.clone());
        Some(p)
    }

    /// The site's status from its device state and its open alarms.
    pub fn status<'a>(&self, id: &SiteId, alarms: impl Iterator<Item = &'a Alarm>) -> SiteStatus {
        let mut status = "ok";
        let mut any_oos = false;
        for a in alarms.filter(|a| &a.site == id) {
            if a.condition == COMM_LOSS && a.active {
                status = "comm_loss";
                break;
            }
            if a.state == AlarmState::OutOfService {
                any_oos = true;
            } else if a.active && a.state != AlarmState::Shelved && a.state != AlarmState::Suppressed {
                status = "alarm";
            }
        }
        if status == "ok" && any_oos {
            status = "out_of_service";
        }
        SiteStatus {
            id: id.to_string(),
            status,
            last_seen: self.dev.last_seen,
            online: self.dev.online,
            boot: self.dev.boot,
            values: self.values.clone(),
        }
    }
}
