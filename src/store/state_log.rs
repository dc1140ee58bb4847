//! The state rows on SQLite: appended in arrival order, folded into their
//! keyed tables every few seconds.
//!
//! Besides its readings, every message changes four rows: its rule state and
//! device state (keyed by rule and device), the site's latest raw message and
//! the accepted message id (keyed by device, boot and seq). Each lives in a
//! table keyed by device or site, so each message rewrote four B-tree leaves
//! scattered across the fleet, and each commit wrote every page it touched to
//! the WAL again: with the readings staged (see super::staging), these were
//! most of the pages a commit wrote. Now a commit appends them to
//! `state_log`, a rowid table where a message's rows share one page, and the
//! writer folds the log into the keyed tables once its oldest row has waited
//! [`Policy::age`] (or [`Policy::cap`] rows wait): each key once, with its
//! newest row, in key order, so a device's page is written once for all its
//! messages of those seconds. The log is then emptied.
//!
//! The writer keeps each key's newest row since the last fold in memory
//! (as many entries as the fleet has devices, rules and sites, and the
//! accepted ids of those seconds), so a fold writes them straight from
//! there, sorted. Folding with `INSERT … SELECT … GROUP BY` over the log
//! read 65,536 rows four times and sorted them: 75 ms every 1.6 s at
//! 10,000 msg/s, a stall that every message behind it waited out (the
//! bench's p99). The only readers of these tables at run time are the site's
//! latest raw message (read from the log first, see [`LATEST_RAW`]) and the
//! restart, which folds the log with SQL before it reads anything (see
//! [`open`]).
//!
//! What stays true: the rows are durable, in the log, in the same transaction
//! as the message's readings, before the message is acknowledged; a crash
//! loses none of them, and the restart sees each key's newest row, as before.

use super::staging::Policy;
use rusqlite::Connection;
use std::time::{Duration, Instant};

/// The log's kinds of row.
#[derive(Debug, Clone, Copy)]
#[repr(i64)]
pub(super) enum Kind {
    RuleState = 1,
    DeviceState = 2,
    RawLatest = 3,
    Seen = 4,
}

/// Each kind into its table: the newest row of each key (SQLite takes the
/// bare columns of an aggregate query from the row that has the `max`), in
/// key order (the GROUP BY sorts by it). Accepted ids are a set, not a value
/// per key: all of them, sorted by the table's key.
const FOLD: [&str; 4] = [
    "INSERT OR REPLACE INTO rule_state (key, json)
     SELECT key, body FROM (SELECT key, body, max(id) FROM state_log WHERE kind = 1 GROUP BY key)",
    "INSERT OR REPLACE INTO device_state (device, json)
     SELECT key, body FROM (SELECT key, body, max(id) FROM state_log WHERE kind = 2 GROUP BY key)",
    "INSERT OR REPLACE INTO raw_latest (site, topic_payload, arrived)
     SELECT key, body, arrived FROM (SELECT key, body, arrived, max(id) FROM state_log WHERE kind = 3 GROUP BY key)",
    "INSERT OR IGNORE INTO msg_seen (device, boot, seq, arrived)
     SELECT key, boot, seq, arrived FROM state_log WHERE kind = 4 ORDER BY key, boot, seq",
];

/// Folds the whole log into the keyed tables with SQL and empties it; how
/// many rows it held. For the log a previous run left.
fn fold(c: &Connection) -> rusqlite::Result<usize> {
    for sql in FOLD {
        c.prepare_cached(sql)?.execute([])?;
    }
    empty(c)
}

/// Without a WHERE, SQLite drops the table's pages at once rather than
/// deleting row by row. The ids start again from 1, which is harmless:
/// nothing refers to a log row once it is folded.
fn empty(c: &Connection) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM state_log")?.execute([])
}

/// Each kind's keyed row, written by a fold from memory.
const UPSERT: [&str; 3] = [
    "INSERT OR REPLACE INTO rule_state (key, json) VALUES (?1, ?2)",
    "INSERT OR REPLACE INTO device_state (device, json) VALUES (?1, ?2)",
    "INSERT OR REPLACE INTO raw_latest (site, topic_payload, arrived) VALUES (?1, ?2, ?3)",
];

/// A keyed row's newest value: its body and when its message arrived.
type Newest = (Box<str>, Option<i64>);

/// An accepted message id: device, boot, seq, arrived.
type Seen = (Box<str>, i64, i64, Option<i64>);

/// What the log holds, in memory: each key's newest row (by kind and key)
/// and the accepted ids.
#[derive(Default)]
struct Held {
    newest: rustc_hash::FxHashMap<(i64, Box<str>), Newest>,
    seen: Vec<Seen>,
}

impl Held {
    fn take(&mut self, other: Held) {
        self.newest.extend(other.newest);
        self.seen.extend(other.seen);
    }
}

/// Writes what `held` and then `fresh` (the transaction under way, newer)
/// hold into the keyed tables, each key once and in key order, and empties
/// the log.
fn fold_held(c: &Connection, held: &Held, fresh: &Held) -> rusqlite::Result<()> {
    let mut rows: Vec<(&(i64, Box<str>), &Newest)> = held
        .newest
        .iter()
        .filter(|(k, _)| !fresh.newest.contains_key(*k))
        .chain(&fresh.newest)
        .collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for ((kind, key), (body, arrived)) in rows {
        let mut st = c.prepare_cached(UPSERT[(*kind - 1) as usize])?;
        if *kind == Kind::RawLatest as i64 {
            st.execute(rusqlite::params![key, body, arrived])?;
        } else {
            st.execute(rusqlite::params![key, body])?;
        }
    }
    let mut seen: Vec<&Seen> = held.seen.iter().chain(&fresh.seen).collect();
    seen.sort_unstable_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    let mut st =
        c.prepare_cached("INSERT OR IGNORE INTO msg_seen (device, boot, seq, arrived) VALUES (?1, ?2, ?3, ?4)")?;
    for (device, boot, seq, arrived) in seen {
        st.execute(rusqlite::params![device, boot, seq, arrived])?;
    }
    empty(c).map(|_| ())
}

/// Folds what the last run left in the log, before anything reads the keyed
/// tables.
pub(super) fn open(c: &mut Connection) -> rusqlite::Result<StateLog> {
    let tx = c.transaction()?;
    let n = fold(&tx)?;
    tx.commit()?;
    if n > 0 {
        tracing::info!(rows = n, "state log of the last run folded");
    }
    Ok(StateLog::new())
}

/// A site's latest raw message and when it arrived: the newest in the log,
/// else the folded one. One statement, so one snapshot: a fold committing in
/// between cannot hide it.
pub(super) const LATEST_RAW: &str = "SELECT body, arrived FROM (
       SELECT 0 AS o, body, arrived FROM
         (SELECT body, arrived FROM state_log WHERE kind = 3 AND key = ?1 ORDER BY id DESC LIMIT 1)
       UNION ALL
       SELECT 1, topic_payload, arrived FROM raw_latest WHERE site = ?1)
     ORDER BY o LIMIT 1";

/// The writer's side: how much the log holds and since when.
pub(super) struct StateLog {
    pub policy: Policy,
    /// The next transaction folds whatever the log holds (a flush, a shutdown).
    pub all: bool,
    /// Rows in the log, and when the oldest of them was logged.
    rows: usize,
    since: Option<Instant>,
    /// Rows the transaction under way has appended so far.
    appended: usize,
    /// What the committed log holds, and what the transaction under way added.
    held: Held,
    fresh: Held,
    /// The transaction under way: rows it logged, and whether it folded.
    outcome: Option<(usize, bool)>,
}

impl StateLog {
    fn new() -> Self {
        Self {
            // At the bench's 10 messages per device per second, a device's
            // rows of 5 s share each page write; at the field's hourly
            // uploads a device's row is folded alone, 5 s late.
            policy: Policy {
                age: Duration::from_secs(5),
                cap: 65_536,
            },
            all: false,
            rows: 0,
            since: None,
            appended: 0,
            held: Held::default(),
            fresh: Held::default(),
            outcome: None,
        }
    }

    /// Appends one row to the log in the transaction under way: a key's
    /// `body` (rule or device state, a raw message), or an accepted
    /// message's `(boot, seq)`.
    pub fn append(
        &mut self,
        tx: &Connection,
        kind: Kind,
        key: &str,
        body: Option<&str>,
        boot_seq: Option<(u64, u64)>,
        arrived: Option<i64>,
    ) -> rusqlite::Result<usize> {
        let (boot, seq) = boot_seq.map(|(b, s)| (b as i64, s as i64)).unzip();
        let n = tx
            .prepare_cached(
                "INSERT INTO state_log (kind, key, body, boot, seq, arrived) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(rusqlite::params![kind as i64, key, body, boot, seq, arrived])?;
        self.appended += 1;
        match (kind, boot_seq) {
            (Kind::Seen, Some((boot, seq))) => self.fresh.seen.push((key.into(), boot as i64, seq as i64, arrived)),
            _ => {
                self.fresh
                    .newest
                    .insert((kind as i64, key.into()), (body.unwrap_or_default().into(), arrived));
            }
        }
        Ok(n)
    }

    /// The transaction under way has appended all its rows: folds the log
    /// in it when that is due.
    pub fn finish(&mut self, tx: &Connection) -> rusqlite::Result<()> {
        let logged = std::mem::take(&mut self.appended);
        let folds = self.rows + logged > 0 && (self.all || self.due_with(logged));
        if folds {
            fold_held(tx, &self.held, &self.fresh)?;
        }
        self.outcome = Some((logged, folds));
        Ok(())
    }

    fn due_with(&self, incoming: usize) -> bool {
        let waited = self.since.map_or(Duration::ZERO, |s| s.elapsed());
        self.policy.due(waited, self.rows + incoming)
    }

    /// Whether the log should be folded although nothing new comes.
    pub fn due(&self) -> bool {
        self.rows > 0 && self.due_with(0)
    }

    pub fn committed(&mut self) {
        if let Some((logged, folded)) = self.outcome.take() {
            let fresh = std::mem::take(&mut self.fresh);
            if folded {
                (self.rows, self.since) = (0, None);
                self.all = false;
                self.held = Held::default();
            } else if logged > 0 {
                self.rows += logged;
                self.since.get_or_insert_with(Instant::now);
                self.held.take(fresh);
            }
        }
    }

    pub fn rolled_back(&mut self) {
        self.appended = 0;
        self.fresh = Held::default();
        self.outcome = None;
    }

    /// Rows in the log.
    pub fn len(&self) -> usize {
        self.rows
    }
}
