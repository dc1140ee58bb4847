//! Persistence, behind one boundary: the historian (readings and their
//! rollups), the journal and alarms, the state the pipeline resumes from, the
//! recorded inputs, the notification tables and the export feed, on SQLite
//! (embedded) or PostgreSQL (deployed). One writer thread owns the write
//! connection and commits whatever the pipeline sent in one transaction; only
//! after the commit are the MQTT messages behind it acknowledged to the
//! broker, so nothing acknowledged to a device can be lost. Readers use their
//! own connections. What a commit made durable is published on the
//! committed-change stream ([`Committed`]), the only way anything in the
//! pipeline becomes visible outside it.

pub mod feed;
mod handle;
pub mod outbox;
mod outbox_pg;
mod postgres;
mod rollup;
pub mod schema;
mod sqlite;
mod staging;
mod state_log;
mod writer;

/// How both stores encode what they keep: times as milliseconds since the
/// Unix epoch (UTC), qualities as 0 good, 1 uncertain, 2 bad, recorded inputs
/// as a source code with topic and body, rollups in a table per resolution.
mod codec {
    use crate::model::{Quality, Timestamp};

    /// The last row of each key, in first-seen order: a commit group writes
    /// a state row (rule, device, latest raw message, alarm) once, with its
    /// newest value, however many of its batches touched it.
    pub(super) fn last_by_key<T, K: std::hash::Hash + Eq>(rows: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
        let mut at: rustc_hash::FxHashMap<K, usize> = Default::default();
        let mut out: Vec<Option<T>> = Vec::new();
        for r in rows {
            match at.get(&key(&r)) {
                Some(&i) => out[i] = Some(r),
                None => {
                    at.insert(key(&r), out.len());
                    out.push(Some(r));
                }
            }
        }
        out.into_iter().flatten().collect()
    }

    pub fn ms(t: Timestamp) -> i64 {
        t.timestamp_millis()
    }
    pub fn from_ms(v: i64) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(v).unwrap_or_default()
    }
    pub fn q_int(q: Quality) -> i16 {
        match q {
            Quality::Good => 0,
            Quality::Uncertain => 1,
            Quality::Bad => 2,
        }
    }
    pub fn int_q(v: i64) -> Quality {
        match v {
            0 => Quality::Good,
            1 => Quality::Uncertain,
            _ => Quality::Bad,
        }
    }

    /// The table that holds `res`'s buckets.
    pub fn rollup_table(res: super::Resolution) -> Result<&'static str, super::StoreError> {
        match res {
            super::Resolution::Minute => Ok("rollup_1m"),
            super::Resolution::Hour => Ok("rollup_1h"),
            super::Resolution::Raw => Err(super::StoreError::Query("raw readings are not rollups".into())),
        }
    }

    /// An input's recorded source column: 0 MQTT (topic + payload), 1 a poll
    /// (its JSON), 2 a failed poll (the error text).
    pub fn input_columns(body: &super::InputBody) -> (i16, Option<&str>, std::borrow::Cow<'_, [u8]>) {
        match body {
            super::InputBody::Mqtt { topic, payload } => (0, Some(topic), payload.as_ref().into()),
            super::InputBody::Poll(p) => (1, None, serde_json::to_vec(p).unwrap_or_default().into()),
            super::InputBody::PollError(e) => (2, None, e.as_bytes().into()),
        }
    }

    /// A stored bucket (its start, count, sum, min and max) as served.
    pub fn bucket(t: i64, n: i64, sum: f64, min: f64, max: f64) -> super::Bucket {
        super::Bucket {
            t: from_ms(t),
            mean: sum / n.max(1) as f64,
            min,
            max,
            count: n as u64,
        }
    }

    /// A statement written with PostgreSQL's placeholders (`$1`) in SQLite's
    /// spelling (`?1`): the statements both stores share are written once.
    pub fn sqlite_placeholders(sql: &str) -> String {
        sql.replace('$', "?")
    }

    /// How long message identities are remembered for dedup after a
    /// restart. A device's QoS 1 redelivery happens within its reconnects; a
    /// backlog after a 72 h outage carries new seqs, so 7 days is ample.
    pub const SEEN_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

    /// The recorded input back from its columns.
    pub fn input_body(source: i64, topic: Option<String>, body: Vec<u8>) -> super::InputBody {
        match source {
            0 => super::InputBody::Mqtt {
                topic: topic.unwrap_or_default(),
                payload: body.into(),
            },
            1 => match serde_json::from_slice(&body) {
                Ok(p) => super::InputBody::Poll(p),
                Err(e) => super::InputBody::PollError(format!("recorded poll unreadable: {e}")),
            },
            _ => super::InputBody::PollError(String::from_utf8_lossy(&body).into_owned()),
        }
    }
}

pub use handle::{InputFilter, JournalFilter, JournalRow, ReadingRow, Restored, Store, StoreError};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An SQLite database file (the embedded default).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL database, by its connection URL
    /// (`postgres://user@host:5432/db`).
    Postgres(String),
}

/// Whether `url` is a PostgreSQL connection string the store can use.
pub fn is_postgres_url(url: &str) -> bool {
    url.parse::<::postgres::Config>().is_ok()
}

/// Whether a PostgreSQL store at `url` answers (for check-config): connects
/// with a 5-second timeout and disconnects. The error names the server, not
/// the password.
pub fn reachable(url: &str) -> Result<(), String> {
    self::postgres::reachable(url)
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => f.write_str(&self::postgres::redacted(url)),
        }
    }
}

use crate::alarm::Transition;
use crate::model::{Reading, Timestamp};

/// What one commit made durable, published by the writer after the commit
/// (and after the acks of its batches ran): the only way anything in the
/// pipeline becomes visible outside it. Subscribers (the board's event
/// stream, the notify engine, later sinks) get it on a bounded broadcast;
/// one that falls behind is told how much it missed (policy: drop oldest)
/// and resynchronises from the store.
#[derive(Debug, Default)]
pub struct Committed {
    pub transitions: Vec<Transition>,
    /// Readings committed (the readings themselves stay in the historian).
    pub readings: usize,
}

/// Acknowledges the message(s) behind a batch once it is durable.
pub trait Ack: Send {
    fn ack(self: Box<Self>);
}

/// The plainest ack: a waiter told that its batch is durable (the sender is
/// dropped unsent when the commit fails, which the waiter sees as an error).
impl Ack for tokio::sync::oneshot::Sender<()> {
    fn ack(self: Box<Self>) {
        let _ = (*self).send(());
    }
}

/// A device command as journaled: who sent what, why, and how it ended.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub at: Timestamp,
    pub site: String,
    pub device: String,
    pub command: String,
    pub value: bool,
    pub who: String,
    pub why: String,
    /// `confirmed`, or why it failed.
    pub result: String,
}

/// One input exactly as the master station received it: what replay reads
/// back (`mizuban export` writes it as a capture).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedInput {
    /// The master station's clock when it was received.
    pub arrived: Timestamp,
    /// The site it is for, when known (a payload that did not decode has none).
    pub site: Option<String>,
    pub body: InputBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputBody {
    /// An MQTT publish: its full topic and exact payload bytes.
    Mqtt { topic: String, payload: bytes::Bytes },
    /// A Modbus poll of a station, every block as read.
    Poll(crate::device::modbus::Poll),
    /// A Modbus poll that failed, and why.
    PollError(String),
}

/// The resolution a point's history is read at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Resolution {
    /// Every reading as stored.
    #[serde(rename = "raw")]
    Raw,
    /// 1-minute rollups.
    #[serde(rename = "1m")]
    Minute,
    /// 1-hour rollups.
    #[serde(rename = "1h")]
    Hour,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }
    /// A bucket's width in milliseconds (raw readings have none).
    pub fn width_ms(self) -> Option<i64> {
        match self {
            Resolution::Raw => None,
            Resolution::Minute => Some(60_000),
            Resolution::Hour => Some(3_600_000),
        }
    }
}

/// One rollup bucket: the values of the good and uncertain readings whose
/// event time falls in `[t, t + width)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bucket {
    pub t: Timestamp,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub count: u64,
}

/// How long each kind of record is kept, in days; 0 keeps it for ever.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Recorded inputs (the replay record), by arrival time.
    pub inputs_days: u32,
    /// Raw readings, by event time.
    pub readings_days: u32,
    pub rollup_1m_days: u32,
    pub rollup_1h_days: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            inputs_days: 35,
            readings_days: 730,
            rollup_1m_days: 730,
            rollup_1h_days: 0,
        }
    }
}

/// Everything one pipeline step wants stored atomically.
#[derive(Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub transitions: Vec<Transition>,
    /// `(key, json)` of rule evaluator state.
    pub rule_states: Vec<(String, String)>,
    /// `(device, json)` of device comm state.
    pub device_states: Vec<(String, String)>,
    /// `(device, boot, seq, arrived)` of accepted messages, for dedup after restart.
    pub seen: Vec<(String, u64, u64, Timestamp)>,
    /// Raw payloads kept per site (the "latest raw message" for engineers).
    pub raw: Vec<(String, String, Timestamp)>,
    pub acks: Vec<Box<dyn Ack>>,
    /// The inputs behind the batch, as received.
    pub inputs: Vec<RecordedInput>,
    /// Device commands, journaled beside the alarm transitions.
    pub commands: Vec<CommandRecord>,
    /// When the collector received the message behind the batch (monotonic),
    /// for the pipeline latency metric.
    pub received: Option<std::time::Instant>,
}

/// Subscribers of the committed stream; a lagging one is told how many
/// commits it missed.
pub type Commits = tokio::sync::broadcast::Receiver<std::sync::Arc<Committed>>;

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
            && self.transitions.is_empty()
            && self.rule_states.is_empty()
            && self.device_states.is_empty()
            && self.seen.is_empty()
            && self.raw.is_empty()
            && self.acks.is_empty()
            && self.inputs.is_empty()
            && self.commands.is_empty()
    }
}

#[cfg(test)]
mod tests;
