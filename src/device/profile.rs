//! Device profile: the TOML schema of `devices/*.toml` and its validated form.

use super::JsonPath;
use crate::config::SourceError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Critical,
    High,
    Medium,
    Low,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }
    pub fn from_name(s: &str) -> Option<Self> {
        [Priority::Critical, Priority::High, Priority::Medium, Priority::Low]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
    /// Sort key: lower is more urgent.
    pub fn rank(self) -> u8 {
        self as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A batch of timestamped samples (`samples` array).
    Samples,
    /// One timestamped record of points, optionally with an alarm bit word.
    Record,
    /// One alarm raise/clear by code.
    Event,
    /// Proof of life only.
    Heartbeat,
    /// Online flag (retained status).
    Status,
    /// Last will: `{"online":false}`, the one message without boot/seq.
    Will,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    Number,
    Bool,
}

fn default_value_type() -> ValueType {
    ValueType::Number
}

/// One point read out of a sample or record.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PointSpec {
    /// Point name inside the site (`q`, `p`, `level`, `p1_current`).
    pub point: String,
    /// Where the value is, relative to the sample (or the message for `record`).
    pub path: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default = "default_value_type", rename = "type")]
    pub value_type: ValueType,
    /// Multiply the raw value (e.g. cm -> m); applied before the range check.
    #[serde(default)]
    pub scale: Option<f64>,
    /// Physically possible range; outside it the reading is stored as `bad`.
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Read from the message root (e.g. `diag.batt_v`) and stamped with the
    /// message's `sent_at`, rather than per sample.
    #[serde(default)]
    pub per_message: bool,
    #[serde(skip)]
    pub parsed_path: Option<JsonPath>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub name: String,
    /// MQTT topic with `{site}` and optionally `{device}` placeholders.
    pub topic: String,
    /// Value of the payload's `schema` field; absent for the last will.
    #[serde(default)]
    pub schema: Option<String>,
    pub kind: MessageKind,
    /// Field holding the event time (record/event/heartbeat/status).
    #[serde(default = "default_time_field")]
    pub time: String,
    /// Array of samples (`samples` kind).
    #[serde(default)]
    pub samples: Option<String>,
    /// Sample flags -> quality (`samples` kind).
    #[serde(default)]
    pub flags: Option<String>,
    #[serde(default)]
    pub flag_quality: HashMap<String, crate::model::Quality>,
    /// Alarm bit word (`record` kind).
    #[serde(default)]
    pub bits: Option<String>,
    /// Event code / state / value fields (`event` kind).
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub threshold: Option<String>,
    /// Field that tells how often the device will report from now on.
    #[serde(default)]
    pub interval: Option<String>,
    /// Field with the online flag (`status` kind).
    #[serde(default)]
    pub online: Option<String>,
    #[serde(default, rename = "point")]
    pub points: Vec<PointSpec>,
    /// `topic` parsed once when the profile is loaded.
    #[serde(skip)]
    pub parsed_topic: Option<TopicTemplate>,
}

fn default_time_field() -> String {
    "t".into()
}

/// How the master station decides that a device went quiet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommSpec {
    /// The interval the device is expected to report at when its messages say
    /// nothing else (e.g. the pump notifier's hourly heartbeat).
    pub expected_interval_s: u32,
    /// Lost after this many intervals without any message (plus the grace).
    pub missed_intervals: u32,
    /// Condition raised, e.g. `comm_loss`.
    #[serde(default = "default_comm_condition")]
    pub condition: String,
    pub priority: Priority,
    pub ja: String,
    pub en: String,
    /// Overrides the service's `comm_grace_s` (a polled controller is lost
    /// after its retries, not after ten minutes).
    #[serde(default)]
    pub grace_s: Option<u32>,
}

fn default_comm_condition() -> String {
    "comm_loss".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// Code as the device sends it (`HH_LEVEL`, `pressure_low`).
    pub code: String,
    /// Position in the alarm bit word, when the device also reports it there.
    #[serde(default)]
    pub bit: Option<u8>,
    pub priority: Priority,
    pub ja: String,
    pub en: String,
    /// While any of these conditions is active on the same device, this one is
    /// suppressed (e.g. LOW_LEVEL during POWER_FAIL).
    #[serde(default)]
    pub suppressed_by: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub model: String,
    pub kind: crate::model::SiteKind,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub description: String,
    /// Payload field with the device id.
    pub device_field: String,
    /// Payload field with the site id (checked against the topic when present).
    #[serde(default)]
    pub site_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub device: DeviceSection,
    pub comm: CommSpec,
    #[serde(default, rename = "message")]
    pub messages: Vec<MessageSpec>,
    /// Register map, for a device the master station polls over Modbus TCP.
    #[serde(default)]
    pub modbus: Option<super::modbus::ModbusMap>,
    #[serde(default, rename = "condition")]
    pub conditions: Vec<ConditionSpec>,
    /// Take the conditions of another profile (same alarm table, other
    /// transport: the pump controller's discrete inputs are the notifier's bits).
    #[serde(default)]
    pub conditions_from: Option<String>,
    #[serde(skip)]
    pub topics: Vec<TopicTemplate>,
}

/// `akita/v1/dma/{site}/{device}/telemetry` split into levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicTemplate {
    levels: Vec<String>,
}

impl TopicTemplate {
    pub fn parse(s: &str) -> Result<Self, String> {
        let levels: Vec<String> = s.split('/').map(str::to_string).collect();
        if !levels.iter().any(|l| l == "{site}") {
            return Err(format!("topic {s:?} has no {{site}} level"));
        }
        for l in &levels {
            if l.contains(['+', '#']) || (l.contains('{') && l != "{site}" && l != "{device}") {
                return Err(format!(
                    "topic {s:?}: level {l:?} is not a literal, {{site}} or {{device}}"
                ));
            }
        }
        Ok(Self { levels })
    }
    /// The MQTT subscription filter (`{site}` and `{device}` become `+`).
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| if l.starts_with('{') { "+" } else { l.as_str() })
            .collect::<Vec<_>>()
            .join("/")
    }
    /// `Some((site, device))` when the topic fits this template.
    pub fn matches<'a>(&self, topic: &'a str) -> Option<(&'a str, Option<&'a str>)> {
        let mut site = None;
        let mut device = None;
        let mut parts = topic.split('/');
        for l in &self.levels {
            let p = parts.next()?;
            match l.as_str() {
                "{site}" => site = Some(p),
                "{device}" => device = Some(p),
                lit if lit == p => {}
                _ => return None,
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some((site?, device))
    }
}

impl MessageSpec {
    /// The topic this message is published on by `device` of `site`.
    pub fn topic_for(&self, site: &str, device: &str) -> String {
        self.topic.replace("{site}", site).replace("{device}", device)
    }
}

impl Profile {
    /// Validates one profile's text. Every problem names the file, the line and
    /// the field.
    pub fn parse(path: &Path, text: &str) -> Result<Self, Vec<SourceError>> {
        let mut p: Profile = toml::from_str(text).map_err(|e| vec![SourceError::toml(path, text, &e)])?;
        let mut errors = Vec::new();
        let err = |field: String, msg: String| SourceError::field(path, text, &field, msg);
        let mut codes = std::collections::HashSet::new();
        for c in &p.conditions {
            if !codes.insert(c.code.clone()) {
                errors.push(err(
                    format!("condition.code = \"{}\"", c.code),
                    format!("condition {:?} defined twice", c.code),
                ));
            }
            if let Some(b) = c.bit {
                if b > 63 {
                    errors.push(err(
                        format!("bit = {b}"),
                        format!("bit {b} of condition {:?} is above 63", c.code),
                    ));
                }
            }
        }
        for c in &p.conditions {
            for s in &c.suppressed_by {
                if !codes.contains(s) {
                    errors.push(err(
                        format!("\"{s}\""),
                        format!("condition {:?}: suppressed_by names unknown condition {s:?}", c.code),
                    ));
                }
            }
        }
        if p.messages.is_empty() && p.modbus.is_none() {
            errors.push(err(
                "[device]".into(),
                "a profile needs [[message]]s (MQTT) or a [modbus] map".into(),
            ));
        }
        if let Some(m) = &p.modbus {
            for e in m.validate() {
                errors.push(err("[modbus]".into(), e));
            }
        }
        if p.comm.missed_intervals == 0 || p.comm.expected_interval_s == 0 {
            errors.push(err(
                "[comm]".into(),
                "comm.expected_interval_s and comm.missed_intervals must be above 0".into(),
            ));
        }
        let mut topics = Vec::new();
        for m in &mut p.messages {
            match TopicTemplate::parse(&m.topic) {
                Ok(t) => {
                    if !topics.contains(&t) {
                        topics.push(t.clone())
                    }
                    m.parsed_topic = Some(t);
                }
                Err(e) => errors.push(err(format!("topic = \"{}\"", m.topic), e)),
            }
            let need = |f: &Option<String>, name: &str, errors: &mut Vec<SourceError>| {
                if f.is_none() {
                    errors.push(SourceError::field(
                        path,
                        text,
                        &format!("name = \"{}\"", m.name),
                        format!("message {:?} of kind {:?} needs field `{name}`", m.name, m.kind),
                    ));
                }
            };
            match m.kind {
                MessageKind::Samples => need(&m.samples, "samples", &mut errors),
                MessageKind::Event => {
                    need(&m.code, "code", &mut errors);
                    need(&m.state, "state", &mut errors);
                }
                MessageKind::Status => need(&m.online, "online", &mut errors),
                _ => {}
            }
            if m.kind != MessageKind::Will && m.schema.is_none() {
                errors.push(err(
                    format!("name = \"{}\"", m.name),
                    format!("message {:?} needs a schema", m.name),
                ));
            }
            for pt in &mut m.points {
                if let Err(e) = crate::model::PointId::new(&crate::model::SiteId::new("S").expect("valid"), &pt.point) {
                    errors.push(err(format!("point = \"{}\"", pt.point), e.to_string()));
                }
                match JsonPath::parse(&pt.path) {
                    Ok(jp) => pt.parsed_path = Some(jp),
                    Err(e) => errors.push(err(format!("path = \"{}\"", pt.path), e)),
                }
            }
        }
        p.topics = topics;
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    pub fn condition(&self, code: &str) -> Option<&ConditionSpec> {
        self.conditions.iter().find(|c| c.code == code)
    }

    /// All point names this profile can produce.
    pub fn point_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .messages
            .iter()
            .flat_map(|m| m.points.iter().map(|p| p.point.as_str()))
            .chain(
                self.modbus
                    .iter()
                    .flat_map(|m| m.points.iter().map(|p| p.point.as_str())),
            )
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates() {
        let t = TopicTemplate::parse("akita/v1/dma/{site}/{device}/telemetry").unwrap();
        assert_eq!(t.filter(), "akita/v1/dma/+/+/telemetry");
        assert_eq!(
            t.matches("akita/v1/dma/B17/AKT-DMA-017/telemetry"),
            Some(("B17", Some("AKT-DMA-017")))
        );
        assert_eq!(t.matches("akita/v1/dma/B17/AKT-DMA-017/alarm"), None);
        assert_eq!(t.matches("akita/v1/dma/B17/AKT-DMA-017/telemetry/x"), None);
        assert!(TopicTemplate::parse("a/+/b").is_err());
        assert!(TopicTemplate::parse("a/b").is_err());
    }
}
