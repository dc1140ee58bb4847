//! What devices put on the wire, and the queue they keep until the broker has it.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::VecDeque;

/// One MQTT message as a device sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// A byte-identical repeat of a message already sent (not on the wire as
    /// such: MQTT cannot tell, which is the point).
    pub resend: bool,
}

/// A simulated device: pure, time passed in.
pub trait Device: Send + 'static {
    fn id(&self) -> &str;
    fn site(&self) -> &str;
    /// Advances to true time `now` and returns what the device sends.
    fn step(&mut self, now: DateTime<Utc>) -> Vec<Msg>;
    fn inject(&mut self, s: crate::Scenario, now: DateTime<Utc>);
    /// Topic and payload of the last will.
    fn will(&self) -> Msg;
    /// Whether the radio is up (an LTE outage or a dead battery takes it down).
    fn radio_up(&self) -> bool;
}

/// A message created with its seq; `sent_at`/`backlog` are filled in at its
/// first send, after which its bytes never change (a resend is byte-identical).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub topic: String,
    pub body: Value,
    pub retain: bool,
    pub fill_sent: bool,
    pub resend: bool,
}

/// The device's outbox. Messages created now go out first; after an outage the
/// backlog follows a few per step, oldest first, so live data and backlog
/// interleave as they do in the field.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub fresh: VecDeque<Pending>,
    pub backlog: VecDeque<Pending>,
    pub last_sent: Option<Msg>,
}

impl Outbox {
    pub fn push(&mut self, p: Pending) {
        self.fresh.push_back(p);
    }

    /// Queues the last message again, byte-identical (a QoS 1 redelivery).
    pub fn redeliver_last(&mut self) {
        if let Some(m) = self.last_sent.clone() {
            self.fresh.push_front(Pending {
                topic: m.topic,
                body: serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
                retain: m.retain,
                fill_sent: false,
                resend: true,
            });
        }
    }

    /// Sends what the radio can: every fresh message and up to `max_backlog`
    /// queued ones. With the radio down everything waits in the backlog.
    pub fn drain(&mut self, radio_up: bool, max_backlog: usize, device_now: DateTime<Utc>) -> Vec<Msg> {
        if !radio_up {
            self.backlog.extend(self.fresh.drain(..));
            // A logger's memory is finite: beyond this the oldest are lost (as in the field).
            while self.backlog.len() > 5000 {
                self.backlog.pop_front();
            }
            return vec![];
        }
        let mut batch: Vec<Pending> = self.fresh.drain(..).collect();
        for _ in 0..max_backlog {
            match self.backlog.pop_front() {
                Some(p) => batch.push(p),
                None => break,
            }
        }
        let remaining = self.backlog.len();
        batch
            .into_iter()
            .map(|mut p| {
                if p.fill_sent {
                    p.body["sent_at"] = Value::String(crate::rfc3339(device_now));
                    p.body["backlog"] = Value::from(remaining as u64);
                }
                let m = Msg {
                    topic: p.topic,
                    payload: serde_json::to_vec(&p.body).expect("json"),
                    retain: p.retain,
                    resend: p.resend,
                };
                self.last_sent = Some(m.clone());
                m
            })
            .collect()
    }
}
