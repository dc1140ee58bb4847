use super::state::{Action, Alarm, AlarmOrigin, AlarmState, Transition};
use crate::device::Priority;
use crate::model::{DeviceId, SiteId, Timestamp};
use chrono::Duration;
use rustc_hash::FxHashMap;

/// One occurrence at a time per key: this is what makes a raise arriving twice
/// (an event and the status bit word, or a redelivered message) one alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmKey {
    pub site: SiteId,
    pub source: String,
    pub condition: String,
}

/// A key as its three parts, so the registry can be asked about
/// `(site, source, condition)` without building an `AlarmKey` (three
/// allocations) for every condition of every message.
pub trait KeyParts {
    fn parts(&self) -> (&str, &str, &str);
}

impl KeyParts for AlarmKey {
    fn parts(&self) -> (&str, &str, &str) {
        (self.site.as_str(), &self.source, &self.condition)
    }
}

impl KeyParts for (&str, &str, &str) {
    fn parts(&self) -> (&str, &str, &str) {
        *self
    }
}

// Hash and equality through the parts, for the key and its borrowed form
// alike (what `HashMap::get` with a borrowed key requires).
impl std::hash::Hash for AlarmKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl std::hash::Hash for dyn KeyParts + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.parts().hash(h)
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl<'a> std::borrow::Borrow<dyn KeyParts + 'a> for AlarmKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

#[derive(Debug, Clone)]
pub struct RaiseSpec {
    pub site: SiteId,
    pub device: DeviceId,
    pub source: String,
    pub condition: String,
    pub origin: AlarmOrigin,
    pub priority: Priority,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub message: String,
    pub message_ja: String,
    /// Conditions of the same device that, while active, suppress this one.
    pub suppressed_by: Vec<String>,
}

impl RaiseSpec {
    pub fn key(&self) -> AlarmKey {
        AlarmKey {
            site: self.site.clone(),
            source: self.source.clone(),
            condition: self.condition.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no alarm with id {0}")]
    NotFound(String),
    #[error("alarm {id} cannot be {action} in state {state}")]
    Conflict {
        id: String,
        action: &'static str,
        state: &'static str,
    },
}

/// Keys in (site, source, condition) order: transitions of several
/// occurrences come out in this order on every run.
fn key_order(a: &AlarmKey, b: &AlarmKey) -> std::cmp::Ordering {
    (a.site.as_str(), &a.source, &a.condition).cmp(&(b.site.as_str(), &b.source, &b.condition))
}

/// The comm-loss condition name; while it is active on a device every other
/// alarm of that device is suppressed.
pub const COMM_LOSS: &str = "comm_loss";

#[derive(Debug, Default)]
pub struct Registry {
    open: FxHashMap<AlarmKey, Alarm>,
    by_id: FxHashMap<String, AlarmKey>,
    /// Keys of the open occurrences per device: what happens on one device
    /// (its current data confirming late occurrences, a parent condition
    /// suppressing the others) looks at that device's alarms, not at every
    /// open one (a replay of a year, nobody acknowledging, holds thousands).
    by_device: FxHashMap<DeviceId, Vec<AlarmKey>>,
    /// Keys of the open occurrences per site: a site's status after each of
    /// its messages reads its own alarms, not every open one (a scan of all
    /// was per message, and the fleet's open alarms grow into thousands).
    by_site: FxHashMap<SiteId, Vec<AlarmKey>>,
    /// Parent conditions per (device, child condition), from the profiles.
    parents: FxHashMap<(DeviceId, String), Vec<String>>,
    /// Ids issued in the processing millisecond `.0` (closed occurrences
    /// leave `by_id`, and the store keys every occurrence by id).
    issued: (i64, Vec<String>),
}

/// An occurrence's id, derived from what it is and when: the key, the event
/// time that raised it and the processing time. Derived, not random, so a
/// replay of the same inputs gives the same ids (and byte-identical output);
/// `salt` separates the rare second occurrence of one key raised at the same
/// event and processing millisecond.
fn new_id(key: &AlarmKey, t: Timestamp, now: Timestamp, salt: u32) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    };
    feed(key.site.as_str().as_bytes());
    feed(key.source.as_bytes());
    feed(key.condition.as_bytes());
    feed(&t.timestamp_millis().to_le_bytes());
    feed(&salt.to_le_bytes());
    format!(
        "al-{}-{:06x}",
        now.timestamp_millis(),
        (h ^ (h >> 24) ^ (h >> 48)) & 0xff_ffff
    )
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts back the open occurrences found in the store after a restart.
    pub fn restore(&mut self, alarms: impl IntoIterator<Item = Alarm>) {
        for mut a in alarms {
            // Stored before `told` existed, `paged` meant it; now `paged` is
            // the outbox's to say, never the pipeline's.
            a.told |= a.paged;
            a.paged = false;
            let key = AlarmKey {
                site: a.site.clone(),
                source: a.source.clone(),
                condition: a.condition.clone(),
            };
            self.insert_open(key, a);
        }
    }

    fn insert_open(&mut self, key: AlarmKey, a: Alarm) {
        self.by_id.insert(a.id.clone(), key.clone());
        let device = a.device.clone();
        if let Some(old) = self.open.insert(key.clone(), a) {
            if self.open[&key].id != old.id {
                self.by_id.remove(&old.id);
            }
            self.unindex(&old.device, &key);
        }
        self.by_site.entry(key.site.clone()).or_default().push(key.clone());
        self.by_device.entry(device).or_default().push(key);
    }

    fn remove_open(&mut self, key: &AlarmKey) {
        if let Some(a) = self.open.remove(key) {
            self.by_id.remove(&a.id);
            self.unindex(&a.device, key);
        }
    }

    fn unindex(&mut self, device: &DeviceId, key: &AlarmKey) {
        fn drop_key<K: std::hash::Hash + Eq>(index: &mut FxHashMap<K, Vec<AlarmKey>>, at: &K, key: &AlarmKey) {
            if let Some(keys) = index.get_mut(at) {
                if let Some(i) = keys.iter().position(|k| k == key) {
                    keys.swap_remove(i);
                }
                if keys.is_empty() {
                    index.remove(at);
                }
            }
        }
        drop_key(&mut self.by_device, device, key);
        drop_key(&mut self.by_site, &key.site, key);
    }

    /// `site`'s open occurrences, in no particular order.
    pub fn of_site<'a>(&'a self, site: &SiteId) -> impl Iterator<Item = &'a Alarm> + 'a {
        let keys = self.by_site.get(site).map(|k| k.as_slice()).unwrap_or_default();
        keys.iter().filter_map(move |k| self.open.get(k))
    }

    /// The keys of `device`'s open occurrences that pass `f`, in key order
    /// (so transitions come out in the same order on every run).
    fn device_keys(&self, device: &DeviceId, f: impl Fn(&Alarm) -> bool) -> Vec<AlarmKey> {
        let mut keys: Vec<AlarmKey> = self
            .by_device
            .get(device)
            .into_iter()
            .flatten()
            .filter(|k| self.open.get(*k).is_some_and(&f))
            .cloned()
            .collect();
        keys.sort_by(key_order);
        keys
    }

    pub fn get(&self, id: &str) -> Option<&Alarm> {
        self.by_id.get(id).and_then(|k| self.open.get(k))
    }

    pub fn get_key(&self, key: &AlarmKey) -> Option<&Alarm> {
        self.open.get(key)
    }

    /// The open occurrence of `(site, source, condition)`, without building a key.
    pub fn get_parts(&self, site: &str, source: &str, condition: &str) -> Option<&Alarm> {
        self.open.get(&(site, source, condition) as &dyn KeyParts)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Alarm> {
        self.open.values()
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    fn active_on(&self, device: &DeviceId, condition: &str) -> bool {
        self.by_device.get(device).is_some_and(|keys| {
            keys.iter()
                .any(|k| k.condition == condition && self.open.get(k).is_some_and(|a| a.active))
        })
    }

    /// The condition suppressing this alarm now, if any.
    fn suppressor(&self, a: &Alarm) -> Option<String> {
        if a.condition != COMM_LOSS && self.active_on(&a.device, COMM_LOSS) {
            return Some(COMM_LOSS.into());
        }
        self.parents
            .get(&(a.device.clone(), a.condition.clone()))
            .and_then(|ps| ps.iter().find(|p| self.active_on(&a.device, p)).cloned())
    }

    fn finish(
        &mut self,
        key: &AlarmKey,
        before: AlarmState,
        action: Action,
        at: Timestamp,
        event_time: Option<Timestamp>,
        who: &str,
        why: Option<String>,
        notify: bool,
    ) -> Transition {
        let a = self.open.get_mut(key).expect("caller holds the key");
        a.state = a.derive_state();
        a.updated_at = at;
        if notify {
            a.told = true;
        }
        let t = Transition {
            alarm: a.clone(),
            from: before,
            to: a.state,
            action,
            at,
            event_time,
            who: who.into(),
            why,
            notify,
        };
        if a.is_closed() {
            self.remove_open(key);
        }
        t
    }

    /// Re-evaluates suppression of the other alarms of a device after one of
    /// its conditions changed.
    fn resuppress(&mut self, device: &DeviceId, at: Timestamp, out: &mut Vec<Transition>) {
        for k in self.device_keys(device, |_| true) {
            let a = &self.open[&k];
            let want = self.suppressor(a);
            if want == a.suppressed_by {
                continue;
            }
            let before = a.state;
            let was_suppressed = a.suppressed_by.is_some();
            let a = self.open.get_mut(&k).expect("key from map");
            a.suppressed_by = want.clone();
            let (action, notify) = match &want {
                Some(_) => (Action::Suppress, false),
                // Out of suppression still active and never acknowledged: it was
                // never told to anyone, so now it is.
                None => (
                    Action::Unsuppress,
                    was_suppressed && a.active && !a.acked && !a.late && !a.told,
                ),
            };
            out.push(self.finish(
                &k,
                before,
                action,
                at,
                None,
                "system",
                want.map(|w| format!("suppressed by {w}")),
                notify,
            ));
        }
    }

    pub fn set_parents(&mut self, device: DeviceId, condition: String, parents: Vec<String>) {
        if !parents.is_empty() {
            self.parents.insert((device, condition), parents);
        }
    }

    /// The condition became active at event time `t`.
    pub fn raise(&mut self, spec: RaiseSpec, t: Timestamp, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        let key = spec.key();
        if !spec.suppressed_by.is_empty() {
            self.parents.insert(
                (spec.device.clone(), spec.condition.clone()),
                spec.suppressed_by.clone(),
            );
        }
        if let Some(a) = self.open.get(&key) {
            if a.active {
                return out; // already raised: a duplicate, not a new alarm
            }
            // Back to active before anyone acknowledged the return: the same
            // occurrence, active again (ISA-18.2 unack_rtn -> unack_active).
            let before = a.state;
            let a = self.open.get_mut(&key).expect("present");
            a.active = true;
            a.reactivations += 1;
            a.acked = false;
            a.acked_at = None;
            a.acked_by = None;
            a.cleared_at = None;
            a.value = spec.value;
            a.limit = spec.limit;
            a.message = spec.message;
            a.message_ja = spec.message_ja;
            let sup = self.suppressor(&self.open[&key]);
            let a = self.open.get_mut(&key).expect("present");
            a.suppressed_by = sup;
            // Its page is still outstanding (nobody acknowledged): a chattering
            // condition is one page, not one per crossing.
            let notify =
                !a.told && !a.late && a.suppressed_by.is_none() && a.shelved_until.is_none() && !a.out_of_service;
            out.push(self.finish(&key, before, Action::Raise, now, Some(t), "system", None, notify));
        } else {
            // An id of another millisecond can never collide with this one's.
            if self.issued.0 != now.timestamp_millis() {
                self.issued = (now.timestamp_millis(), Vec::new());
            }
            let mut salt = 0;
            let mut id = new_id(&key, t, now, salt);
            while self.by_id.contains_key(&id) || self.issued.1.contains(&id) {
                salt += 1;
                id = new_id(&key, t, now, salt);
            }
            self.issued.1.push(id.clone());
            let mut a = Alarm {
                id,
                site: spec.site.clone(),
                device: spec.device.clone(),
                source: spec.source.clone(),
                condition: spec.condition.clone(),
                origin: spec.origin,
                priority: spec.priority,
                state: AlarmState::Normal,
                active: true,
                acked: false,
                raised_at: t,
                detected_at: now,
                cleared_at: None,
                acked_at: None,
                acked_by: None,
                ack_comment: None,
                shelved_until: None,
                shelved_by: None,
                shelve_reason: None,
                suppressed_by: None,
                out_of_service: false,
                value: spec.value,
                limit: spec.limit,
                message: spec.message,
                message_ja: spec.message_ja,
                late: false,
                told: false,
                paged: false,
                reactivations: 0,
                updated_at: now,
            };
            a.suppressed_by = self.suppressor(&a);
            let notify = a.suppressed_by.is_none();
            self.insert_open(key.clone(), a);
            out.push(self.finish(
                &key,
                AlarmState::Normal,
                Action::Raise,
                now,
                Some(t),
                "system",
                None,
                notify,
            ));
        }
        self.resuppress(&spec.device, now, &mut out);
        out
    }

    /// The condition returned to normal at event time `t`.
    pub fn clear(&mut self, key: &AlarmKey, t: Timestamp, now: Timestamp, value: Option<f64>) -> Vec<Transition> {
        let mut out = Vec::new();
        let Some(a) = self.open.get_mut(key) else {
            return out;
        };
        if !a.active {
            return out;
        }
        let before = a.state;
        let device = a.device.clone();
        // A return to normal is worth telling only about an alarm someone was
        // told about (visible, not suppressed or shelved at the time).
        // Told once per occurrence: the first return to normal of a told alarm.
        let notify = a.told && !a.late && a.reactivations == 0;
        a.active = false;
        a.cleared_at = Some(t);
        if value.is_some() {
            a.value = value;
        }
        out.push(self.finish(key, before, Action::Clear, now, Some(t), "system", None, notify));
        self.resuppress(&device, now, &mut out);
        out
    }

    fn key_of(&self, id: &str) -> Result<AlarmKey, CommandError> {
        self.by_id
            .get(id)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(id.into()))
    }

    pub fn ack(
        &mut self,
        id: &str,
        who: &str,
        comment: Option<String>,
        now: Timestamp,
    ) -> Result<Transition, CommandError> {
        let key = self.key_of(id)?;
        let a = self.open.get_mut(&key).expect("indexed");
        if a.acked {
            return Err(CommandError::Conflict {
                id: id.into(),
                action: "acknowledged",
                state: a.state.as_str(),
            });
        }
        let before = a.state;
        a.acked = true;
        a.acked_at = Some(now);
        a.acked_by = Some(who.into());
        a.ack_comment = comment.clone();
        Ok(self.finish(&key, before, Action::Ack, now, None, who, comment, false))
    }

    pub fn shelve(
        &mut self,
        id: &str,
        minutes: u32,
        reason: String,
        who: &str,
        now: Timestamp,
    ) -> Result<Transition, CommandError> {
        let key = self.key_of(id)?;
        let a = self.open.get_mut(&key).expect("indexed");
        if a.out_of_service {
            return Err(CommandError::Conflict {
                id: id.into(),
                action: "shelved",
                state: a.state.as_str(),
            });
        }
        let before = a.state;
        a.shelved_until = Some(now + Duration::minutes(minutes as i64));
        a.shelved_by = Some(who.into());
        a.shelve_reason = Some(reason.clone());
        Ok(self.finish(
            &key,
            before,
            Action::Shelve,
            now,
            None,
            who,
            Some(format!("{minutes} min: {reason}")),
            false,
        ))
    }

    pub fn unshelve(&mut self, id: &str, who: &str, now: Timestamp) -> Result<Transition, CommandError> {
        let key = self.key_of(id)?;
        let a = self.open.get_mut(&key).expect("indexed");
        if a.shelved_until.is_none() {
            return Err(CommandError::Conflict {
                id: id.into(),
                action: "unshelved",
                state: a.state.as_str(),
            });
        }
        let before = a.state;
        a.shelved_until = None;
        let notify = a.active && !a.acked && a.suppressed_by.is_none();
        Ok(self.finish(&key, before, Action::Unshelve, now, None, who, None, notify))
    }

    pub fn set_out_of_service(
        &mut self,
        id: &str,
        oos: bool,
        who: &str,
        reason: String,
        now: Timestamp,
    ) -> Result<Transition, CommandError> {
        let key = self.key_of(id)?;
        let a = self.open.get_mut(&key).expect("indexed");
        if a.out_of_service == oos {
            return Err(CommandError::Conflict {
                id: id.into(),
                action: if oos {
                    "taken out of service"
                } else {
                    "returned to service"
                },
                state: a.state.as_str(),
            });
        }
        let before = a.state;
        a.out_of_service = oos;
        if oos {
            a.shelved_until = None;
        }
        let action = if oos {
            Action::OutOfService
        } else {
            Action::ReturnToService
        };
        Ok(self.finish(&key, before, action, now, None, who, Some(reason), false))
    }

    /// Shelves expire by themselves; called by the shard's ticker.
    pub fn expire_shelves(&mut self, now: Timestamp) -> Vec<Transition> {
        let mut due: Vec<AlarmKey> = self
            .open
            .iter()
            .filter(|(_, a)| a.shelved_until.is_some_and(|u| u <= now))
            .map(|(k, _)| k.clone())
            .collect();
        due.sort_by(key_order);
        let mut out = Vec::new();
        for k in due {
            let a = self.open.get_mut(&k).expect("present");
            let before = a.state;
            a.shelved_until = None;
            let notify = a.active && a.suppressed_by.is_none();
            out.push(self.finish(
                &k,
                before,
                Action::Unshelve,
                now,
                None,
                "system",
                Some("shelve expired".into()),
                notify,
            ));
        }
        out
    }

    /// Data that arrived after the fact showed a condition that is already over:
    /// record it for review (unack_rtn, `late`), never page.
    pub fn record_late(&mut self, spec: RaiseSpec, from: Timestamp, to: Timestamp, now: Timestamp) -> Vec<Transition> {
        let key = spec.key();
        if self.open.contains_key(&key) {
            // An occurrence is open already: one per key. Journal the finding on it.
            let a = &self.open[&key];
            return vec![Transition {
                alarm: a.clone(),
                from: a.state,
                to: a.state,
                action: Action::Late,
                at: now,
                event_time: Some(from),
                who: "system".into(),
                why: Some(format!(
                    "late data: {} from {} to {}",
                    spec.condition,
                    from.to_rfc3339(),
                    to.to_rfc3339()
                )),
                notify: false,
            }];
        }
        let mut out = self.raise(spec, from, now);
        out.retain(|t| t.alarm.condition == key.condition && t.alarm.site == key.site);
        for t in &mut out {
            t.notify = false;
        }
        let a = self.open.get_mut(&key).expect("just raised");
        a.late = true;
        let mut cleared = self.clear(&key, to, now, None);
        for t in &mut cleared {
            t.notify = false;
            t.alarm.late = true;
        }
        for t in &mut out {
            t.alarm.late = true;
            t.why = Some("late data: condition was over when the data arrived".into());
        }
        out.extend(cleared);
        out
    }

    /// Marks an occurrence as raised from late data: nobody is paged for it
    /// unless it is still active once the device's data is current again
    /// (`confirm_late`).
    pub fn mark_late(&mut self, id: &str) -> Option<Alarm> {
        let key = self.by_id.get(id)?.clone();
        let a = self.open.get_mut(&key)?;
        a.late = true;
        a.told = false;
        Some(a.clone())
    }

    /// Current data arrived from `device`: late occurrences of it that are
    /// still active are real now and are told like a fresh raise.
    pub fn confirm_late(&mut self, device: &DeviceId, now: Timestamp) -> Vec<Transition> {
        let mut out = Vec::new();
        for k in self.device_keys(device, |a| a.late && a.active) {
            let a = self.open.get_mut(&k).expect("present");
            let before = a.state;
            a.late = false;
            let notify = !a.acked && a.suppressed_by.is_none() && a.shelved_until.is_none() && !a.out_of_service;
            out.push(self.finish(
                &k,
                before,
                Action::Confirm,
                now,
                None,
                "system",
                Some("still active in current data".into()),
                notify,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn spec(cond: &str, parents: &[&str]) -> RaiseSpec {
        RaiseSpec {
            site: SiteId::new("MP-0001").unwrap(),
            device: DeviceId::new("AKT-MPN-0001").unwrap(),
            source: "AKT-MPN-0001".into(),
            condition: cond.into(),
            origin: AlarmOrigin::Device,
            priority: Priority::High,
            value: None,
            limit: None,
            message: cond.into(),
            message_ja: cond.into(),
            suppressed_by: parents.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn t(m: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2025, 7, 3, 5, 0, 0).unwrap() + Duration::minutes(m)
    }
    fn states(tr: &[Transition]) -> Vec<(&str, &str, &str)> {
        tr.iter()
            .map(|t| (t.alarm.condition.as_str(), t.action.as_str(), t.to.as_str()))
            .collect()
    }

    /// The per-device index is what confirm_late and suppression look at,
    /// the per-site one what a site's status reads: through raises, clears,
    /// acks, late findings and a restore they hold exactly the open
    /// occurrences of each device and site.
    #[test]
    fn the_device_index_follows_every_open_occurrence() {
        let check = |r: &Registry| {
            let mut want: Vec<(String, String)> = r
                .open
                .iter()
                .map(|(k, a)| (a.device.to_string(), k.condition.clone()))
                .collect();
            let mut got: Vec<(String, String)> = r
                .by_device
                .iter()
                .flat_map(|(d, ks)| ks.iter().map(move |k| (d.to_string(), k.condition.clone())))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want);
            assert_eq!(r.by_id.len(), r.open.len());
            // And the per-site index, as the site's status reads it.
            let mut want: Vec<&str> = r.open.values().map(|a| a.id.as_str()).collect();
            let mut got: Vec<&str> = r
                .by_site
                .keys()
                .flat_map(|site| r.of_site(site).map(|a| a.id.as_str()))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want);
            assert_eq!(r.by_site.values().map(Vec::len).sum::<usize>(), r.open.len());
        };
        let on = |dev: usize, cond: &str| {
            let mut s = spec(cond, &[]);
            s.site = SiteId::new(&format!("MP-000{dev}")).unwrap();
            s.device = DeviceId::new(&format!("AKT-MPN-000{dev}")).unwrap();
            s.source = s.device.to_string();
            s
        };
        let mut r = Registry::new();
        let conds = ["POWER_FAIL", "DOOR_OPEN", "P1_FAULT", "comm_loss"];
        let mut x: u64 = 7;
        for step in 0..2000i64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (dev, cond, op) = ((x >> 20) % 3, conds[((x >> 30) % 4) as usize], (x >> 40) % 5);
            let s = on(dev as usize + 1, cond);
            match op {
                0 | 1 => {
                    r.raise(s, t(step), t(step));
                }
                2 => {
                    r.clear(&s.key(), t(step), t(step), None);
                }
                3 => {
                    if let Some(id) = r.get_key(&s.key()).map(|a| a.id.clone()) {
                        let _ = r.ack(&id, "op", None, t(step));
                    }
                }
                _ => {
                    r.record_late(s, t(step - 5), t(step - 4), t(step));
                }
            }
            check(&r);
            if step % 500 == 499 {
                // A restart: the open occurrences put back from the store.
                let open: Vec<Alarm> = r.iter().cloned().collect();
                r = Registry::new();
                r.restore(open);
                check(&r);
            }
        }
        assert!(!r.open.is_empty());
    }

    #[test]
    fn isa_lifecycle_ack_then_clear_and_clear_then_ack() {
        let mut r = Registry::new();
        let tr = r.raise(spec("HH_LEVEL", &[]), t(0), t(1));
        assert_eq!(states(&tr), vec![("HH_LEVEL", "raise", "unack_active")]);
        assert!(tr[0].notify);
        let id = tr[0].alarm.id.clone();
        // duplicate raise: nothing
        assert!(r.raise(spec("HH_LEVEL", &[]), t(0), t(2)).is_empty());
        let a = r.ack(&id, "sato", Some("on my way".into()), t(3)).unwrap();
        assert_eq!(a.to, AlarmState::AckActive);
        assert_eq!(
            r.ack(&id, "sato", None, t(3)).unwrap_err(),
            CommandError::Conflict {
                id: id.clone(),
                action: "acknowledged",
                state: "ack_active"
            }
        );
        let c = r.clear(&spec("HH_LEVEL", &[]).key(), t(5), t(6), None);
        assert_eq!(states(&c), vec![("HH_LEVEL", "clear", "normal")]);
        assert!(r.get(&id).is_none(), "occurrence closed");
        // next raise is a new occurrence
        let tr2 = r.raise(spec("HH_LEVEL", &[]), t(10), t(10));
        assert_ne!(tr2[0].alarm.id, id);
        let id2 = tr2[0].alarm.id.clone();
        let c = r.clear(&spec("HH_LEVEL", &[]).key(), t(11), t(11), None);
        assert_eq!(c[0].to, AlarmState::UnackRtn);
        // returns before ack: same occurrence
        let again = r.raise(spec("HH_LEVEL", &[]), t(12), t(12));
        assert_eq!(again[0].alarm.id, id2);
        assert_eq!(again[0].to, AlarmState::UnackActive);
    }

    #[test]
    fn shelve_expires_and_out_of_service() {
        let mut r = Registry::new();
        let id = r.raise(spec("DOOR_OPEN", &[]), t(0), t(0))[0].alarm.id.clone();
        let s = r.shelve(&id, 30, "maintenance visit".into(), "ito", t(1)).unwrap();
        assert_eq!(s.to, AlarmState::Shelved);
        assert!(r.expire_shelves(t(20)).is_empty());
        let e = r.expire_shelves(t(31));
        assert_eq!(states(&e), vec![("DOOR_OPEN", "unshelve", "unack_active")]);
        assert!(e[0].notify, "an expired shelve on an active alarm re-notifies");
        let o = r
            .set_out_of_service(&id, true, "eng", "sensor replaced".into(), t(32))
            .unwrap();
        assert_eq!(o.to, AlarmState::OutOfService);
        assert!(r.shelve(&id, 5, "x".into(), "ito", t(33)).is_err());
        assert!(matches!(r.ack("nope", "x", None, t(0)), Err(CommandError::NotFound(_))));
    }

    #[test]
    fn comm_loss_and_parent_conditions_suppress() {
        let mut r = Registry::new();
        r.raise(spec("LOW_LEVEL", &["POWER_FAIL"]), t(0), t(0));
        let pf = r.raise(spec("POWER_FAIL", &[]), t(1), t(1));
        assert_eq!(
            states(&pf),
            vec![
                ("POWER_FAIL", "raise", "unack_active"),
                ("LOW_LEVEL", "suppress", "suppressed")
            ]
        );
        // a dependent raised during the power cut is suppressed from the start, not paged
        let f = r.raise(spec("P1_FAULT", &["POWER_FAIL"]), t(2), t(2));
        assert_eq!(f[0].to, AlarmState::Suppressed);
        assert!(!f[0].notify);
        let cl = r.raise(spec(COMM_LOSS, &[]), t(3), t(3));
        assert_eq!(cl[0].to, AlarmState::UnackActive);
        assert!(cl.iter().skip(1).all(|t| t.to == AlarmState::Suppressed && !t.notify));
        assert_eq!(
            r.get_key(&spec("POWER_FAIL", &[]).key()).unwrap().state,
            AlarmState::Suppressed
        );
    }

    #[test]
    fn late_findings_are_for_review_not_paging() {
        let mut r = Registry::new();
        let tr = r.record_late(spec("HH_LEVEL", &[]), t(0), t(5), t(60));
        assert!(tr.iter().all(|t| !t.notify));
        let a = r.get_key(&spec("HH_LEVEL", &[]).key()).unwrap();
        assert_eq!(a.state, AlarmState::UnackRtn);
        assert!(a.late);
        assert_eq!(a.raised_at, t(0));
        assert_eq!(a.cleared_at, Some(t(5)));
    }
}
