//! The engine: one call per input, `step(input, now) -> Step`. It owns the
//! state of its sites (device comm state, dedup windows, analytics, open
//! alarms) and returns what should happen as a value; the runner stores it,
//! and only once stored is any of it shown or sent.

use super::analytic::{for_site, Findings, SiteRef};
use super::dedup::{MessageDedup, SampleDedup};
use super::site::{DeviceState, SiteState, SiteStatus};
use crate::alarm::{Action, Alarm, AlarmKey, AlarmOrigin, CommandError, RaiseSpec, Registry, Transition, COMM_LOSS};
use crate::config::Config;
use crate::device::{Decoded, MessageKind, SampleProblem};
use crate::model::{Reading, SiteId, Timestamp};
use crate::telemetry::quarantine::QuarantineEntry;
use chrono::Duration;
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A decoded message (an MQTT publish, or one Modbus poll of a station).
#[derive(Debug, Clone)]
pub struct Message {
    pub decoded: Decoded,
    pub topic: String,
    /// The payload as text (cut), kept as the site's latest raw message.
    pub raw: String,
    /// The master station's clock when it was received.
    pub arrived: Timestamp,
}

/// An operator's command on one alarm occurrence.
#[derive(Debug, Clone)]
pub enum Command {
    Ack {
        id: String,
        who: String,
        comment: Option<String>,
    },
    Shelve {
        id: String,
        minutes: u32,
        reason: String,
        who: String,
    },
    Unshelve {
        id: String,
        who: String,
    },
    OutOfService {
        id: String,
        oos: bool,
        who: String,
        reason: String,
    },
}

impl Command {
    pub fn alarm_id(&self) -> &str {
        match self {
            Command::Ack { id, .. }
            | Command::Shelve { id, .. }
            | Command::Unshelve { id, .. }
            | Command::OutOfService { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    Message(Box<Message>),
    Command(Command),
    /// Look at the clock: comm loss and shelve expiry.
    Tick,
    /// A condition found outside the data (a collector that stopped
    /// polling): raise (`true`) or clear it at processing time.
    External(RaiseSpec, bool),
}

/// An operational event for the runner to log and count.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    SampleProblem {
        device: String,
        problem: SampleProblem,
        detail: String,
    },
    DuplicateMessage {
        device: String,
        boot: u64,
        seq: u64,
    },
    Rebooted {
        site: SiteId,
        device: String,
        boot: u64,
    },
}

/// Per-step counters (samples are too many to be notes each).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Samples stored, by quality (good, uncertain, bad).
    pub stored: [u64; 3],
    pub duplicate_samples: u64,
    /// Samples older than what their rule or device condition already saw.
    pub late_samples: u64,
}

/// What one input made happen, as a value.
#[derive(Debug, Default)]
pub struct Step {
    pub readings: Vec<Reading>,
    pub transitions: Vec<Transition>,
    /// `(key, json)` of analytic state to persist.
    pub states: Vec<(String, String)>,
    /// `(device, json)` of device comm state to persist.
    pub device_states: Vec<(String, String)>,
    /// `(device, boot, seq, arrived)` of accepted messages.
    pub seen: Vec<(String, u64, u64, Timestamp)>,
    /// `(site, "topic\npayload", arrived)`: the site's latest raw message.
    pub raw: Vec<(String, String, Timestamp)>,
    pub quarantined: Vec<QuarantineEntry>,
    pub notes: Vec<Note>,
    pub counts: Counts,
    /// Status of every site this step changed.
    pub sites: Vec<SiteStatus>,
    /// A command's answer.
    pub reply: Option<Result<Alarm, CommandError>>,
    /// After a tick: devices in comm loss now.
    pub comm_lost: Option<i64>,
    /// The step may have brought `Engine::next_due` earlier (a device
    /// announced a shorter interval, a shelve began).
    pub reschedule: bool,
}

/// A duration for people: "45 s", "12 min", "3 h 20 min".
fn span_en(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s} s"),
        s if s < 3 * 3600 => format!("{} min", s / 60),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn span_ja(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}秒"),
        s if s < 3 * 3600 => format!("{}分", s / 60),
        s => format!("{}時間{}分", s / 3600, (s % 3600) / 60),
    }
}

/// What the engine starts from: state persisted by an earlier run (empty for
/// a fresh start or a replay).
#[derive(Debug, Default)]
pub struct Resume {
    pub open_alarms: Vec<Alarm>,
    /// `(key, json)` of analytic state.
    pub states: HashMap<String, String>,
    /// `(device, json)` of device comm state.
    pub device_states: HashMap<String, String>,
    /// `(device, boot, seq)` seen recently.
    pub seen: Vec<(String, u64, u64)>,
}

pub struct Engine {
    cfg: Arc<Config>,
    registry: Registry,
    sites: FxHashMap<SiteId, SiteState>,
    /// Produce what only a running service needs: state to persist for a
    /// restart, the latest raw message, site statuses for the board. A
    /// replay turns it off; the decisions (readings, transitions, counts)
    /// are the same either way.
    live: bool,
}

impl Engine {
    /// An engine for the sites `mine` selects, resuming from `resume` (whose
    /// entries for those sites are taken out of it).
    pub fn new(cfg: Arc<Config>, mine: impl Fn(&SiteId) -> bool, resume: &mut Resume, now: Timestamp) -> Self {
        let mut registry = Registry::new();
        let mut sites = FxHashMap::default();
        for site in cfg.sites.iter().filter(|s| mine(&s.id)) {
            let Some(profile) = cfg.profiles.get(&site.profile).cloned() else {
                continue;
            };
            for c in &profile.conditions {
                registry.set_parents(site.device.clone(), c.code.clone(), c.suppressed_by.clone());
            }
            let analytics = for_site(&cfg, site, &mut resume.states);
            let mut dev: DeviceState = resume
                .device_states
                .remove(site.device.as_str())
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            // A device never heard from is given its first full period from now.
            let dev_dirty = dev.last_seen.is_none();
            dev.last_seen.get_or_insert(now);
            let cond_t = SiteState::index_cond_t(&profile, &dev);
            let mut st = SiteState {
                site: site.clone(),
                profile,
                analytics,
                dev,
                dev_dirty,
                msgs: MessageDedup::default(),
                samples: SampleDedup::default(),
                values: BTreeMap::new(),
                point_ids: FxHashMap::default(),
                cond_t,
            };
            for (d, boot, seq) in &resume.seen {
                if d == site.device.as_str() {
                    st.msgs.first_time(*boot, *seq);
                }
            }
            sites.insert(site.id.clone(), st);
        }
        let mine: Vec<Alarm> = resume
            .open_alarms
            .iter()
            .filter(|a| sites.contains_key(&a.site))
            .cloned()
            .collect();
        registry.restore(mine);
        Self {
            cfg,
            registry,
            sites,
            live: true,
        }
    }

    /// An engine for replay: nothing to persist or show (see `live`).
    pub fn for_replay(mut self) -> Self {
        self.live = false;
        self
    }

    /// The open occurrences this engine holds.
    pub fn open_alarms(&self) -> impl Iterator<Item = &Alarm> {
        self.registry.iter()
    }

    /// The status of every site this engine owns.
    pub fn site_statuses(&self) -> Vec<SiteStatus> {
        self.sites
            .iter()
            .map(|(id, s)| s.status(id, self.registry.of_site(id)))
            .collect()
    }

    /// The earliest time at which a tick can change anything: a device's
    /// silence passing what its profile allows, or a shelve running out.
    /// Live, the shard ticks every second regardless; replay ticks only
    /// then (on the same one-second grid), so a year replays without 31
    /// million idle ticks.
    pub fn next_due(&self) -> Option<Timestamp> {
        let service_grace = self.cfg.service.comm_grace_s;
        let comm = self.sites.iter().filter_map(|(id, st)| {
            let key = AlarmKey {
                site: id.clone(),
                source: st.site.device.to_string(),
                condition: COMM_LOSS.into(),
            };
            if self.registry.get_key(&key).is_some_and(|a| a.active) {
                return None;
            }
            let interval = st.dev.interval_s.unwrap_or(st.profile.comm.expected_interval_s) as i64;
            let grace = st.profile.comm.grace_s.unwrap_or(service_grace) as i64;
            let after = interval * st.profile.comm.missed_intervals as i64 + grace;
            // Raised once the silence is longer than allowed.
            Some(st.dev.last_seen? + Duration::seconds(after) + Duration::milliseconds(1))
        });
        let shelves = self.registry.iter().filter_map(|a| a.shelved_until);
        comm.chain(shelves).min()
    }

    pub fn step(&mut self, input: Input, now: Timestamp) -> Step {
        let mut step = Step::default();
        let touched = match input {
            Input::Message(m) => self.on_message(*m, now, &mut step),
            Input::Command(c) => self.on_command(c, now, &mut step),
            Input::Tick => self.on_tick(now, &mut step),
            Input::External(spec, active) => {
                step.reschedule = true;
                let site = spec.site.clone();
                step.transitions = if active {
                    self.registry.raise(spec, now, now)
                } else {
                    self.registry.clear(&spec.key(), now, now, None)
                };
                vec![site]
            }
        };
        if !self.live {
            return step; // no board to show statuses on
        }
        let mut touched: Vec<SiteId> = touched
            .into_iter()
            .chain(step.transitions.iter().map(|t| t.alarm.site.clone()))
            .collect();
        touched.sort();
        touched.dedup();
        for id in touched {
            if let Some(s) = self.sites.get(&id) {
                step.sites.push(s.status(&id, self.registry.of_site(&id)));
            }
        }
        step
    }

    fn quarantine(step: &mut Step, m: &Message, reason: &str, error: String) {
        step.quarantined.push(QuarantineEntry {
            at: m.arrived,
            topic: m.topic.clone(),
            reason: reason.into(),
            error,
            whole: true,
            payload: m.raw.clone(),
            size: m.raw.len(),
        });
    }

    fn on_message(&mut self, mut m: Message, now: Timestamp, step: &mut Step) -> Vec<SiteId> {
        let Ok(site_id) = SiteId::new(&m.decoded.site) else {
            let err = format!("site {:?} is not valid", m.decoded.site);
            Self::quarantine(step, &m, "unknown_site", err);
            return vec![];
        };
        let Some(st) = self.sites.get_mut(&site_id) else {
            let err = format!("site {site_id} is not configured on this shard");
            Self::quarantine(step, &m, "unknown_site", err);
            return vec![];
        };
        let d = &m.decoded;
        if let Some(dev) = &d.device {
            if dev != st.site.device.as_str() {
                let err = format!(
                    "device {dev:?} is not the device configured for site {site_id} ({})",
                    st.site.device
                );
                Self::quarantine(step, &m, "unknown_device", err);
                return vec![];
            }
        }
        let device = st.site.device.clone();
        // Every message but the broker-sent last will proves the device is
        // alive, duplicates included.
        if d.kind != MessageKind::Will {
            st.dev.last_seen = Some(m.arrived);
            st.dev_dirty = true;
            if self
                .registry
                .get_parts(site_id.as_str(), device.as_str(), COMM_LOSS)
                .is_some_and(|a| a.active)
            {
                let key = AlarmKey {
                    site: site_id.clone(),
                    source: device.to_string(),
                    condition: COMM_LOSS.into(),
                };
                step.transitions.extend(self.registry.clear(&key, m.arrived, now, None));
            }
        }
        let st = self.sites.get_mut(&site_id).expect("looked up above");
        if let Some(id) = d.ident {
            if !st.msgs.first_time(id.boot, id.seq) {
                step.notes.push(Note::DuplicateMessage {
                    device: device.to_string(),
                    boot: id.boot,
                    seq: id.seq,
                });
                if self.live {
                    step.device_states.push((device.to_string(), st.device_json()));
                    st.dev_dirty = false;
                }
                return vec![site_id];
            }
            if st.dev.boot.is_some_and(|b| id.boot > b) {
                step.notes.push(Note::Rebooted {
                    site: site_id.clone(),
                    device: device.to_string(),
                    boot: id.boot,
                });
            }
            if st.dev.boot.is_none_or(|b| id.boot > b) {
                st.dev.boot = Some(id.boot);
            }
            step.seen.push((device.to_string(), id.boot, id.seq, m.arrived));
        }
        if let Some(i) = d.interval_s {
            step.reschedule |= st.dev.interval_s != Some(i);
            st.dev.interval_s = Some(i);
        }
        if let Some(o) = d.online {
            st.dev.online = Some(o);
        } else if d.kind != MessageKind::Will {
            st.dev.online = Some(true);
        }
        for (p, detail) in &d.problems {
            step.notes.push(Note::SampleProblem {
                device: device.to_string(),
                problem: p.clone(),
                detail: detail.clone(),
            });
        }
        if !d.problems.is_empty() {
            step.quarantined.push(QuarantineEntry {
                at: m.arrived,
                topic: m.topic.clone(),
                reason: d.problems[0].0.as_str().into(),
                error: d
                    .problems
                    .iter()
                    .map(|(p, s)| format!("{}: {s}", p.as_str()))
                    .collect::<Vec<_>>()
                    .join("; "),
                whole: false,
                payload: m.raw.clone(),
                size: m.raw.len(),
            });
        }
        if self.live {
            step.raw
                .push((site_id.to_string(), format!("{}\n{}", m.topic, m.raw), m.arrived));
        }

        // Readings, in event-time order per point, deduplicated.
        let mut raw = std::mem::take(&mut m.decoded.readings);
        raw.sort_by(|a, b| a.point.cmp(&b.point).then(a.t.cmp(&b.t)));
        let mut accepted = Vec::with_capacity(raw.len());
        for r in raw {
            let Some(point) = st.point_id(&r.point) else {
                continue;
            };
            if !st.samples.first_time(point.as_str(), r.t.timestamp_millis()) {
                step.counts.duplicate_samples += 1;
                continue;
            }
            step.counts.stored[r.quality as usize] += 1;
            if self.live {
                let latest = super::site::LatestValue {
                    t: r.t,
                    value: r.value,
                    quality: r.quality,
                };
                match st.values.get_mut(&r.point) {
                    Some(v) if v.t <= r.t => *v = latest,
                    Some(_) => {}
                    None => {
                        st.values.insert(r.point.clone(), latest);
                    }
                }
            }
            accepted.push(Reading {
                point,
                t: r.t,
                value: r.value,
                quality: r.quality,
                arrived: m.arrived,
            });
        }

        // Analytics, in order; each one's findings applied before the next.
        let at = SiteRef {
            site: &st.site,
            arrived: m.arrived,
        };
        let mut late = Vec::new();
        let mut derived = Vec::new();
        for a in st.analytics.iter_mut() {
            let mut f = Findings::default();
            a.observe(&at, &accepted, &mut f);
            if self.live {
                a.take_state(&mut step.states);
            }
            step.counts.late_samples += f.late_samples;
            for c in f.changes {
                if c.active {
                    step.transitions.extend(self.registry.raise(c.spec, c.t, now));
                } else {
                    let key = c.spec.key();
                    step.transitions
                        .extend(self.registry.clear(&key, c.t, now, c.spec.value));
                }
            }
            late.extend(f.late);
            derived.extend(f.derived);
        }
        for r in derived.iter().filter(|_| self.live) {
            st.values.insert(
                r.point.local().to_string(),
                super::site::LatestValue {
                    t: r.t,
                    value: r.value,
                    quality: r.quality,
                },
            );
        }
        step.readings = accepted;
        step.readings.extend(derived);
        for l in late {
            if self.registry.get_key(&l.spec.key()).is_some() {
                // Already an open occurrence of it: one per key, nothing new to review.
                continue;
            }
            step.transitions
                .extend(self.registry.record_late(l.spec, l.from, l.to, now));
        }

        self.device_conditions(&site_id, &m, now, step);

        // Late is the device's own delay: from its send time where the
        // payload has one (a message the broker held while mizuban was
        // behind or restarting is not late data), else from arrival.
        let sent = m.decoded.sent_at.unwrap_or(m.arrived);
        let late_msg = m
            .decoded
            .t
            .is_some_and(|t| sent - t > Duration::seconds(self.cfg.service.late_after_s as i64));
        self.finish_late(&mut step.transitions, late_msg, now);
        if !late_msg && m.decoded.kind != MessageKind::Will {
            step.transitions.extend(self.registry.confirm_late(&device, now));
        }
        let st = self.sites.get_mut(&site_id).expect("present");
        if self.live && std::mem::take(&mut st.dev_dirty) {
            step.device_states.push((device.to_string(), st.device_json()));
        }
        vec![site_id]
    }

    /// The device's own conditions: events, then the alarm bit word. Most
    /// reports repeat what is known (a status word every few minutes with the
    /// same bits): those are recognised without building anything.
    fn device_conditions(&mut self, site_id: &SiteId, m: &Message, now: Timestamp, step: &mut Step) {
        let st = &self.sites[site_id];
        let profile = st.profile.clone();
        let device = st.site.device.clone();
        // (time, condition index, raise, value, threshold)
        let mut reports: Vec<(Timestamp, usize, bool, Option<f64>, Option<f64>)> = m
            .decoded
            .events
            .iter()
            .filter_map(|e| {
                let i = profile.conditions.iter().position(|c| c.code == e.code)?;
                Some((e.t, i, e.raise, e.value, e.threshold))
            })
            .collect();
        if let Some((t, bits)) = m.decoded.bits {
            for (i, c) in profile.conditions.iter().enumerate() {
                if let Some(bit) = c.bit {
                    reports.push((t, i, bits & (1u64 << bit) != 0, None, None));
                }
            }
        }
        reports.sort_by_key(|r| r.0);
        for (t, ci, raise, value, threshold) in reports {
            let cs = &profile.conditions[ci];
            let code = cs.code.as_str();
            let open = self.registry.get_parts(site_id.as_str(), device.as_str(), code);
            let (is_open, active_now) = (open.is_some(), open.is_some_and(|a| a.active));
            let st = self.sites.get_mut(site_id).expect("present");
            // The condition's last applied time, moved on unless this is late.
            let (last, late) = match &mut st.cond_t[ci] {
                Some(l) => {
                    let last = *l;
                    if t > last {
                        *l = t;
                        st.dev_dirty = true;
                    }
                    (Some(last), t < last)
                }
                slot @ None => {
                    *slot = Some(t);
                    st.dev_dirty = true;
                    (None, false)
                }
            };
            if !late {
                if raise == active_now {
                    continue; // what is known already
                }
            } else {
                // Older than what we already know of this condition: history
                // for review, never a live change.
                step.counts.late_samples += 1;
                if !raise || is_open || st.dev.known_episode(code, t) {
                    continue;
                }
            }
            let spec = RaiseSpec {
                site: site_id.clone(),
                device: device.clone(),
                source: device.to_string(),
                condition: code.to_string(),
                origin: AlarmOrigin::Device,
                priority: cs.priority,
                value,
                limit: threshold,
                message: cs.en.clone(),
                message_ja: cs.ja.clone(),
                suppressed_by: cs.suppressed_by.clone(),
            };
            if let Some(last) = last.filter(|_| late) {
                st.dev.episode(code, t, Some(last));
                st.dev_dirty = true;
                step.transitions.extend(self.registry.record_late(spec, t, last, now));
            } else if raise {
                st.dev.episode(code, t, None);
                step.transitions.extend(self.registry.raise(spec, t, now));
            } else {
                st.dev.episode_end(code, t);
                let key = spec.key();
                step.transitions.extend(self.registry.clear(&key, t, now, value));
            }
        }
    }

    /// Late data must not page anyone for a condition already over when it
    /// arrived. An occurrence raised and already over within the same message,
    /// or raised by a late message at all, is marked late: journaled for
    /// review, not told (a late one still active is told by `confirm_late`
    /// once current data shows it).
    fn finish_late(&mut self, transitions: &mut Vec<Transition>, late_msg: bool, now: Timestamp) {
        let mut raised: Vec<String> = Vec::new();
        for t in transitions
            .iter()
            .filter(|t| t.action == Action::Raise && !t.alarm.late)
        {
            if !raised.contains(&t.alarm.id) {
                raised.push(t.alarm.id.clone());
            }
        }
        let mut extra = Vec::new();
        for id in raised {
            let last = transitions.iter().rev().find(|t| t.alarm.id == id).expect("present");
            if last.alarm.active && !late_msg {
                continue;
            }
            let Some(a) = self.registry.mark_late(&id) else {
                continue;
            };
            for t in transitions.iter_mut().filter(|t| t.alarm.id == id) {
                t.notify = false;
                t.alarm.late = true;
            }
            extra.push(Transition {
                from: a.state,
                to: a.state,
                action: Action::Late,
                at: now,
                event_time: Some(a.raised_at),
                who: "system".into(),
                why: Some(if a.active {
                    "raised by late data; told only if still active in current data".into()
                } else {
                    "condition was over when the data arrived".into()
                }),
                notify: false,
                alarm: a,
            });
        }
        transitions.extend(extra);
    }

    /// Comm supervision and shelve expiry against `now`.
    fn on_tick(&mut self, now: Timestamp, step: &mut Step) -> Vec<SiteId> {
        step.transitions = self.registry.expire_shelves(now);
        let service_grace = self.cfg.service.comm_grace_s;
        let mut lost = 0;
        let mut changed = Vec::new();
        // Sorted so that a replay raises simultaneous comm losses in one order.
        let mut ids: Vec<&SiteId> = self.sites.keys().collect();
        ids.sort();
        for id in ids {
            let st = &self.sites[id];
            let interval = st.dev.interval_s.unwrap_or(st.profile.comm.expected_interval_s) as i64;
            let grace = st.profile.comm.grace_s.unwrap_or(service_grace) as i64;
            let after = interval * st.profile.comm.missed_intervals as i64 + grace;
            let last = st.dev.last_seen.unwrap_or(now);
            let key = AlarmKey {
                site: id.clone(),
                source: st.site.device.to_string(),
                condition: COMM_LOSS.into(),
            };
            if self.registry.get_key(&key).is_some_and(|a| a.active) {
                lost += 1;
                continue;
            }
            if now - last > Duration::seconds(after) {
                let c = &st.profile.comm;
                let silent_s = (now - last).num_seconds();
                let spec = RaiseSpec {
                    site: id.clone(),
                    device: st.site.device.clone(),
                    source: st.site.device.to_string(),
                    condition: c.condition.clone(),
                    origin: AlarmOrigin::Comm,
                    priority: c.priority,
                    // Seconds of silence against the allowed silence.
                    value: Some(silent_s as f64),
                    limit: Some(after as f64),
                    message: format!(
                        "{}: nothing received for {} (expected every {})",
                        c.en,
                        span_en(silent_s),
                        span_en(interval)
                    ),
                    message_ja: format!("{}：{}受信なし（通常{}毎）", c.ja, span_ja(silent_s), span_ja(interval)),
                    suppressed_by: vec![],
                };
                step.transitions.extend(self.registry.raise(spec, now, now));
                lost += 1;
                changed.push(id.clone());
            }
        }
        step.comm_lost = Some(lost);
        changed
    }

    fn on_command(&mut self, cmd: Command, now: Timestamp, step: &mut Step) -> Vec<SiteId> {
        step.reschedule = true;
        let res = match cmd {
            Command::Ack { id, who, comment } => self.registry.ack(&id, &who, comment, now),
            Command::Shelve {
                id,
                minutes,
                reason,
                who,
            } => self.registry.shelve(&id, minutes, reason, &who, now),
            Command::Unshelve { id, who } => self.registry.unshelve(&id, &who, now),
            Command::OutOfService { id, oos, who, reason } => {
                self.registry.set_out_of_service(&id, oos, &who, reason, now)
            }
        };
        step.reply = Some(match res {
            Ok(t) => {
                let a = t.alarm.clone();
                step.transitions.push(t);
                Ok(a)
            }
            Err(e) => Err(e),
        });
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarm::AlarmState;
    use crate::engine::{decode_publish, profiles_in_order};
    use chrono::{DateTime, Utc};

    fn cfg() -> Arc<Config> {
        Arc::new(Config::load_embedded().expect("the embedded configuration loads"))
    }

    fn at(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// One `dma-telemetry/1` upload of B17 with pressures at 5-minute steps.
    fn upload(cfg: &Config, seq: u64, start: &str, pressures: &[f64], arrived: Timestamp) -> Input {
        upload_sent(cfg, seq, start, pressures, arrived, arrived)
    }

    /// The same, first sent by the logger at `sent`.
    fn upload_sent(
        cfg: &Config,
        seq: u64,
        start: &str,
        pressures: &[f64],
        sent: Timestamp,
        arrived: Timestamp,
    ) -> Input {
        let t0 = at(start);
        let samples: Vec<String> = pressures
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = (t0 + Duration::minutes(5 * i as i64)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                format!(r#"{{"t":"{t}","q":40.0,"p":{p},"tot":{}}}"#, 1000.0 + i as f64)
            })
            .collect();
        let payload = format!(
            r#"{{"schema":"dma-telemetry/1","device_id":"AKT-DMA-017","block_id":"B17","boot":3,"seq":{seq},
                "sent_at":"{}","log_interval_s":300,"upload_interval_s":3600,"backlog":0,
                "units":{{"q":"m3/h","p":"MPa","tot":"m3"}},"samples":[{}]}}"#,
            sent.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            samples.join(",")
        );
        let topic = format!("{}akita/v1/dma/B17/AKT-DMA-017/telemetry", cfg.mqtt.topic_prefix);
        let (_, m) = decode_publish(cfg, &profiles_in_order(cfg), &topic, payload.as_bytes(), arrived, true).unwrap();
        Input::Message(Box::new(m))
    }

    fn engine(cfg: &Arc<Config>, now: Timestamp) -> Engine {
        Engine::new(cfg.clone(), |s| s.as_str() == "B17", &mut Resume::default(), now)
    }

    #[test]
    fn a_message_the_broker_held_is_judged_by_the_devices_send_time() {
        let cfg = cfg();
        let dip = [0.40, 0.10, 0.10, 0.10];
        // Sent promptly by the logger at 02:25:05, received two hours later
        // (mizuban was stopped; the broker held it): current data, told.
        let sent = at("2026-12-01T02:25:05Z");
        let now = sent + Duration::hours(2);
        let mut e = engine(&cfg, now);
        let s = e.step(upload_sent(&cfg, 1, "2026-12-01T02:10:00Z", &dip, sent, now), now);
        let raised: Vec<_> = s.transitions.iter().filter(|t| t.action == Action::Raise).collect();
        assert_eq!(raised.len(), 2, "{:?}", s.transitions);
        assert!(raised.iter().all(|t| t.notify && !t.alarm.late), "not late: {raised:?}");
        assert_eq!(
            raised[1].alarm.raised_at,
            at("2026-12-01T02:20:00Z"),
            "the device's timing"
        );
        assert!(!s.transitions.iter().any(|t| t.action == Action::Late));

        // The same samples sent by the logger itself two hours after it
        // logged them (its own backlog): late data, journaled for review.
        let mut e = engine(&cfg, now);
        let s = e.step(upload_sent(&cfg, 1, "2026-12-01T02:10:00Z", &dip, now, now), now);
        let raised: Vec<_> = s.transitions.iter().filter(|t| t.action == Action::Raise).collect();
        assert_eq!(raised.len(), 2);
        assert!(raised.iter().all(|t| !t.notify && t.alarm.late), "late: {raised:?}");
    }

    #[test]
    fn a_pressure_dip_raises_and_the_step_says_what_to_store() {
        let cfg = cfg();
        let now = at("2026-12-01T02:25:05Z");
        let mut e = engine(&cfg, now);
        // 0.10 MPa is below ll = 0.147 for longer than the 240 s on-delay.
        let s = e.step(
            upload(&cfg, 1, "2026-12-01T02:10:00Z", &[0.40, 0.10, 0.10, 0.10], now),
            now,
        );
        assert_eq!(s.readings.len(), 12, "q, p and tot of four samples");
        assert_eq!(s.counts.stored[0], 12);
        assert_eq!(s.seen, vec![("AKT-DMA-017".into(), 3, 1, now)]);
        let raised: Vec<_> = s.transitions.iter().filter(|t| t.action == Action::Raise).collect();
        let conds: Vec<&str> = raised.iter().map(|t| t.alarm.condition.as_str()).collect();
        assert_eq!(conds, ["pressure_l", "pressure_ll"], "{:?}", s.transitions);
        assert!(raised.iter().all(|t| t.notify && !t.alarm.late), "current data: told");
        let a = &raised[1].alarm;
        assert_eq!((a.site.as_str(), a.source.as_str()), ("B17", "B17.p"));
        assert_eq!(a.priority, crate::device::Priority::Critical);
        assert_eq!(
            a.raised_at,
            at("2026-12-01T02:20:00Z"),
            "event time of the reading after the on-delay"
        );
        assert_eq!(a.state, AlarmState::UnackActive);
        assert!(
            !s.states.is_empty() && !s.device_states.is_empty(),
            "rule and device state persist"
        );
        assert_eq!(s.sites.len(), 1);
        assert_eq!(s.sites[0].status, "alarm");
        assert_eq!(e.open_alarms().count(), 2);

        // The same upload again (QoS 1 redelivery): nothing new.
        let again = e.step(
            upload(&cfg, 1, "2026-12-01T02:10:00Z", &[0.40, 0.10, 0.10, 0.10], now),
            now,
        );
        assert!(again.readings.is_empty() && again.transitions.is_empty());
        assert!(matches!(again.notes[0], Note::DuplicateMessage { seq: 1, .. }));

        // An operator acknowledges: the reply and the transition, as values.
        let ack = e.step(
            Input::Command(Command::Ack {
                id: a.id.clone(),
                who: "sato".into(),
                comment: None,
            }),
            now,
        );
        let reply = ack.reply.unwrap().unwrap();
        assert_eq!(
            (reply.state, reply.acked_by.as_deref()),
            (AlarmState::AckActive, Some("sato"))
        );
        assert_eq!(ack.transitions[0].action, Action::Ack);
        let unknown = e.step(
            Input::Command(Command::Ack {
                id: "al-0-000000".into(),
                who: "sato".into(),
                comment: None,
            }),
            now,
        );
        assert!(matches!(unknown.reply, Some(Err(CommandError::NotFound(_)))));
        assert!(unknown.transitions.is_empty());
    }

    #[test]
    fn silence_past_the_allowed_period_is_comm_loss_and_a_message_clears_it() {
        let cfg = cfg();
        let t0 = at("2026-12-01T00:00:00Z");
        let mut e = engine(&cfg, t0);
        assert!(e.step(Input::Tick, t0 + Duration::minutes(30)).transitions.is_empty());
        // Hourly uploads: two missed intervals and the grace.
        let late = e.step(Input::Tick, t0 + Duration::hours(3));
        assert_eq!(late.comm_lost, Some(1));
        let lost = &late.transitions[0].alarm;
        assert_eq!(
            (lost.condition.as_str(), lost.state),
            ("comm_loss", AlarmState::UnackActive)
        );
        assert_eq!(late.sites[0].status, "comm_loss");
        let back = t0 + Duration::hours(3) + Duration::minutes(1);
        let s = e.step(upload(&cfg, 9, "2026-12-01T02:10:00Z", &[0.4], back), back);
        let clear = s
            .transitions
            .iter()
            .find(|t| t.action == Action::Clear)
            .expect("comm loss cleared");
        assert_eq!(clear.alarm.condition, "comm_loss");
        assert_eq!(s.sites[0].status, "ok");
    }

    #[test]
    fn the_same_inputs_give_the_same_step_ids_and_all() {
        let cfg = cfg();
        let now = at("2026-12-01T03:00:05Z");
        let run = || {
            let mut e = engine(&cfg, now);
            let mut out = Vec::new();
            for (i, p) in [[0.4, 0.1, 0.1, 0.1], [0.1, 0.4, 0.4, 0.4], [0.4, 0.1, 0.1, 0.1]]
                .iter()
                .enumerate()
            {
                let arrived = now + Duration::hours(i as i64);
                let start = (at("2026-12-01T02:10:00Z") + Duration::hours(i as i64)).to_rfc3339();
                let s = e.step(upload(&cfg, i as u64 + 1, &start, p, arrived), arrived);
                out.extend(
                    s.transitions
                        .into_iter()
                        .map(|t| serde_json::to_string(&t.alarm).unwrap()),
                );
            }
            out
        };
        let (a, b) = (run(), run());
        assert!(a.len() >= 3, "{a:?}");
        assert_eq!(a, b, "alarm ids are derived, not random");
    }

    #[test]
    fn a_message_for_another_shards_site_is_quarantined_not_dropped_silently() {
        let cfg = cfg();
        let now = at("2026-12-01T03:00:05Z");
        let mut e = Engine::new(cfg.clone(), |s| s.as_str() == "B01", &mut Resume::default(), now);
        let s = e.step(upload(&cfg, 1, "2026-12-01T02:10:00Z", &[0.4], now), now);
        assert!(s.readings.is_empty());
        assert_eq!(s.quarantined.len(), 1);
        assert_eq!(s.quarantined[0].reason, "unknown_site");
    }
}
