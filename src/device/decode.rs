//! Payload decoding: `(profile, topic, bytes, arrival time)` -> `Decoded`.
//!
//! Two outcomes are kept apart on purpose. A message that cannot be trusted as a
//! whole (not UTF-8 JSON, unknown schema, no identity) is a `DecodeError` and is
//! quarantined. A message that is fine but carries a bad sample keeps every good
//! sample; the bad one becomes a `bad`-quality reading or a `SampleProblem`,
//! counted by reason, so one broken value never costs its neighbours.

use super::json::Json;
use super::profile::{MessageKind, MessageSpec, PointSpec, Profile, ValueType};
use crate::model::{Quality, Timestamp};
use chrono::{DateTime, Utc};

/// `(device, boot, seq)` identifies a message; a reboot starts a new `boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct MessageIdent {
    pub boot: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawReading {
    pub point: String,
    pub t: Timestamp,
    pub value: Option<f64>,
    pub quality: Quality,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    pub t: Timestamp,
    pub code: String,
    pub raise: bool,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
}

/// Why one sample inside a good message was dropped or downgraded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleProblem {
    BadTimestamp,
    ImplausibleTime,
    WrongType,
    NotANumber,
    OutOfRange,
    SensorFault,
    UnknownCode,
}

impl SampleProblem {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadTimestamp => "bad_timestamp",
            Self::ImplausibleTime => "implausible_time",
            Self::WrongType => "wrong_type",
            Self::NotANumber => "not_a_number",
            Self::OutOfRange => "out_of_range",
            Self::SensorFault => "sensor_fault",
            Self::UnknownCode => "unknown_code",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub message: String,
    pub kind: MessageKind,
    pub site: String,
    pub device: Option<String>,
    pub ident: Option<MessageIdent>,
    /// Event time of the message as a whole (record/event/heartbeat/status time,
    /// or the newest sample of a batch).
    pub t: Option<Timestamp>,
    pub readings: Vec<RawReading>,
    pub events: Vec<DeviceEvent>,
    /// Alarm bit word with its event time.
    pub bits: Option<(Timestamp, u64)>,
    pub online: Option<bool>,
    /// The device's own statement of when it will report next, in seconds.
    pub interval_s: Option<u32>,
    pub backlog: Option<u64>,
    /// When the device first sent the message (`sent_at`; a resend is
    /// byte-identical), if the payload says. Lateness is judged from it, so
    /// a message the broker held while mizuban was behind or restarting is
    /// not late data from the device.
    pub sent_at: Option<Timestamp>,
    pub problems: Vec<(SampleProblem, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    Oversized { size: usize, limit: usize },
    #[error("payload is not UTF-8 JSON: {0}")]
    Malformed(String),
    #[error("payload is JSON but not an object")]
    NotAnObject,
    #[error("topic {0:?} matches no message of any device profile")]
    UnknownTopic(String),
    #[error("schema {0:?} is not known for this topic")]
    UnknownSchema(String),
    #[error("field {field:?} is missing or has the wrong type")]
    MissingField { field: String },
    #[error("site in payload {payload:?} differs from topic {topic:?}")]
    SiteMismatch { topic: String, payload: String },
}

impl DecodeError {
    /// Label for the quarantine counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized { .. } => "oversized",
            Self::Malformed(_) => "malformed",
            Self::NotAnObject => "malformed",
            Self::UnknownTopic(_) => "unknown_topic",
            Self::UnknownSchema(_) => "unknown_schema",
            Self::MissingField { .. } => "missing_field",
            Self::SiteMismatch { .. } => "site_mismatch",
        }
    }
}

/// Oldest event time accepted as real: a logger whose clock reset after a
/// battery loss reports 2000-01-01; such samples cannot be placed in time.
fn earliest_plausible() -> Timestamp {
    DateTime::parse_from_rfc3339("2010-01-01T00:00:00Z")
        .expect("constant")
        .with_timezone(&Utc)
}
/// Samples more than this far ahead of arrival are from a clock gone wrong.
const MAX_FUTURE_S: i64 = 24 * 3600;

pub fn parse_time(v: Option<&Json>) -> Option<Timestamp> {
    let s = v?.as_str()?;
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc))
}

fn plausible(t: Timestamp, arrived: Timestamp) -> bool {
    t >= earliest_plausible() && (t - arrived).num_seconds() <= MAX_FUTURE_S
}

fn u64_field(obj: &Json, field: &str) -> Option<u64> {
    obj.get(field)?.as_u64()
}

/// Finds the message spec a topic and payload belong to. The topic picks the
/// candidates; the payload's `schema` picks among them.
fn select<'p>(
    profile: &'p Profile,
    topic: &str,
    v: &Json,
) -> Result<Option<(&'p MessageSpec, String, Option<String>)>, DecodeError> {
    let schema = v.get("schema").and_then(Json::as_str);
    let mut topic_matched = false;
    for m in &profile.messages {
        let parsed;
        let tt = match &m.parsed_topic {
            Some(t) => t,
            None => match super::TopicTemplate::parse(&m.topic) {
                Ok(t) => {
                    parsed = t;
                    &parsed
                }
                Err(_) => continue,
            },
        };
        let Some((site, device)) = tt.matches(topic) else {
            continue;
        };
        topic_matched = true;
        let fits = match (&m.schema, schema) {
            (Some(s), Some(p)) => s == p,
            // The last will is the one message with no schema (and no boot/seq).
            (None, None) => m.kind == MessageKind::Will && v.get("online").and_then(Json::as_bool) == Some(false),
            _ => false,
        };
        if fits {
            return Ok(Some((m, site.to_string(), device.map(str::to_string))));
        }
    }
    if topic_matched {
        return Err(DecodeError::UnknownSchema(
            schema.unwrap_or("(none)").chars().take(64).collect(),
        ));
    }
    Ok(None)
}

/// Whether any message of this profile is published on `topic`.
pub fn topic_belongs(profile: &Profile, topic: &str) -> bool {
    profile.topics.iter().any(|t| t.matches(topic).is_some())
}

fn read_value(spec: &PointSpec, raw: Option<&Json>) -> Option<(Option<f64>, Quality, Option<SampleProblem>)> {
    let raw = raw?;
    let num = match (raw, spec.value_type) {
        (Json::Null, _) => return Some((None, Quality::Bad, Some(SampleProblem::NotANumber))),
        (Json::Bool(b), ValueType::Bool) => {
            if *b {
                1.0
            } else {
                0.0
            }
        }
        (Json::Num(_), _) => match raw.as_f64() {
            Some(f) if f.is_finite() => f,
            _ => return Some((None, Quality::Bad, Some(SampleProblem::NotANumber))),
        },
        (Json::Str(s), _) => {
            let l = s.trim().to_ascii_lowercase();
            let problem = if matches!(
                l.as_str(),
                "nan" | "-nan" | "inf" | "-inf" | "" | "-" | "--" | "n/a" | "null"
            ) {
                SampleProblem::NotANumber
            } else {
                SampleProblem::WrongType
            };
            return Some((None, Quality::Bad, Some(problem)));
        }
        _ => return Some((None, Quality::Bad, Some(SampleProblem::WrongType))),
    };
    let v = num * spec.scale.unwrap_or(1.0);
    if spec.min.is_some_and(|m| v < m) || spec.max.is_some_and(|m| v > m) {
        // Keep the raw value for the engineer, but never alarm on it.
        return Some((Some(v), Quality::Bad, Some(SampleProblem::OutOfRange)));
    }
    Some((Some(v), Quality::Good, None))
}

fn push_points(
    points: &[PointSpec],
    per_message: bool,
    obj: &Json,
    t: Timestamp,
    base_quality: Quality,
    out: &mut Decoded,
) {
    for spec in points.iter().filter(|p| p.per_message == per_message) {
        let Some(path) = spec.parsed_path.as_ref() else {
            continue;
        };
        if let Some((value, q, problem)) = read_value(spec, path.get(obj)) {
            let quality = match (q, base_quality) {
                (Quality::Bad, _) | (_, Quality::Bad) => Quality::Bad,
                (Quality::Uncertain, _) | (_, Quality::Uncertain) => Quality::Uncertain,
                _ => Quality::Good,
            };
            if let Some(p) = problem {
                out.problems.push((p, format!("{} at {}", spec.point, t.to_rfc3339())));
            }
            out.readings.push(RawReading {
                point: spec.point.clone(),
                t,
                value,
                quality,
            });
        }
    }
}

/// Decodes one MQTT message with one profile. `Ok(None)`: the topic is not this
/// profile's (try the next profile).
pub fn decode(
    profile: &Profile,
    topic: &str,
    payload: &[u8],
    arrived: Timestamp,
    max_bytes: usize,
) -> Result<Option<Decoded>, DecodeError> {
    if !topic_belongs(profile, topic) {
        return Ok(None);
    }
    if payload.len() > max_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: max_bytes,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let v = Json::parse(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !v.is_object() {
        return Err(DecodeError::NotAnObject);
    }
    let Some((spec, site, topic_device)) = select(profile, topic, &v)? else {
        return Ok(None);
    };
    if let Some(sf) = &profile.device.site_field {
        if let Some(ps) = v.get(sf).and_then(Json::as_str) {
            if ps != site {
                return Err(DecodeError::SiteMismatch {
                    topic: site,
                    payload: ps.chars().take(64).collect(),
                });
            }
        }
    }
    let device = v
        .get(&profile.device.device_field)
        .and_then(Json::as_str)
        .map(str::to_string)
        .or(topic_device);
    let mut out = Decoded {
        message: spec.name.clone(),
        kind: spec.kind,
        site,
        device,
        ident: None,
        t: None,
        readings: Vec::new(),
        events: Vec::new(),
        bits: None,
        online: None,
        interval_s: spec
            .interval
            .as_ref()
            .and_then(|f| v.get(f))
            .and_then(Json::as_u64)
            .map(|s| s.min(u32::MAX as u64) as u32),
        backlog: u64_field(&v, "backlog"),
        sent_at: None,
        problems: Vec::new(),
    };
    if spec.kind == MessageKind::Will {
        out.online = Some(false);
        return Ok(Some(out));
    }
    if out.device.is_none() {
        return Err(DecodeError::MissingField {
            field: profile.device.device_field.clone(),
        });
    }
    out.ident = match (u64_field(&v, "boot"), u64_field(&v, "seq")) {
        (Some(boot), Some(seq)) => Some(MessageIdent { boot, seq }),
        (None, _) => return Err(DecodeError::MissingField { field: "boot".into() }),
        (_, None) => return Err(DecodeError::MissingField { field: "seq".into() }),
    };
    let sent_at = parse_time(v.get("sent_at"));
    out.sent_at = sent_at.filter(|t| plausible(*t, arrived));

    match spec.kind {
        MessageKind::Samples => {
            let field = spec.samples.as_deref().unwrap_or("samples");
            let Some(samples) = v.get(field).and_then(Json::as_array) else {
                return Err(DecodeError::MissingField { field: field.into() });
            };
            let mut newest: Option<Timestamp> = None;
            for s in samples {
                let Some(t) = parse_time(s.get(&spec.time)) else {
                    out.problems
                        .push((SampleProblem::BadTimestamp, format!("{:.80}", s.to_string())));
                    continue;
                };
                if !plausible(t, arrived) {
                    out.problems.push((SampleProblem::ImplausibleTime, t.to_rfc3339()));
                    continue;
                }
                let mut quality = Quality::Good;
                if let Some(flags) = spec.flags.as_ref().and_then(|f| s.get(f)).and_then(Json::as_array) {
                    for f in flags.iter().filter_map(Json::as_str) {
                        match spec.flag_quality.get(f) {
                            Some(Quality::Bad) => quality = Quality::Bad,
                            Some(Quality::Uncertain) if quality == Quality::Good => quality = Quality::Uncertain,
                            _ => {}
                        }
                        if f == "sensor_fault" {
                            out.problems.push((SampleProblem::SensorFault, t.to_rfc3339()));
                        }
                    }
                }
                push_points(&spec.points, false, s, t, quality, &mut out);
                newest = newest.max(Some(t));
            }
            out.t = newest.or(sent_at.filter(|t| plausible(*t, arrived)));
            if let Some(t) = out.t.or(sent_at) {
                if plausible(t, arrived) {
                    push_points(&spec.points, true, &v, t, Quality::Good, &mut out);
                }
            }
        }
        MessageKind::Record | MessageKind::Event | MessageKind::Heartbeat | MessageKind::Status => {
            let t = parse_time(v.get(&spec.time));
            match t {
                Some(t) if plausible(t, arrived) => out.t = Some(t),
                Some(t) => out.problems.push((SampleProblem::ImplausibleTime, t.to_rfc3339())),
                None => out.problems.push((SampleProblem::BadTimestamp, spec.time.clone())),
            }
            if let Some(t) = out.t {
                push_points(&spec.points, false, &v, t, Quality::Good, &mut out);
                push_points(&spec.points, true, &v, t, Quality::Good, &mut out);
                if let Some(bits) = spec.bits.as_ref() {
                    match v.get(bits).map(|b| b.as_u64()) {
                        Some(Some(b)) => out.bits = Some((t, b)),
                        Some(None) => out.problems.push((SampleProblem::WrongType, bits.clone())),
                        None => {}
                    }
                }
                if spec.kind == MessageKind::Event {
                    let code = spec.code.as_ref().and_then(|f| v.get(f)).and_then(Json::as_str);
                    let state = spec.state.as_ref().and_then(|f| v.get(f)).and_then(Json::as_str);
                    match (code, state) {
                        (Some(code), Some(state @ ("raise" | "clear"))) => {
                            if profile.condition(code).is_none() {
                                out.problems
                                    .push((SampleProblem::UnknownCode, code.chars().take(64).collect()));
                            } else {
                                let num = |f: &Option<String>| f.as_ref().and_then(|f| v.get(f)).and_then(Json::as_f64);
                                out.events.push(DeviceEvent {
                                    t,
                                    code: code.to_string(),
                                    raise: state == "raise",
                                    value: num(&spec.value),
                                    threshold: num(&spec.threshold),
                                });
                            }
                        }
                        _ => {
                            return Err(DecodeError::MissingField {
                                field: "code/state".into(),
                            })
                        }
                    }
                }
            }
            if spec.kind == MessageKind::Status {
                out.online = spec.online.as_ref().and_then(|f| v.get(f)).and_then(Json::as_bool);
            }
        }
        // Returned early above: a will carries nothing else.
        MessageKind::Will => {}
    }
    Ok(Some(out))
}
