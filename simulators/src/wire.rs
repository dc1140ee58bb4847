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
}

/// The device's outbox: everything created and not yet handed to the radio,
/// oldest first.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub queue: VecDeque<Pending>,
    pub last_sent: Option<Msg>,
}

impl Outbox {
    pub fn push(&mut self, p: Pending) {
        // A logger's memory is finite: beyond this the oldest are lost (as in the field).
        if self.queue.len() >= 5000 {
            self.queue.pop_front();
        }
        self.queue.push_back(p);
    }

    /// Sends up to `max` messages: live ones (created now) interleaved with
    /// backlog, oldest first, as the devices do after an outage.
    pub fn drain(&mut self, max: usize, device_now: DateTime<Utc>) -> Vec<Msg> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut p) = self.queue.pop_front() else { break };
            if p.fill_sent {
                p.body["sent_at"] = Value::String(crate::rfc3339(device_now));
                p.body["backlog"] = Value::from(self.queue.len() as u64);
            }
            let m = Msg { topic: p.topic, payload: serde_json::to_vec(&p.body).expect("json"), retain: p.retain };
            self.last_sent = Some(m.clone());
            out.push(m);
        }
        out
    }
}
