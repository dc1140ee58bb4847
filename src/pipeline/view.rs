//! What a shard publishes for readers (API, board, metrics): its open alarms and
//! the status of its sites. Written only by the owning shard, once the step
//! that changed it has committed.

use crate::alarm::{Alarm, AlarmState};
pub use crate::engine::SiteStatus;
use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Default)]
pub struct ShardView {
    // std RwLocks: readers copy out and release; no await while held.
    alarms: RwLock<HashMap<String, Alarm>>,
    sites: RwLock<HashMap<String, SiteStatus>>,
    /// The service clock (ms) of the shard's last supervision tick.
    ticked_ms: std::sync::atomic::AtomicI64,
}

impl ShardView {
    pub fn set_ticked(&self, now: crate::model::Timestamp) {
        self.ticked_ms
            .store(now.timestamp_millis(), std::sync::atomic::Ordering::Relaxed);
    }
    pub fn ticked_ms(&self) -> i64 {
        self.ticked_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn has_alarm(&self, id: &str) -> bool {
        self.alarms.read().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }
    pub fn alarms(&self) -> Vec<Alarm> {
        self.alarms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
    pub fn sites(&self) -> Vec<SiteStatus> {
        self.sites
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
    pub(crate) fn put_alarm(&self, a: &Alarm) {
        let mut g = self.alarms.write().unwrap_or_else(|p| p.into_inner());
        if a.is_closed() {
            g.remove(&a.id);
        } else {
            g.insert(a.id.clone(), a.clone());
        }
    }
    pub(crate) fn put_site(&self, s: SiteStatus) {
        self.sites
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone(), s);
    }
    pub fn count_by_state(&self, out: &mut HashMap<AlarmState, i64>) {
        for a in self.alarms.read().unwrap_or_else(|p| p.into_inner()).values() {
            *out.entry(a.state).or_default() += 1;
        }
    }
}
