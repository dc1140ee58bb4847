//! Operational events: each `emit()` logs and counts together.

use super::metrics::{ActionLabel, Metrics, QualityLabel, Reason};
use crate::model::Quality;

pub struct Quarantined<'a> {
    pub topic: &'a str,
    pub reason: &'a str,
    pub error: &'a str,
}
impl Quarantined<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            topic = self.topic,
            reason = self.reason,
            error = self.error,
            "message quarantined"
        );
        m.quarantined.get_or_create(&Metrics::reason(self.reason)).inc();
    }
}

pub struct SampleProblem<'a> {
    pub device: &'a str,
    pub reason: &'a str,
    pub detail: &'a str,
}
impl SampleProblem<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            device = self.device,
            reason = self.reason,
            detail = self.detail,
            "sample problem"
        );
        m.sample_problems.get_or_create(&Metrics::reason(self.reason)).inc();
    }
}

pub struct DuplicateMessage<'a> {
    pub device: &'a str,
    pub boot: u64,
    pub seq: u64,
}
impl DuplicateMessage<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::debug!(
            device = self.device,
            boot = self.boot,
            seq = self.seq,
            "duplicate message dropped"
        );
        m.duplicate_messages.inc();
    }
}

/// Samples stored in one step, of one quality.
pub struct SampleStored(pub Quality, pub u64);
impl SampleStored {
    pub fn emit(&self, m: &Metrics) {
        if self.1 > 0 {
            m.samples
                .get_or_create(&QualityLabel {
                    quality: self.0.as_str().into(),
                })
                .inc_by(self.1);
        }
    }
}

pub struct AlarmTransition<'a>(pub &'a crate::alarm::Transition);
impl AlarmTransition<'_> {
    pub fn emit(&self, m: &Metrics) {
        let t = self.0;
        tracing::info!(
            site = %t.alarm.site, source = %t.alarm.source, condition = %t.alarm.condition,
            action = %t.action, from = t.from.as_str(), to = t.to.as_str(), who = %t.who,
            notify = t.notify, late = t.alarm.late, "alarm transition"
        );
        m.alarm_transitions
            .get_or_create(&ActionLabel {
                action: t.action.as_str().to_string(),
            })
            .inc();
    }
}

pub struct MqttError<'a> {
    pub kind: &'a str,
    pub error: &'a str,
    pub retry_in_ms: u64,
}
impl MqttError<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            kind = self.kind,
            error = self.error,
            retry_in_ms = self.retry_in_ms,
            "mqtt connection error"
        );
        m.mqtt_errors
            .get_or_create(&Reason {
                reason: self.kind.into(),
            })
            .inc();
        m.mqtt_reconnects.inc();
        m.mqtt_connected.set(0);
    }
}

/// The collector dropped its broker connection on purpose so the broker
/// redelivers what it could not acknowledge.
pub struct MqttForcedReconnect<'a> {
    pub reason: &'a str,
    pub owed: u64,
}
impl MqttForcedReconnect<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::warn!(
            reason = self.reason,
            owed = self.owed,
            "mqtt connection dropped on purpose; the broker redelivers"
        );
        m.mqtt_forced_reconnects
            .get_or_create(&Metrics::reason(self.reason))
            .inc();
    }
}

/// Messages owed to the broker and no acknowledgement for a whole period.
pub struct MqttStalled<'a>(pub &'a crate::collect::mqtt::Stall);
impl MqttStalled<'_> {
    pub fn emit(&self, m: &Metrics) {
        tracing::error!(
            owed = self.0.owed,
            for_s = self.0.for_s,
            acks_stuck = self.0.acks_stuck,
            "mqtt intake stalled"
        );
        m.mqtt_stalled.set(1);
    }
}
