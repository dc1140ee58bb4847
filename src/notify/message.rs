//! A notification as planned, stored in the outbox and sent: the webhook
//! payload of interfaces.md, typed. The planner builds it, the outbox keeps
//! it (as its JSON), the engine stamps `sent_at` and sends it, and the e-mail
//! and chat texts are rendered from it. Serialized, it is the payload byte
//! for byte as before it was typed: the same keys, absent where they were.

use crate::alarm::Alarm;
use crate::model::Timestamp;
use serde::{Deserialize, Serialize};

/// What a message tells. A new kind is a decision in every match (the
/// renderers and the planner), not a string nobody handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "alarm.raised")]
    AlarmRaised,
    /// Raised again to the next level: nobody acknowledged in time.
    #[serde(rename = "alarm.escalated")]
    AlarmEscalated,
    #[serde(rename = "alarm.cleared")]
    AlarmCleared,
    #[serde(rename = "alarm.acknowledged")]
    AlarmAcknowledged,
    #[serde(rename = "alarm.shelved")]
    AlarmShelved,
    /// An alarm that raised and cleared before anyone was paged.
    #[serde(rename = "alarm.brief")]
    AlarmBrief,
    #[serde(rename = "incident.opened")]
    IncidentOpened,
    /// More alarms joined an incident people were already told of.
    #[serde(rename = "incident.updated")]
    IncidentUpdated,
    #[serde(rename = "incident.closed")]
    IncidentClosed,
    #[serde(rename = "incident.brief")]
    IncidentBrief,
    /// Messages held by a person's rate limit, sent as one.
    #[serde(rename = "summary")]
    Summary,
    /// An occurrence that came back (chattered) after its return to normal
    /// was told, now over: how many times (`alarm.reactivations`), from the
    /// first raise to the last return. Its re-raises were not paged one by
    /// one (one occurrence, one page); this is where they are counted.
    #[serde(rename = "alarm.reactivated")]
    AlarmReactivated,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::AlarmRaised,
        Kind::AlarmEscalated,
        Kind::AlarmCleared,
        Kind::AlarmAcknowledged,
        Kind::AlarmShelved,
        Kind::AlarmBrief,
        Kind::IncidentOpened,
        Kind::IncidentUpdated,
        Kind::IncidentClosed,
        Kind::IncidentBrief,
        Kind::Summary,
        Kind::AlarmReactivated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AlarmRaised => "alarm.raised",
            Kind::AlarmEscalated => "alarm.escalated",
            Kind::AlarmCleared => "alarm.cleared",
            Kind::AlarmAcknowledged => "alarm.acknowledged",
            Kind::AlarmShelved => "alarm.shelved",
            Kind::AlarmBrief => "alarm.brief",
            Kind::IncidentOpened => "incident.opened",
            Kind::IncidentUpdated => "incident.updated",
            Kind::IncidentClosed => "incident.closed",
            Kind::IncidentBrief => "incident.brief",
            Kind::Summary => "summary",
            Kind::AlarmReactivated => "alarm.reactivated",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Over before anyone was paged: told afterwards, for the record.
    pub fn is_brief(self) -> bool {
        matches!(self, Kind::AlarmBrief | Kind::IncidentBrief)
    }

    /// Asks for an acknowledgement (carries an ack link and code).
    pub fn asks_ack(self) -> bool {
        matches!(
            self,
            Kind::AlarmRaised | Kind::AlarmEscalated | Kind::IncidentOpened | Kind::IncidentUpdated
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The incident a message belongs to, with every alarm in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentPart {
    pub id: String,
    pub count: usize,
    pub alarms: Vec<Alarm>,
}

/// When an episode that is already over began and ended, and when the data
/// behind it arrived if that was after the fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub reported_at: Option<Timestamp>,
    pub sites: usize,
}

/// One held message inside a summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub alarm: Option<Alarm>,
    /// The incident's id.
    pub incident: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The idempotency key: a retry carries the same id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    /// Stamped when it is sent; null while it waits in the outbox.
    pub sent_at: Option<Timestamp>,
    /// The alarm the message is mainly about (none in a summary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Alarm>,
    pub recipient: String,
    pub recipient_name: String,
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentPart>,
    pub board_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation_level: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<Episode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_expires_at: Option<Timestamp>,
    /// A summary's held messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Held>>,
}

impl Message {
    /// Alarms the message is about, in the incident's order.
    pub fn alarms(&self) -> &[Alarm] {
        self.incident.as_ref().map(|i| i.alarms.as_slice()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_by_its_name() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(Kind::parse("alarm.exploded"), None);
    }
}
