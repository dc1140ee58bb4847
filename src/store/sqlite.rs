use super::{Batch, Bucket, Commits, Committed, InputBody, RecordedInput, Resolution, Retention};
use crate::alarm::{Action, Alarm};
use crate::model::{PointId, Quality, Timestamp};
use crate::telemetry::quarantine::{Quarantine, QuarantineEntry};
use crate::telemetry::Metrics;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("store {path}: cannot create directory: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("store {path}: {source}")]
    Schema {
        path: PathBuf,
        source: super::schema::MigrateError,
    },
    #[error("store writer has stopped")]
    Closed,
    #[error("store query failed: {0}")]
    Query(String),
}

/// A small write outside the pipeline's batches (a logout), run by the writer
/// in its own transaction; the reply says it is durable.
type Write = Box<dyn FnOnce(&mut Connection) -> rusqlite::Result<()> + Send>;

enum Op {
    Batch(Box<Batch>),
    Flush(oneshot::Sender<()>),
    Write(Write, oneshot::Sender<Result<(), String>>),
}

/// What the service needs back after a restart.
#[derive(Default)]
pub struct Restored {
    /// Key that signs board sessions; made once, kept so sessions survive restarts.
    pub session_key: Vec<u8>,
    pub open_alarms: Vec<Alarm>,
    pub rule_states: HashMap<String, String>,
    pub device_states: HashMap<String, String>,
    /// `(device, boot, seq)` seen recently.
    pub seen: Vec<(String, u64, u64)>,
    /// Board sessions ended by logout and not yet expired: `(mac, expires)`.
    pub revoked_sessions: Vec<(String, Timestamp)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JournalRow {
    pub seq: i64,
    pub at: Timestamp,
    pub alarm_id: String,
    pub site: String,
    pub source: String,
    pub condition: String,
    pub action: Action,
    pub from: String,
    pub to: String,
    pub who: String,
    pub why: Option<String>,
    pub event_time: Option<Timestamp>,
    pub notify: bool,
    pub late: bool,
    /// The alarm's priority at the time; empty for rows that are not alarm
    /// transitions (device commands).
    pub priority: String,
}

#[derive(Debug, Default, Clone)]
pub struct JournalFilter {
    pub alarm_id: Option<String>,
    pub site: Option<String>,
    pub condition: Option<String>,
    pub priority: Option<crate::device::Priority>,
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub limit: usize,
}

/// Which recorded inputs to read: arrivals in `[from, to)`, of these sites
/// (all when empty).
#[derive(Debug, Clone)]
pub struct InputFilter {
    pub from: Timestamp,
    pub to: Timestamp,
    pub sites: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    /// The committed-change stream: what each commit made durable.
    commits: tokio::sync::broadcast::Sender<Arc<Committed>>,
    tx: mpsc::Sender<Op>,
    read: Arc<Mutex<Connection>>,
    healthy: Arc<AtomicBool>,
}

/// `synchronous = FULL`: in WAL mode every commit waits for the WAL to reach
/// the disk, so a reading acknowledged to the broker (PUBACK after commit)
/// survives power loss and an OS crash, not just a crash of mizuban. NORMAL
/// would lose the last commits on power loss while the broker believes them
/// delivered. The cost is one fsync per transaction; the writer groups every
/// waiting batch into one transaction, so it is paid per group, not per message.
pub(super) const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// The writer's page cache. Readings arrive interleaved across every point of
/// the fleet and the table is keyed by point, so each commit touches a page
/// per point; SQLite's default 2 MiB cache re-read most of them from disk
/// for every commit (half the ingest time went to pread). 32 MiB holds the
/// hot page of every point's key range and rollups of a few thousand points.
///
/// The WAL is copied back into the database every 10,000 pages (40 MiB)
/// rather than SQLite's 1,000: each checkpoint writes every page changed
/// since the last one once, however often it changed, and the fleet's commits
/// keep changing the same few thousand pages, so a longer WAL is fewer
/// copies (98k against 69k readings/s in the store bench; 40,000 pages was
/// slower again, readers searching a longer WAL index).
const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -32768; PRAGMA wal_autocheckpoint = 10000;";

/// Once the disk has been full, the long WAL is a liability: a WAL that has
/// grown to fill the disk leaves no room for the checkpoint that would empty
/// it, and every retry fails for ever (seen on a 24 MiB volume). From the
/// first full-disk error on, the writer checkpoints at SQLite's default
/// interval for the rest of the run, and truncates the WAL before each retry
/// so that freed space goes to the database first.
const SHORT_WAL: &str = "PRAGMA wal_autocheckpoint = 1000;";

fn disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Copies every committed WAL frame into the database and truncates the WAL
/// to nothing. Fails (and is retried with the next attempt) while the disk
/// has no room for the database to grow.
fn truncate_wal(c: &Connection, path: &Path) {
    let r = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match r {
        Ok((0, log, done)) => {
            tracing::info!(path = %path.display(), wal_pages = log, checkpointed = done, "WAL truncated")
        }
        Ok((_, log, done)) => {
            tracing::warn!(path = %path.display(), wal_pages = log, checkpointed = done, "WAL checkpoint blocked by a reader")
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "WAL checkpoint failed"),
    }
}

/// A stored action name as the enum; a name this version does not know is
/// an error naming it, not a guess.
pub(super) fn action(r: &rusqlite::Row, i: usize) -> rusqlite::Result<Action> {
    let s: String = r.get(i)?;
    Action::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unknown journal action {s:?}").into(),
        )
    })
}

pub(super) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}
pub(super) fn from_ms(v: i64) -> Timestamp {
    DateTime::<Utc>::from_timestamp_millis(v).unwrap_or_default()
}
fn q_int(q: Quality) -> i64 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    }
}
fn int_q(v: i64) -> Quality {
    match v {
        0 => Quality::Good,
        1 => Quality::Uncertain,
        _ => Quality::Bad,
    }
}

/// How long message identities are remembered for dedup after a restart. A
/// device's QoS 1 redelivery happens within its reconnects; a backlog after a
/// 72 h outage carries new seqs, so 7 days is ample.
const SEEN_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Commits a subscriber of the committed stream may fall behind before it is
/// told to resynchronise.
const COMMITS_KEPT: usize = 4096;

impl Store {
    /// Opens (creating if needed) the database and starts the writer thread.
    /// `queue` bounds the batches waiting for the writer; a full queue makes the
    /// pipeline wait (policy: block), which in turn holds back MQTT acks. With
    /// `feed`, every commit also appends its record to the export feed
    /// ([`super::feed`]) for a sink to deliver.
    pub fn open(
        path: &Path,
        queue: usize,
        retention: Retention,
        feed: bool,
        metrics: Arc<Metrics>,
        quarantine: Arc<Quarantine>,
    ) -> Result<(Self, Restored), StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir {
                    path: dir.into(),
                    source: e,
                })?;
            }
        }
        let sq = |e| StoreError::Sqlite {
            path: path.into(),
            source: e,
        };
        let mut write = Connection::open(path).map_err(sq)?;
        write.execute_batch(PRAGMAS).map_err(sq)?;
        write.execute_batch(WRITER_PRAGMAS).map_err(sq)?;
        super::schema::migrate(&mut write).map_err(|e| StoreError::Schema {
            path: path.into(),
            source: e,
        })?;
        write.busy_timeout(std::time::Duration::from_secs(5)).map_err(sq)?;
        let read = Connection::open(path).map_err(sq)?;
        read.busy_timeout(std::time::Duration::from_secs(5)).map_err(sq)?;
        let restored = Self::restore(&write).map_err(sq)?;
        let (tx, rx) = mpsc::channel(queue);
        let healthy = Arc::new(AtomicBool::new(true));
        // Bounded: a subscriber more than this many commits behind is told so.
        let (commits, _) = tokio::sync::broadcast::channel(COMMITS_KEPT);
        let signal = commits.clone();
        let h = healthy.clone();
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(write, rx, retention, metrics, h, p, quarantine, signal, feed))
            .map_err(|e| StoreError::Query(format!("cannot start writer thread: {e}")))?;
        Ok((
            Self {
                commits,
                tx,
                read: Arc::new(Mutex::new(read)),
                healthy,
            },
            restored,
        ))
    }

    fn restore(c: &Connection) -> rusqlite::Result<Restored> {
        let mut r = Restored::default();
        let key: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = 'session_key'", [], |row| row.get(0))
            .optional()?;
        let key = match key {
            Some(k) => k,
            None => {
                let k = crate::model::secret::random_hex(32);
                c.execute("INSERT INTO meta (key, value) VALUES ('session_key', ?1)", [&k])?;
                k
            }
        };
        r.session_key = key.into_bytes();
        let mut st = c.prepare("SELECT json FROM alarms WHERE open = 1")?;
        for row in st.query_map([], |row| row.get::<_, String>(0))? {
            match serde_json::from_str::<Alarm>(&row?) {
                Ok(a) => r.open_alarms.push(a),
                Err(e) => tracing::error!(error = %e, "stored alarm does not parse; skipped"),
            }
        }
        let mut st = c.prepare("SELECT key, json FROM rule_state")?;
        for row in st.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let (k, v) = row?;
            r.rule_states.insert(k, v);
        }
        let mut st = c.prepare("SELECT device, json FROM device_state")?;
        for row in st.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))? {
            let (k, v) = row?;
            r.device_states.insert(k, v);
        }
        c.execute(
            "DELETE FROM revoked_sessions WHERE expires < ?1",
            [Utc::now().timestamp_millis()],
        )?;
        let mut st = c.prepare("SELECT mac, expires FROM revoked_sessions")?;
        for row in st.query_map([], |row| Ok((row.get::<_, String>(0)?, from_ms(row.get(1)?))))? {
            r.revoked_sessions.push(row?);
        }
        let cutoff = Utc::now().timestamp_millis() - SEEN_RETENTION_MS;
        c.execute("DELETE FROM msg_seen WHERE arrived < ?1", [cutoff])?;
        let mut st = c.prepare("SELECT device, boot, seq FROM msg_seen")?;
        for row in st.query_map([], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get::<_, i64>(2)? as u64))
        })? {
            r.seen.push(row?);
        }
        Ok(r)
    }

    /// Subscribes to the committed-change stream (from now on).
    pub fn subscribe(&self) -> Commits {
        self.commits.subscribe()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Queues a batch; waits while the writer is behind (backpressure).
    pub async fn submit(&self, b: Batch, metrics: &Metrics) -> Result<(), StoreError> {
        match self.tx.try_send(Op::Batch(Box::new(b))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(op)) => {
                metrics
                    .queue_full
                    .get_or_create(&crate::telemetry::metrics_edge("pipeline->store"))
                    .inc();
                self.tx.send(op).await.map_err(|_| StoreError::Closed)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
        }
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Op::Flush(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Remembers a board session ended by logout (until it would have expired);
    /// resolves once that is durable, so the logout holds across a restart.
    pub async fn revoke_session(&self, mac: &str, expires: Timestamp) -> Result<(), StoreError> {
        let (mac, exp) = (mac.to_string(), ms(expires));
        let (tx, rx) = oneshot::channel();
        let write: Write = Box::new(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO revoked_sessions (mac, expires) VALUES (?1, ?2)",
                params![mac, exp],
            )
            .map(|_| ())
        });
        self.tx
            .send(Op::Write(write, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?.map_err(StoreError::Query)
    }

    fn with_read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A std Mutex: queries run on a blocking thread and nothing awaits while it is held.
        let c = self
            .read
            .lock()
            .map_err(|_| StoreError::Query("read connection poisoned".into()))?;
        f(&c).map_err(|e| StoreError::Query(e.to_string()))
    }

    /// A point's readings in `[from, to]` in event-time order, at most
    /// `limit`, and whether more follow in the span (a page, never a silent
    /// cap: the caller is told where to go on).
    pub fn readings(
        &self,
        point: &PointId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<(Vec<(Timestamp, Option<f64>, Quality, Timestamp)>, bool), StoreError> {
        self.with_read(|c| {
            let mut st = c.prepare_cached(
                &format!("SELECT t, value, quality, arrived FROM readings WHERE point = {POINT_ID} AND t >= ?2 AND t <= ?3 ORDER BY t LIMIT ?4"),
            )?;
            // One more than asked: whether it exists is whether a next page does.
            let rows = st.query_map(params![point.as_str(), ms(from), ms(to), limit as i64 + 1], |r| {
                Ok((from_ms(r.get(0)?), r.get::<_, Option<f64>>(1)?, int_q(r.get(2)?), from_ms(r.get(3)?)))
            })?;
            let mut rows: Vec<_> = rows.collect::<rusqlite::Result<_>>()?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok((rows, more))
        })
    }

    /// A point's rollup buckets at `res` (not [`Resolution::Raw`]) that
    /// overlap `[from, to]`, in time order, at most `limit`, and whether more
    /// follow (pages as [`Store::readings`]).
    pub fn rollups(
        &self,
        point: &PointId,
        res: Resolution,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<(Vec<Bucket>, bool), StoreError> {
        let (table, width) = match res {
            Resolution::Minute => ("rollup_1m", MINUTE_MS),
            Resolution::Hour => ("rollup_1h", HOUR_MS),
            Resolution::Raw => return Err(StoreError::Query("raw readings are not rollups".into())),
        };
        self.with_read(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT t, n, sum, min, max FROM {table} WHERE point = {POINT_ID} AND t >= ?2 AND t <= ?3 ORDER BY t LIMIT ?4"
            ))?;
            // The bucket the span starts in begins before `from`.
            let start = ms(from) - ms(from).rem_euclid(width);
            let rows = st.query_map(params![point.as_str(), start, ms(to), limit as i64 + 1], |r| {
                let n: i64 = r.get(1)?;
                Ok(Bucket {
                    t: from_ms(r.get(0)?),
                    mean: r.get::<_, f64>(2)? / n.max(1) as f64,
                    min: r.get(3)?,
                    max: r.get(4)?,
                    count: n as u64,
                })
            })?;
            let mut rows: Vec<_> = rows.collect::<rusqlite::Result<_>>()?;
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok((rows, more))
        })
    }

    pub fn alarm(&self, id: &str) -> Result<Option<Alarm>, StoreError> {
        let json: Option<String> = self.with_read(|c| {
            c.query_row("SELECT json FROM alarms WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Closed occurrences, newest first (the open ones live in the pipeline).
    pub fn closed_alarms(&self, limit: usize) -> Result<Vec<Alarm>, StoreError> {
        let rows: Vec<String> = self.with_read(|c| {
            let mut st = c.prepare_cached("SELECT json FROM alarms WHERE open = 0 ORDER BY updated DESC LIMIT ?1")?;
            let rows = st.query_map([limit as i64], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(rows.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
    }

    pub fn journal(&self, f: &JournalFilter) -> Result<Vec<JournalRow>, StoreError> {
        self.with_read(|c| {
            let mut sql = String::from(
                "SELECT seq, at, alarm_id, site, source, condition, action, from_state, to_state, who, why, event_time, notify, late, priority FROM journal WHERE 1=1",
            );
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut push = |clause: &str, v: rusqlite::types::Value| {
                args.push(v);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(a) = &f.alarm_id {
                push("alarm_id =", a.clone().into());
            }
            if let Some(s) = &f.site {
                push("site =", s.clone().into());
            }
            if let Some(s) = &f.condition {
                push("condition =", s.clone().into());
            }
            if let Some(p) = f.priority {
                push("priority =", p.as_str().to_string().into());
            }
            if let Some(t) = f.from {
                push("at >=", ms(t).into());
            }
            if let Some(t) = f.to {
                push("at <=", ms(t).into());
            }
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", f.limit.clamp(1, 10_000)));
            let mut st = c.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                Ok(JournalRow {
                    seq: r.get(0)?,
                    at: from_ms(r.get(1)?),
                    alarm_id: r.get(2)?,
                    site: r.get(3)?,
                    source: r.get(4)?,
                    condition: r.get(5)?,
                    action: action(r, 6)?,
                    from: r.get(7)?,
                    to: r.get(8)?,
                    who: r.get(9)?,
                    why: r.get(10)?,
                    event_time: r.get::<_, Option<i64>>(11)?.map(from_ms),
                    notify: r.get::<_, i64>(12)? != 0,
                    late: r.get::<_, i64>(13)? != 0,
                    priority: r.get(14)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Recorded inputs in arrival order, streamed to `each` (a month of the
    /// fleet is never held in memory). Reads on a connection of its own, so a
    /// long export does not hold up the API's reads.
    pub fn inputs(
        path: &Path,
        f: &InputFilter,
        mut each: impl FnMut(RecordedInput) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        let sq = |e| StoreError::Sqlite {
            path: path.into(),
            source: e,
        };
        let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sq)?;
        c.busy_timeout(std::time::Duration::from_secs(5)).map_err(sq)?;
        let mut st = c
            .prepare(
                "SELECT arrived, site, source, topic, body FROM inputs WHERE arrived >= ?1 AND arrived < ?2
                 ORDER BY arrived, id",
            )
            .map_err(sq)?;
        let mut rows = st.query(params![ms(f.from), ms(f.to)]).map_err(sq)?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(sq)? {
            let site: Option<String> = r.get(1).map_err(sq)?;
            let topic: Option<String> = r.get(3).map_err(sq)?;
            if !f.sites.is_empty() {
                let named = |s: &str| f.sites.iter().any(|x| x == s);
                // A payload that did not decode has no site: it belongs to
                // a site its topic names.
                let keep = match (&site, &topic) {
                    (Some(s), _) => named(s),
                    (None, Some(t)) => t.split('/').any(named),
                    (None, None) => false,
                };
                if !keep {
                    continue;
                }
            }
            let body: Vec<u8> = r.get(4).map_err(sq)?;
            let source: i64 = r.get(2).map_err(sq)?;
            let body = match source {
                0 => InputBody::Mqtt {
                    topic: topic.unwrap_or_default(),
                    payload: body.into(),
                },
                1 => match serde_json::from_slice(&body) {
                    Ok(p) => InputBody::Poll(p),
                    Err(e) => InputBody::PollError(format!("recorded poll unreadable: {e}")),
                },
                _ => InputBody::PollError(String::from_utf8_lossy(&body).into_owned()),
            };
            each(RecordedInput {
                arrived: from_ms(r.get(0).map_err(sq)?),
                site,
                body,
            })
            .map_err(|e| StoreError::Query(format!("writing the export: {e}")))?;
            n += 1;
        }
        Ok(n)
    }

    pub fn latest_raw(&self, site: &str) -> Result<Option<(String, Timestamp)>, StoreError> {
        self.with_read(|c| {
            c.query_row(
                "SELECT topic_payload, arrived FROM raw_latest WHERE site = ?1",
                [site],
                |r| Ok((r.get(0)?, from_ms(r.get(1)?))),
            )
            .optional()
        })
    }
}

/// A row that can never be committed (it breaks a constraint, or cannot be
/// encoded): quarantined so that the rest of its transaction commits.
#[derive(Debug)]
struct Rejected {
    table: &'static str,
    key: String,
    error: String,
}

/// Errors that retrying cannot cure. Everything else (disk full, I/O, busy,
/// locked) is transient: the batch is kept and retried with backoff.
fn permanent(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            matches!(f.code, C::ConstraintViolation | C::TooBig | C::TypeMismatch)
        }
        rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::InvalidParameterCount(..) => true,
        _ => false,
    }
}

/// The writer's map from point names to their ids in `points` (the readings
/// and rollups key). A point seen for the first time is added inside the
/// transaction that first stores it; if that transaction rolls back, so does
/// the id, and [`PointIds::rolled_back`] forgets it here too.
#[derive(Default)]
struct PointIds {
    ids: FxHashMap<Box<str>, i64>,
    added: Vec<Box<str>>,
}

impl PointIds {
    fn id(&mut self, tx: &rusqlite::Transaction, name: &str) -> rusqlite::Result<i64> {
        if let Some(id) = self.ids.get(name) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO points (name) VALUES (?1)")?
            .execute([name])?;
        let id = tx
            .prepare_cached("SELECT id FROM points WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        self.ids.insert(name.into(), id);
        self.added.push(name.into());
        Ok(id)
    }
    fn committed(&mut self) {
        self.added.clear();
    }
    fn rolled_back(&mut self) {
        for name in self.added.drain(..) {
            self.ids.remove(&name);
        }
    }
}

/// A point's id for a reader: the readings and rollups are keyed by it.
const POINT_ID: &str = "(SELECT id FROM points WHERE name = ?1)";

/// Applies the batches in one transaction. With `rejects`, a row that fails
/// for a permanent reason is recorded there and skipped (SQLite rolls back
/// only that statement); without, any failure fails the whole transaction.
fn apply(
    c: &mut Connection,
    ids: &mut PointIds,
    feed: bool,
    ops: &[Box<Batch>],
    mut rejects: Option<&mut Vec<Rejected>>,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    // The export feed's record of this commit (only with a sink configured).
    let mut export = super::feed::Body::default();
    // The rollups of what this transaction adds, summed per bucket first
    // so a bucket is written once per commit, not once per reading.
    let mut minutes: FxHashMap<(i64, i64), (&str, Rollup)> = FxHashMap::default();
    {
        let mut row = |r: rusqlite::Result<usize>, table: &'static str, key: &dyn Fn() -> String| match r {
            Ok(_) => Ok(()),
            Err(e) if permanent(&e) && rejects.is_some() => {
                if let Some(list) = rejects.as_deref_mut() {
                    list.push(Rejected {
                        table,
                        key: key(),
                        error: e.to_string(),
                    });
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        let mut ins_r = tx.prepare_cached(
            "INSERT OR IGNORE INTO readings (point, t, value, quality, arrived) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut up_a = tx.prepare_cached(
            "INSERT INTO alarms (id, site, source, condition, open, updated, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET open = excluded.open, updated = excluded.updated, json = excluded.json",
        )?;
        let mut ins_j = tx.prepare_cached(
            "INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, why, event_time, notify, late, priority)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        let mut up_rs = tx.prepare_cached("INSERT OR REPLACE INTO rule_state (key, json) VALUES (?1, ?2)")?;
        let mut up_ds = tx.prepare_cached("INSERT OR REPLACE INTO device_state (device, json) VALUES (?1, ?2)")?;
        let mut ins_s =
            tx.prepare_cached("INSERT OR IGNORE INTO msg_seen (device, boot, seq, arrived) VALUES (?1, ?2, ?3, ?4)")?;
        let mut up_raw =
            tx.prepare_cached("INSERT OR REPLACE INTO raw_latest (site, topic_payload, arrived) VALUES (?1, ?2, ?3)")?;
        let mut ins_in =
            tx.prepare_cached("INSERT INTO inputs (arrived, site, source, topic, body) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        // In key order: consecutive inserts land on the same leaf pages
        // (hot in the cache) instead of hopping across the fleet's points.
        let mut readings: Vec<&crate::model::Reading> = ops.iter().flat_map(|b| &b.readings).collect();
        readings.sort_unstable_by(|a, b| (a.point.as_str(), a.t).cmp(&(b.point.as_str(), b.t)));
        for r in readings {
            let point = ids.id(&tx, r.point.as_str())?;
            let res = ins_r.execute(params![point, ms(r.t), r.value, q_int(r.quality), ms(r.arrived)]);
            // Only a reading actually added counts (a duplicate is
            // ignored by the table and must not be counted twice).
            let added = matches!(res, Ok(1));
            row(res, "readings", &|| format!("{} at {}", r.point, r.t.to_rfc3339()))?;
            if added && feed {
                export.readings.push(super::feed::FeedReading {
                    point: r.point.as_str().to_string(),
                    t: ms(r.t),
                    value: r.value,
                    quality: r.quality,
                });
            }
            if let (true, Some(v)) = (added && r.quality != Quality::Bad, r.value.filter(|v| v.is_finite())) {
                let t = ms(r.t);
                minutes
                    .entry((point, t - t.rem_euclid(MINUTE_MS)))
                    .or_insert_with(|| (r.point.as_str(), Rollup::empty()))
                    .1
                    .add(v);
            }
        }
        for b in ops {
            for t in &b.transitions {
                let a = &t.alarm;
                let key = || format!("alarm {} {}", a.id, t.action);
                let json = serde_json::to_string(a).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
                let upsert = json.and_then(|json| {
                    up_a.execute(params![
                        a.id,
                        a.site.as_str(),
                        a.source,
                        a.condition,
                        !a.is_closed() as i64,
                        ms(t.at),
                        json
                    ])
                });
                row(upsert, "alarms", &key)?;
                row(
                    ins_j.execute(params![
                        ms(t.at),
                        a.id,
                        a.site.as_str(),
                        a.source,
                        a.condition,
                        t.action.as_str(),
                        t.from.as_str(),
                        t.to.as_str(),
                        t.who,
                        t.why,
                        t.event_time.map(ms),
                        t.notify as i64,
                        a.late as i64,
                        a.priority.as_str()
                    ]),
                    "journal",
                    &key,
                )?;
                if feed {
                    export.transitions.push(super::feed::FeedTransition {
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
                    });
                }
            }
            for (k, v) in &b.rule_states {
                row(up_rs.execute(params![k, v]), "rule_state", &|| k.clone())?;
            }
            for (k, v) in &b.device_states {
                row(up_ds.execute(params![k, v]), "device_state", &|| k.clone())?;
            }
            for (d, boot, seq, arrived) in &b.seen {
                row(
                    ins_s.execute(params![d, *boot as i64, *seq as i64, ms(*arrived)]),
                    "msg_seen",
                    &|| format!("{d} boot {boot} seq {seq}"),
                )?;
            }
            for c in &b.commands {
                row(
                    ins_j.execute(params![
                        ms(c.at),
                        "",
                        c.site,
                        c.device,
                        c.command,
                        Action::Command.as_str(),
                        if c.value { "true" } else { "false" },
                        c.result,
                        c.who,
                        c.why,
                        Option::<i64>::None,
                        0i64,
                        0i64,
                        ""
                    ]),
                    "journal",
                    &|| format!("command {} to {}", c.command, c.device),
                )?;
            }
            for i in &b.inputs {
                let (source, topic, body): (i64, Option<&str>, std::borrow::Cow<[u8]>) = match &i.body {
                    InputBody::Mqtt { topic, payload } => (0, Some(topic), payload.as_ref().into()),
                    InputBody::Poll(p) => (1, None, serde_json::to_vec(p).unwrap_or_default().into()),
                    InputBody::PollError(e) => (2, None, e.as_bytes().into()),
                };
                row(
                    ins_in.execute(params![ms(i.arrived), i.site, source, topic, body.as_ref()]),
                    "inputs",
                    &|| format!("input at {}", i.arrived.to_rfc3339()),
                )?;
            }
            for (site, raw, arrived) in &b.raw {
                row(up_raw.execute(params![site, raw, ms(*arrived)]), "raw_latest", &|| {
                    site.clone()
                })?;
            }
        }
    }
    if !minutes.is_empty() {
        write_rollups(&tx, &minutes, rejects)?;
    }
    if !export.readings.is_empty() || !export.transitions.is_empty() {
        super::feed::append(&tx, Utc::now(), &export)?;
    }
    tx.commit()
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Count, sum, min and max of a bucket's values.
#[derive(Debug, Clone, Copy)]
struct Rollup {
    n: i64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Rollup {
    fn empty() -> Self {
        Self {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
    fn add(&mut self, v: f64) {
        self.merge(&Rollup {
            n: 1,
            sum: v,
            min: v,
            max: v,
        });
    }
    fn merge(&mut self, o: &Rollup) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Folds the transaction's new values into the 1-minute and 1-hour buckets
/// they fall in (and only those: a late reading corrects its own buckets).
fn write_rollups(
    tx: &rusqlite::Transaction,
    minutes: &FxHashMap<(i64, i64), (&str, Rollup)>,
    rejects: Option<&mut Vec<Rejected>>,
) -> rusqlite::Result<()> {
    let mut hours: FxHashMap<(i64, i64), (&str, Rollup)> = FxHashMap::default();
    for ((p, t), (name, r)) in minutes {
        hours
            .entry((*p, t - t.rem_euclid(HOUR_MS)))
            .or_insert_with(|| (name, Rollup::empty()))
            .1
            .merge(r);
    }
    let mut rejects = rejects;
    for (table, buckets) in [("rollup_1m", minutes), ("rollup_1h", &hours)] {
        let mut up = tx.prepare_cached(&format!(
            "INSERT INTO {table} (point, t, n, sum, min, max) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(point, t) DO UPDATE SET n = n + excluded.n, sum = sum + excluded.sum,
             min = min(min, excluded.min), max = max(max, excluded.max)"
        ))?;
        // Key order, as for the readings: the next bucket's page is the one just written.
        let mut buckets: Vec<_> = buckets.iter().collect();
        buckets.sort_unstable_by_key(|(k, _)| *k);
        for ((p, t), (name, r)) in buckets {
            match up.execute(params![p, t, r.n, r.sum, r.min, r.max]) {
                Ok(_) => {}
                Err(e) if permanent(&e) && rejects.is_some() => {
                    if let Some(list) = rejects.as_deref_mut() {
                        list.push(Rejected {
                            table,
                            key: format!("{name} at {}", from_ms(*t).to_rfc3339()),
                            error: e.to_string(),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// How often the writer drops what is older than its retention.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Drops what is past its retention, in slices (a few thousand rows or a few
/// hundred points per transaction) so the ingest path never waits long
/// behind it. Returns how many rows each table lost.
fn prune(c: &Connection, retention: Retention, now: Timestamp) -> rusqlite::Result<[(&'static str, usize); 4]> {
    let cutoff = |days: u32| ms(now) - days as i64 * 86_400_000;
    let mut out = [("inputs", 0), ("readings", 0), ("rollup_1m", 0), ("rollup_1h", 0)];
    if retention.inputs_days > 0 {
        loop {
            let n = c.execute(
                "DELETE FROM inputs WHERE id IN (SELECT id FROM inputs WHERE arrived < ?1 ORDER BY arrived LIMIT 5000)",
                [cutoff(retention.inputs_days)],
            )?;
            out[0].1 += n;
            if n < 5000 {
                break;
            }
        }
    }
    for (i, table, days) in [
        (1, "readings", retention.readings_days),
        (2, "rollup_1m", retention.rollup_1m_days),
        (3, "rollup_1h", retention.rollup_1h_days),
    ] {
        if days > 0 {
            out[i].1 += prune_by_point(c, table, cutoff(days))?;
        }
    }
    Ok(out)
}

/// Deletes a point-keyed table's rows older than `cutoff`, point by point:
/// the key is `(point, t)`, so each delete is a range of the key, where a
/// delete by time alone would read the whole table. The points are found by
/// seeking to the next one, not by scanning.
fn prune_by_point(c: &Connection, table: &str, cutoff: i64) -> rusqlite::Result<usize> {
    let mut next = c.prepare_cached(&format!(
        "SELECT point FROM {table} WHERE point > ?1 ORDER BY point LIMIT 1"
    ))?;
    let mut del = c.prepare_cached(&format!("DELETE FROM {table} WHERE point = ?1 AND t < ?2"))?;
    let (mut after, mut total) = (0i64, 0);
    loop {
        c.execute_batch("BEGIN IMMEDIATE")?;
        let mut done = true;
        let step = (|| {
            for _ in 0..256 {
                let Some(p) = next.query_row([after], |r| r.get::<_, i64>(0)).optional()? else {
                    return Ok(());
                };
                total += del.execute(params![p, cutoff])?;
                after = p;
            }
            done = false;
            Ok(())
        })();
        match step {
            Ok(()) => c.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        if done {
            return Ok(total);
        }
    }
}

fn reject(rows: &[Rejected], metrics: &Metrics, quarantine: &Quarantine) {
    for r in rows {
        tracing::error!(table = r.table, row = %r.key, error = %r.error, "row can never be stored; quarantined");
        metrics.store_rejected.get_or_create(&Metrics::reason(r.table)).inc();
        quarantine.push(QuarantineEntry {
            at: Utc::now(),
            topic: format!("store:{}", r.table),
            reason: "store_rejected".into(),
            error: r.error.clone(),
            whole: false,
            payload: r.key.clone(),
            size: r.key.len(),
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn writer(
    mut c: Connection,
    mut rx: mpsc::Receiver<Op>,
    retention: Retention,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
    quarantine: Arc<Quarantine>,
    commits: tokio::sync::broadcast::Sender<Arc<Committed>>,
    feed: bool,
) {
    let mut backoff_ms = 50u64;
    let mut short_wal = false;
    let mut ids = PointIds::default();
    let mut pruned: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        if pruned.is_none_or(|p| p.elapsed() > PRUNE_EVERY) {
            pruned = Some(std::time::Instant::now());
            match prune(&c, retention, Utc::now()) {
                Ok(counts) => {
                    for (table, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
                        tracing::info!(table, rows = n, "pruned past retention");
                    }
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    tracing::error!(path = %path.display(), error = %e, "pruning past retention failed; retried later");
                }
            }
        }
        let mut ops = vec![first];
        // Group everything already waiting into the same transaction (the
        // queue bounds it): one fsync and one write of each touched page per
        // group, so the more that waits, the cheaper each batch becomes. A
        // cap of 256 held the store bench at 98k readings/s; by the queue,
        // 154k. When little waits, commits stay small and prompt.
        while ops.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut batches = Vec::new();
        let mut flushes = Vec::new();
        let mut writes = Vec::new();
        for op in ops {
            match op {
                Op::Batch(b) => batches.push(b),
                Op::Flush(tx) => flushes.push(tx),
                Op::Write(w, tx) => writes.push((w, tx)),
            }
        }
        loop {
            let started = std::time::Instant::now();
            let mut result = apply(&mut c, &mut ids, feed, &batches, None);
            if result.as_ref().is_err_and(permanent) {
                // Some row can never commit: retrying would stall every site
                // for ever. Commit the rest and quarantine that row.
                ids.rolled_back();
                let mut rejects = Vec::new();
                result = apply(&mut c, &mut ids, feed, &batches, Some(&mut rejects));
                if result.is_ok() {
                    reject(&rejects, &metrics, &quarantine);
                }
            }
            match result {
                Ok(()) => {
                    ids.committed();
                    metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
                    healthy.store(true, Ordering::Relaxed);
                    backoff_ms = 50;
                    break;
                }
                Err(e) => {
                    ids.rolled_back();
                    // Nothing is acknowledged until it commits: keep the batch
                    // and retry; the broker keeps the messages meanwhile.
                    metrics.store_errors.inc();
                    healthy.store(false, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), error = %e, retry_in_ms = backoff_ms, "store commit failed");
                    let full = disk_full(&e);
                    if full && !short_wal {
                        short_wal = true;
                        if let Err(e) = c.execute_batch(SHORT_WAL) {
                            tracing::warn!(error = %e, "could not shorten the WAL checkpoint interval");
                        }
                        tracing::warn!(path = %path.display(), "disk full: the WAL is now checkpointed every 1,000 pages and truncated before each retry");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
                    backoff_ms = (backoff_ms * 2).min(5_000);
                    if full {
                        truncate_wal(&c, &path);
                    }
                }
            }
        }
        // Durable now: acknowledge (MQTT PUBACKs, command replies, the
        // shards' views), then publish what was committed.
        let mut committed = Committed::default();
        for b in batches {
            if let Some(r) = b.received {
                metrics.pipeline_latency.observe(r.elapsed().as_secs_f64());
            }
            for ack in b.acks {
                ack.ack();
            }
            committed.readings += b.readings.len();
            committed.transitions.extend(b.transitions);
        }
        for t in &committed.transitions {
            crate::telemetry::events::AlarmTransition(t).emit(&metrics);
        }
        if !committed.transitions.is_empty() || committed.readings > 0 {
            // No subscribers is normal (no board open, alerts off).
            let _ = commits.send(Arc::new(committed));
        }
        for (w, reply) in writes {
            let r = w(&mut c).map_err(|e| {
                metrics.store_errors.inc();
                tracing::error!(path = %path.display(), error = %e, "store write failed");
                e.to_string()
            });
            let _ = reply.send(r); // the requester may have gone; the write stands
        }
        for f in flushes {
            let _ = f.send(()); // the flusher may have given up waiting; nothing to undo
        }
    }
    tracing::info!("store writer stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PointId, Reading, SiteId};
    use std::sync::atomic::AtomicUsize;

    struct Count(Arc<AtomicUsize>);
    impl super::super::Ack for Count {
        fn ack(self: Box<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn reading(site: &str, t: i64) -> Reading {
        let site = SiteId::new(site).unwrap();
        Reading {
            point: PointId::new(&site, "flow").unwrap(),
            t: from_ms(t),
            value: Some(1.0),
            quality: Quality::Good,
            arrived: from_ms(t),
        }
    }

    #[tokio::test]
    async fn every_commit_is_in_the_export_feed_in_order_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let metrics = Arc::new(Metrics::new());
        let q = Arc::new(Quarantine::new(10));
        let (store, _) = Store::open(&path, 8, Retention::default(), true, metrics.clone(), q).unwrap();
        let feed = super::super::feed::Feed::open(&path).unwrap();
        for (site, t) in [("DM-01", 1_000), ("DM-02", 2_000), ("DM-01", 3_000), ("DM-01", 1_000)] {
            let b = Batch {
                readings: vec![reading(site, t)],
                ..Default::default()
            };
            store.submit(b, &metrics).await.unwrap();
            store.flush().await.unwrap();
        }
        let got: Vec<(String, i64)> = feed
            .next(0, 5000)
            .unwrap()
            .iter()
            .flat_map(|r| r.readings.iter().map(|x| (x.point.clone(), x.t)))
            .collect();
        // The duplicate (DM-01 at 1 s again) was not stored, so not exported.
        let want = [("DM-01.flow", 1_000), ("DM-02.flow", 2_000), ("DM-01.flow", 3_000)];
        assert_eq!(got, want.map(|(p, t)| (p.to_string(), t)));
        let p = feed.pending().unwrap();
        assert_eq!((p.records, p.readings), (3, 3));
        let records = feed.next(0, 1).unwrap();
        assert_eq!(records.len(), 1, "a record at a time when one fills the request");
        feed.done(records[0].seq).unwrap();
        assert_eq!(feed.pending().unwrap().readings, 2);
        assert_eq!(feed.next(0, 5000).unwrap()[0].readings[0].point, "DM-02.flow");
        // Emptied, the feed goes on after its last sequence, never behind a
        // sink's cursor.
        let last = feed.next(0, 5000).unwrap().last().unwrap().seq;
        feed.done(last).unwrap();
        let b = Batch {
            readings: vec![reading("DM-03", 4_000)],
            ..Default::default()
        };
        store.submit(b, &metrics).await.unwrap();
        store.flush().await.unwrap();
        let after = feed.next(last, 5000).unwrap();
        assert_eq!(after.len(), 1);
        assert!(after[0].seq > last);
    }

    #[tokio::test]
    async fn a_row_that_can_never_commit_is_quarantined_and_the_rest_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let metrics = Arc::new(Metrics::new());
        let q = Arc::new(Quarantine::new(10));
        let (store, _) = Store::open(&path, 8, Retention::default(), false, metrics.clone(), q.clone()).unwrap();
        // A constraint the bad row breaks (as a schema change or a corrupt
        // value would): a trigger that refuses one site's readings.
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON readings
                 WHEN NEW.point IN (SELECT id FROM points WHERE name LIKE 'BAD%')
                 BEGIN SELECT RAISE(ABORT, 'poisoned row'); END;",
            )
            .unwrap();
        let acked = Arc::new(AtomicUsize::new(0));
        for (site, t) in [("DM-01", 1_000), ("BAD-1", 2_000), ("DM-02", 3_000)] {
            let b = Batch {
                readings: vec![reading(site, t)],
                acks: vec![Box::new(Count(acked.clone()))],
                ..Default::default()
            };
            store.submit(b, &metrics).await.unwrap();
        }
        store.flush().await.unwrap();
        assert!(store.is_healthy(), "a poisoned row must not turn into a failing store");
        assert_eq!(
            acked.load(Ordering::SeqCst),
            3,
            "every message behind the batches is acknowledged"
        );
        let got = |site: &str| {
            let site = SiteId::new(site).unwrap();
            store
                .readings(&PointId::new(&site, "flow").unwrap(), from_ms(0), from_ms(10_000), 10)
                .unwrap()
                .0
                .len()
        };
        assert_eq!((got("DM-01"), got("BAD-1"), got("DM-02")), (1, 0, 1));
        let list = q.list(10);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason, "store_rejected");
        assert_eq!(list[0].topic, "store:readings");
        assert!(list[0].error.contains("poisoned row"), "{:?}", list[0]);
        assert!(list[0].payload.contains("BAD-1.flow"), "{:?}", list[0]);
        assert!(metrics
            .encode()
            .contains("mizuban_store_rejected_rows_total{reason=\"readings\"} 1"));
        // And later batches are not held up by it.
        store
            .submit(
                Batch {
                    readings: vec![reading("DM-03", 4_000)],
                    ..Default::default()
                },
                &metrics,
            )
            .await
            .unwrap();
        store.flush().await.unwrap();
        assert_eq!(got("DM-03"), 1);
    }

    #[tokio::test]
    async fn each_commit_is_published_after_it_is_durable_with_its_transitions() {
        use crate::alarm::{AlarmOrigin, RaiseSpec, Registry};
        use crate::model::DeviceId;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let metrics = Arc::new(Metrics::new());
        let (store, _) = Store::open(
            &path,
            8,
            Retention::default(),
            false,
            metrics.clone(),
            Arc::new(Quarantine::new(4)),
        )
        .unwrap();
        let mut commits = store.subscribe();
        store
            .submit(
                Batch {
                    readings: vec![reading("DM-01", 1_000)],
                    ..Default::default()
                },
                &metrics,
            )
            .await
            .unwrap();
        let c = commits.recv().await.unwrap();
        assert_eq!((c.readings, c.transitions.len()), (1, 0));
        let mut reg = Registry::new();
        let spec = RaiseSpec {
            site: SiteId::new("MP-0001").unwrap(),
            device: DeviceId::new("AKT-MPN-0001").unwrap(),
            source: "AKT-MPN-0001".into(),
            condition: "DOOR_OPEN".into(),
            origin: AlarmOrigin::Device,
            priority: crate::device::Priority::High,
            value: None,
            limit: None,
            message: "door open".into(),
            message_ja: "扉開".into(),
            suppressed_by: vec![],
        };
        let transitions = reg.raise(spec, from_ms(2_000), from_ms(2_000));
        let id = transitions[0].alarm.id.clone();
        store
            .submit(
                Batch {
                    transitions,
                    ..Default::default()
                },
                &metrics,
            )
            .await
            .unwrap();
        let c = commits.recv().await.unwrap();
        assert_eq!(c.transitions.len(), 1);
        assert_eq!(c.transitions[0].alarm.id, id);
        // Published means durable: another connection reads it at once.
        let other = Connection::open(&path).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM journal WHERE alarm_id = ?1", [&id], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the transition is in the journal when it is published");
    }

    fn open_store(path: &Path) -> (Store, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let (store, _) = Store::open(
            path,
            8,
            Retention::default(),
            false,
            metrics.clone(),
            Arc::new(Quarantine::new(4)),
        )
        .unwrap();
        (store, metrics)
    }

    async fn submit_readings(store: &Store, metrics: &Metrics, readings: Vec<Reading>) {
        let b = Batch {
            readings,
            ..Default::default()
        };
        store.submit(b, metrics).await.unwrap();
    }

    fn at(site: &str, t: i64, v: Option<f64>, q: Quality) -> Reading {
        Reading {
            value: v,
            quality: q,
            ..reading(site, t)
        }
    }

    #[tokio::test]
    async fn rollups_agree_with_the_raw_readings_through_late_duplicate_and_bad_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, metrics) = open_store(&path);
        // Three hours of a reading every 20 s, in shuffled batches, with
        // every tenth sent twice (a QoS 1 redelivery), some bad or without a
        // value, and the first hour arriving last (a backlog).
        let base = 1_764_633_600_000; // 2025-12-02T00:00Z, on an hour
        let mut all: Vec<Reading> = (0..540)
            .map(|i| {
                let t = base + i * 20_000;
                let v = ((i * 37) % 101) as f64 / 7.0;
                match i % 17 {
                    3 => at("DM-01", t, Some(v), Quality::Bad),
                    5 => at("DM-01", t, None, Quality::Uncertain),
                    7 => at("DM-01", t, Some(v), Quality::Uncertain),
                    _ => at("DM-01", t, Some(v), Quality::Good),
                }
            })
            .collect();
        all.rotate_left(180);
        let mut rng: u64 = 7;
        for chunk in all.chunks(23) {
            let mut readings = chunk.to_vec();
            for r in chunk.iter().step_by(10) {
                readings.push(r.clone());
            }
            // A shuffle without a crate: the order within a batch is arbitrary.
            for k in (1..readings.len()).rev() {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                readings.swap(k, (rng >> 33) as usize % (k + 1));
            }
            submit_readings(&store, &metrics, readings).await;
        }
        // A redelivery in a later transaction, of readings already stored.
        store
            .submit(
                Batch {
                    readings: all[..50].to_vec(),
                    ..Default::default()
                },
                &metrics,
            )
            .await
            .unwrap();
        store.flush().await.unwrap();

        let point = PointId::new(&SiteId::new("DM-01").unwrap(), "flow").unwrap();
        let (raw, _) = store
            .readings(&point, from_ms(base), from_ms(base + 3 * HOUR_MS), 10_000)
            .unwrap();
        assert_eq!(raw.len(), 540, "every reading stored once");
        for (res, width) in [(Resolution::Minute, MINUTE_MS), (Resolution::Hour, HOUR_MS)] {
            let (got, more) = store
                .rollups(&point, res, from_ms(base), from_ms(base + 3 * HOUR_MS), 10_000)
                .unwrap();
            assert!(!more);
            // The same buckets computed afresh from the raw readings.
            let mut want: Vec<Bucket> = Vec::new();
            for (t, v, q, _) in &raw {
                let (Some(v), false) = (v, *q == Quality::Bad) else {
                    continue;
                };
                let b = ms(*t) - ms(*t).rem_euclid(width);
                match want.last_mut() {
                    Some(w) if ms(w.t) == b => {
                        w.count += 1;
                        w.mean += v;
                        w.min = w.min.min(*v);
                        w.max = w.max.max(*v);
                    }
                    _ => want.push(Bucket {
                        t: from_ms(b),
                        mean: *v,
                        min: *v,
                        max: *v,
                        count: 1,
                    }),
                }
            }
            for w in &mut want {
                w.mean /= w.count as f64;
            }
            assert_eq!(got.len(), want.len(), "{res:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.t, g.count, g.min, g.max), (w.t, w.count, w.min, w.max), "{res:?}");
                assert!((g.mean - w.mean).abs() < 1e-9, "{res:?} {g:?} {w:?}");
            }
        }
        // A span starting mid-bucket includes the bucket it starts in, and
        // pages when it holds more than the limit.
        let (page, more) = store
            .rollups(
                &point,
                Resolution::Hour,
                from_ms(base + 90 * MINUTE_MS),
                from_ms(base + 3 * HOUR_MS),
                1,
            )
            .unwrap();
        assert_eq!((ms(page[0].t), more), (base + HOUR_MS, true));
    }

    #[tokio::test]
    async fn retention_drops_only_what_is_past_it_per_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, metrics) = open_store(&path);
        let day = 86_400_000;
        let now = 1_764_633_600_000;
        // Three points, a reading every 6 hours over 40 days.
        let readings: Vec<Reading> = ["DM-01", "DM-02", "MP-0001"]
            .iter()
            .flat_map(|s| (0..160).map(move |i| at(s, now - 40 * day + i * day / 4, Some(i as f64), Quality::Good)))
            .collect();
        submit_readings(&store, &metrics, readings).await;
        store.flush().await.unwrap();
        let c = Connection::open(&path).unwrap();
        let count = |table: &str, older: i64| -> i64 {
            c.query_row(&format!("SELECT count(*) FROM {table} WHERE t < ?1"), [older], |r| {
                r.get(0)
            })
            .unwrap()
        };
        let total = |table: &str| count(table, i64::MAX);
        assert_eq!(
            (total("readings"), total("rollup_1m"), total("rollup_1h")),
            (480, 480, 480)
        );
        let keep = Retention {
            inputs_days: 0,
            readings_days: 10,
            rollup_1m_days: 20,
            rollup_1h_days: 0,
        };
        let pruned = prune(&c, keep, from_ms(now)).unwrap();
        // 10 and 20 days of 4 readings a day per point remain.
        assert_eq!(
            (total("readings"), total("rollup_1m"), total("rollup_1h")),
            (120, 240, 480)
        );
        assert_eq!(
            (count("readings", now - 10 * day), count("rollup_1m", now - 20 * day)),
            (0, 0)
        );
        assert_eq!(pruned.map(|(_, n)| n), [0, 360, 240, 0]);
        // What the store serves agrees: raw is gone past 10 days, the hourly
        // trend is whole.
        let point = PointId::new(&SiteId::new("DM-02").unwrap(), "flow").unwrap();
        let (raw, _) = store
            .readings(&point, from_ms(now - 40 * day), from_ms(now), 1000)
            .unwrap();
        let (hours, _) = store
            .rollups(&point, Resolution::Hour, from_ms(now - 40 * day), from_ms(now), 1000)
            .unwrap();
        assert_eq!((raw.len(), hours.len()), (40, 160));
    }

    #[test]
    fn the_write_connection_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("s.db")).unwrap();
        c.execute_batch(PRAGMAS).unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!((sync, mode.as_str()), (2, "wal"), "FULL (2) in WAL mode");
    }
}
