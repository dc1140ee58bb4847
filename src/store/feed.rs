//! The export feed: a transactional outbox of what was committed, for sinks
//! that must see every reading and transition exactly in commit order and
//! survive their own outages (the InfluxDB sink). The writer appends one row
//! per commit inside the commit's transaction (so a feed row exists exactly
//! when its data does); the sink reads from the oldest row and deletes rows
//! once delivered. Nothing here is on the ingest path but that append, and
//! only when a sink is configured.

use super::sqlite::{from_ms, ms};
use super::StoreError;
use crate::model::{Quality, Timestamp};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A reading as exported: the point, its event time, value and quality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedReading {
    pub point: String,
    /// Event time, ms since the epoch.
    pub t: i64,
    pub value: Option<f64>,
    pub quality: Quality,
}

/// An alarm transition as exported: what the alarm became and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedTransition {
    /// When it happened (processing time), ms since the epoch.
    pub at: i64,
    pub alarm_id: String,
    pub site: String,
    pub source: String,
    pub condition: String,
    pub priority: String,
    pub action: String,
    pub state: String,
    pub active: bool,
    pub acked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Body {
    #[serde(default)]
    pub readings: Vec<FeedReading>,
    #[serde(default)]
    pub transitions: Vec<FeedTransition>,
}

/// One commit's export.
#[derive(Debug)]
pub struct FeedRecord {
    pub seq: i64,
    pub committed: Timestamp,
    pub readings: Vec<FeedReading>,
    pub transitions: Vec<FeedTransition>,
}

/// What is waiting to be exported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pending {
    pub records: u64,
    pub readings: u64,
    pub transitions: u64,
    /// Commit time of the oldest record waiting.
    pub oldest: Option<Timestamp>,
}

/// Appends a commit's record (the writer, inside its transaction).
pub(super) fn append(tx: &rusqlite::Transaction, committed: Timestamp, body: &Body) -> rusqlite::Result<()> {
    let json = serde_json::to_vec(body).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.prepare_cached("INSERT INTO feed (committed, readings, transitions, body) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            ms(committed),
            body.readings.len() as i64,
            body.transitions.len() as i64,
            json
        ])?;
    Ok(())
}

/// The sink's side of the feed, on a connection of its own.
pub struct Feed {
    c: Mutex<Connection>,
}

impl Feed {
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Ok(Self {
            c: Mutex::new(super::outbox::connect(path)?),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let c = self
            .c
            .lock()
            .map_err(|_| StoreError::Query("feed connection poisoned".into()))?;
        f(&c).map_err(|e| StoreError::Query(e.to_string()))
    }

    /// The oldest records after `after`, in commit order, until they hold at
    /// least `readings` readings and transitions (always at least one record
    /// when any waits; a record is never split here).
    pub fn next(&self, after: i64, readings: usize) -> Result<Vec<FeedRecord>, StoreError> {
        self.with(|c| {
            let mut st =
                c.prepare_cached("SELECT seq, committed, body FROM feed WHERE seq > ?1 ORDER BY seq LIMIT 256")?;
            let mut rows = st.query([after])?;
            let (mut out, mut n) = (Vec::new(), 0usize);
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                let body: Vec<u8> = r.get(2)?;
                let body: Body = serde_json::from_slice(&body).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Blob, Box::new(e))
                })?;
                n += body.readings.len() + body.transitions.len();
                out.push(FeedRecord {
                    seq,
                    committed: from_ms(r.get(1)?),
                    readings: body.readings,
                    transitions: body.transitions,
                });
                if n >= readings {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Drops every record up to and including `seq`: delivered.
    pub fn done(&self, seq: i64) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM feed WHERE seq <= ?1", [seq]).map(|_| ()))
    }

    pub fn pending(&self) -> Result<Pending, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(transitions), 0), min(committed) FROM feed",
                [],
                |r| {
                    Ok(Pending {
                        records: r.get::<_, i64>(0)? as u64,
                        readings: r.get::<_, i64>(1)? as u64,
                        transitions: r.get::<_, i64>(2)? as u64,
                        oldest: r.get::<_, Option<i64>>(3)?.map(from_ms),
                    })
                },
            )
        })
    }
}
