//! One pipeline shard: the single owner of its sites' state.

use super::dedup::{MessageDedup, SampleDedup};
use super::view::{LatestValue, ShardView, SiteStatus};
use super::{Incoming, Input, Quarantine, QuarantineEntry};
use crate::alarm::{Alarm, AlarmKey, AlarmOrigin, AlarmState, CommandError, RaiseSpec, Registry, Transition};
use crate::config::{Config, Site};
use crate::device::{MessageKind, Profile};
use crate::model::{Clock, PointId, Reading, SiteId, Timestamp};
use crate::rules::{Evaluator, RuleState};
use crate::store::{Batch, Restored, Store};
use crate::telemetry::{events, Metrics};
use chrono::Duration;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

const COMM_LOSS: &str = "comm_loss";

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

/// Rule and device state are plain data (strings, numbers, times, string-keyed
/// maps): serializing them cannot fail.
fn state_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

struct BoundRule {
    key: String,
    point: PointId,
    eval: Evaluator,
    state: RuleState,
    dirty: bool,
}

/// Per-device state that must survive a restart (stored as JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DeviceState {
    /// Arrival time of the last message (master station clock).
    last_seen: Option<Timestamp>,
    /// The interval the device said it reports at now.
    interval_s: Option<u32>,
    online: Option<bool>,
    boot: Option<u64>,
    /// Event time of the last applied state per device condition; older
    /// reports of that condition are late.
    cond_t: BTreeMap<String, Timestamp>,
    /// Recent episodes (raise, clear) per device condition. A late report that
    /// falls inside a known episode is the same episode seen again (MQTT does
    /// not order messages across topics: an event and a status bit word can
    /// arrive in either order), not a new finding.
    #[serde(default)]
    episodes: BTreeMap<String, VecDeque<(Timestamp, Option<Timestamp>)>>,
}

impl DeviceState {
    fn known_episode(&self, code: &str, t: Timestamp) -> bool {
        self.episodes
            .get(code)
            .is_some_and(|eps| eps.iter().any(|(from, to)| *from <= t && to.is_none_or(|to| t <= to)))
    }
    fn episode(&mut self, code: &str, from: Timestamp, to: Option<Timestamp>) {
        let eps = self.episodes.entry(code.to_string()).or_default();
        eps.push_back((from, to));
        while eps.len() > 16 {
            eps.pop_front();
        }
    }
    fn episode_end(&mut self, code: &str, to: Timestamp) {
        if let Some((_, end @ None)) = self.episodes.get_mut(code).and_then(|e| e.back_mut()) {
            *end = Some(to);
        }
    }
}

struct SiteCtx {
    site: Arc<Site>,
    profile: Arc<Profile>,
    rules: Vec<BoundRule>,
    dev: DeviceState,
    dev_dirty: bool,
    msgs: MessageDedup,
    samples: SampleDedup,
    values: BTreeMap<String, LatestValue>,
    /// Pump-health analytics (pump stations only).
    health: Option<crate::health::StationHealth>,
}

pub(super) struct Shard {
    idx: usize,
    cfg: Arc<Config>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    store: Store,
    events: broadcast::Sender<Arc<Transition>>,
    view: Arc<ShardView>,
    quarantine: Arc<Quarantine>,
    registry: Registry,
    sites: HashMap<SiteId, SiteCtx>,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        idx: usize,
        n: usize,
        cfg: Arc<Config>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        store: Store,
        events: broadcast::Sender<Arc<Transition>>,
        view: Arc<ShardView>,
        quarantine: Arc<Quarantine>,
        restored: &mut Restored,
    ) -> Self {
        let now = clock.now();
        let mut registry = Registry::new();
        let mut sites = HashMap::new();
        for site in cfg.sites.iter().filter(|s| super::shard_of(s.id.as_str(), n) == idx) {
            let Some(profile) = cfg.profiles.get(&site.profile).cloned() else {
                continue;
            };
            for c in &profile.conditions {
                registry.set_parents(site.device.clone(), c.code.clone(), c.suppressed_by.clone());
            }
            let mut rules = Vec::new();
            for r in cfg.rules.iter().filter(|r| r.applies_to.matches(site)) {
                let point = PointId::new(&site.id, &r.point).expect("validated at config load");
                let key = format!("{}|{}", r.id, point);
                let state = restored
                    .rule_states
                    .remove(&key)
                    .and_then(|j| {
                        serde_json::from_str(&j)
                            .map_err(
                                |e| tracing::warn!(%key, error = %e, "stored rule state unreadable; starting fresh"),
                            )
                            .ok()
                    })
                    .unwrap_or_default();
                rules.push(BoundRule {
                    key,
                    point,
                    eval: Evaluator::new(r.clone(), site, cfg.service.utc_offset_hours),
                    state,
                    dirty: false,
                });
            }
            let mut dev: DeviceState = restored
                .device_states
                .remove(site.device.as_str())
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            // A device never heard from is given its first full period from now.
            let dev_dirty = dev.last_seen.is_none();
            dev.last_seen.get_or_insert(now);
            let health = (site.kind == crate::model::SiteKind::PumpStation).then(|| {
                restored
                    .rule_states
                    .remove(&format!("health|{}", site.id))
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default()
            });
            let mut ctx = SiteCtx {
                site: site.clone(),
                profile,
                rules,
                dev,
                dev_dirty,
                msgs: MessageDedup::default(),
                samples: SampleDedup::default(),
                values: BTreeMap::new(),
                health,
            };
            for (d, boot, seq) in &restored.seen {
                if d == site.device.as_str() {
                    ctx.msgs.first_time(*boot, *seq);
                }
            }
            sites.insert(site.id.clone(), ctx);
        }
        let mine: Vec<Alarm> = restored
            .open_alarms
            .iter()
            .filter(|a| sites.contains_key(&a.site))
            .cloned()
            .collect();
        for a in &mine {
            view.put_alarm(a);
        }
        registry.restore(mine);
        let s = Self {
            idx,
            cfg,
            clock,
            metrics,
            store,
            events,
            view,
            quarantine,
            registry,
            sites,
        };
        for id in s.sites.keys() {
            s.publish_site(id);
        }
        s
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Input>, cancel: CancellationToken) {
        let span = tracing::info_span!("shard", shard = self.idx);
        let _e = span.enter();
        drop(_e);
        loop {
            let input = tokio::select! {
                biased;
                i = rx.recv() => match i { Some(i) => i, None => break },
                _ = cancel.cancelled() => break,
            };
            if let Err(e) = self.handle(input, false).await {
                tracing::error!(shard = self.idx, error = %e, "store unavailable; shard stops");
                break;
            }
        }
        // Drain what was already queued so accepted work is stored before exit.
        rx.close();
        while let Some(input) = rx.recv().await {
            if self.handle(input, true).await.is_err() {
                break;
            }
        }
        tracing::debug!(shard = self.idx, "shard stopped");
    }

    /// One input, start to finish: apply it, queue its batch for the store.
    /// While draining at shutdown the clock-driven checks are skipped.
    async fn handle(&mut self, input: Input, draining: bool) -> Result<(), crate::store::StoreError> {
        let is_msg = matches!(input, Input::Message(_));
        let batch = match input {
            Input::Message(m) => self.on_message(*m),
            Input::Command(cmd, reply) => {
                let (mut b, res) = self.on_command(cmd);
                if res.is_ok() {
                    // Answered once the change is committed: an operator's 200
                    // means the acknowledgement is durable.
                    b.acks.push(Box::new(super::reply::ReplyOnCommit::new(reply, res)));
                } else {
                    // Nothing changed; the requester may have gone.
                    let _ = reply.send(res);
                }
                b
            }
            Input::Tick if draining => Batch::default(),
            Input::Tick => self.on_tick(),
            Input::External(spec, active) => self.on_external(spec, active),
        };
        if !batch.is_empty() {
            self.store.submit(batch, &self.metrics).await?;
        }
        if is_msg {
            // Counted once handled and queued for the store, so a reader
            // that sees the count and then flushes the store sees its effects.
            self.metrics.messages.inc();
        }
        Ok(())
    }

    fn publish(&self, transitions: &[Transition]) {
        for t in transitions {
            events::AlarmTransition(t).emit(&self.metrics);
            self.view.put_alarm(&t.alarm);
            // No receivers is normal (no board open).
            let _ = self.events.send(Arc::new(t.clone()));
        }
    }

    fn publish_site(&self, id: &SiteId) {
        let Some(ctx) = self.sites.get(id) else {
            return;
        };
        let mine = self.registry.iter().filter(|a| &a.site == id);
        let mut status = "ok";
        let mut any_oos = false;
        for a in mine {
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
        self.view.put_site(SiteStatus {
            id: id.to_string(),
            status,
            last_seen: ctx.dev.last_seen,
            online: ctx.dev.online,
            boot: ctx.dev.boot,
            values: ctx.values.clone(),
        });
    }

    fn quarantine_msg(&self, m: &Incoming, reason: &str, error: String) {
        events::Quarantined {
            topic: &m.topic,
            reason,
            error: &error,
        }
        .emit(&self.metrics);
        self.quarantine.push(QuarantineEntry {
            at: m.arrived,
            topic: m.topic.clone(),
            reason: reason.into(),
            error,
            whole: true,
            payload: m.raw.clone(),
            size: m.raw.len(),
        });
    }

    fn on_message(&mut self, mut m: Incoming) -> Batch {
        let mut batch = Batch {
            received: Some(m.received),
            ..Default::default()
        };
        if let Some(a) = m.ack.take() {
            batch.acks.push(a);
        }
        let now = self.clock.now();
        let Ok(site_id) = SiteId::new(&m.decoded.site) else {
            self.quarantine_msg(&m, "unknown_site", format!("site {:?} is not valid", m.decoded.site));
            return batch;
        };
        let Some(ctx) = self.sites.get_mut(&site_id) else {
            self.quarantine_msg(
                &m,
                "unknown_site",
                format!("site {site_id} is not configured on this shard"),
            );
            return batch;
        };
        let d = &m.decoded;
        if let Some(dev) = &d.device {
            if dev != ctx.site.device.as_str() {
                let err = format!(
                    "device {dev:?} is not the device configured for site {site_id} ({})",
                    ctx.site.device
                );
                self.quarantine_msg(&m, "unknown_device", err);
                return batch;
            }
        }
        let device = ctx.site.device.clone();
        // Every message but the broker-sent last will proves the device is alive,
        // duplicates included.
        if d.kind != MessageKind::Will {
            ctx.dev.last_seen = Some(m.arrived);
            ctx.dev_dirty = true;
        }
        let mut transitions = Vec::new();
        if d.kind != MessageKind::Will {
            let key = AlarmKey {
                site: site_id.clone(),
                source: device.to_string(),
                condition: COMM_LOSS.into(),
            };
            transitions.extend(self.registry.clear(&key, m.arrived, now, None));
        }
        let ctx = self.sites.get_mut(&site_id).expect("looked up above");
        if let Some(id) = d.ident {
            if !ctx.msgs.first_time(id.boot, id.seq) {
                events::DuplicateMessage {
                    device: device.as_str(),
                    boot: id.boot,
                    seq: id.seq,
                }
                .emit(&self.metrics);
                batch.device_states.push((device.to_string(), state_json(&ctx.dev)));
                self.publish(&transitions);
                batch.transitions = transitions;
                self.publish_site(&site_id);
                return batch;
            }
            if ctx.dev.boot.is_some_and(|b| id.boot > b) {
                tracing::info!(site = %site_id, device = %device, boot = id.boot, "device rebooted");
            }
            if ctx.dev.boot.is_none_or(|b| id.boot > b) {
                ctx.dev.boot = Some(id.boot);
            }
            batch.seen.push((device.to_string(), id.boot, id.seq, m.arrived));
        }
        if let Some(i) = d.interval_s {
            ctx.dev.interval_s = Some(i);
        }
        if let Some(o) = d.online {
            ctx.dev.online = Some(o);
        } else if d.kind != MessageKind::Will {
            ctx.dev.online = Some(true);
        }
        for (p, detail) in &d.problems {
            events::SampleProblem {
                device: device.as_str(),
                reason: p.as_str(),
                detail,
            }
            .emit(&self.metrics);
        }
        if !d.problems.is_empty() {
            self.quarantine.push(QuarantineEntry {
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
        batch
            .raw
            .push((site_id.to_string(), format!("{}\n{}", m.topic, m.raw), m.arrived));

        // Readings, in event-time order per point.
        let mut readings = m.decoded.readings.clone();
        readings.sort_by(|a, b| a.point.cmp(&b.point).then(a.t.cmp(&b.t)));
        let mut late: BTreeMap<(usize, String), (Timestamp, Timestamp, f64, f64)> = BTreeMap::new();
        for r in readings {
            let Ok(point) = PointId::new(&site_id, &r.point) else {
                continue;
            };
            if !ctx.samples.first_time(point.as_str(), r.t.timestamp_millis()) {
                self.metrics.duplicate_samples.inc();
                continue;
            }
            events::SampleStored(r.quality).emit(&self.metrics);
            if ctx.values.get(&r.point).is_none_or(|v| v.t <= r.t) {
                ctx.values.insert(
                    r.point.clone(),
                    LatestValue {
                        t: r.t,
                        value: r.value,
                        quality: r.quality,
                    },
                );
            }
            for (i, br) in ctx.rules.iter_mut().enumerate().filter(|(_, br)| br.point == point) {
                if br.eval.is_out_of_order(&br.state, r.t) {
                    self.metrics.late_samples.inc();
                    if let (Some(v), crate::model::Quality::Good) = (r.value, r.quality) {
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
                    let spec = RaiseSpec {
                        site: site_id.clone(),
                        device: device.clone(),
                        source: point.to_string(),
                        condition: tr.condition.clone(),
                        origin: AlarmOrigin::Rule,
                        priority: tr.priority,
                        value: tr.value,
                        limit: tr.limit,
                        message: tr.en,
                        message_ja: tr.ja,
                        suppressed_by: vec![],
                    };
                    if tr.active {
                        transitions.extend(self.registry.raise(spec, tr.t, now));
                    } else {
                        transitions.extend(self.registry.clear(&spec.key(), tr.t, now, tr.value));
                    }
                }
            }
            batch.readings.push(Reading {
                point,
                t: r.t,
                value: r.value,
                quality: r.quality,
                arrived: m.arrived,
            });
        }
        // Pump health from the same readings, instant by instant.
        if let Some(health) = ctx.health.as_mut() {
            let mut by_t: BTreeMap<Timestamp, HashMap<String, f64>> = BTreeMap::new();
            for r in batch
                .readings
                .iter()
                .filter(|r| r.quality == crate::model::Quality::Good)
            {
                if let Some(v) = r.value {
                    by_t.entry(r.t).or_default().insert(r.point.local().to_string(), v);
                }
            }
            let area = ctx.site.attrs.get("well_area_m2").copied();
            for (t, values) in by_t
                .into_iter()
                .filter(|(_, v)| v.contains_key("p1_run") || v.contains_key("p2_run"))
            {
                let out = health.update(t, &values, area);
                for (name, v) in out.readings {
                    if let Ok(point) = PointId::new(&site_id, &name) {
                        ctx.values.insert(
                            name,
                            LatestValue {
                                t,
                                value: Some(v),
                                quality: crate::model::Quality::Good,
                            },
                        );
                        batch.readings.push(Reading {
                            point,
                            t,
                            value: Some(v),
                            quality: crate::model::Quality::Good,
                            arrived: m.arrived,
                        });
                    }
                }
                for c in out.changes {
                    let pump = c.condition.split('_').next().unwrap_or("pump").to_string();
                    // A pump the controller already reports faulted, or a power
                    // cut, explains its health symptoms: suppressed, not flooded.
                    let parents = vec![format!("{}_FAULT", pump.to_uppercase()), "POWER_FAIL".to_string()];
                    let spec = RaiseSpec {
                        site: site_id.clone(),
                        device: device.clone(),
                        source: format!("{site_id}.{pump}"),
                        condition: c.condition,
                        origin: AlarmOrigin::Rule,
                        priority: c.priority,
                        value: c.value,
                        limit: c.limit,
                        message: c.en,
                        message_ja: c.ja,
                        suppressed_by: parents,
                    };
                    if c.active {
                        transitions.extend(self.registry.raise(spec, t, now));
                    } else {
                        transitions.extend(self.registry.clear(&spec.key(), t, now, c.value));
                    }
                }
            }
            batch
                .rule_states
                .push((format!("health|{site_id}"), state_json(health)));
        }
        for ((i, cond), (from, to, v, limit)) in late {
            let br = &ctx.rules[i];
            let key = AlarmKey {
                site: site_id.clone(),
                source: br.point.to_string(),
                condition: cond.clone(),
            };
            if self.registry.get_key(&key).is_some() {
                // Already an open occurrence of it: one per key, nothing new to review.
                continue;
            }
            let spec = RaiseSpec {
                site: site_id.clone(),
                device: device.clone(),
                source: br.point.to_string(),
                condition: cond,
                origin: AlarmOrigin::Rule,
                priority: br.eval.rule.priority(""),
                value: Some(v),
                limit: Some(limit),
                message: format!("{} (late data)", br.eval.rule.en),
                message_ja: format!("{}（遅延データ）", br.eval.rule.ja),
                suppressed_by: vec![],
            };
            transitions.extend(self.registry.record_late(spec, from, to, now));
        }

        // Device conditions: events, then the alarm bit word.
        let profile = ctx.profile.clone();
        let mut reports: Vec<(Timestamp, String, bool, Option<f64>, Option<f64>)> = m
            .decoded
            .events
            .iter()
            .map(|e| (e.t, e.code.clone(), e.raise, e.value, e.threshold))
            .collect();
        if let Some((t, bits)) = m.decoded.bits {
            for c in profile.conditions.iter().filter(|c| c.bit.is_some()) {
                let on = bits & (1u64 << c.bit.expect("filtered")) != 0;
                reports.push((t, c.code.clone(), on, None, None));
            }
        }
        reports.sort_by_key(|r| r.0);
        for (t, code, raise, value, threshold) in reports {
            let Some(cs) = profile.condition(&code) else {
                continue;
            };
            let spec = RaiseSpec {
                site: site_id.clone(),
                device: device.clone(),
                source: device.to_string(),
                condition: code.clone(),
                origin: AlarmOrigin::Device,
                priority: cs.priority,
                value,
                limit: threshold,
                message: cs.en.clone(),
                message_ja: cs.ja.clone(),
                suppressed_by: cs.suppressed_by.clone(),
            };
            let key = spec.key();
            let active_now = self.registry.get_key(&key).is_some_and(|a| a.active);
            let ctx = self.sites.get_mut(&site_id).expect("present");
            let last = ctx.dev.cond_t.get(&code).copied();
            if let Some(last) = last.filter(|l| t < *l) {
                // Older than what we already know of this condition: history for
                // review, never a live change.
                self.metrics.late_samples.inc();
                let open = self.registry.get_key(&key).is_some();
                if raise && !open && !ctx.dev.known_episode(&code, t) {
                    ctx.dev.episode(&code, t, Some(last));
                    ctx.dev_dirty = true;
                    transitions.extend(self.registry.record_late(spec, t, last, now));
                }
                continue;
            }
            ctx.dev.cond_t.insert(code.clone(), t);
            ctx.dev_dirty = true;
            if raise && !active_now {
                ctx.dev.episode(&code, t, None);
                transitions.extend(self.registry.raise(spec, t, now));
            } else if !raise && active_now {
                ctx.dev.episode_end(&code, t);
                transitions.extend(self.registry.clear(&key, t, now, value));
            }
        }

        let late_msg = m
            .decoded
            .t
            .is_some_and(|t| m.arrived - t > Duration::seconds(self.cfg.service.late_after_s as i64));
        self.finish_late(&mut transitions, late_msg, now);
        if !late_msg && m.decoded.kind != MessageKind::Will {
            transitions.extend(self.registry.confirm_late(&device, now));
        }
        let ctx = self.sites.get_mut(&site_id).expect("present");
        for br in ctx.rules.iter_mut().filter(|b| b.dirty) {
            br.dirty = false;
            batch.rule_states.push((br.key.clone(), state_json(&br.state)));
        }
        if ctx.dev_dirty {
            ctx.dev_dirty = false;
            batch.device_states.push((device.to_string(), state_json(&ctx.dev)));
        }
        self.publish(&transitions);
        batch.transitions = transitions;
        self.publish_site(&site_id);
        batch
    }

    /// Late data must not page anyone for a condition already over when it
    /// arrived. An occurrence raised and already over within the same message,
    /// or raised by a late message at all, is marked late: journaled for
    /// review, not told (a late one still active is told by `confirm_late`
    /// once current data shows it).
    fn finish_late(&mut self, transitions: &mut Vec<Transition>, late_msg: bool, now: Timestamp) {
        let mut raised: Vec<String> = Vec::new();
        for t in transitions.iter().filter(|t| t.action == "raise" && !t.alarm.late) {
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
                action: "late".into(),
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

    fn on_external(&mut self, spec: RaiseSpec, active: bool) -> Batch {
        let now = self.clock.now();
        let site = spec.site.clone();
        let transitions = if active {
            self.registry.raise(spec, now, now)
        } else {
            self.registry.clear(&spec.key(), now, now, None)
        };
        self.publish(&transitions);
        self.publish_site(&site);
        Batch {
            transitions,
            ..Default::default()
        }
    }

    fn on_tick(&mut self) -> Batch {
        let now = self.clock.now();
        let mut transitions = self.registry.expire_shelves(now);
        let service_grace = self.cfg.service.comm_grace_s;
        let mut lost = 0;
        let mut changed_sites = Vec::new();
        for (id, ctx) in &self.sites {
            let interval = ctx.dev.interval_s.unwrap_or(ctx.profile.comm.expected_interval_s) as i64;
            let grace = ctx.profile.comm.grace_s.unwrap_or(service_grace) as i64;
            let after = interval * ctx.profile.comm.missed_intervals as i64 + grace;
            let last = ctx.dev.last_seen.unwrap_or(now);
            let key = AlarmKey {
                site: id.clone(),
                source: ctx.site.device.to_string(),
                condition: COMM_LOSS.into(),
            };
            let active = self.registry.get_key(&key).is_some_and(|a| a.active);
            if active {
                lost += 1;
                continue;
            }
            if now - last > Duration::seconds(after) {
                let c = &ctx.profile.comm;
                let silent_s = (now - last).num_seconds();
                let spec = RaiseSpec {
                    site: id.clone(),
                    device: ctx.site.device.clone(),
                    source: ctx.site.device.to_string(),
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
                transitions.extend(self.registry.raise(spec, now, now));
                lost += 1;
                changed_sites.push(id.clone());
            }
        }
        self.metrics.devices_comm_lost.set(lost);
        let sites_touched: Vec<SiteId> = transitions
            .iter()
            .map(|t| t.alarm.site.clone())
            .chain(changed_sites)
            .collect();
        self.publish(&transitions);
        for s in sites_touched {
            self.publish_site(&s);
        }
        Batch {
            transitions,
            ..Default::default()
        }
    }

    fn on_command(&mut self, cmd: super::Command) -> (Batch, Result<Alarm, CommandError>) {
        use super::Command as C;
        let now = self.clock.now();
        let res = match cmd {
            C::Ack { id, who, comment } => self.registry.ack(&id, &who, comment, now),
            C::Shelve {
                id,
                minutes,
                reason,
                who,
            } => self.registry.shelve(&id, minutes, reason, &who, now),
            C::Unshelve { id, who } => self.registry.unshelve(&id, &who, now),
            C::OutOfService { id, oos, who, reason } => self.registry.set_out_of_service(&id, oos, &who, reason, now),
        };
        match res {
            Ok(t) => {
                let a = t.alarm.clone();
                self.publish(std::slice::from_ref(&t));
                self.publish_site(&a.site);
                (
                    Batch {
                        transitions: vec![t],
                        ..Default::default()
                    },
                    Ok(a),
                )
            }
            Err(e) => (Batch::default(), Err(e)),
        }
    }
}
