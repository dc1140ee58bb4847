//! The export feed: a transactional outbox of what was committed, for sinks
//! that must see every reading and transition exactly in commit order and
//! survive their own outages (the InfluxDB sink). The writer appends one row
//! per commit inside the commit's transaction (so a feed row exists exactly
//! when its data does); the sink reads from the oldest row and deletes rows
//! once delivered. Nothing here is on the ingest path but that append, and
//! only when a sink is configured.

use super::codec::sqlite_placeholders;
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

impl FeedReading {
    pub(super) fn of(r: &crate::model::Reading) -> Self {
        Self {
            point: r.point.as_str().to_string(),
            t: ms(r.t),
            value: r.value,
            quality: r.quality,
        }
    }
}

impl FeedTransition {
    pub(super) fn of(t: &crate::alarm::Transition) -> Self {
        let a = &t.alarm;
        Self {
            at: ms(t.at),
            alarm_id: a.id.clone(),
            site: a.site.as_str().to_string(),
            source: a.source.clone(),
            condition: a.condition.clone(),
            priority: a.priority.as_str().to_string(),
            action: t.action.as_str().to_string(),
            state: t.to.as_str().to_string(),
            active: a.active,
            acked: a.acked,
        }
    }
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
    db: Db,
}

enum Db {
    Sqlite(Mutex<Connection>),
    Postgres(super::postgres::Blocking),
}

/// The SQL of the feed, the same on both stores but for placeholders.
const NEXT: &str = "SELECT seq, committed, body FROM feed WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT 256";
const DONE: &str = "DELETE FROM feed WHERE seq <= $1";
const PENDING: &str =
    "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(transitions), 0), min(committed) FROM feed";

fn record(seq: i64, committed: i64, body: &[u8]) -> Result<FeedRecord, serde_json::Error> {
    let body: Body = serde_json::from_slice(body)?;
    Ok(FeedRecord {
        seq,
        committed: from_ms(committed),
        readings: body.readings,
        transitions: body.transitions,
    })
}

/// Takes records in order until they hold at least `n` lines (always at
/// least one record when any waits; a record is never split).
fn take_until(records: impl Iterator<Item = FeedRecord>, n: usize) -> Vec<FeedRecord> {
    let (mut out, mut lines) = (Vec::new(), 0usize);
    for r in records {
        lines += r.readings.len() + r.transitions.len();
        out.push(r);
        if lines >= n {
            break;
        }
    }
    out
}

impl Feed {
    pub fn open_at(at: &super::Location) -> Result<Self, StoreError> {
        let db = match at {
            super::Location::Sqlite(path) => Db::Sqlite(Mutex::new(super::sqlite::side_connection(path)?)),
            super::Location::Postgres(url) => Db::Postgres(super::postgres::Blocking::connect(url)?),
        };
        Ok(Self { db })
    }

    fn sqlite<T>(c: &Mutex<Connection>, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let c = c
            .lock()
            .map_err(|_| StoreError::Query("feed connection poisoned".into()))?;
        f(&c).map_err(|e| StoreError::Query(e.to_string()))
    }

    /// The oldest records after `after`, in commit order, until they hold at
    /// least `readings` readings and transitions (always at least one record
    /// when any waits; a record is never split here).
    pub fn next(&self, after: i64, readings: usize) -> Result<Vec<FeedRecord>, StoreError> {
        let rows: Vec<(i64, i64, Vec<u8>)> = match &self.db {
            // One writer: every committed record is final.
            Db::Sqlite(c) => Self::sqlite(c, |c| {
                let mut st = c.prepare_cached(&sqlite_placeholders(NEXT))?;
                let rows = st.query_map([after, i64::MAX], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })?,
            // Only as far as no slower writer can still add to (see
            // postgres::final_seq); nothing new when that is not known.
            Db::Postgres(c) => c.try_with(|c| {
                let upto = super::postgres::final_seq(c, "feed", after)?.unwrap_or(after);
                if upto <= after {
                    return Ok(Vec::new());
                }
                let rows = c
                    .query(NEXT, &[&after, &upto])
                    .map_err(|e| StoreError::Query(super::postgres::describe(&e)))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            })?,
        };
        let records = rows
            .iter()
            .map(|(seq, committed, body)| record(*seq, *committed, body))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Query(format!("feed record unreadable: {e}")))?;
        Ok(take_until(records.into_iter(), readings))
    }

    /// Drops every record up to and including `seq`: delivered.
    pub fn done(&self, seq: i64) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(c) => Self::sqlite(c, |c| c.execute(&sqlite_placeholders(DONE), [seq]).map(|_| ())),
            Db::Postgres(c) => c.with(|c| c.execute(DONE, &[&seq]).map(|_| ())),
        }
    }

    pub fn pending(&self) -> Result<Pending, StoreError> {
        let (records, readings, transitions, oldest) = match &self.db {
            Db::Sqlite(c) => Self::sqlite(c, |c| {
                c.query_row(PENDING, [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                    ))
                })
            })?,
            Db::Postgres(c) => c.with(|c| {
                let r = c.query_one(PENDING, &[])?;
                Ok((
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                    r.get::<_, Option<i64>>(3),
                ))
            })?,
        };
        Ok(Pending {
            records: records as u64,
            readings: readings as u64,
            transitions: transitions as u64,
            oldest: oldest.map(from_ms),
        })
    }
}
