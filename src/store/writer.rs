//! The store's one writer, whatever the database: it takes the pipeline's
//! batches off a bounded queue, commits everything that waits in one
//! transaction of the [`Backend`], and only then acknowledges the batches
//! (MQTT PUBACKs, command replies) and publishes what the commit made durable
//! on the committed-change stream. Grouping, retry, quarantine of rows that
//! can never commit, and the order of acknowledgement are decided here, once;
//! SQLite and PostgreSQL differ only in how a group is written.

use super::{Batch, Committed, Retention};
use crate::model::Timestamp;
use crate::telemetry::quarantine::{Quarantine, QuarantineEntry};
use crate::telemetry::Metrics;
use chrono::Utc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

pub(super) enum Op {
    Batch(Box<Batch>),
    Flush(oneshot::Sender<()>),
    Write(SmallWrite, oneshot::Sender<Result<(), String>>),
    /// Once a second: a chance to settle what is due (see [`Backend::due`])
    /// when no batches come.
    Tick,
}

/// A small write outside the pipeline's batches, committed by the writer in
/// its own transaction; the reply says it is durable.
#[derive(Debug, Clone)]
pub(super) enum SmallWrite {
    /// A board session ended by logout, remembered until it would have expired.
    RevokeSession { mac: String, expires: Timestamp },
}

/// A row that can never be committed (it breaks a constraint, or cannot be
/// encoded): quarantined so that the rest of its transaction commits.
#[derive(Debug)]
pub(super) struct Rejected {
    pub table: &'static str,
    pub key: String,
    pub error: String,
}

/// What a backend's error means to the writer.
pub(super) trait Failure: std::fmt::Display {
    /// Retrying cannot cure it (a constraint, an unencodable value): the
    /// group is applied again with the offending rows quarantined. Anything
    /// else (disk full, I/O, a lost connection, busy) is retried as it is.
    fn permanent(&self) -> bool;
}

/// One database's way of writing a group. Implementations keep whatever
/// caches follow the transaction (point ids) and are told how it ended.
pub(super) trait Backend: Send + 'static {
    type Error: Failure;
    /// Applies the batches in one transaction. With `rejects`, a row that
    /// fails for a permanent reason is recorded there and skipped; without,
    /// any failure fails the whole transaction.
    fn apply(&mut self, batches: &[Box<Batch>], rejects: Option<&mut Vec<Rejected>>) -> Result<(), Self::Error>;
    /// The last [`Backend::apply`] committed.
    fn committed(&mut self);
    /// The last [`Backend::apply`] rolled back.
    fn rolled_back(&mut self);
    /// Called after a failed commit, before waiting to retry it.
    fn recover(&mut self, _e: &Self::Error) {}
    /// Called once the wait is over, just before the retry.
    fn before_retry(&mut self) {}
    /// Drops what is past its retention; rows dropped per table.
    fn prune(&mut self, retention: Retention, now: Timestamp) -> Result<Vec<(&'static str, usize)>, Self::Error>;
    fn write(&mut self, w: &SmallWrite) -> Result<(), Self::Error>;
    /// Asks the next [`Backend::apply`] to bring everything committed into
    /// its final tables (SQLite merges all staged readings, see
    /// super::staging), as before a flush is answered and when the writer
    /// stops; false when there is nothing to do. Committed data is durable
    /// either way.
    fn settle_next(&mut self) -> bool {
        false
    }
    /// Something committed is due to be settled by the next apply, so an
    /// idle writer should run one.
    fn due(&self) -> bool {
        false
    }
    /// Where it writes, for the log (a path, or a URL without its password).
    fn place(&self) -> &str;
}

/// How often the writer drops what is older than its retention.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The writer's shared ends.
pub(super) struct Ends {
    pub metrics: Arc<Metrics>,
    pub healthy: Arc<AtomicBool>,
    pub quarantine: Arc<Quarantine>,
    pub commits: tokio::sync::broadcast::Sender<Arc<Committed>>,
}

/// Runs on its own thread until the queue's senders are gone.
pub(super) fn run<B: Backend>(mut db: B, mut rx: mpsc::Receiver<Op>, retention: Retention, ends: Ends) {
    let Ends { metrics, commits, .. } = &ends;
    let mut backoff_ms = 50u64;
    let mut pruned: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        if pruned.is_none_or(|p| p.elapsed() > PRUNE_EVERY) {
            pruned = Some(std::time::Instant::now());
            match db.prune(retention, Utc::now()) {
                Ok(counts) => {
                    for (table, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
                        tracing::info!(table, rows = n, "pruned past retention");
                    }
                }
                Err(e) => {
                    metrics.store_errors.inc();
                    tracing::error!(store = db.place(), error = %e, "pruning past retention failed; retried later");
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
                Op::Tick => {}
            }
        }
        if batches.is_empty() && flushes.is_empty() && writes.is_empty() && !db.due() {
            continue;
        }
        commit(&mut db, &batches, &mut backoff_ms, &ends);
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
            let r = db.write(&w).map_err(|e| {
                metrics.store_errors.inc();
                tracing::error!(store = db.place(), error = %e, "store write failed");
                e.to_string()
            });
            let _ = reply.send(r); // the requester may have gone; the write stands
        }
        // A flush is answered with everything in its final tables. A
        // transaction of its own: the group's own readings were only logged.
        if !flushes.is_empty() && db.settle_next() {
            commit(&mut db, &[], &mut backoff_ms, &ends);
        }
        for f in flushes {
            let _ = f.send(()); // the flusher may have given up waiting; nothing to undo
        }
    }
    if db.settle_next() {
        commit(&mut db, &[], &mut backoff_ms, &ends);
    }
    tracing::info!("store writer stopped");
}

/// Commits one group, retrying until it does: nothing behind it is
/// acknowledged before, and the broker keeps the messages meanwhile.
fn commit<B: Backend>(db: &mut B, batches: &[Box<Batch>], backoff_ms: &mut u64, ends: &Ends) {
    let Ends {
        metrics,
        healthy,
        quarantine,
        ..
    } = ends;
    loop {
        let started = std::time::Instant::now();
        let mut result = db.apply(batches, None);
        if result.as_ref().is_err_and(|e| e.permanent()) {
            // Some row can never commit: retrying would stall every site
            // for ever. Commit the rest and quarantine that row.
            db.rolled_back();
            let mut rejects = Vec::new();
            result = db.apply(batches, Some(&mut rejects));
            if result.is_ok() {
                reject(&rejects, metrics, quarantine);
            }
        }
        match result {
            Ok(()) => {
                db.committed();
                metrics.store_commit_seconds.observe(started.elapsed().as_secs_f64());
                healthy.store(true, Ordering::Relaxed);
                *backoff_ms = 50;
                return;
            }
            Err(e) => {
                db.rolled_back();
                metrics.store_errors.inc();
                healthy.store(false, Ordering::Relaxed);
                tracing::error!(store = db.place(), error = %e, retry_in_ms = *backoff_ms, "store commit failed");
                db.recover(&e);
                std::thread::sleep(std::time::Duration::from_millis(*backoff_ms));
                *backoff_ms = (*backoff_ms * 2).min(5_000);
                db.before_retry();
            }
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
