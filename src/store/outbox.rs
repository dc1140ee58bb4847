//! The notification tables (incidents, outbox, ack tokens, the engine's
//! journal cursor): on SQLite in a file of their own beside the store's (see
//! [`connect`]), on PostgreSQL in the store's database. The notify engine
//! reaches them only through [`Outbox`]: all their SQL is here.
//!
//! The journal is the durable log the engine reads (a cursor of its own); every
//! message is written to `outbox` in the same transaction that moves the cursor,
//! before anything is sent. So a restart resumes exactly where it stopped:
//! journal rows not yet handled are handled, unsent messages are sent, sent
//! ones are not sent again.

use super::codec::sqlite_placeholders;
use super::sqlite::{from_ms, ms};
use super::StoreError;
use crate::alarm::Alarm;
use crate::model::Timestamp;
use crate::notify::message::{Kind, Message};
use crate::notify::plan::{Grant, JournalRow, Ledger};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct Incident {
    pub id: String,
    pub group_key: String,
    pub policy: String,
    pub site: String,
    pub opened_at: Timestamp,
    pub first_sent_at: Option<Timestamp>,
    pub flush_at: Option<Timestamp>,
    pub last_msg_at: Option<Timestamp>,
    pub level: usize,
    pub next_level_at: Option<Timestamp>,
    pub closed: bool,
    pub announced: usize,
    pub alarms: Vec<String>,
}

const INCIDENT_COLS: &str =
    "id, group_key, policy, site, opened_at, first_sent_at, flush_at, last_msg_at, level, next_level_at, closed, announced, alarms";

fn incident_row(r: &rusqlite::Row) -> rusqlite::Result<Incident> {
    let alarms: String = r.get(12)?;
    Ok(Incident {
        id: r.get(0)?,
        group_key: r.get(1)?,
        policy: r.get(2)?,
        site: r.get(3)?,
        opened_at: from_ms(r.get(4)?),
        first_sent_at: r.get::<_, Option<i64>>(5)?.map(from_ms),
        flush_at: r.get::<_, Option<i64>>(6)?.map(from_ms),
        last_msg_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
        level: r.get::<_, i64>(8)? as usize,
        next_level_at: r.get::<_, Option<i64>>(9)?.map(from_ms),
        closed: r.get::<_, i64>(10)? != 0,
        announced: r.get::<_, i64>(11)? as usize,
        alarms: serde_json::from_str(&alarms).unwrap_or_default(),
    })
}

/// Where the notification tables live beside an SQLite store:
/// `data/mizuban.db` → `data/mizuban-notify.db`.
pub fn notify_path(store: &std::path::Path) -> std::path::PathBuf {
    let stem = store
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match store.extension() {
        Some(ext) => format!("{stem}-notify.{}", ext.to_string_lossy()),
        None => format!("{stem}-notify"),
    };
    store.with_file_name(name)
}

/// A path as an SQLite URI filename (`%`, `?` and `#` escaped).
fn uri(path: &std::path::Path) -> String {
    let mut u = String::from("file:");
    for ch in path.to_string_lossy().chars() {
        match ch {
            '%' => u.push_str("%25"),
            '?' => u.push_str("%3f"),
            '#' => u.push_str("%23"),
            c => u.push(c),
        }
    }
    u
}

/// More than the distinct statements a connection runs, so none is parsed
/// again once it ran (an evicted one is prepared anew on its next use).
pub(super) const STATEMENTS: usize = 64;

/// The notification tables are in a file of their own beside the store's
/// ([`notify_path`]), with the store's durability (a message recorded as
/// sent stays recorded across a power loss, so it is not sent again). Their
/// own file because SQLite has one writer per file: sharing the store's, the
/// engine's every step waited for the store's writer, which commits
/// hundreds of times a second under load, in SQLite's busy back-off of up to
/// 100 ms a try (half a second from commit to webhook at 10,000 msg/s), and
/// the store's writer waited for the engine's. The store's file is attached
/// read-only as `store`, for the journal the engine follows and the alarms
/// it pages: a planning step reads them in the same snapshot as its own
/// tables and takes no lock on the store's file. The store's schema is
/// migrated first (by whichever opens it first).
pub(super) fn connect(path: &std::path::Path) -> Result<Connection, StoreError> {
    let sq = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |e| StoreError::Sqlite { path: p, source: e }
    };
    let schema = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |e| StoreError::Schema { path: p, source: e }
    };
    drop(super::sqlite::side_connection(path)?);
    let file = notify_path(path);
    let mut c = Connection::open(&file).map_err(sq(&file))?;
    c.busy_timeout(std::time::Duration::from_secs(10)).map_err(sq(&file))?;
    c.execute_batch(super::sqlite::PRAGMAS).map_err(sq(&file))?;
    c.execute("ATTACH DATABASE ?1 AS store", [format!("{}?mode=ro", uri(path))])
        .map_err(sq(path))?;
    super::schema::migrate_notify(&mut c).map_err(schema(&file))?;
    // Every statement of a planning step stays prepared (rusqlite keeps 16).
    c.set_prepared_statement_cache_capacity(STATEMENTS);
    Ok(c)
}

/// The rows a release from before the split kept in the store's file
/// (attached as `store`), copied in the transaction that creates the notify
/// file's tables (its first migration): nothing is sent twice or forgotten
/// across the upgrade.
pub(super) fn copy_legacy(tx: &rusqlite::Transaction) -> rusqlite::Result<()> {
    let has = |sql: &str| tx.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n > 0);
    if !has("SELECT count(*) FROM pragma_database_list WHERE name = 'store'")?
        || !has("SELECT count(*) FROM store.sqlite_master WHERE type = 'table' AND name = 'outbox'")?
    {
        return Ok(());
    }
    let outbox = format!("{OUTBOX_COLS}, seq");
    let mut copied = 0;
    for (table, cols) in [
        ("notify_meta", "key, value"),
        ("incidents", INCIDENT_COLS),
        ("outbox", outbox.as_str()),
        (
            "ack_tokens",
            "token_hash, code, incident_id, person, channel, expires_at, used_at",
        ),
    ] {
        copied += tx.execute(
            &format!("INSERT INTO main.{table} ({cols}) SELECT {cols} FROM store.{table}"),
            [],
        )?;
    }
    if copied > 0 {
        tracing::info!(rows = copied, "notification tables moved to their own file");
    }
    Ok(())
}

fn cursor(c: &Connection) -> rusqlite::Result<i64> {
    Ok(c.prepare_cached("SELECT value FROM notify_meta WHERE key = 'cursor'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn set_cursor(c: &Connection, seq: i64) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO notify_meta (key, value) VALUES ('cursor', ?1)")?
        .execute([seq.to_string()])?;
    Ok(())
}

fn save_incident(c: &Connection, i: &Incident) -> rusqlite::Result<()> {
    c.prepare_cached(&format!(
        "INSERT OR REPLACE INTO incidents ({INCIDENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
    ))?
    .execute(params![
            i.id,
            i.group_key,
            i.policy,
            i.site,
            ms(i.opened_at),
            i.first_sent_at.map(ms),
            i.flush_at.map(ms),
            i.last_msg_at.map(ms),
            i.level as i64,
            i.next_level_at.map(ms),
            i.closed as i64,
            i.announced as i64,
            serde_json::to_string(&i.alarms).unwrap_or_default()
        ],
    )?;
    Ok(())
}

fn open_incidents(c: &Connection) -> rusqlite::Result<Vec<Incident>> {
    let mut st = c.prepare_cached(&format!("SELECT {INCIDENT_COLS} FROM incidents WHERE closed = 0"))?;
    let rows = st.query_map([], incident_row)?;
    rows.collect()
}

fn incident(c: &Connection, id: &str) -> rusqlite::Result<Option<Incident>> {
    c.query_row(
        &format!("SELECT {INCIDENT_COLS} FROM incidents WHERE id = ?1"),
        [id],
        incident_row,
    )
    .optional()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRow {
    pub id: String,
    pub incident_id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub person: String,
    pub contact_idx: usize,
    pub channel: String,
    pub level: usize,
    pub created_at: Timestamp,
    pub state: String,
    pub attempts: u32,
    pub next_at: Timestamp,
    pub last_error: Option<String>,
    pub sent_at: Option<Timestamp>,
    pub alarm_ids: Vec<String>,
    /// What is sent (stored as its JSON).
    #[serde(skip)]
    pub body: Message,
}

impl OutboxRow {
    /// A new message as every one starts: pending, due now, never tried, its
    /// id, kind and recipient those of its body.
    pub fn due(now: Timestamp, body: Message) -> Self {
        OutboxRow {
            id: body.id.clone(),
            incident_id: String::new(),
            kind: body.kind,
            person: body.recipient.clone(),
            contact_idx: 0,
            channel: String::new(),
            level: 0,
            created_at: now,
            state: "pending".into(),
            attempts: 0,
            next_at: now,
            last_error: None,
            sent_at: None,
            alarm_ids: Vec::new(),
            body,
        }
    }
}

/// A stored column that does not parse as the type this build reads it as:
/// an error naming the column, not a default.
fn conversion(i: usize, what: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("outbox {what}: {e}").into())
}

const OUTBOX_COLS: &str = "id, incident_id, kind, person, contact_idx, channel, level, created_at, state, attempts, next_at, last_error, sent_at, alarm_ids, body";

fn outbox_row(r: &rusqlite::Row) -> rusqlite::Result<OutboxRow> {
    let ids: String = r.get(13)?;
    Ok(OutboxRow {
        id: r.get(0)?,
        incident_id: r.get(1)?,
        kind: {
            let k: String = r.get(2)?;
            Kind::parse(&k).ok_or_else(|| conversion(2, "kind", format!("unknown kind {k:?}")))?
        },
        person: r.get(3)?,
        contact_idx: r.get::<_, i64>(4)? as usize,
        channel: r.get(5)?,
        level: r.get::<_, i64>(6)? as usize,
        created_at: from_ms(r.get(7)?),
        state: r.get(8)?,
        attempts: r.get::<_, i64>(9)? as u32,
        next_at: from_ms(r.get(10)?),
        last_error: r.get(11)?,
        sent_at: r.get::<_, Option<i64>>(12)?.map(from_ms),
        alarm_ids: serde_json::from_str(&ids).unwrap_or_default(),
        body: serde_json::from_str(&r.get::<_, String>(14)?).map_err(|e| conversion(14, "body", e))?,
    })
}

fn insert_outbox(c: &Connection, o: &OutboxRow) -> rusqlite::Result<()> {
    // `seq` orders an incident's messages: the next after the incident's
    // last (an incident has one writer, so this needs no global counter).
    c.prepare_cached(&format!("INSERT OR IGNORE INTO outbox ({OUTBOX_COLS}, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                  (SELECT COALESCE(MAX(seq), 0) + 1 FROM outbox WHERE incident_id = ?2))"))?
    .execute(params![
            o.id,
            o.incident_id,
            o.kind.as_str(),
            o.person,
            o.contact_idx as i64,
            o.channel,
            o.level as i64,
            ms(o.created_at),
            o.state,
            o.attempts as i64,
            ms(o.next_at),
            o.last_error,
            o.sent_at.map(ms),
            serde_json::to_string(&o.alarm_ids).unwrap_or_default(),
            serde_json::to_string(&o.body).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        ],
    )?;
    Ok(())
}

/// Messages due now. A person hears about one incident in order: a message
/// waits while an earlier one to them about the same incident is still being
/// retried (no "cleared" before "raised").
fn due(c: &Connection, now: Timestamp, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {OUTBOX_COLS} FROM outbox WHERE state = 'pending' AND next_at <= ?1
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.person = outbox.person AND o.incident_id = outbox.incident_id
                         AND o.state = 'pending' AND o.seq < outbox.seq)
         ORDER BY created_at, incident_id, seq LIMIT ?2"
    ))?;
    let rows = st.query_map(params![ms(now), limit as i64], outbox_row)?;
    rows.collect()
}

fn outbox_where(c: &Connection, clause: &str, arg: &str) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {OUTBOX_COLS} FROM outbox WHERE {clause} ORDER BY created_at, incident_id, seq"
    ))?;
    let rows = st.query_map([arg], outbox_row)?;
    rows.collect()
}

/// The newest `limit` messages, of one state or all.
fn recent(c: &Connection, state: Option<&str>, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {OUTBOX_COLS} FROM outbox WHERE ?1 IS NULL OR state = ?1 ORDER BY created_at DESC, incident_id DESC, seq DESC LIMIT ?2"
    ))?;
    let rows = st.query_map(params![state, limit as i64], outbox_row)?;
    rows.collect()
}

/// `(person, sent_at)` of every message sent in `[from, to)`.
fn sent_between(c: &Connection, from: Timestamp, to: Timestamp) -> rusqlite::Result<Vec<(String, Timestamp)>> {
    let mut st = c.prepare_cached(
        "SELECT person, sent_at FROM outbox WHERE state = 'sent' AND sent_at >= ?1 AND sent_at < ?2 ORDER BY sent_at",
    )?;
    let rows = st.query_map(params![ms(from), ms(to)], |r| Ok((r.get(0)?, from_ms(r.get(1)?))))?;
    rows.collect()
}

/// Every alarm a delivered message was about.
fn sent_alarm_ids(c: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut st = c.prepare("SELECT alarm_ids FROM outbox WHERE state = 'sent'")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = std::collections::HashSet::new();
    for r in rows {
        out.extend(serde_json::from_str::<Vec<String>>(&r?).unwrap_or_default());
    }
    Ok(out)
}

/// Who has been told about an incident so far (any message but a summary).
fn notified(c: &Connection, incident: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = c.prepare_cached(
        "SELECT person, MIN(created_at) m FROM outbox WHERE incident_id = ?1 AND kind != 'summary' GROUP BY person ORDER BY m",
    )?;
    let rows = st.query_map([incident], |r| r.get(0))?;
    rows.collect()
}

/// A delivered message, as recorded (`$1` its id, `$2` when).
pub(super) const SET_SENT: &str =
    "UPDATE outbox SET state = 'sent', sent_at = $2, attempts = attempts + 1, last_error = NULL";

fn set_sent(c: &Connection, ids: &[String], now: Timestamp) -> rusqlite::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut st = c.prepare_cached(&sqlite_placeholders(&format!("{SET_SENT} WHERE id = $1")))?;
    for id in ids {
        st.execute(params![id, ms(now)])?;
    }
    Ok(())
}

/// When each message counted against a person's rate limit since `since`
/// was created.
fn sent_since(c: &Connection, person: &str, since: Timestamp) -> rusqlite::Result<Vec<Timestamp>> {
    let mut st = c.prepare_cached(
        "SELECT created_at FROM outbox WHERE person = ?1 AND created_at > ?2 AND state NOT IN ('held', 'summarized') AND id NOT LIKE '%-c_'",
    )?;
    let rows = st.query_map(params![person, ms(since)], |r| r.get::<_, i64>(0).map(from_ms))?;
    rows.collect()
}

/// Whether a planning step has anything to do (journal rows past the cursor,
/// a group or escalation due, held messages), and how many messages wait to be
/// sent. A read only: no write lock.
///
/// Statements of every step are prepared once (`prepare_cached`): parsing
/// this one was a sixth of the engine's time at 200 alerts a second.
fn work_due(c: &Connection, now: Timestamp) -> rusqlite::Result<(bool, i64)> {
    c.prepare_cached(
        "SELECT
           (SELECT COALESCE(MAX(seq), 0) FROM store.journal)
             > COALESCE((SELECT CAST(value AS INTEGER) FROM notify_meta WHERE key = 'cursor'), 0)
           OR EXISTS (SELECT 1 FROM incidents WHERE closed = 0 AND (flush_at <= ?1 OR next_level_at <= ?1))
           OR EXISTS (SELECT 1 FROM outbox WHERE state = 'held'),
         (SELECT COUNT(*) FROM outbox WHERE state = 'pending')",
    )?
    .query_row([ms(now)], |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)))
}

fn pending_count(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")?
        .query_row([], |r| r.get(0))
}

/// Journal rows past the engine's cursor, oldest first, with their `seq`.
fn journal_after(c: &Connection, cursor: i64, limit: usize) -> rusqlite::Result<Vec<(i64, JournalRow)>> {
    let mut st = c.prepare_cached(
        "SELECT seq, alarm_id, action, notify, to_state = 'normal' FROM store.journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let r = st.query_map(params![cursor, limit as i64], |r| {
        Ok((
            r.get(0)?,
            JournalRow {
                alarm_id: r.get(1)?,
                action: super::sqlite::action(r, 2)?,
                notify: r.get::<_, i64>(3)? != 0,
                closes: r.get::<_, i64>(4)? != 0,
            },
        ))
    })?;
    r.collect()
}

fn alarm(c: &Connection, id: &str) -> rusqlite::Result<Option<Alarm>> {
    let j: Option<String> = c
        .prepare_cached("SELECT json FROM store.alarms WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(j.and_then(|j| serde_json::from_str(&j).ok()))
}

fn q(e: rusqlite::Error) -> StoreError {
    StoreError::Query(e.to_string())
}

/// The planner's ledger in the outbox tables, inside [`Outbox::plan`]'s
/// transaction.
pub struct SqlLedger<'c>(&'c Connection);

impl Ledger for SqlLedger<'_> {
    type Error = StoreError;

    fn alarm(&self, id: &str) -> Result<Option<Alarm>, StoreError> {
        alarm(self.0, id).map_err(q)
    }
    fn save_incident(&mut self, i: &Incident) -> Result<(), StoreError> {
        save_incident(self.0, i).map_err(q)
    }
    fn notified(&self, incident: &str) -> Result<Vec<String>, StoreError> {
        notified(self.0, incident).map_err(q)
    }
    fn last_contact(&self, incident: &str, person: &str) -> Result<Option<usize>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT contact_idx FROM outbox WHERE incident_id = ?1 AND person = ?2 AND state = 'sent' ORDER BY seq DESC LIMIT 1",
            )
            .map_err(q)?
            .query_row(params![incident, person], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(q)?
            .map(|i| i as usize))
    }
    fn counted_times(&self, person: &str, since: Timestamp) -> Result<Vec<Timestamp>, StoreError> {
        sent_since(self.0, person, since).map_err(q)
    }
    fn grant(&mut self, g: &Grant) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO ack_tokens (token_hash, code, incident_id, person, channel, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut st| st.execute(params![g.token_hash, g.code, g.incident, g.person, g.channel, ms(g.expires)]))
            .map_err(q)?;
        Ok(())
    }
    fn insert(&mut self, row: &OutboxRow, _lead: Option<&str>) -> Result<(), StoreError> {
        insert_outbox(self.0, row).map_err(q)
    }
    fn held(&self) -> Result<Vec<OutboxRow>, StoreError> {
        outbox_where(self.0, "state = ?1", "held").map_err(q)
    }
    fn summarized(&mut self, id: &str) -> Result<(), StoreError> {
        self.0
            .execute("UPDATE outbox SET state = 'summarized' WHERE id = ?1", [id])
            .map_err(q)?;
        Ok(())
    }
}

/// An ack link or code as stored.
pub struct AckToken {
    pub incident: String,
    pub person: String,
    /// The channel it was sent through (`email`, `webhook`).
    pub channel: String,
    pub expires: Timestamp,
    pub used: bool,
}

/// How an ack token is looked up: the hash of a link's token, or a code.
pub enum TokenKey<'a> {
    Hash(&'a str),
    Code(&'a str),
}

impl<'a> TokenKey<'a> {
    /// The `ack_tokens` column it is looked up by, and the value.
    pub(super) fn column(&self) -> (&'static str, &'a str) {
        match *self {
            TokenKey::Hash(h) => ("token_hash", h),
            TokenKey::Code(code) => ("code", code),
        }
    }
}

/// The notification tables, on their own connection to either store.
pub struct Outbox {
    db: Db,
}

enum Db {
    Sqlite(Mutex<Connection>),
    Postgres(super::outbox_pg::PgOutbox),
}

impl Outbox {
    /// Opens (and creates) the tables in the SQLite store's file.
    pub fn open(path: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_at(&super::Location::Sqlite(path.to_path_buf()))
    }

    /// Opens the tables in the store at `at` (migrated by whichever opens
    /// it first).
    pub fn open_at(at: &super::Location) -> Result<Self, StoreError> {
        let db = match at {
            super::Location::Sqlite(path) => Db::Sqlite(Mutex::new(connect(path)?)),
            super::Location::Postgres(url) => Db::Postgres(super::outbox_pg::PgOutbox::open(url)?),
        };
        Ok(Self { db })
    }

    /// One planning step in one transaction: `step` gets the ledger, the
    /// journal rows past the engine's cursor (oldest first) and the open
    /// incidents; the cursor moves past those rows when it returns. Returns
    /// how many messages wait to be sent. Most steps have nothing to do:
    /// that is found with a read, so the write lock is taken only for work.
    /// `sent` are messages the peers accepted since the last step: recorded
    /// first, in the same transaction (one sync for both, and what they
    /// mean to the step, a person's next message on an incident, is seen).
    pub fn plan(
        &self,
        now: Timestamp,
        sent: &[String],
        step: impl FnOnce(&mut dyn Ledger<Error = StoreError>, &[JournalRow], &mut Vec<Incident>) -> Result<(), StoreError>
            + Send,
    ) -> Result<i64, StoreError> {
        let c = match &self.db {
            Db::Sqlite(c) => c,
            Db::Postgres(p) => return p.plan(now, sent, step),
        };
        let mut c = lock(c);
        let (work, pending) = work_due(&c, now).map_err(q)?;
        if !work && sent.is_empty() {
            return Ok(pending);
        }
        // IMMEDIATE: take the write lock up front. A deferred transaction that
        // reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT) whenever
        // the store's writer committed in between, instead of waiting its turn.
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(q)?;
        set_sent(&tx, sent, now).map_err(q)?;
        let mut open = open_incidents(&tx).map_err(q)?;
        let rows = journal_after(&tx, cursor(&tx).map_err(q)?, 1000).map_err(q)?;
        let journal: Vec<JournalRow> = rows.iter().map(|(_, r)| r.clone()).collect();
        step(&mut SqlLedger(&tx), &journal, &mut open)?;
        if let Some((last, _)) = rows.last() {
            set_cursor(&tx, *last).map_err(q)?;
        }
        let pending = pending_count(&tx).map_err(q)?;
        tx.commit().map_err(q)?;
        Ok(pending)
    }

    /// Messages due now (see `due`).
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => due(&lock(c), now, limit).map_err(q),
            Db::Postgres(p) => p.due(now, limit),
        }
    }

    /// The peer accepted the message.
    pub fn mark_sent(&self, id: &str, now: Timestamp) -> Result<(), StoreError> {
        self.mark_sent_all(&[id.to_string()], now)
    }

    /// The peers accepted these messages: recorded in one transaction (one
    /// sync for a whole round of deliveries).
    pub fn mark_sent_all(&self, ids: &[String], now: Timestamp) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(c) => {
                let mut c = lock(c);
                let tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(q)?;
                set_sent(&tx, ids, now).map_err(q)?;
                tx.commit().map_err(q)
            }
            // All ids in one statement.
            Db::Postgres(p) => p.execute(&format!("{SET_SENT} WHERE id = ANY($1)"), &[&ids, &ms(now)]),
        }
    }

    /// Not delivered; tried again at `next_at`.
    pub fn retry_at(&self, id: &str, attempts: u32, err: &str, next_at: Timestamp) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET attempts = $2, last_error = $3, next_at = $4 WHERE id = $1";
        match &self.db {
            Db::Sqlite(c) => lock(c)
                .execute(&sqlite_placeholders(SQL), params![id, attempts, err, ms(next_at)])
                .map(|_| ())
                .map_err(q),
            Db::Postgres(p) => p.execute(SQL, &[&id, &(attempts as i64), &err, &ms(next_at)]),
        }
    }

    /// Not delivered, and no more tries by this contact method.
    pub fn mark_failed(&self, id: &str, attempts: u32, err: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE outbox SET state = 'failed', attempts = $2, last_error = $3 WHERE id = $1";
        match &self.db {
            Db::Sqlite(c) => lock(c)
                .execute(&sqlite_placeholders(SQL), params![id, attempts, err])
                .map(|_| ())
                .map_err(q),
            Db::Postgres(p) => p.execute(SQL, &[&id, &(attempts as i64), &err]),
        }
    }

    /// A new message (kept as it is if its id exists: ids are idempotency keys).
    pub fn insert(&self, row: &OutboxRow) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(c) => insert_outbox(&lock(c), row).map_err(q),
            Db::Postgres(p) => p.insert(row),
        }
    }

    pub fn incident(&self, id: &str) -> Result<Option<Incident>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => incident(&lock(c), id).map_err(q),
            Db::Postgres(p) => p.incident(id),
        }
    }

    /// An ack token, with the alarms of its incident as they are now.
    pub fn ack_token(&self, key: TokenKey<'_>) -> Result<Option<(AckToken, Vec<Alarm>)>, StoreError> {
        let c = match &self.db {
            Db::Sqlite(c) => lock(c),
            Db::Postgres(p) => return p.ack_token(key),
        };
        let (column, value) = key.column();
        let row: Option<(String, String, String, i64, Option<i64>)> = c
            .query_row(
                &format!(
                    "SELECT incident_id, person, channel, expires_at, used_at FROM ack_tokens WHERE {column} = ?1"
                ),
                [value],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(q)?;
        let Some((incident_id, person, channel, expires, used)) = row else {
            return Ok(None);
        };
        let Some(inc) = incident(&c, &incident_id).map_err(q)? else {
            return Ok(None);
        };
        let mut members = Vec::new();
        for id in &inc.alarms {
            members.extend(alarm(&c, id).map_err(q)?);
        }
        Ok(Some((
            AckToken {
                incident: incident_id,
                person,
                channel,
                expires: from_ms(expires),
                used: used.is_some(),
            },
            members,
        )))
    }

    /// The person's links and codes for the incident are spent.
    pub fn tokens_used(&self, incident: &str, person: &str, now: Timestamp) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE ack_tokens SET used_at = $3 WHERE incident_id = $1 AND person = $2";
        match &self.db {
            Db::Sqlite(c) => lock(c)
                .execute(&sqlite_placeholders(SQL), params![incident, person, ms(now)])
                .map(|_| ())
                .map_err(q),
            Db::Postgres(p) => p.execute(SQL, &[&incident, &person, &ms(now)]),
        }
    }

    /// Every message about an alarm, oldest first.
    pub fn for_alarm(&self, alarm_id: &str) -> Result<Vec<OutboxRow>, StoreError> {
        let like = format!("%\"{}\"%", alarm_id.replace('"', ""));
        match &self.db {
            Db::Sqlite(c) => outbox_where(&lock(c), "alarm_ids LIKE ?1", &like).map_err(q),
            Db::Postgres(p) => p.for_alarm(&like),
        }
    }

    /// `(person, sent_at)` of every message sent in `[from, to)`.
    pub fn sent_between(&self, from: Timestamp, to: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => sent_between(&lock(c), from, to).map_err(q),
            Db::Postgres(p) => p.sent_between(from, to),
        }
    }

    /// The newest `limit` messages, of one state or all.
    pub fn recent(&self, state: Option<&str>, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => recent(&lock(c), state, limit).map_err(q),
            Db::Postgres(p) => p.recent(state, limit),
        }
    }

    /// Every alarm a delivered message was about.
    pub fn sent_alarm_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        match &self.db {
            Db::Sqlite(c) => sent_alarm_ids(&lock(c)).map_err(q),
            Db::Postgres(p) => p.sent_alarm_ids(),
        }
    }
}

fn lock(c: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason the tables have their own file: while the notify engine
    /// holds its write lock, the store's writer commits without waiting, and
    /// the other way round; and the engine still reads the store's journal.
    #[test]
    fn the_notify_file_and_the_store_never_wait_for_each_others_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut notify = connect(&path).unwrap();
        assert!(notify_path(&path).exists());
        assert_eq!(notify_path(&path).file_name().unwrap(), "store-notify.db");
        let store = Connection::open(&path).unwrap();
        // No waiting at all: a lock the other holds fails at once.
        store.busy_timeout(std::time::Duration::ZERO).unwrap();
        notify.busy_timeout(std::time::Duration::ZERO).unwrap();

        let tx = notify
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        set_cursor(&tx, 7).unwrap();
        store
            .execute_batch(
                "BEGIN IMMEDIATE;
                 INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, notify, late, priority)
                 VALUES (1, 'al-1', 'S', 'S.p', 'pressure_low', 'raise', 'normal', 'unack_active', 'rule', 1, 0, 'high');
                 COMMIT;",
            )
            .expect("the store commits while the notify engine holds its lock");
        tx.commit().unwrap();

        store
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO meta (key, value) VALUES ('k', 'v');")
            .unwrap();
        let tx = notify
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("the notify engine writes while the store's writer holds its lock");
        let rows = journal_after(&tx, 0, 10).unwrap();
        assert_eq!(
            rows.len(),
            1,
            "the committed journal row is read through the attachment"
        );
        assert_eq!(cursor(&tx).unwrap(), 7);
        tx.commit().unwrap();
        store.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_store_path_with_uri_characters_still_attaches() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a?b#c%d");
        std::fs::create_dir_all(&sub).unwrap();
        let path = sub.join("m.db");
        let c = connect(&path).unwrap();
        assert_eq!(journal_after(&c, 0, 1).unwrap().len(), 0);
        assert!(sub.join("m-notify.db").exists());
    }
}
