//! The historian's staging on SQLite: readings are made durable in arrival
//! order and merged into the point-keyed tables later, many per point at once.
//!
//! `readings` is keyed by `(point, t)`, the order every reader wants, but the
//! fleet's messages arrive interleaved across thousands of points: each
//! message's six readings landed on six different leaf pages, and every
//! commit wrote each page it touched to the WAL again. At 10,000 messages/s
//! that was 6 of the ~9 pages a message rewrote, 29 KB written per 370-byte
//! message (measured with `dbstat` and `/proc/<pid>/io` on the contract
//! bench, docs/PERFORMANCE.md). So a commit appends its readings to
//! `readings_log` (a rowid table: a few sequential pages per commit), and the
//! writer keeps them here, by point, until the point's oldest one has waited
//! [`Policy::age`] or the staged total passes [`Policy::cap`]. Then the
//! point's readings go into `readings` and the rollups in one transaction,
//! sorted by key: a point's page is written once for all of them. This is
//! the write-optimised staging of a log-structured merge tree (O'Neil et al.,
//! "The log-structured merge-tree", Acta Informatica 33, 1996), with SQLite's
//! B-tree as the one merged level.
//!
//! What stays true: a reading is durable (in the log) before its message is
//! acknowledged; readers see staged readings at once (they are read from here
//! and from the database, see [`Pending::rows_of`]); a duplicate `(point, t)`
//! keeps the first reading and is counted in the rollups once, because the
//! merge is `INSERT OR IGNORE` and only rows it added are rolled up. The log
//! is trimmed behind the oldest staged reading, thousands of rows at a time,
//! so a row there may already be merged; after a restart the whole log is
//! staged again and such a row is ignored by the merge, changing nothing.

use super::codec::{int_q, ms, q_int};
use crate::model::Quality;
use rusqlite::params;
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a point's staged readings are merged.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// A point is merged once its oldest staged reading has waited this long:
    /// at the bench's 10 readings per point per second, 50 readings share
    /// one page write; at the field's one upload per point an hour, the
    /// merge is prompt and the log stays a few rows long.
    pub age: Duration,
    /// At most this many readings are staged (about 48 bytes each in memory);
    /// beyond it the points staged longest are merged first.
    pub cap: usize,
}

impl Policy {
    /// Whether a point whose oldest reading has `waited` is merged now, with
    /// `staged` readings staged in all.
    pub fn due(&self, waited: Duration, staged: usize) -> bool {
        waited >= self.age || staged > self.cap
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            age: Duration::from_secs(5),
            cap: 131_072,
        }
    }
}

/// One staged reading: its log row and its values as they will be merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Staged {
    /// Its `readings_log` row.
    pub id: i64,
    pub t: i64,
    pub value: Option<f64>,
    pub quality: i16,
    pub arrived: i64,
}

impl Staged {
    pub fn quality(&self) -> Quality {
        int_q(self.quality as i64)
    }
}

/// The staged readings, shared by the writer (which alone changes them, and
/// only once a transaction has committed) and the readers. Keyed by point
/// id: a reading is staged without copying its point's name.
#[derive(Default)]
pub(super) struct Pending {
    /// Each staged point's readings, in log order (the order they were
    /// acknowledged).
    points: FxHashMap<i64, Vec<Staged>>,
    /// The id of every point ever staged, by name (for the readers) and the
    /// other way round: as many as the fleet has points, and never dropped.
    ids: FxHashMap<Box<str>, i64>,
    names: FxHashMap<i64, Box<str>>,
    /// Points in the order their oldest staged reading was logged, with when.
    order: VecDeque<(Instant, i64)>,
    total: usize,
}

/// A transaction's logged readings: `(point id, row)` in log order, and the
/// names of points it staged for the first time.
#[derive(Default)]
pub(super) struct Logged {
    pub rows: Vec<(i64, Staged)>,
    pub names: Vec<(i64, Box<str>)>,
}

/// A point's staged readings, taken for a merge.
pub(super) struct Merge {
    pub name: Box<str>,
    pub point: i64,
    pub rows: Vec<Staged>,
}

/// What a transaction merges and which log rows it may drop.
pub(super) struct Plan {
    pub merges: Vec<Merge>,
    /// Log rows with an id below this are merged; `None`: nothing else is
    /// staged, so every row logged before this transaction is.
    pub keep_from: Option<i64>,
}

impl Pending {
    /// The points due at `now` under `policy`, front first, with `incoming`
    /// readings about to be staged; all of them when `all`.
    fn plan(&self, now: Instant, policy: Policy, incoming: usize, all: bool) -> Plan {
        let mut left = self.total + incoming;
        let mut merges = Vec::new();
        let mut keep_from = None;
        for (since, id) in &self.order {
            let rows = &self.points[id];
            if !all && !policy.due(now.duration_since(*since), left) {
                keep_from = rows.first().map(|r| r.id);
                break;
            }
            left -= rows.len();
            merges.push(Merge {
                // Always there: the writer names every point it stages first.
                name: self.names.get(id).cloned().unwrap_or_else(|| id.to_string().into()),
                point: *id,
                rows: rows.clone(),
            });
        }
        Plan { merges, keep_from }
    }

    /// Whether the point staged longest is due at `now`.
    fn due(&self, now: Instant, policy: Policy) -> bool {
        self.order
            .front()
            .is_some_and(|(since, _)| policy.due(now.duration_since(*since), self.total))
    }

    /// A committed transaction's outcome: its merged points leave, its logged
    /// readings are staged.
    fn commit(&mut self, plan: &Plan, fresh: Logged, now: Instant) {
        for m in &plan.merges {
            let front = self.order.pop_front();
            debug_assert_eq!(
                front.as_ref().map(|f| f.1),
                Some(m.point),
                "merges are taken from the front"
            );
            if let Some(rows) = self.points.remove(&m.point) {
                self.total -= rows.len();
            }
        }
        self.stage(fresh, now);
    }

    /// Logged readings, staged at `now`.
    fn stage(&mut self, fresh: Logged, now: Instant) {
        for (id, name) in fresh.names {
            self.ids.insert(name.clone(), id);
            self.names.insert(id, name);
        }
        for (point, row) in fresh.rows {
            self.total += 1;
            match self.points.get_mut(&point) {
                Some(rows) => rows.push(row),
                None => {
                    self.order.push_back((now, point));
                    self.points.insert(point, vec![row]);
                }
            }
        }
    }

    /// A point's staged readings with `t` in `[from, to]` (ms), in log order.
    pub fn rows_of(&self, name: &str, from: i64, to: i64) -> Vec<Staged> {
        self.ids
            .get(name)
            .and_then(|id| self.points.get(id))
            .map(|rows| rows.iter().filter(|r| r.t >= from && r.t <= to).copied().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.total
    }
}

/// The writer's side: the shared staged readings, the policy, and what the
/// transaction under way will change once it commits.
pub(super) struct Staging {
    pub pending: Arc<Mutex<Pending>>,
    pub policy: Policy,
    /// The next transaction merges everything staged (a flush, a shutdown).
    pub all: bool,
    /// Log rows below this id are gone.
    trimmed: i64,
    /// The newest log row's id. It is never deleted, so SQLite never hands
    /// out an id again (a rowid table's next id is its largest plus one).
    newest: i64,
    /// The transaction under way deletes the log rows below this.
    trim_to: Option<i64>,
    outcome: Option<(Plan, Logged)>,
}

/// The log is trimmed once this many of its rows are merged: deleting at the
/// log's front changes the free-page list and the database header, pages a
/// commit would otherwise write for every few rows it frees.
const TRIM_ROWS: i64 = 4096;

impl Staging {
    fn new(pending: Pending, trimmed: i64, newest: i64) -> Self {
        Self {
            pending: Arc::new(Mutex::new(pending)),
            policy: Policy::default(),
            all: false,
            trimmed,
            newest,
            trim_to: None,
            outcome: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while holding it; a poisoned lock's data is still whole.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the next transaction merges, given the readings it will log.
    pub fn plan(&self, incoming: usize) -> Plan {
        self.lock().plan(Instant::now(), self.policy, incoming, self.all)
    }

    /// The transaction that merged `plan` and logged `fresh` has committed
    /// (its changes are applied by [`Staging::committed`]).
    pub fn stage(&mut self, plan: Plan, fresh: Logged) {
        self.outcome = Some((plan, fresh));
    }

    pub fn committed(&mut self) {
        if let Some(to) = self.trim_to.take() {
            self.trimmed = to;
        }
        if let Some((plan, fresh)) = self.outcome.take() {
            if let Some(last) = fresh.rows.last() {
                self.newest = last.1.id;
            }
            self.lock().commit(&plan, fresh, Instant::now());
            self.all = false;
        }
    }

    pub fn rolled_back(&mut self) {
        self.outcome = None;
        self.trim_to = None;
    }

    /// Drops the log rows `plan` leaves merged (and any merged earlier), once
    /// there are [`TRIM_ROWS`] of them or everything is being settled; the
    /// newest row always stays.
    pub fn trim(&mut self, tx: &rusqlite::Transaction, plan: &Plan) -> rusqlite::Result<()> {
        let below = plan.keep_from.unwrap_or(self.newest).min(self.newest);
        if below - self.trimmed >= TRIM_ROWS || (self.all && below > self.trimmed) {
            tx.prepare_cached("DELETE FROM readings_log WHERE id < ?1")?
                .execute([below])?;
            self.trim_to = Some(below);
        }
        Ok(())
    }

    /// Whether the next transaction would merge something.
    pub fn due(&self) -> bool {
        self.lock().due(Instant::now(), self.policy)
    }

    /// How many readings are staged.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Appends a reading to the log; its row id.
pub(super) fn log(tx: &rusqlite::Transaction, point: i64, r: &crate::model::Reading) -> rusqlite::Result<Staged> {
    let mut st =
        tx.prepare_cached("INSERT INTO readings_log (point, t, value, quality, arrived) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let (t, quality, arrived) = (ms(r.t), q_int(r.quality), ms(r.arrived));
    st.execute(params![point, t, r.value, quality, arrived])?;
    Ok(Staged {
        id: tx.last_insert_rowid(),
        t,
        value: r.value,
        quality,
        arrived,
    })
}

/// The log as left by the last run, staged again (nothing of it is lost, and
/// what was already merged is ignored when it is merged again).
pub(super) fn restore(c: &rusqlite::Connection) -> rusqlite::Result<Staging> {
    let mut st = c.prepare(
        "SELECT l.id, p.name, l.point, l.t, l.value, l.quality, l.arrived
         FROM readings_log l JOIN points p ON p.id = l.point ORDER BY l.id",
    )?;
    let mut fresh = Logged::default();
    let mut named = rustc_hash::FxHashSet::default();
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?.into_boxed_str(),
            r.get::<_, i64>(2)?,
            Staged {
                id: r.get(0)?,
                t: r.get(3)?,
                value: r.get(4)?,
                quality: r.get(5)?,
                arrived: r.get(6)?,
            },
        ))
    })?;
    for row in rows {
        let (name, point, row) = row?;
        if named.insert(point) {
            fresh.names.push((point, name));
        }
        fresh.rows.push((point, row));
    }
    let oldest = fresh.rows.first().map_or(0, |f| f.1.id);
    let newest = fresh.rows.last().map_or(0, |f| f.1.id);
    let mut pending = Pending::default();
    pending.stage(fresh, Instant::now());
    Ok(Staging::new(pending, oldest, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, t: i64) -> Staged {
        Staged {
            id,
            t,
            value: Some(id as f64),
            quality: 0,
            arrived: t,
        }
    }

    /// Stages `(point name, log id, t)` rows; a point's id is its name's length.
    fn staged(p: &mut Pending, at: Instant, rows: &[(&str, i64, i64)]) {
        let fresh = Logged {
            rows: rows.iter().map(|(n, id, t)| (n.len() as i64, row(*id, *t))).collect(),
            names: rows
                .iter()
                .map(|(n, _, _)| (n.len() as i64, Box::<str>::from(*n)))
                .collect(),
        };
        p.stage(fresh, at);
    }

    #[test]
    fn points_are_merged_oldest_first_and_the_log_kept_from_the_oldest_left() {
        let t0 = Instant::now();
        let policy = Policy {
            age: Duration::from_secs(5),
            cap: 1_000,
        };
        let mut p = Pending::default();
        staged(&mut p, t0, &[("a", 1, 10), ("bb", 2, 10)]);
        staged(&mut p, t0 + Duration::from_secs(3), &[("a", 3, 20), ("ccc", 4, 20)]);
        // Nothing has waited 5 s yet.
        let plan = p.plan(t0 + Duration::from_secs(4), policy, 0, false);
        assert!(plan.merges.is_empty());
        assert_eq!(plan.keep_from, Some(1));
        // At 6 s, a and bb (staged at 0 s) are due, with all their rows; ccc
        // is not, and its row 4 is the oldest the log must keep.
        let plan = p.plan(t0 + Duration::from_secs(6), policy, 0, false);
        let merged: Vec<(&str, Vec<i64>)> = plan
            .merges
            .iter()
            .map(|m| (&*m.name, m.rows.iter().map(|r| r.id).collect()))
            .collect();
        assert_eq!(merged, vec![("a", vec![1, 3]), ("bb", vec![2])]);
        assert_eq!(plan.keep_from, Some(4));
        p.commit(&plan, Logged::default(), t0 + Duration::from_secs(6));
        assert_eq!(p.len(), 1);
        assert_eq!(p.rows_of("a", 0, 100), Vec::new());
        assert_eq!(p.rows_of("ccc", 0, 100), vec![row(4, 20)]);
        // Everything, when asked: nothing is left to keep.
        let plan = p.plan(t0, policy, 0, true);
        assert_eq!(plan.merges.len(), 1);
        assert_eq!(plan.keep_from, None);
    }

    #[test]
    fn over_the_cap_the_longest_staged_points_are_merged_first() {
        let t0 = Instant::now();
        let policy = Policy {
            age: Duration::from_secs(3600),
            cap: 3,
        };
        let mut p = Pending::default();
        staged(&mut p, t0, &[("a", 1, 10), ("bb", 2, 10), ("a", 3, 20)]);
        // Two more about to be logged: 5 > 3, so a (2 rows) goes; 3 left.
        let plan = p.plan(t0, policy, 2, false);
        assert_eq!(plan.merges.iter().map(|m| &*m.name).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(plan.keep_from, Some(2));
    }

    #[test]
    fn a_reader_sees_a_points_staged_rows_in_its_span() {
        let mut p = Pending::default();
        staged(
            &mut p,
            Instant::now(),
            &[("a", 1, 10), ("a", 2, 30), ("bb", 3, 20), ("a", 4, 20)],
        );
        assert_eq!(p.rows_of("a", 15, 30), vec![row(2, 30), row(4, 20)]);
        assert_eq!(p.rows_of("zz", 0, 100), Vec::new());
    }
}
