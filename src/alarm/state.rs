use crate::device::Priority;
use crate::model::{DeviceId, SiteId, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmState {
    Normal,
    UnackActive,
    AckActive,
    UnackRtn,
    Shelved,
    Suppressed,
    OutOfService,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::UnackActive => "unack_active",
            Self::AckActive => "ack_active",
            Self::UnackRtn => "unack_rtn",
            Self::Shelved => "shelved",
            Self::Suppressed => "suppressed",
            Self::OutOfService => "out_of_service",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|x| x.as_str() == s)
    }
    pub const ALL: [AlarmState; 7] = [
        Self::Normal,
        Self::UnackActive,
        Self::AckActive,
        Self::UnackRtn,
        Self::Shelved,
        Self::Suppressed,
        Self::OutOfService,
    ];
}

/// What raised the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmOrigin {
    /// A rule over a point's readings.
    Rule,
    /// An alarm bit or event reported by the device itself.
    Device,
    /// The master station stopped hearing from the device.
    Comm,
}

/// One alarm occurrence: from the raise until it is back to normal (cleared and
/// acknowledged). Its `id` is stable for that whole life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub id: String,
    pub site: SiteId,
    pub device: DeviceId,
    /// The point (`B17.p`) or device (`AKT-DMA-017`) the condition is about.
    pub source: String,
    pub condition: String,
    pub origin: AlarmOrigin,
    pub priority: Priority,
    pub state: AlarmState,
    pub active: bool,
    pub acked: bool,
    /// Event time of the reading that raised it.
    pub raised_at: Timestamp,
    /// When mizuban processed that reading.
    pub detected_at: Timestamp,
    pub cleared_at: Option<Timestamp>,
    pub acked_at: Option<Timestamp>,
    pub acked_by: Option<String>,
    pub ack_comment: Option<String>,
    pub shelved_until: Option<Timestamp>,
    pub shelved_by: Option<String>,
    pub shelve_reason: Option<String>,
    /// Suppressed by design: the device's comm loss or a parent condition.
    pub suppressed_by: Option<String>,
    pub out_of_service: bool,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// English text; `message_ja` the Japanese.
    pub message: String,
    pub message_ja: String,
    /// Raised and cleared within data that arrived after the fact: kept for the
    /// operators' review, never paged.
    pub late: bool,
    /// A notification-worthy transition was emitted for this occurrence
    /// (whether a message then went out is the notification engine's
    /// routing). A return to normal is worth telling only then, and a
    /// re-raise of an occurrence nobody acknowledged yet is not told again
    /// (chattering).
    #[serde(default)]
    pub told: bool,
    /// A notification about it was actually delivered to someone (page,
    /// escalation, brief or summary). Filled in from the outbox where alarms
    /// are served; the pipeline's own copy never claims it.
    #[serde(default)]
    pub paged: bool,
    /// Times it became active again before anyone acknowledged it (a
    /// chattering condition shows here instead of as a flood of alarms).
    #[serde(default)]
    pub reactivations: u32,
    pub updated_at: Timestamp,
}

impl Alarm {
    /// The ISA-18.2 state shown to operators. Out of service and shelving hide
    /// the alarm from the live list whatever the process does; suppression by
    /// design comes next; otherwise the active/acknowledged pair decides.
    pub fn derive_state(&self) -> AlarmState {
        if self.out_of_service {
            AlarmState::OutOfService
        } else if self.shelved_until.is_some() {
            AlarmState::Shelved
        } else if self.suppressed_by.is_some() && self.active {
            AlarmState::Suppressed
        } else {
            match (self.active, self.acked) {
                (true, false) => AlarmState::UnackActive,
                (true, true) => AlarmState::AckActive,
                (false, false) => AlarmState::UnackRtn,
                (false, true) => AlarmState::Normal,
            }
        }
    }

    /// Over: cleared and acknowledged, and not held out of service or shelved.
    pub fn is_closed(&self) -> bool {
        !self.active && self.acked && !self.out_of_service && self.shelved_until.is_none()
    }

    /// Whether operators must see it in the default list.
    pub fn needs_attention(&self) -> bool {
        matches!(
            self.state,
            AlarmState::UnackActive | AlarmState::AckActive | AlarmState::UnackRtn
        )
    }
}

/// What a journal row records. Stored and served as its snake_case name
/// (`raise`, `out_of_service`, …), as before it was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Raise,
    Clear,
    Ack,
    Shelve,
    Unshelve,
    Suppress,
    Unsuppress,
    OutOfService,
    ReturnToService,
    /// Found in data that arrived after the fact.
    Late,
    /// Late data confirmed by current data.
    Confirm,
    /// A device command (a journal row that is not an alarm transition).
    Command,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::Raise,
        Action::Clear,
        Action::Ack,
        Action::Shelve,
        Action::Unshelve,
        Action::Suppress,
        Action::Unsuppress,
        Action::OutOfService,
        Action::ReturnToService,
        Action::Late,
        Action::Confirm,
        Action::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Raise => "raise",
            Action::Clear => "clear",
            Action::Ack => "ack",
            Action::Shelve => "shelve",
            Action::Unshelve => "unshelve",
            Action::Suppress => "suppress",
            Action::Unsuppress => "unsuppress",
            Action::OutOfService => "out_of_service",
            Action::ReturnToService => "return_to_service",
            Action::Late => "late",
            Action::Confirm => "confirm",
            Action::Command => "command",
        }
    }

    /// The action a stored name stands for; `None` for a name this version
    /// does not know (the store reports it, it does not guess).
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of an alarm, with the actor and reason, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub alarm: Alarm,
    pub from: AlarmState,
    pub to: AlarmState,
    /// What happened.
    pub action: Action,
    /// Processing time of the change.
    pub at: Timestamp,
    /// Event time that caused it, for process-driven changes.
    pub event_time: Option<Timestamp>,
    /// `system` for process changes, else the user or token name.
    pub who: String,
    pub why: Option<String>,
    /// Worth telling on-call staff (a new unacknowledged alarm, a return to
    /// normal of a paged alarm, a shelve that expired on an active alarm).
    pub notify: bool,
}

#[cfg(test)]
mod action_tests {
    use super::*;

    #[test]
    fn actions_are_stored_by_their_names() {
        for a in Action::ALL {
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{}\"", a.as_str()));
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("comment"), None);
    }
}
