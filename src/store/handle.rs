//! [`Store`]: the handle the service holds on its storage, whichever database
//! is behind it. Writes go to the one writer thread ([`super::writer`]) over
//! a bounded queue; reads go to the backend's [`Reader`] (SQLite: a read
//! connection of its own; PostgreSQL: a small pool), from blocking threads.

use super::writer::{self, Backend, Op, SmallWrite};
use super::{Batch, Bucket, Commits, Committed, Location, RecordedInput, Resolution, Retention};
use crate::alarm::{Action, Alarm};
use crate::model::{PointId, Quality, Timestamp};
use crate::telemetry::quarantine::Quarantine;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("store {place}: {source}")]
    Postgres { place: String, source: postgres::Error },
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

impl InputFilter {
    /// Whether an input recorded for `site` (or, when its payload did not
    /// decode, under `topic`) is one of the filter's sites.
    pub(super) fn keeps(&self, site: Option<&str>, topic: Option<&str>) -> bool {
        if self.sites.is_empty() {
            return true;
        }
        let named = |s: &str| self.sites.iter().any(|x| x == s);
        // A payload that did not decode has no site: it belongs to a site
        // its topic names.
        match (site, topic) {
            (Some(s), _) => named(s),
            (None, Some(t)) => t.split('/').any(named),
            (None, None) => false,
        }
    }
}

/// A point's readings: `(t, value, quality, arrived)`.
pub type ReadingRow = (Timestamp, Option<f64>, Quality, Timestamp);

/// The read side of a backend. Called from blocking threads.
pub(super) trait Reader: Send + Sync + 'static {
    /// A point's readings in `[from, to]`, at most `limit + 1` (one more
    /// than a page says whether another follows).
    fn readings(
        &self,
        point: &PointId,
        from: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<ReadingRow>, StoreError>;
    /// Buckets of `res` starting in `[start, to]`, at most `limit + 1`.
    fn rollups(
        &self,
        point: &PointId,
        res: Resolution,
        start: Timestamp,
        to: Timestamp,
        limit: usize,
    ) -> Result<Vec<Bucket>, StoreError>;
    /// An occurrence's stored JSON.
    fn alarm(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Closed occurrences' JSON, newest first.
    fn closed_alarms(&self, limit: usize) -> Result<Vec<String>, StoreError>;
    fn journal(&self, f: &JournalFilter) -> Result<Vec<JournalRow>, StoreError>;
    fn latest_raw(&self, site: &str) -> Result<Option<(String, Timestamp)>, StoreError>;
}

/// Commits a subscriber of the committed stream may fall behind before it is
/// told to resynchronise.
const COMMITS_KEPT: usize = 4096;

#[derive(Clone)]
pub struct Store {
    /// The committed-change stream: what each commit made durable.
    commits: tokio::sync::broadcast::Sender<Arc<Committed>>,
    tx: mpsc::Sender<Op>,
    read: Arc<dyn Reader>,
    healthy: Arc<AtomicBool>,
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`; see
    /// [`Store::open_at`].
    pub fn open(
        path: &std::path::Path,
        queue: usize,
        retention: Retention,
        feed: bool,
        metrics: Arc<Metrics>,
        quarantine: Arc<Quarantine>,
    ) -> Result<(Self, Restored), StoreError> {
        Self::open_at(
            &Location::Sqlite(path.to_path_buf()),
            queue,
            retention,
            feed,
            metrics,
            quarantine,
        )
    }

    /// Opens the store at `at` (migrating its schema) and starts the writer
    /// thread. `queue` bounds the batches waiting for the writer; a full
    /// queue makes the pipeline wait (policy: block), which in turn holds
    /// back MQTT acks. With `feed`, every commit also appends its record to
    /// the export feed ([`super::feed`]) for a sink to deliver.
    pub fn open_at(
        at: &Location,
        queue: usize,
        retention: Retention,
        feed: bool,
        metrics: Arc<Metrics>,
        quarantine: Arc<Quarantine>,
    ) -> Result<(Self, Restored), StoreError> {
        match at {
            Location::Sqlite(path) => {
                let (w, r, restored) = super::sqlite::open(path, feed)?;
                Self::start(w, Arc::new(r), queue, retention, metrics, quarantine).map(|s| (s, restored))
            }
            Location::Postgres(url) => {
                // Connected off the async runtime (see postgres::off_runtime).
                let (w, r, restored) = super::postgres::off_runtime(|| super::postgres::open(url, feed))?;
                Self::start(w, Arc::new(r), queue, retention, metrics, quarantine).map(|s| (s, restored))
            }
        }
    }

    fn start<B: Backend>(
        backend: B,
        read: Arc<dyn Reader>,
        queue: usize,
        retention: Retention,
        metrics: Arc<Metrics>,
        quarantine: Arc<Quarantine>,
    ) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(queue);
        let healthy = Arc::new(AtomicBool::new(true));
        // Bounded: a subscriber more than this many commits behind is told so.
        let (commits, _) = tokio::sync::broadcast::channel(COMMITS_KEPT);
        let ends = writer::Ends {
            metrics,
            healthy: healthy.clone(),
            quarantine,
            commits: commits.clone(),
        };
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run(backend, rx, retention, ends))
            .map_err(|e| StoreError::Query(format!("cannot start writer thread: {e}")))?;
        // The writer's clock while no batches come. A weak sender: the
        // writer still stops once every Store handle is gone.
        let ticks = tx.downgrade();
        std::thread::Builder::new()
            .name("store-tick".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                match ticks.upgrade() {
                    // Full means the writer is busy, and so settles anyway.
                    Some(tx) => drop(tx.try_send(Op::Tick)),
                    None => return,
                }
            })
            .map_err(|e| StoreError::Query(format!("cannot start writer clock: {e}")))?;
        Ok(Self {
            commits,
            tx,
            read,
            healthy,
        })
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
        let write = SmallWrite::RevokeSession {
            mac: mac.to_string(),
            expires,
        };
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Write(write, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?.map_err(StoreError::Query)
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
    ) -> Result<(Vec<ReadingRow>, bool), StoreError> {
        let rows = self.read.readings(point, from, to, limit)?;
        Ok(page(rows, limit))
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
        let Some(width) = res.width_ms() else {
            return Err(StoreError::Query("raw readings are not rollups".into()));
        };
        // The bucket the span starts in begins before `from`.
        let from_ms = from.timestamp_millis();
        let start = chrono::DateTime::from_timestamp_millis(from_ms - from_ms.rem_euclid(width)).unwrap_or(from);
        let rows = self.read.rollups(point, res, start, to, limit)?;
        Ok(page(rows, limit))
    }

    pub fn alarm(&self, id: &str) -> Result<Option<Alarm>, StoreError> {
        Ok(self.read.alarm(id)?.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Closed occurrences, newest first (the open ones live in the pipeline).
    pub fn closed_alarms(&self, limit: usize) -> Result<Vec<Alarm>, StoreError> {
        let rows = self.read.closed_alarms(limit)?;
        Ok(rows.iter().filter_map(|j| serde_json::from_str(j).ok()).collect())
    }

    pub fn journal(&self, f: &JournalFilter) -> Result<Vec<JournalRow>, StoreError> {
        self.read.journal(f)
    }

    pub fn latest_raw(&self, site: &str) -> Result<Option<(String, Timestamp)>, StoreError> {
        self.read.latest_raw(site)
    }

    /// Recorded inputs in arrival order, streamed to `each` (a month of the
    /// fleet is never held in memory). Reads on a connection of its own, so a
    /// long export does not hold up the API's reads, and needs no running
    /// service (`mizuban export`).
    pub fn inputs(
        at: &Location,
        f: &InputFilter,
        each: impl FnMut(RecordedInput) -> std::io::Result<()>,
    ) -> Result<u64, StoreError> {
        match at {
            Location::Sqlite(path) => super::sqlite::inputs(path, f, each),
            Location::Postgres(url) => super::postgres::inputs(url, f, each),
        }
    }
}

/// The first `limit` rows, and whether the row past them exists.
fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}
