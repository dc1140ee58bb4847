//! The store on PostgreSQL (`[store] kind = "postgres"`): the database a
//! utility deploys, backs up and replicates. The same tables as SQLite's,
//! written by the same writer loop ([`super::writer`]): a group of batches is
//! one transaction of set-based statements (each table's rows as arrays
//! through `unnest`, so a commit costs a round trip per table, not per row).
//!
//! Durability: the writer's session runs with `synchronous_commit = on`, so a
//! commit returns only once its WAL record is flushed on the server; the
//! PUBACK that follows it promises the reading survives a crash of the
//! server, not only of mizuban (with a synchronous standby configured on the
//! server, the standby's flush too).
//!
//! Several writers (later, nodes that each own a share of the sites) can
//! share one database: every upsert is keyed by site-owned keys (points,
//! alarms, rule and device state), point ids are taken with
//! `ON CONFLICT DO NOTHING`, and journal and input ids are identities.
//!
//! Schema versions are refinery's, from `migrations/postgres/`; reads use a
//! small connection pool (r2d2), so history queries do not queue behind one
//! connection.

use super::handle::{InputFilter, JournalFilter, JournalRow, Reader, ReadingRow, Restored, StoreError};
use super::rollup::{hours_of, Rollup, MINUTE_MS};
use super::writer::{Backend, Failure, Rejected, SmallWrite};
use super::{Batch, Bucket, RecordedInput, Resolution, Retention};
use crate::alarm::{Action, Alarm};
use crate::model::{PointId, Quality, Timestamp};
use chrono::Utc;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls, Transaction};
use r2d2_postgres::PostgresConnectionManager;
use rustc_hash::{FxHashMap, FxHashSet};

mod embedded {
    refinery::embed_migrations!("src/store/migrations/postgres");
}

/// Reader connections kept.
const READ_POOL: u32 = 4;

/// `url` with its password (if any) replaced, for logs and errors.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{name}:***@{host}")
        }
        _ => url.to_string(),
    }
}

use super::codec::{bucket, from_ms, int_q, ms, q_int, SEEN_RETENTION_MS};

/// The writer's session: durable commits (see the module's opening).
const SESSION: &str = "SET synchronous_commit = on";

pub(super) fn reachable(url: &str) -> Result<(), String> {
    let mut config: postgres::Config = url.parse().map_err(|e| format!("{}: {e}", redacted(url)))?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    off_runtime(|| config.connect(NoTls).map(|_| ())).map_err(|e| format!("{}: {}", redacted(url), PgError::Db(e)))
}

fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(SESSION)?;
    Ok(c)
}

/// Connects, migrates the schema to this build's, and returns the writer,
/// the readers' pool and what the service needs back after a restart.
pub(super) fn open(url: &str, feed: bool) -> Result<(PgWriter, PgReader, Restored), StoreError> {
    let place = redacted(url);
    let pg = |e| StoreError::Postgres {
        place: place.clone(),
        source: e,
    };
    let mut c = connect(url).map_err(pg)?;
    embedded::migrations::runner()
        .run(&mut c)
        .map_err(|e| StoreError::Query(format!("store {place}: schema migration: {e}")))?;
    let restored = restore(&mut c).map_err(pg)?;
    let config: postgres::Config = url.parse().map_err(pg)?;
    let pool = r2d2::Pool::builder()
        .max_size(READ_POOL)
        .min_idle(Some(1))
        .connection_timeout(std::time::Duration::from_secs(10))
        .build(PostgresConnectionManager::new(config, NoTls))
        .map_err(|e| StoreError::Query(format!("store {place}: read pool: {e}")))?;
    let writer = PgWriter {
        url: url.to_string(),
        feed,
        place: place.clone(),
        c: Some(c),
        ids: FxHashMap::default(),
        added: Vec::new(),
    };
    Ok((
        writer,
        PgReader {
            pool: Some(pool),
            place,
        },
        restored,
    ))
}

fn restore(c: &mut Client) -> Result<Restored, postgres::Error> {
    let mut r = Restored::default();
    // Concurrent first starts of several nodes agree on one key.
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('session_key', $1) ON CONFLICT (key) DO NOTHING",
        &[&crate::model::secret::random_hex(32)],
    )?;
    let key: String = c
        .query_one("SELECT value FROM meta WHERE key = 'session_key'", &[])?
        .get(0);
    r.session_key = key.into_bytes();
    for row in c.query("SELECT json FROM alarms WHERE open", &[])? {
        match serde_json::from_str::<Alarm>(row.get(0)) {
            Ok(a) => r.open_alarms.push(a),
            Err(e) => tracing::error!(error = %e, "stored alarm does not parse; skipped"),
        }
    }
    for row in c.query("SELECT key, json FROM rule_state", &[])? {
        r.rule_states.insert(row.get(0), row.get(1));
    }
    for row in c.query("SELECT device, json FROM device_state", &[])? {
        r.device_states.insert(row.get(0), row.get(1));
    }
    let now = Utc::now().timestamp_millis();
    c.execute("DELETE FROM revoked_sessions WHERE expires < $1", &[&now])?;
    for row in c.query("SELECT mac, expires FROM revoked_sessions", &[])? {
        r.revoked_sessions.push((row.get(0), from_ms(row.get(1))));
    }
    c.execute("DELETE FROM msg_seen WHERE arrived < $1", &[&(now - SEEN_RETENTION_MS)])?;
    for row in c.query("SELECT device, boot, seq FROM msg_seen", &[])? {
        r.seen
            .push((row.get(0), row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64));
    }
    Ok(r)
}

/// A failed write: the server's error, or no connection to it.
#[derive(Debug)]
pub(super) enum PgError {
    Db(postgres::Error),
    Disconnected(String),
    /// A value that could not be encoded for the database.
    Encode(String),
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgError::Db(e) => f.write_str(&describe(e)),
            PgError::Disconnected(e) => write!(f, "not connected: {e}"),
            PgError::Encode(e) => write!(f, "cannot encode {e}"),
        }
    }
}

/// A server error as its SQLSTATE and message (the driver's own Display
/// says only "db error").
pub(super) fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl Failure for PgError {
    /// Data exceptions (class 22: a NUL in text, a value out of range),
    /// integrity violations (23) and limits (54) fail the same way every
    /// time; a lost connection, a full disk, a serialization failure or a
    /// server restarting (08, 53, 40, 57) pass.
    fn permanent(&self) -> bool {
        match self {
            PgError::Db(e) => e.code().is_some_and(|c| matches!(&c.code()[..2], "22" | "23" | "54")),
            PgError::Disconnected(_) | PgError::Encode(_) => false,
        }
    }
}

/// The PostgreSQL side of the writer: its connection (re-made when lost)
/// and the point ids that follow its transactions.
pub(super) struct PgWriter {
    url: String,
    /// Append each commit's export record (a sink is configured).
    feed: bool,
    place: String,
    c: Option<Client>,
    ids: FxHashMap<Box<str>, i64>,
    /// Ids first seen in the open transaction: forgotten if it rolls back.
    added: Vec<Box<str>>,
}

impl PgWriter {
    /// A setting of the writer's own session, as the server reports it.
    #[cfg(test)]
    pub(super) fn setting(&mut self, name: &str) -> String {
        let c = self.c.as_mut().expect("connected");
        c.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
    }

    fn client(&mut self) -> Result<&mut Client, PgError> {
        self.c
            .as_mut()
            .ok_or_else(|| PgError::Disconnected(format!("{} is unreachable", self.place)))
    }
}

/// A journal row as written: an alarm transition or a device command.
struct JournalIn<'a> {
    at: i64,
    alarm_id: &'a str,
    site: &'a str,
    source: &'a str,
    condition: &'a str,
    action: &'static str,
    from: &'a str,
    to: &'a str,
    who: &'a str,
    why: Option<&'a str>,
    event_time: Option<i64>,
    notify: bool,
    late: bool,
    priority: &'a str,
}

/// A group's rows per table, in the order the batches carried them, with
/// upserts of one key reduced to the last (one statement cannot touch a row
/// twice).
#[derive(Default)]
struct Rows<'a> {
    readings: Vec<(i64, &'a crate::model::Reading)>,
    alarms: Vec<(&'a Alarm, i64, String)>,
    journal: Vec<JournalIn<'a>>,
    rule_states: Vec<(&'a str, &'a str)>,
    device_states: Vec<(&'a str, &'a str)>,
    seen: Vec<(&'a str, i64, i64, i64)>,
    inputs: Vec<(i64, Option<&'a str>, i16, Option<&'a str>, Vec<u8>)>,
    raw: Vec<(&'a str, &'a str, i64)>,
}

impl<'a> Rows<'a> {
    fn of(batches: &'a [Box<Batch>], ids: &FxHashMap<Box<str>, i64>) -> Result<Self, PgError> {
        let mut rows = Rows::default();
        let (mut alarms, mut rule_states, mut device_states, mut raw) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for b in batches {
            for r in &b.readings {
                rows.readings.push((ids[r.point.as_str()], r));
            }
            for t in &b.transitions {
                let a = &t.alarm;
                let json = serde_json::to_string(a).map_err(|e| PgError::Encode(format!("alarm {}: {e}", a.id)))?;
                alarms.push((a, ms(t.at), json));
                rows.journal.push(JournalIn {
                    at: ms(t.at),
                    alarm_id: &a.id,
                    site: a.site.as_str(),
                    source: &a.source,
                    condition: &a.condition,
                    action: t.action.as_str(),
                    from: t.from.as_str(),
                    to: t.to.as_str(),
                    who: &t.who,
                    why: t.why.as_deref(),
                    event_time: t.event_time.map(ms),
                    notify: t.notify,
                    late: a.late,
                    priority: a.priority.as_str(),
                });
            }
            for (k, v) in &b.rule_states {
                rule_states.push((k.as_str(), v.as_str()));
            }
            for (k, v) in &b.device_states {
                device_states.push((k.as_str(), v.as_str()));
            }
            for (d, boot, seq, arrived) in &b.seen {
                rows.seen.push((d.as_str(), *boot as i64, *seq as i64, ms(*arrived)));
            }
            for c in &b.commands {
                rows.journal.push(JournalIn {
                    at: ms(c.at),
                    alarm_id: "",
                    site: &c.site,
                    source: &c.device,
                    condition: &c.command,
                    action: Action::Command.as_str(),
                    from: if c.value { "true" } else { "false" },
                    to: &c.result,
                    who: &c.who,
                    why: Some(&c.why),
                    event_time: None,
                    notify: false,
                    late: false,
                    priority: "",
                });
            }
            for i in &b.inputs {
                let (source, topic, body) = super::codec::input_columns(&i.body);
                rows.inputs
                    .push((ms(i.arrived), i.site.as_deref(), source, topic, body.into_owned()));
            }
            for (site, r, arrived) in &b.raw {
                raw.push((site.as_str(), r.as_str(), ms(*arrived)));
            }
        }
        // In key order, as on SQLite: neighbouring rows share index pages.
        rows.readings.sort_unstable_by_key(|(p, r)| (*p, r.t));
        use super::codec::last_by_key;
        rows.alarms = last_by_key(alarms, |(a, _, _)| a.id.clone());
        rows.rule_states = last_by_key(rule_states, |(k, _)| *k);
        rows.device_states = last_by_key(device_states, |(k, _)| *k);
        rows.raw = last_by_key(raw, |(s, _, _)| *s);
        Ok(rows)
    }
}

/// Runs `write` on all of `rows`; with `rejects`, on each row in a savepoint
/// of its own, so a row that fails for a permanent reason is recorded and
/// skipped while the rest commits.
fn each<T, R>(
    tx: &mut Transaction,
    rows: &[T],
    table: &'static str,
    key: impl Fn(&T) -> String,
    rejects: &mut Option<&mut Vec<Rejected>>,
    write: impl Fn(&mut Transaction, &[T]) -> Result<Vec<R>, postgres::Error>,
) -> Result<Vec<R>, PgError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let Some(list) = rejects.as_deref_mut() else {
        return Ok(write(tx, rows)?);
    };
    let mut out = Vec::new();
    for row in rows {
        let mut sp = tx.savepoint("row")?;
        match write(&mut sp, std::slice::from_ref(row)) {
            Ok(r) => {
                sp.commit()?;
                out.extend(r);
            }
            Err(e) => {
                let e = PgError::Db(e);
                if !e.permanent() {
                    return Err(e);
                }
                drop(sp); // rolls back to the savepoint
                list.push(Rejected {
                    table,
                    key: key(row),
                    error: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

fn insert_readings(
    tx: &mut Transaction,
    rows: &[(i64, &crate::model::Reading)],
) -> Result<Vec<(i64, i64)>, postgres::Error> {
    let point: Vec<i64> = rows.iter().map(|(p, _)| *p).collect();
    let t: Vec<i64> = rows.iter().map(|(_, r)| ms(r.t)).collect();
    let value: Vec<Option<f64>> = rows.iter().map(|(_, r)| r.value).collect();
    let quality: Vec<i16> = rows.iter().map(|(_, r)| q_int(r.quality)).collect();
    let arrived: Vec<i64> = rows.iter().map(|(_, r)| ms(r.arrived)).collect();
    let added = tx.query(
        "INSERT INTO readings (point, t, value, quality, arrived)
         SELECT * FROM unnest($1::int8[], $2::int8[], $3::float8[], $4::int2[], $5::int8[])
         ON CONFLICT (point, t) DO NOTHING RETURNING point, t",
        &[&point, &t, &value, &quality, &arrived],
    )?;
    Ok(added.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn upsert_alarms(tx: &mut Transaction, rows: &[(&Alarm, i64, String)]) -> Result<Vec<()>, postgres::Error> {
    let id: Vec<&str> = rows.iter().map(|(a, _, _)| a.id.as_str()).collect();
    let site: Vec<&str> = rows.iter().map(|(a, _, _)| a.site.as_str()).collect();
    let source: Vec<&str> = rows.iter().map(|(a, _, _)| a.source.as_str()).collect();
    let condition: Vec<&str> = rows.iter().map(|(a, _, _)| a.condition.as_str()).collect();
    let open: Vec<bool> = rows.iter().map(|(a, _, _)| !a.is_closed()).collect();
    let updated: Vec<i64> = rows.iter().map(|(_, at, _)| *at).collect();
    let json: Vec<&str> = rows.iter().map(|(_, _, j)| j.as_str()).collect();
    tx.execute(
        "INSERT INTO alarms (id, site, source, condition, open, updated, json)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::int8[], $7::text[])
         ON CONFLICT (id) DO UPDATE SET open = excluded.open, updated = excluded.updated, json = excluded.json",
        &[&id, &site, &source, &condition, &open, &updated, &json],
    )?;
    Ok(Vec::new())
}

fn insert_journal(tx: &mut Transaction, rows: &[JournalIn]) -> Result<Vec<()>, postgres::Error> {
    let at: Vec<i64> = rows.iter().map(|j| j.at).collect();
    let alarm_id: Vec<&str> = rows.iter().map(|j| j.alarm_id).collect();
    let site: Vec<&str> = rows.iter().map(|j| j.site).collect();
    let source: Vec<&str> = rows.iter().map(|j| j.source).collect();
    let condition: Vec<&str> = rows.iter().map(|j| j.condition).collect();
    let action: Vec<&str> = rows.iter().map(|j| j.action).collect();
    let from: Vec<&str> = rows.iter().map(|j| j.from).collect();
    let to: Vec<&str> = rows.iter().map(|j| j.to).collect();
    let who: Vec<&str> = rows.iter().map(|j| j.who).collect();
    let why: Vec<Option<&str>> = rows.iter().map(|j| j.why).collect();
    let event_time: Vec<Option<i64>> = rows.iter().map(|j| j.event_time).collect();
    let notify: Vec<bool> = rows.iter().map(|j| j.notify).collect();
    let late: Vec<bool> = rows.iter().map(|j| j.late).collect();
    let priority: Vec<&str> = rows.iter().map(|j| j.priority).collect();
    // In the batches' order: the journal's seq is the order of events.
    tx.execute(
        "INSERT INTO journal (at, alarm_id, site, source, condition, action, from_state, to_state, who, why,
                              event_time, notify, late, priority)
         SELECT at, alarm_id, site, source, condition, action, from_state, to_state, who, why,
                event_time, notify, late, priority
         FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::int8[], $12::bool[], $13::bool[], $14::text[])
              WITH ORDINALITY AS j(at, alarm_id, site, source, condition, action, from_state, to_state, who,
                                   why, event_time, notify, late, priority, ord)
         ORDER BY ord",
        &[
            &at,
            &alarm_id,
            &site,
            &source,
            &condition,
            &action,
            &from,
            &to,
            &who,
            &why,
            &event_time,
            &notify,
            &late,
            &priority,
        ],
    )?;
    Ok(Vec::new())
}

fn upsert_json(
    tx: &mut Transaction,
    table: &str,
    key: &str,
    rows: &[(&str, &str)],
) -> Result<Vec<()>, postgres::Error> {
    let k: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
    let v: Vec<&str> = rows.iter().map(|(_, v)| *v).collect();
    tx.execute(
        &format!(
            "INSERT INTO {table} ({key}, json) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT ({key}) DO UPDATE SET json = excluded.json"
        ),
        &[&k, &v],
    )?;
    Ok(Vec::new())
}

fn insert_seen(tx: &mut Transaction, rows: &[(&str, i64, i64, i64)]) -> Result<Vec<()>, postgres::Error> {
    let device: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let boot: Vec<i64> = rows.iter().map(|r| r.1).collect();
    let seq: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let arrived: Vec<i64> = rows.iter().map(|r| r.3).collect();
    tx.execute(
        "INSERT INTO msg_seen (device, boot, seq, arrived)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) ON CONFLICT DO NOTHING",
        &[&device, &boot, &seq, &arrived],
    )?;
    Ok(Vec::new())
}

#[allow(clippy::type_complexity)]
fn insert_inputs(
    tx: &mut Transaction,
    rows: &[(i64, Option<&str>, i16, Option<&str>, Vec<u8>)],
) -> Result<Vec<()>, postgres::Error> {
    let arrived: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let site: Vec<Option<&str>> = rows.iter().map(|r| r.1).collect();
    let source: Vec<i16> = rows.iter().map(|r| r.2).collect();
    let topic: Vec<Option<&str>> = rows.iter().map(|r| r.3).collect();
    let body: Vec<&[u8]> = rows.iter().map(|r| r.4.as_slice()).collect();
    // In arrival order: replay reads them back by (arrived, id).
    tx.execute(
        "INSERT INTO inputs (arrived, site, source, topic, body)
         SELECT arrived, site, source, topic, body
         FROM unnest($1::int8[], $2::text[], $3::int2[], $4::text[], $5::bytea[])
              WITH ORDINALITY AS i(arrived, site, source, topic, body, ord)
         ORDER BY ord",
        &[&arrived, &site, &source, &topic, &body],
    )?;
    Ok(Vec::new())
}

fn upsert_raw(tx: &mut Transaction, rows: &[(&str, &str, i64)]) -> Result<Vec<()>, postgres::Error> {
    let site: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let raw: Vec<&str> = rows.iter().map(|r| r.1).collect();
    let arrived: Vec<i64> = rows.iter().map(|r| r.2).collect();
    tx.execute(
        "INSERT INTO raw_latest (site, topic_payload, arrived) SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
         ON CONFLICT (site) DO UPDATE SET topic_payload = excluded.topic_payload, arrived = excluded.arrived",
        &[&site, &raw, &arrived],
    )?;
    Ok(Vec::new())
}

#[allow(clippy::type_complexity)]
fn upsert_rollups(
    tx: &mut Transaction,
    table: &str,
    rows: &[(&(i64, i64), &(&str, Rollup))],
) -> Result<Vec<()>, postgres::Error> {
    let point: Vec<i64> = rows.iter().map(|(k, _)| k.0).collect();
    let t: Vec<i64> = rows.iter().map(|(k, _)| k.1).collect();
    let n: Vec<i64> = rows.iter().map(|(_, (_, r))| r.n).collect();
    let sum: Vec<f64> = rows.iter().map(|(_, (_, r))| r.sum).collect();
    let min: Vec<f64> = rows.iter().map(|(_, (_, r))| r.min).collect();
    let max: Vec<f64> = rows.iter().map(|(_, (_, r))| r.max).collect();
    tx.execute(
        &format!(
            "INSERT INTO {table} AS r (point, t, n, sum, min, max)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::float8[], $5::float8[], $6::float8[])
             ON CONFLICT (point, t) DO UPDATE SET n = r.n + excluded.n, sum = r.sum + excluded.sum,
                 min = least(r.min, excluded.min), max = greatest(r.max, excluded.max)"
        ),
        &[&point, &t, &n, &sum, &min, &max],
    )?;
    Ok(Vec::new())
}

impl Backend for PgWriter {
    type Error = PgError;

    fn apply(&mut self, batches: &[Box<Batch>], mut rejects: Option<&mut Vec<Rejected>>) -> Result<(), PgError> {
        // Point ids first: the names this writer has not seen yet, taken
        // (or found, if another writer took them) in the same transaction.
        let mut fresh: Vec<&str> = batches
            .iter()
            .flat_map(|b| &b.readings)
            .map(|r| r.point.as_str())
            .filter(|p| !self.ids.contains_key(*p))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        let Some(c) = self.c.as_mut() else {
            return Err(PgError::Disconnected(format!("{} is unreachable", self.place)));
        };
        let mut tx = c.transaction()?;
        let mut taken = Vec::new();
        if !fresh.is_empty() {
            tx.execute(
                "INSERT INTO points (name) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (name) DO NOTHING",
                &[&fresh],
            )?;
            for row in tx.query("SELECT id, name FROM points WHERE name = ANY($1)", &[&fresh])? {
                taken.push((row.get::<_, String>(1), row.get::<_, i64>(0)));
            }
        }
        for (name, id) in taken {
            self.ids.insert(name.as_str().into(), id);
            self.added.push(name.into());
        }
        let rows = Rows::of(batches, &self.ids)?;
        let added = each(
            &mut tx,
            &rows.readings,
            "readings",
            |(_, r)| format!("{} at {}", r.point, r.t.to_rfc3339()),
            &mut rejects,
            insert_readings,
        )?;
        // Rollups of the readings actually added (a duplicate is ignored by
        // the table and must not be counted twice).
        let mut added: FxHashSet<(i64, i64)> = added.into_iter().collect();
        let mut minutes: FxHashMap<(i64, i64), (&str, Rollup)> = FxHashMap::default();
        // The export feed's record of this commit (only with a sink configured).
        let mut export = super::feed::Body::default();
        for (p, r) in &rows.readings {
            let t = ms(r.t);
            if !added.remove(&(*p, t)) {
                continue;
            }
            if self.feed {
                export.readings.push(super::feed::FeedReading::of(r));
            }
            if r.quality == Quality::Bad {
                continue;
            }
            if let Some(v) = r.value.filter(|v| v.is_finite()) {
                minutes
                    .entry((*p, t - t.rem_euclid(MINUTE_MS)))
                    .or_insert_with(|| (r.point.as_str(), Rollup::empty()))
                    .1
                    .add(v);
            }
        }
        each(
            &mut tx,
            &rows.alarms,
            "alarms",
            |(a, _, _)| format!("alarm {}", a.id),
            &mut rejects,
            upsert_alarms,
        )?;
        each(
            &mut tx,
            &rows.journal,
            "journal",
            |j| format!("{} {} {}", j.action, j.site, j.condition),
            &mut rejects,
            insert_journal,
        )?;
        each(
            &mut tx,
            &rows.rule_states,
            "rule_state",
            |(k, _)| k.to_string(),
            &mut rejects,
            |tx, r| upsert_json(tx, "rule_state", "key", r),
        )?;
        each(
            &mut tx,
            &rows.device_states,
            "device_state",
            |(k, _)| k.to_string(),
            &mut rejects,
            |tx, r| upsert_json(tx, "device_state", "device", r),
        )?;
        each(
            &mut tx,
            &rows.seen,
            "msg_seen",
            |(d, boot, seq, _)| format!("{d} boot {boot} seq {seq}"),
            &mut rejects,
            insert_seen,
        )?;
        each(
            &mut tx,
            &rows.inputs,
            "inputs",
            |i| format!("input at {}", from_ms(i.0).to_rfc3339()),
            &mut rejects,
            insert_inputs,
        )?;
        each(
            &mut tx,
            &rows.raw,
            "raw_latest",
            |r| r.0.to_string(),
            &mut rejects,
            upsert_raw,
        )?;
        let hours = hours_of(&minutes);
        for (table, buckets) in [("rollup_1m", &minutes), ("rollup_1h", &hours)] {
            let mut buckets: Vec<_> = buckets.iter().collect();
            buckets.sort_unstable_by_key(|(k, _)| **k);
            each(
                &mut tx,
                &buckets,
                table,
                |(k, (name, _))| format!("{name} at {}", from_ms(k.1).to_rfc3339()),
                &mut rejects,
                |tx, r| upsert_rollups(tx, table, r),
            )?;
        }
        if self.feed {
            export.transitions = batches
                .iter()
                .flat_map(|b| &b.transitions)
                .map(super::feed::FeedTransition::of)
                .collect();
            if !export.readings.is_empty() || !export.transitions.is_empty() {
                let body = serde_json::to_vec(&export).map_err(|e| PgError::Encode(format!("feed record: {e}")))?;
                tx.execute(
                    "INSERT INTO feed (committed, readings, transitions, body) VALUES ($1, $2, $3, $4)",
                    &[
                        &ms(Utc::now()),
                        &(export.readings.len() as i32),
                        &(export.transitions.len() as i32),
                        &body,
                    ],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn committed(&mut self) {
        self.added.clear();
    }

    fn rolled_back(&mut self) {
        for name in self.added.drain(..) {
            self.ids.remove(&name);
        }
    }

    fn recover(&mut self, _e: &PgError) {
        if self.c.as_ref().is_some_and(|c| c.is_closed()) {
            tracing::warn!(store = %self.place, "connection to PostgreSQL lost; reconnecting");
            self.c = None;
        }
    }

    fn before_retry(&mut self) {
        if self.c.is_none() {
            match connect(&self.url) {
                Ok(c) => {
                    tracing::info!(store = %self.place, "reconnected to PostgreSQL");
                    self.c = Some(c);
                }
                Err(e) => tracing::warn!(store = %self.place, error = %e, "PostgreSQL still unreachable"),
            }
        }
    }

    fn prune(&mut self, retention: Retention, now: Timestamp) -> Result<Vec<(&'static str, usize)>, PgError> {
        let cutoff = |days: u32| ms(now) - days as i64 * 86_400_000;
        let c = self.client()?;
        let mut out = vec![("inputs", 0), ("readings", 0), ("rollup_1m", 0), ("rollup_1h", 0)];
        if retention.inputs_days > 0 {
            loop {
                let n = c.execute(
                    "DELETE FROM inputs WHERE id IN
                     (SELECT id FROM inputs WHERE arrived < $1 ORDER BY arrived LIMIT 5000)",
                    &[&cutoff(retention.inputs_days)],
                )? as usize;
                out[0].1 += n;
                if n < 5000 {
                    break;
                }
            }
        }
        // By point, a few hundred per statement: each delete is a range of
        // the (point, t) key, never a scan of the table.
        let points: Vec<i64> = c
            .query("SELECT id FROM points ORDER BY id", &[])?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, table, days) in [
            (1, "readings", retention.readings_days),
            (2, "rollup_1m", retention.rollup_1m_days),
            (3, "rollup_1h", retention.rollup_1h_days),
        ] {
            if days == 0 {
                continue;
            }
            for chunk in points.chunks(256) {
                let ids = chunk.to_vec();
                out[i].1 += c.execute(
                    &format!("DELETE FROM {table} WHERE point = ANY($1) AND t < $2"),
                    &[&ids, &cutoff(days)],
                )? as usize;
            }
        }
        Ok(out)
    }

    fn write(&mut self, w: &SmallWrite) -> Result<(), PgError> {
        let c = self.client()?;
        match w {
            SmallWrite::RevokeSession { mac, expires } => {
                c.execute(
                    "INSERT INTO revoked_sessions (mac, expires) VALUES ($1, $2)
                     ON CONFLICT (mac) DO UPDATE SET expires = excluded.expires",
                    &[mac, &ms(*expires)],
                )?;
            }
        }
        Ok(())
    }

    fn place(&self) -> &str {
        &self.place
    }
}

/// The API's reads, from a small pool of connections (made and reaped on
/// r2d2's own threads; used from blocking threads).
pub(super) struct PgReader {
    pool: Option<r2d2::Pool<PostgresConnectionManager<NoTls>>>,
    place: String,
}

impl PgReader {
    fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send) -> Result<T, StoreError> {
        let pool = self.pool.as_ref().ok_or(StoreError::Closed)?;
        blocking(|| {
            let mut c = pool
                .get()
                .map_err(|e| StoreError::Query(format!("store {}: {e}", self.place)))?;
            f(&mut c).map_err(|e| StoreError::Query(PgError::Db(e).to_string()))
        })
    }
}

/// Each blocking client owns a small Tokio runtime, which must not be
/// dropped on a thread that drives async tasks (the service drops its store
/// there at shutdown): the pool and its connections go on a thread of their own.
impl Drop for PgReader {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new()
                .name("store-read-pool-drop".into())
                .spawn(move || drop(pool));
        }
    }
}

/// One blocking client for a reader beside the writer (the export feed's
/// sink): usable from any thread, re-made when the connection was lost, and
/// dropped off the async runtime.
pub(super) struct Blocking {
    url: String,
    place: String,
    c: std::sync::Mutex<Option<Client>>,
}

impl Blocking {
    pub(super) fn connect(url: &str) -> Result<Self, StoreError> {
        let place = redacted(url);
        let c = off_runtime(|| connect(url)).map_err(|e| StoreError::Postgres {
            place: place.clone(),
            source: e,
        })?;
        Ok(Self {
            url: url.to_string(),
            place,
            c: std::sync::Mutex::new(Some(c)),
        })
    }

    pub(super) fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StoreError> {
        self.try_with(|c| f(c).map_err(|e| StoreError::Query(format!("store {}: {}", self.place, describe(&e)))))
    }

    /// As [`Blocking::with`], for a call that says its own errors.
    pub(super) fn try_with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send,
    ) -> Result<T, StoreError> {
        blocking(|| {
            let mut c = self
                .c
                .lock()
                .map_err(|_| StoreError::Query(format!("store {}: connection poisoned", self.place)))?;
            if c.as_ref().is_none_or(|c| c.is_closed()) {
                *c = Some(connect(&self.url).map_err(|e| StoreError::Query(format!("store {}: {e}", self.place)))?);
            }
            f(c.as_mut().ok_or(StoreError::Closed)?)
        })
    }
}

impl Drop for Blocking {
    fn drop(&mut self) {
        if let Some(c) = self.c.get_mut().ok().and_then(Option::take) {
            let _ = std::thread::Builder::new()
                .name("store-client-drop".into())
                .spawn(move || drop(c));
        }
    }
}

/// The highest `seq` of `table` (the journal, the export feed) below which
/// nothing can still appear: taken under a SHARE lock on the table, which
/// waits for every transaction inserting into it to end (and holds new
/// inserts back for the moment of one `max`). With several writers a row
/// can commit after a higher seq is already visible; a reader that goes only
/// up to this seq never passes a row a slower writer has yet to commit.
/// `None` when the lock is not had within `LOCK_WAIT` (a writer's commit is
/// slow): the reader takes nothing new this time and tries again. A reader
/// whose cursor is at `after` and sees nothing past it gets `after` back
/// without the lock, so an idle reader never holds up the writers.
pub(super) fn final_seq(
    c: &mut impl postgres::GenericClient,
    table: &str,
    after: i64,
) -> Result<Option<i64>, StoreError> {
    let q = |e: postgres::Error| StoreError::Query(describe(&e));
    let max = format!("SELECT COALESCE(MAX(seq), 0) FROM {table}");
    if c.query_one(&max, &[]).map_err(q)?.get::<_, i64>(0) <= after {
        return Ok(Some(after));
    }
    let mut tx = c.transaction().map_err(q)?;
    tx.batch_execute(LOCK_WAIT).map_err(q)?;
    let seq = match tx.batch_execute(&format!("LOCK TABLE {table} IN SHARE MODE")) {
        Ok(()) => Some(tx.query_one(&max, &[]).map_err(q)?.get(0)),
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => None,
        Err(e) => return Err(q(e)),
    };
    tx.commit().map_err(q)?;
    Ok(seq)
}

const LOCK_WAIT: &str = "SET LOCAL lock_timeout = '1s'";

/// Runs a blocking client's call wherever the caller is: as it is on a
/// plain or blocking-pool thread (the API reads from `spawn_blocking`),
/// inside `block_in_place` on a multi-threaded runtime's worker, and on a
/// thread of its own from a single-threaded runtime.
fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => off_runtime(f),
    }
}

/// Runs `f` on a thread of its own: a blocking client may be made, used or
/// dropped there whatever thread asks (an async task's included).
pub(super) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Reader for PgReader {
    fn readings(
        &self,
        point: &PointId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<ReadingRow>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT t, value, quality, arrived FROM readings
                 WHERE point = (SELECT id FROM points WHERE name = $1) AND t >= $2 AND t <= $3 ORDER BY t LIMIT $4",
                &[&point.as_str(), &ms(from), &ms(to), &(limit as i64 + 1)],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        from_ms(r.get(0)),
                        r.get(1),
                        int_q(r.get::<_, i16>(2) as i64),
                        from_ms(r.get(3)),
                    )
                })
                .collect())
        })
    }

    fn rollups(
        &self,
        point: &PointId,
        res: Resolution,
        start: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Bucket>, StoreError> {
        let table = super::codec::rollup_table(res)?;
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT t, n, sum, min, max FROM {table}
                     WHERE point = (SELECT id FROM points WHERE name = $1) AND t >= $2 AND t <= $3 ORDER BY t LIMIT $4"
                ),
                &[&point.as_str(), &ms(start), &ms(to), &(limit as i64 + 1)],
            )?;
            Ok(rows
                .iter()
                .map(|r| bucket(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect())
        })
    }

    fn alarm(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt("SELECT json FROM alarms WHERE id = $1", &[&id])?
                .map(|r| r.get(0)))
        })
    }

    fn closed_alarms(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT json FROM alarms WHERE NOT open ORDER BY updated DESC LIMIT $1",
                &[&(limit as i64)],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn journal(&self, f: &JournalFilter) -> Result<Vec<JournalRow>, StoreError> {
        // Every filter in one statement: an absent one is NULL and matches all.
        let priority = f.priority.map(|p| p.as_str());
        let rows = self.with(|c| {
            c.query(
                "SELECT seq, at, alarm_id, site, source, condition, action, from_state, to_state, who, why,
                        event_time, notify, late, priority
                 FROM journal
                 WHERE ($1::text IS NULL OR alarm_id = $1) AND ($2::text IS NULL OR site = $2)
                   AND ($3::text IS NULL OR condition = $3) AND ($4::text IS NULL OR priority = $4)
                   AND ($5::int8 IS NULL OR at >= $5) AND ($6::int8 IS NULL OR at <= $6)
                 ORDER BY seq DESC LIMIT $7",
                &[
                    &f.alarm_id,
                    &f.site,
                    &f.condition,
                    &priority,
                    &f.from.map(ms),
                    &f.to.map(ms),
                    &(f.limit.clamp(1, 10_000) as i64),
                ],
            )
        })?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(6);
                let action = Action::parse(&name)
                    .ok_or_else(|| StoreError::Query(format!("unknown journal action {name:?}")))?;
                Ok(JournalRow {
                    seq: r.get(0),
                    at: from_ms(r.get(1)),
                    alarm_id: r.get(2),
                    site: r.get(3),
                    source: r.get(4),
                    condition: r.get(5),
                    action,
                    from: r.get(7),
                    to: r.get(8),
                    who: r.get(9),
                    why: r.get(10),
                    event_time: r.get::<_, Option<i64>>(11).map(from_ms),
                    notify: r.get(12),
                    late: r.get(13),
                    priority: r.get(14),
                })
            })
            .collect()
    }

    fn latest_raw(&self, site: &str) -> Result<Option<(String, Timestamp)>, StoreError> {
        self.with(|c| {
            Ok(c.query_opt(
                "SELECT topic_payload, arrived FROM raw_latest WHERE site = $1",
                &[&site],
            )?
            .map(|r| (r.get(0), from_ms(r.get(1)))))
        })
    }
}

/// Recorded inputs in arrival order, streamed to `each` from a connection
/// of their own (rows arrive as the server sends them, never all at once).
pub(super) fn inputs(
    url: &str,
    f: &InputFilter,
    mut each: impl FnMut(RecordedInput) -> std::io::Result<()>,
) -> Result<u64, StoreError> {
    // The blocking client reads on a thread of its own (see off_runtime);
    // the inputs come back over a bounded channel, so `each` runs here.
    let (tx, rx) = std::sync::mpsc::sync_channel::<RecordedInput>(1024);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            stream_inputs(url, f, |i| {
                tx.send(i)
                    .map_err(|_| std::io::Error::other("the export stopped taking inputs"))
            })
        });
        let (mut n, mut failed) = (0u64, None);
        for i in rx {
            if let Err(e) = each(i) {
                failed = Some(e);
                break; // drops the receiver: the reader stops at its next send
            }
            n += 1;
        }
        let read = reader.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        match failed {
            Some(e) => Err(StoreError::Query(format!("writing the export: {e}"))),
            None => read.map(|_| n),
        }
    })
}

fn stream_inputs(
    url: &str,
    f: &InputFilter,
    mut each: impl FnMut(RecordedInput) -> std::io::Result<()>,
) -> Result<u64, StoreError> {
    let place = redacted(url);
    let pg = |e| StoreError::Postgres {
        place: place.clone(),
        source: e,
    };
    let mut c = Client::connect(url, NoTls).map_err(pg)?;
    let mut tx = c.transaction().map_err(pg)?;
    let from = ms(f.from);
    let to = ms(f.to);
    let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&from, &to];
    let mut rows = tx
        .query_raw(
            "SELECT arrived, site, source, topic, body FROM inputs WHERE arrived >= $1 AND arrived < $2
             ORDER BY arrived, id",
            params,
        )
        .map_err(pg)?;
    let mut n = 0;
    while let Some(r) = rows.next().map_err(pg)? {
        let site: Option<String> = r.get(1);
        let topic: Option<String> = r.get(3);
        if !f.keeps(site.as_deref(), topic.as_deref()) {
            continue;
        }
        let body = super::codec::input_body(r.get::<_, i16>(2) as i64, topic, r.get(4));
        each(RecordedInput {
            arrived: from_ms(r.get(0)),
            site,
            body,
        })
        .map_err(|e| StoreError::Query(format!("writing the export: {e}")))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_logged_without_its_password() {
        assert_eq!(
            redacted("postgres://mizuban:s3cret@db:5432/mizuban"),
            "postgres://mizuban:***@db:5432/mizuban"
        );
        assert_eq!(
            redacted("postgres://root@127.0.0.1/test"),
            "postgres://root@127.0.0.1/test"
        );
        assert_eq!(redacted("host=/run/postgresql"), "host=/run/postgresql");
    }
}
