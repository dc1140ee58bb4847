use super::handle::{InputFilter, JournalFilter, JournalRow, Reader, ReadingRow, Restored, StoreError};
use super::rollup::{hours_of, Rollup, MINUTE_MS};
use super::staging::{Logged, Pending, Staged, Staging};
use super::state_log::{Kind, StateLog};
use super::writer::{Backend, Failure, Rejected, SmallWrite};
use super::{Batch, Bucket, RecordedInput, Resolution, Retention};
use crate::alarm::{Action, Alarm};
use crate::model::{PointId, Quality, Timestamp};
use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use rustc_hash::FxHashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// `synchronous = FULL`: in WAL mode every commit waits for the WAL to reach
/// the disk, so a reading acknowledged to the broker (PUBACK after commit)
/// survives power loss and an OS crash, not just a crash of mizuban. NORMAL
/// would lose the last commits on power loss while the broker believes them
/// delivered. The cost is one fsync per transaction; the writer groups every
/// waiting batch into one transaction, so it is paid per group, not per message.
pub(super) const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// The writer's page cache. When each commit inserted its readings into the
/// point-keyed tables, it touched a page per point, and SQLite's default 2
/// MiB cache re-read most of them for every commit (half the ingest time
/// went to pread); 32 MiB held them. Since readings and state rows are
/// logged in arrival order and merged in key order every few seconds (see
/// super::staging, super::state_log), a commit touches a few log pages and
/// a merge each point's page once: 8 MiB ingests as fast on the store bench
/// (310–324k readings/s at 7 days, 8 MiB and 32 MiB alike) and keeps the
/// contract bench's storm under 100 MiB of RSS (98 against 129 MiB,
/// docs/PERFORMANCE.md).
///
/// The WAL is copied back into the database every 10,000 pages (40 MiB)
/// rather than SQLite's 1,000: each checkpoint writes every page changed
/// since the last one once, however often it changed, and the fleet's commits
/// keep changing the same few thousand pages, so a longer WAL is fewer
/// copies (98k against 69k readings/s in the store bench; 40,000 pages was
/// slower again, readers searching a longer WAL index).
const WRITER_PRAGMAS: &str = "PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 10000;";

/// Once the disk has been full, the long WAL is a liability: a WAL that has
/// grown to fill the disk leaves no room for the checkpoint that would empty
/// it, and every retry fails for ever (seen on a 24 MiB volume). From the
/// first full-disk error on, the writer checkpoints at SQLite's default
/// interval for the rest of the run, and truncates the WAL before each retry
/// so that freed space goes to the database first.
const SHORT_WAL: &str = "PRAGMA wal_autocheckpoint = 1000;";

/// A connection to the store's file beside the writer's (the export feed's
/// cursor), with the writer's durability; migrates the schema if it is the
/// first to open the file.
pub(super) fn side_connection(path: &Path) -> Result<Connection, StoreError> {
    let sq = |e| StoreError::Sqlite {
        path: path.into(),
        source: e,
    };
    let mut c = Connection::open(path).map_err(sq)?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(sq)?;
    c.execute_batch(PRAGMAS).map_err(sq)?;
    super::schema::migrate(&mut c).map_err(|e| StoreError::Schema {
        path: path.into(),
        source: e,
    })?;
    Ok(c)
}

fn disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Copies every committed WAL frame into the database and truncates the WAL
/// to nothing. Fails (and is retried with the next attempt) while the disk
/// has no room for the database to grow.
fn truncate_wal(c: &Connection, path: &str) {
    let r = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    });
    match r {
        Ok((0, log, done)) => {
            tracing::info!(path, wal_pages = log, checkpointed = done, "WAL truncated")
        }
        Ok((_, log, done)) => {
            tracing::warn!(
                path,
                wal_pages = log,
                checkpointed = done,
                "WAL checkpoint blocked by a reader"
            )
        }
        Err(e) => tracing::warn!(path, error = %e, "WAL checkpoint failed"),
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

use super::codec::{bucket, input_body, input_columns, rollup_table, SEEN_RETENTION_MS};
pub(super) use super::codec::{from_ms, int_q, ms};

/// Opens (creating if needed) the database at `path`, migrates it, and
/// returns its writer, a reader on a connection of its own, and what the
/// service needs back after a restart.
pub(super) fn open(path: &Path, feed: bool) -> Result<(SqliteWriter, SqliteReader, Restored), StoreError> {
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
    write.set_prepared_statement_cache_capacity(super::outbox::STATEMENTS);
    let read = Connection::open(path).map_err(sq)?;
    read.busy_timeout(std::time::Duration::from_secs(5)).map_err(sq)?;
    // The state log first: restore reads the tables it folds into.
    let states = super::state_log::open(&mut write).map_err(sq)?;
    let restored = restore(&write).map_err(sq)?;
    let staging = super::staging::restore(&write).map_err(sq)?;
    let reader = SqliteReader {
        read: Mutex::new(read),
        staged: staging.pending.clone(),
    };
    let writer = SqliteWriter {
        c: write,
        ids: PointIds::default(),
        staging,
        states,
        feed,
        place: path.display().to_string(),
        short_wal: false,
        full: false,
    };
    Ok((writer, reader, restored))
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

/// The API's reads, on one connection of their own.
pub(super) struct SqliteReader {
    read: Mutex<Connection>,
    /// Readings acknowledged but not merged into `readings` yet.
    staged: Arc<Mutex<Pending>>,
}

impl SqliteReader {
    /// A point's staged readings in `[from, to]` (ms).
    fn staged(&self, point: &PointId, from: i64, to: i64) -> Vec<Staged> {
        let p = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        p.rows_of(point.as_str(), from, to)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A std Mutex: queries run on a blocking thread and nothing awaits while it is held.
        let c = self
            .read
            .lock()
            .map_err(|_| StoreError::Query("read connection poisoned".into()))?;
        f(&c).map_err(|e| StoreError::Query(e.to_string()))
    }
}

impl Reader for SqliteReader {
    fn readings(
        &self,
        point: &PointId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<ReadingRow>, StoreError> {
        // Staged first, then the database: a reading merged in between is in
        // both (and kept once), never in neither.
        let staged = self.staged(point, ms(from), ms(to));
        let mut rows = self.with(|c| {
            let mut st = c.prepare_cached(
                &format!("SELECT t, value, quality, arrived FROM readings WHERE point = {POINT_ID} AND t >= ?2 AND t <= ?3 ORDER BY t LIMIT ?4"),
            )?;
            let rows = st.query_map(params![point.as_str(), ms(from), ms(to), limit as i64 + 1], |r| {
                Ok((from_ms(r.get(0)?), r.get::<_, Option<f64>>(1)?, int_q(r.get(2)?), from_ms(r.get(3)?)))
            })?;
            rows.collect::<rusqlite::Result<Vec<ReadingRow>>>()
        })?;
        if !staged.is_empty() {
            // The first reading of a (point, t) is the one kept, as the merge
            // keeps it: the database's, else the earliest staged.
            let mut seen: rustc_hash::FxHashSet<i64> = rows.iter().map(|r| ms(r.0)).collect();
            for s in staged {
                if seen.insert(s.t) {
                    rows.push((from_ms(s.t), s.value, s.quality(), from_ms(s.arrived)));
                }
            }
            rows.sort_by_key(|r| r.0);
            rows.truncate(limit + 1);
        }
        Ok(rows)
    }

    fn rollups(
        &self,
        point: &PointId,
        res: Resolution,
        start: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Bucket>, StoreError> {
        let table = rollup_table(res)?;
        let width = res.width_ms().unwrap_or(MINUTE_MS);
        let staged = self.staged(point, ms(start), ms(to) + width);
        self.with(|c| {
            // One snapshot for both reads: a merge committing between them
            // would otherwise count a staged reading twice.
            let tx = c.unchecked_transaction()?;
            // The staged readings' buckets as the merge will fold them in:
            // the first of a (point, t) only, and none already stored.
            let mut extra: std::collections::BTreeMap<i64, Rollup> = Default::default();
            // The times already stored in the staged readings' span, in one
            // range read (a read per staged reading took 48 ms for a point
            // with a week staged).
            let lo = staged.iter().map(|s| s.t).min();
            let hi = staged.iter().map(|s| s.t).max();
            let mut seen: rustc_hash::FxHashSet<i64> = Default::default();
            if let (Some(lo), Some(hi)) = (lo, hi) {
                let mut stored = tx.prepare_cached(&format!(
                    "SELECT t FROM readings WHERE point = {POINT_ID} AND t >= ?2 AND t <= ?3"
                ))?;
                for t in stored.query_map(params![point.as_str(), lo, hi], |r| r.get::<_, i64>(0))? {
                    seen.insert(t?);
                }
            }
            for s in staged {
                let Some(v) = s.value.filter(|v| v.is_finite() && s.quality() != Quality::Bad) else {
                    continue;
                };
                let b = s.t - s.t.rem_euclid(width);
                // The first staged reading of a t not stored counts.
                if b < ms(start) || b > ms(to) || !seen.insert(s.t) {
                    continue;
                }
                extra.entry(b).or_insert_with(Rollup::empty).add(v);
            }
            let mut st = tx.prepare_cached(&format!(
                "SELECT t, n, sum, min, max FROM {table} WHERE point = {POINT_ID} AND t >= ?2 AND t <= ?3 ORDER BY t LIMIT ?4"
            ))?;
            let rows = st.query_map(params![point.as_str(), ms(start), ms(to), limit as i64 + 1], |r| {
                Ok((r.get::<_, i64>(0)?, Rollup { n: r.get(1)?, sum: r.get(2)?, min: r.get(3)?, max: r.get(4)? }))
            })?;
            let mut buckets = rows.collect::<rusqlite::Result<Vec<(i64, Rollup)>>>()?;
            if !extra.is_empty() {
                for (t, r) in buckets.iter_mut() {
                    if let Some(e) = extra.remove(t) {
                        r.merge(&e);
                    }
                }
                buckets.extend(extra);
                buckets.sort_by_key(|b| b.0);
                buckets.truncate(limit + 1);
            }
            Ok(buckets.into_iter().map(|(t, r)| bucket(t, r.n, r.sum, r.min, r.max)).collect())
        })
    }

    fn alarm(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT json FROM alarms WHERE id = ?1", [id], |r| r.get(0))
                .optional()
        })
    }

    fn closed_alarms(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT json FROM alarms WHERE open = 0 ORDER BY updated DESC LIMIT ?1")?;
            let rows = st.query_map([limit as i64], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn journal(&self, f: &JournalFilter) -> Result<Vec<JournalRow>, StoreError> {
        self.with(|c| {
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

    fn latest_raw(&self, site: &str) -> Result<Option<(String, Timestamp)>, StoreError> {
        self.with(|c| {
            c.query_row(super::state_log::LATEST_RAW, [site], |r| {
                Ok((r.get(0)?, from_ms(r.get(1)?)))
            })
            .optional()
        })
    }
}

/// Recorded inputs in arrival order, streamed to `each`, on a read-only
/// connection of their own.
pub(super) fn inputs(
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
        if !f.keeps(site.as_deref(), topic.as_deref()) {
            continue;
        }
        let body = input_body(r.get(2).map_err(sq)?, topic, r.get(4).map_err(sq)?);
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

/// A statement's outcome in a transaction that may quarantine: with
/// `rejects`, a failure retrying cannot cure is recorded there (the row under
/// `table` and `key`) and skipped as `Ok(None)`; anything else, and any
/// failure without `rejects`, fails the transaction.
fn or_reject<T>(
    res: rusqlite::Result<T>,
    rejects: &mut Option<&mut Vec<Rejected>>,
    table: &'static str,
    key: impl FnOnce() -> String,
) -> rusqlite::Result<Option<T>> {
    match (res, rejects) {
        (Ok(v), _) => Ok(Some(v)),
        (Err(e), Some(list)) if permanent(&e) => {
            list.push(Rejected {
                table,
                key: key(),
                error: e.to_string(),
            });
            Ok(None)
        }
        (Err(e), _) => Err(e),
    }
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
    /// The point's id, and whether this is the first time this run asks.
    fn id(&mut self, tx: &rusqlite::Transaction, name: &str) -> rusqlite::Result<(i64, bool)> {
        if let Some(id) = self.ids.get(name) {
            return Ok((*id, false));
        }
        tx.prepare_cached("INSERT OR IGNORE INTO points (name) VALUES (?1)")?
            .execute([name])?;
        let id = tx
            .prepare_cached("SELECT id FROM points WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        self.ids.insert(name.into(), id);
        self.added.push(name.into());
        Ok((id, true))
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
    staging: &mut Staging,
    states: &mut StateLog,
    feed: bool,
    ops: &[Box<Batch>],
    mut rejects: Option<&mut Vec<Rejected>>,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    // The export feed's record of this commit (only with a sink configured).
    let mut export = super::feed::Body::default();
    // The staged points that are due go into `readings` first, then this
    // commit's readings are logged (see super::staging).
    let incoming = ops.iter().map(|b| b.readings.len()).sum();
    let plan = staging.plan(incoming);
    merge(&tx, &plan, feed, &mut export, rejects.as_deref_mut())?;
    staging.trim(&tx, &plan)?;
    let mut fresh = Logged {
        rows: Vec::with_capacity(incoming),
        names: Vec::new(),
    };
    for r in ops.iter().flat_map(|b| &b.readings) {
        let (point, new) = ids.id(&tx, r.point.as_str())?;
        let key = || format!("{} at {}", r.point, r.t.to_rfc3339());
        if let Some(s) = or_reject(super::staging::log(&tx, point, r), &mut rejects, "readings", key)? {
            // A point's name goes to the staging the first time this run
            // writes it (again after a rollback: harmless).
            if new {
                fresh.names.push((point, r.point.as_str().into()));
            }
            fresh.rows.push((point, s));
        }
    }
    {
        let mut row = |r: rusqlite::Result<usize>, table: &'static str, key: &dyn Fn() -> String| {
            or_reject(r, &mut rejects, table, key).map(|_| ())
        };
        let mut up_a = tx.prepare_cached(
            "INSERT INTO alarms (id, site, source, condition, open, updated, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET open = excluded.open, updated = excluded.updated, json = excluded.json",
        )?;
        let mut ins_j = tx.prepare_cached(
            "INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, why, event_time, notify, late, priority)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        let mut ins_in =
            tx.prepare_cached("INSERT INTO inputs (arrived, site, source, topic, body) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        // A group's state rows once each, with their newest values (a
        // device reporting several times in one group is written once).
        let mut alarms = Vec::new();
        let (mut rule_states, mut device_states, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        for b in ops {
            alarms.extend(b.transitions.iter());
            rule_states.extend(b.rule_states.iter());
            device_states.extend(b.device_states.iter());
            raw.extend(b.raw.iter());
        }
        for t in super::codec::last_by_key(alarms, |t| t.alarm.id.as_str()) {
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
        }
        // Rule and device state, the latest raw message and the accepted
        // ids go to the state log (see super::state_log).
        for (k, v) in super::codec::last_by_key(rule_states, |(k, _)| k.as_str()) {
            let res = states.append(&tx, Kind::RuleState, k, Some(v), None, None);
            row(res, "rule_state", &|| k.clone())?;
        }
        for (k, v) in super::codec::last_by_key(device_states, |(k, _)| k.as_str()) {
            let res = states.append(&tx, Kind::DeviceState, k, Some(v), None, None);
            row(res, "device_state", &|| k.clone())?;
        }
        for (site, r, arrived) in super::codec::last_by_key(raw, |(s, _, _)| s.as_str()) {
            let res = states.append(&tx, Kind::RawLatest, site, Some(r), None, Some(ms(*arrived)));
            row(res, "raw_latest", &|| site.clone())?;
        }
        for b in ops {
            for t in &b.transitions {
                let a = &t.alarm;
                let key = || format!("alarm {} {}", a.id, t.action);
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
                    export.transitions.push(super::feed::FeedTransition::of(t));
                }
            }
            for (d, boot, seq, arrived) in &b.seen {
                let res = states.append(&tx, Kind::Seen, d, None, Some((*boot, *seq)), Some(ms(*arrived)));
                row(res, "msg_seen", &|| format!("{d} boot {boot} seq {seq}"))?;
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
                let (source, topic, body) = input_columns(&i.body);
                row(
                    ins_in.execute(params![ms(i.arrived), i.site, source, topic, body.as_ref()]),
                    "inputs",
                    &|| format!("input at {}", i.arrived.to_rfc3339()),
                )?;
            }
        }
    }
    states.finish(&tx)?;
    if !export.readings.is_empty() || !export.transitions.is_empty() {
        super::feed::append(&tx, Utc::now(), &export)?;
    }
    tx.commit()?;
    staging.stage(plan, fresh);
    Ok(())
}

/// Merges the planned points' staged readings into `readings`, in key order
/// (a point's page is written once for all of them), and folds the ones it
/// added into the 1-minute and 1-hour buckets they fall in: a duplicate
/// `(point, t)` is ignored by the table and must not be counted twice, and a
/// late reading corrects only its own buckets.
fn merge(
    tx: &rusqlite::Transaction,
    plan: &super::staging::Plan,
    feed: bool,
    export: &mut super::feed::Body,
    mut rejects: Option<&mut Vec<Rejected>>,
) -> rusqlite::Result<()> {
    if plan.merges.is_empty() {
        return Ok(());
    }
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO readings (point, t, value, quality, arrived) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    // Summed per bucket first, so a bucket is written once per merge.
    let mut minutes: FxHashMap<(i64, i64), (&str, Rollup)> = FxHashMap::default();
    let mut merges: Vec<&super::staging::Merge> = plan.merges.iter().collect();
    merges.sort_unstable_by_key(|m| m.point);
    for m in merges {
        let mut rows: Vec<&Staged> = m.rows.iter().collect();
        // Stable: of two readings at one t, the one logged first is kept.
        rows.sort_by_key(|r| r.t);
        for r in rows {
            let res = ins.execute(params![m.point, r.t, r.value, r.quality, r.arrived]);
            let key = || format!("{} at {}", m.name, from_ms(r.t).to_rfc3339());
            // Only a reading actually added counts (a duplicate is ignored
            // by the table and must not be counted twice).
            let added = or_reject(res, &mut rejects, "readings", key)? == Some(1);
            if added && feed {
                export.readings.push(super::feed::FeedReading {
                    point: m.name.to_string(),
                    t: r.t,
                    value: r.value,
                    quality: r.quality(),
                });
            }
            if let (true, Some(v)) = (added && r.quality() != Quality::Bad, r.value.filter(|v| v.is_finite())) {
                minutes
                    .entry((m.point, r.t - r.t.rem_euclid(MINUTE_MS)))
                    .or_insert_with(|| (&m.name, Rollup::empty()))
                    .1
                    .add(v);
            }
        }
    }
    write_rollups(tx, &minutes, rejects)
}

/// Folds the transaction's new values into the 1-minute and 1-hour buckets
/// they fall in (and only those: a late reading corrects its own buckets).
fn write_rollups(
    tx: &rusqlite::Transaction,
    minutes: &FxHashMap<(i64, i64), (&str, Rollup)>,
    rejects: Option<&mut Vec<Rejected>>,
) -> rusqlite::Result<()> {
    let hours = hours_of(minutes);
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
            let res = up.execute(params![p, t, r.n, r.sum, r.min, r.max]);
            or_reject(res, &mut rejects, table, || {
                format!("{name} at {}", from_ms(*t).to_rfc3339())
            })?;
        }
    }
    Ok(())
}

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

/// The SQLite side of the writer: the write connection, the point ids that
/// follow its transactions, and how it recovers from a full disk.
pub(super) struct SqliteWriter {
    c: Connection,
    ids: PointIds,
    /// Readings logged and not yet merged (see super::staging).
    staging: Staging,
    /// State rows logged and not yet folded (see super::state_log).
    states: StateLog,
    feed: bool,
    place: String,
    /// The WAL checkpoint interval has been shortened (see [`SHORT_WAL`]).
    short_wal: bool,
    /// The last failure was a full disk: truncate the WAL before the retry.
    full: bool,
}

impl Failure for rusqlite::Error {
    fn permanent(&self) -> bool {
        permanent(self)
    }
}

impl Backend for SqliteWriter {
    type Error = rusqlite::Error;

    fn apply(&mut self, batches: &[Box<Batch>], rejects: Option<&mut Vec<Rejected>>) -> rusqlite::Result<()> {
        apply(
            &mut self.c,
            &mut self.ids,
            &mut self.staging,
            &mut self.states,
            self.feed,
            batches,
            rejects,
        )
    }

    fn committed(&mut self) {
        self.ids.committed();
        self.staging.committed();
        self.states.committed();
    }

    fn rolled_back(&mut self) {
        self.ids.rolled_back();
        self.staging.rolled_back();
        self.states.rolled_back();
    }

    fn due(&self) -> bool {
        self.staging.due() || self.states.due()
    }

    fn settle_next(&mut self) -> bool {
        self.staging.all = self.staging.len() > 0;
        self.states.all = self.states.len() > 0;
        self.staging.all || self.states.all
    }

    fn recover(&mut self, e: &rusqlite::Error) {
        if !disk_full(e) {
            return;
        }
        self.full = true;
        if !self.short_wal {
            self.short_wal = true;
            if let Err(e) = self.c.execute_batch(SHORT_WAL) {
                tracing::warn!(error = %e, "could not shorten the WAL checkpoint interval");
            }
            tracing::warn!(path = %self.place, "disk full: the WAL is now checkpointed every 1,000 pages and truncated before each retry");
        }
    }

    fn before_retry(&mut self) {
        if std::mem::take(&mut self.full) {
            truncate_wal(&self.c, &self.place);
        }
    }

    fn prune(&mut self, retention: Retention, now: Timestamp) -> rusqlite::Result<Vec<(&'static str, usize)>> {
        prune(&self.c, retention, now).map(|counts| counts.to_vec())
    }

    fn write(&mut self, w: &SmallWrite) -> rusqlite::Result<()> {
        match w {
            SmallWrite::RevokeSession { mac, expires } => self
                .c
                .execute(
                    "INSERT OR REPLACE INTO revoked_sessions (mac, expires) VALUES (?1, ?2)",
                    params![mac, ms(*expires)],
                )
                .map(|_| ()),
        }
    }

    fn place(&self) -> &str {
        &self.place
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Reading, SiteId};

    fn reading(point: &str, t: i64, v: f64) -> Reading {
        Reading {
            point: PointId::new(&SiteId::new("S").unwrap(), point).unwrap(),
            t: from_ms(t),
            value: Some(v),
            quality: Quality::Good,
            arrived: from_ms(t),
        }
    }

    fn commit(w: &mut SqliteWriter, readings: Vec<Reading>) {
        let b = Box::new(Batch {
            readings,
            ..Default::default()
        });
        w.apply(&[b], None).unwrap();
        w.committed();
    }

    fn count(w: &SqliteWriter, sql: &str) -> i64 {
        w.c.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// What a reader of the point gets: raw values, and the 1-minute buckets' counts.
    fn read(r: &SqliteReader, point: &str) -> (Vec<Option<f64>>, Vec<u64>) {
        let p = PointId::new(&SiteId::new("S").unwrap(), point).unwrap();
        let raw = r.readings(&p, from_ms(0), from_ms(10_000_000), 100).unwrap();
        let min = r
            .rollups(&p, Resolution::Minute, from_ms(0), from_ms(10_000_000), 100)
            .unwrap();
        (raw.iter().map(|r| r.1).collect(), min.iter().map(|b| b.count).collect())
    }

    #[test]
    fn staged_readings_are_read_at_once_merged_once_and_survive_a_restart_unmerged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (mut w, r, _) = open(&path, false).unwrap();
        w.staging.policy = super::super::staging::Policy {
            age: std::time::Duration::from_secs(3600),
            cap: 4,
        };
        // a, b, a: a is staged with log rows 1 and 3, b with row 2.
        commit(&mut w, vec![reading("a", 1_000, 1.0)]);
        commit(&mut w, vec![reading("b", 1_000, 10.0)]);
        commit(&mut w, vec![reading("a", 2_000, 2.0), reading("a", 2_000, 99.0)]);
        // Nothing merged yet, and a reader sees it all; the duplicate at
        // t = 2 s is not a reading of its own, the first one is kept.
        assert_eq!(count(&w, "SELECT count(*) FROM readings"), 0);
        assert_eq!(read(&r, "a"), (vec![Some(1.0), Some(2.0)], vec![2]));
        // One more reading is over the cap: a (staged first) is merged. The
        // log keeps every row (it is trimmed in steps of thousands), a's
        // rows 1, 3 and 4 with them, already merged.
        commit(&mut w, vec![reading("c", 1_000, 100.0)]);
        assert_eq!(count(&w, "SELECT count(*) FROM readings"), 2);
        assert_eq!(count(&w, "SELECT count(*) FROM readings_log"), 5);
        assert_eq!(read(&r, "a"), (vec![Some(1.0), Some(2.0)], vec![2]));
        assert_eq!(read(&r, "b"), (vec![Some(10.0)], vec![1]));
        // A crash now: the log is staged again on restart, and merging it
        // adds b and c and changes nothing of a (its rollup still counts 2).
        drop((w, r));
        let (mut w, r, _) = open(&path, false).unwrap();
        assert_eq!(w.staging.len(), 5);
        assert_eq!(read(&r, "b"), (vec![Some(10.0)], vec![1]));
        assert!(w.settle_next());
        w.apply(&[], None).unwrap();
        w.committed();
        assert_eq!(w.staging.len(), 0);
        // Settling trims all but the newest row, kept so that no log id is
        // ever handed out twice.
        assert_eq!(count(&w, "SELECT max(id) FROM readings_log"), 5);
        assert_eq!(count(&w, "SELECT count(*) FROM readings_log"), 1);
        assert_eq!(count(&w, "SELECT count(*) FROM readings"), 4);
        assert_eq!(count(&w, "SELECT sum(n) FROM rollup_1m"), 4);
        assert_eq!(count(&w, "SELECT sum(n) FROM rollup_1h"), 4);
        for (p, want) in [
            ("a", (vec![Some(1.0), Some(2.0)], vec![2])),
            ("b", (vec![Some(10.0)], vec![1])),
            ("c", (vec![Some(100.0)], vec![1])),
        ] {
            assert_eq!(read(&r, p), want, "{p}");
        }
    }

    /// One message's state rows: rule state, device state, the site's raw
    /// message and its accepted id.
    fn state_batch(device: &str, n: u64) -> Box<Batch> {
        let at = from_ms(n as i64 * 1_000);
        Box::new(Batch {
            rule_states: vec![(format!("{device}/p_low"), format!("{{\"n\":{n}}}"))],
            device_states: vec![(device.to_string(), format!("{{\"seq\":{n}}}"))],
            // Now: a restart forgets ids older than the dedup window.
            seen: vec![(device.to_string(), 7, n, Utc::now())],
            raw: vec![(format!("site-{device}"), format!("raw {n}"), at)],
            ..Default::default()
        })
    }

    #[test]
    fn state_rows_are_logged_read_at_once_and_folded_newest_first_even_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (mut w, r, _) = open(&path, false).unwrap();
        // Two messages of d1 in one commit, then one of d2 and a third of d1.
        w.apply(&[state_batch("d1", 1), state_batch("d1", 2)], None).unwrap();
        w.committed();
        for b in [state_batch("d2", 1), state_batch("d1", 3)] {
            w.apply(&[b], None).unwrap();
            w.committed();
        }
        // Logged, not folded: in one commit a key is logged once (its newest
        // value), the accepted ids all (5 rows for the first commit, 4 for
        // each other); the keyed tables are untouched.
        assert_eq!(w.states.len(), 5 + 4 + 4);
        assert_eq!(count(&w, "SELECT count(*) FROM state_log"), 13);
        for t in ["rule_state", "device_state", "raw_latest", "msg_seen"] {
            assert_eq!(count(&w, &format!("SELECT count(*) FROM {t}")), 0, "{t}");
        }
        // A reader of the latest raw message sees the newest at once.
        let raw = |r: &SqliteReader, site: &str| r.latest_raw(site).unwrap().map(|(m, at)| (m, ms(at)));
        assert_eq!(raw(&r, "site-d1"), Some(("raw 3".to_string(), 3_000)));
        assert_eq!(raw(&r, "site-d2"), Some(("raw 1".to_string(), 1_000)));
        assert_eq!(raw(&r, "site-d3"), None);
        // A crash now: the restart folds the log before it reads the state
        // back, and gets each key's newest row and every accepted id.
        drop((w, r));
        let (mut w, r, restored) = open(&path, false).unwrap();
        assert_eq!(count(&w, "SELECT count(*) FROM state_log"), 0);
        assert_eq!(restored.rule_states["d1/p_low"], "{\"n\":3}");
        assert_eq!(restored.rule_states["d2/p_low"], "{\"n\":1}");
        assert_eq!(restored.device_states["d1"], "{\"seq\":3}");
        let mut seen: Vec<(String, u64)> = restored.seen.iter().map(|(d, _, s)| (d.clone(), *s)).collect();
        seen.sort();
        let want = [("d1", 1), ("d1", 2), ("d1", 3), ("d2", 1)].map(|(d, s)| (d.to_string(), s));
        assert_eq!(seen, want);
        assert_eq!(raw(&r, "site-d1"), Some(("raw 3".to_string(), 3_000)));
        // Logged again and read over the folded row; a flush folds it.
        w.apply(&[state_batch("d1", 4)], None).unwrap();
        w.committed();
        assert_eq!(raw(&r, "site-d1"), Some(("raw 4".to_string(), 4_000)));
        assert!(w.settle_next());
        w.apply(&[], None).unwrap();
        w.committed();
        assert_eq!((w.states.len(), count(&w, "SELECT count(*) FROM state_log")), (0, 0));
        let folded: String =
            w.c.query_row("SELECT json FROM rule_state WHERE key = 'd1/p_low'", [], |r| r.get(0))
                .unwrap();
        assert_eq!(folded, "{\"n\":4}");
        assert_eq!(raw(&r, "site-d1"), Some(("raw 4".to_string(), 4_000)));
        assert!(!w.settle_next(), "nothing left to fold");
    }

    #[test]
    fn the_state_log_is_folded_once_its_oldest_row_has_waited_and_not_on_a_rolled_back_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _r, _) = open(&dir.path().join("s.db"), false).unwrap();
        w.states.policy = super::super::staging::Policy {
            age: std::time::Duration::from_millis(50),
            cap: 1_000,
        };
        w.apply(&[state_batch("d1", 1)], None).unwrap();
        w.rolled_back();
        assert_eq!(w.states.len(), 0, "a rolled-back commit logged nothing");
        assert!(!w.due());
        w.apply(&[state_batch("d1", 1)], None).unwrap();
        w.committed();
        assert!(!w.due(), "not waited yet");
        std::thread::sleep(std::time::Duration::from_millis(60));
        // Due: the idle writer's tick folds it, with no new rows.
        assert!(w.due());
        w.apply(&[], None).unwrap();
        w.committed();
        assert_eq!(count(&w, "SELECT count(*) FROM state_log"), 0);
        assert_eq!(count(&w, "SELECT count(*) FROM msg_seen"), 1);
        assert!(!w.due());
        // Over the cap a commit folds at once, its own rows with the rest.
        w.states.policy.cap = 5;
        w.apply(&[state_batch("d1", 2)], None).unwrap();
        w.committed();
        assert_eq!(w.states.len(), 4);
        w.apply(&[state_batch("d2", 2)], None).unwrap();
        w.committed();
        assert_eq!((w.states.len(), count(&w, "SELECT count(*) FROM state_log")), (0, 0));
        assert_eq!(count(&w, "SELECT count(*) FROM msg_seen"), 3);
    }

    #[test]
    fn a_live_fold_writes_each_keys_newest_row_of_every_committed_commit_and_nothing_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, _) = open(&dir.path().join("s.db"), false).unwrap();
        let raw = |r: &SqliteReader, site: &str| r.latest_raw(site).unwrap().map(|(m, at)| (m, ms(at)));
        w.apply(&[state_batch("d1", 1), state_batch("d2", 1)], None).unwrap();
        w.committed();
        w.apply(&[state_batch("d1", 2)], None).unwrap();
        w.committed();
        // Rolled back: its rows are neither logged nor folded.
        w.apply(&[state_batch("d1", 9), state_batch("d3", 9)], None).unwrap();
        w.rolled_back();
        // The folding commit's own rows are the newest.
        assert!(w.settle_next());
        w.apply(&[state_batch("d2", 3)], None).unwrap();
        w.committed();
        let text = |sql: &str| -> String { w.c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count(&w, "SELECT count(*) FROM state_log"), 0);
        assert_eq!(text("SELECT json FROM rule_state WHERE key = 'd1/p_low'"), "{\"n\":2}");
        assert_eq!(text("SELECT json FROM rule_state WHERE key = 'd2/p_low'"), "{\"n\":3}");
        assert_eq!(text("SELECT json FROM device_state WHERE device = 'd1'"), "{\"seq\":2}");
        assert_eq!(count(&w, "SELECT count(*) FROM device_state WHERE device = 'd3'"), 0);
        assert_eq!(raw(&r, "site-d1"), Some(("raw 2".to_string(), 2_000)));
        assert_eq!(raw(&r, "site-d2"), Some(("raw 3".to_string(), 3_000)));
        assert_eq!(raw(&r, "site-d3"), None);
        let seen: Vec<(String, i64)> = {
            let mut st =
                w.c.prepare("SELECT device, seq FROM msg_seen ORDER BY device, seq")
                    .unwrap();
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let want: Vec<(String, i64)> = [("d1", 1), ("d1", 2), ("d2", 1), ("d2", 3)]
            .iter()
            .map(|(d, n)| (d.to_string(), *n))
            .collect();
        assert_eq!(seen, want);
        // Nothing is held for the next fold.
        w.apply(&[state_batch("d4", 1)], None).unwrap();
        w.committed();
        assert!(w.settle_next());
        w.apply(&[], None).unwrap();
        w.committed();
        assert_eq!(count(&w, "SELECT count(*) FROM rule_state"), 3);
        assert_eq!(count(&w, "SELECT count(*) FROM msg_seen"), 5);
    }

    #[test]
    fn a_commit_that_rolls_back_stages_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r, _) = open(&dir.path().join("s.db"), false).unwrap();
        let b = Box::new(Batch {
            readings: vec![reading("a", 1_000, 1.0)],
            ..Default::default()
        });
        w.apply(&[b], None).unwrap();
        // The writer was told it failed after all (the ack path never ran).
        w.rolled_back();
        assert_eq!(w.staging.len(), 0);
        assert_eq!(read(&r, "a"), (vec![], vec![]));
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
