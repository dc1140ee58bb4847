//! The pipeline between collectors and the alarm/store/API side. Sites are
//! hashed onto `shards`; each shard is one task that owns all per-site state of
//! its sites (dedup windows, rule state, device comm state, open alarms), so
//! nothing on the hot path is shared or locked, and a larger deployment can
//! split sites across nodes with the same hash.
//!
//! In: `Incoming` messages (decoded by a collector), operator `Command`s, and a
//! ticker. Each shard is a thin runner around a pure `engine::Engine`. Out:
//! `store::Batch`es; once one commits, the store acks the messages behind it,
//! updates the shard's `ShardView` (which the API reads) and publishes the
//! committed transitions on its stream (`Pipeline::commits`).

mod reply;
mod shard;
mod view;

pub use crate::engine::Command;
pub use crate::telemetry::quarantine::{preview, Quarantine, QuarantineEntry};
pub use view::{ShardView, SiteStatus};

use crate::alarm::{Alarm, CommandError};
use crate::config::Config;
use crate::device::Decoded;
use crate::model::{Clock, SiteId, Timestamp};
use crate::store::{Ack, Batch, RecordedInput, Restored, Store};
use crate::telemetry::Metrics;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A decoded message on its way to its site's shard.
pub struct Incoming {
    pub decoded: Decoded,
    pub topic: String,
    /// Raw payload text (cut), kept as the site's latest raw message.
    pub raw: String,
    pub arrived: Timestamp,
    /// Monotonic receive time, for the latency metric.
    pub received: std::time::Instant,
    /// Acknowledges the MQTT message once the batch it ends up in is durable.
    pub ack: Option<Box<dyn Ack>>,
    /// The input exactly as received, recorded in the same transaction.
    pub input: RecordedInput,
}

pub(crate) enum Input {
    Message(Box<Incoming>),
    Command(Command, oneshot::Sender<Result<Alarm, CommandError>>),
    /// Check comm loss and shelve expiry against the clock.
    Tick,
    /// A condition found outside the data (e.g. a collector that stopped
    /// polling): raise (`true`) or clear it at processing time.
    External(crate::alarm::RaiseSpec, bool),
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline stopped")]
    Stopped,
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Stable FNV-1a hash of a site id onto `n` shards. Stable across builds and
/// nodes so that a partitioned broker or stream can use the same split.
pub fn shard_of(site: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in site.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % n as u64) as usize
}

/// Cloneable handle to the running shards.
#[derive(Clone)]
pub struct Pipeline {
    senders: Arc<Vec<mpsc::Sender<Input>>>,
    pub views: Arc<Vec<Arc<ShardView>>>,
    /// The store's committed-change stream (what the board's event stream shows).
    store: Store,
    pub quarantine: Arc<Quarantine>,
    metrics: Arc<Metrics>,
}

pub struct PipelineDeps {
    pub config: Arc<Config>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    pub restored: Restored,
    pub cancel: CancellationToken,
    /// Shared with the store, which quarantines rows it can never commit.
    pub quarantine: Arc<Quarantine>,
    /// How often the shards look at the clock for comm loss and shelve expiry.
    pub tick: std::time::Duration,
}

impl Pipeline {
    /// Starts one task per shard. Returns the handle and the tasks' join handles
    /// (they end after `cancel`, having flushed their last batch).
    pub fn start(deps: PipelineDeps) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let n = deps.config.service.shards;
        let quarantine = deps.quarantine.clone();
        let mut senders = Vec::with_capacity(n);
        let mut views = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut resume = crate::engine::Resume {
            open_alarms: deps.restored.open_alarms,
            states: deps.restored.rule_states,
            device_states: deps.restored.device_states,
            seen: deps.restored.seen,
        };
        for idx in 0..n {
            let (tx, rx) = mpsc::channel(deps.config.service.shard_queue);
            let view = Arc::new(ShardView::default());
            let shard = shard::Shard::new(
                idx,
                n,
                deps.config.clone(),
                deps.clock.clone(),
                deps.metrics.clone(),
                deps.store.clone(),
                view.clone(),
                quarantine.clone(),
                &mut resume,
            );
            handles.push(tokio::spawn(shard.run(rx, deps.cancel.clone())));
            let tick_tx = tx.clone();
            let cancel = deps.cancel.clone();
            let period = deps.tick;
            handles.push(tokio::spawn(async move {
                let mut iv = tokio::time::interval(period);
                iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = iv.tick() => {
                            // A full queue already means work is pending; skipping a tick loses nothing.
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tick_tx.try_send(Input::Tick) { break }
                        }
                    }
                }
            }));
            senders.push(tx);
            views.push(view);
        }
        (
            Self {
                senders: Arc::new(senders),
                views: Arc::new(views),
                store: deps.store,
                quarantine,
                metrics: deps.metrics,
            },
            handles,
        )
    }

    /// What each commit made durable, from now on (slow readers lag and are
    /// told to resynchronise).
    pub fn commits(&self) -> crate::store::Commits {
        self.store.subscribe()
    }

    /// Whether every shard has looked at the clock (comm supervision, shelve
    /// expiry) at or after `t`: for a test on a manual clock to know a tick
    /// saw the time it set.
    pub fn ticked_through(&self, t: crate::model::Timestamp) -> bool {
        self.views.iter().all(|v| v.ticked_ms() >= t.timestamp_millis())
    }

    pub fn shard_count(&self) -> usize {
        self.senders.len()
    }

    /// Hands a message to its site's shard; waits while that shard is behind
    /// (policy: block — the collector stops reading, the broker holds the rest).
    pub async fn submit(&self, site: &SiteId, msg: Incoming) -> Result<(), PipelineError> {
        let tx = &self.senders[shard_of(site.as_str(), self.senders.len())];
        match tx.try_send(Input::Message(Box::new(msg))) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(m)) => {
                self.metrics
                    .queue_full
                    .get_or_create(&crate::telemetry::metrics_edge("collector->pipeline"))
                    .inc();
                tx.send(m).await.map_err(|_| PipelineError::Stopped)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PipelineError::Stopped),
        }
    }

    /// Records an input that never reaches a shard (a payload no profile
    /// accepts, a failed poll); `ack` runs once the record is durable.
    pub async fn record(&self, input: RecordedInput, ack: Option<Box<dyn Ack>>) -> Result<(), PipelineError> {
        let batch = Batch {
            inputs: vec![input],
            acks: ack.into_iter().collect(),
            ..Default::default()
        };
        self.store
            .submit(batch, &self.metrics)
            .await
            .map_err(|_| PipelineError::Stopped)
    }

    /// Runs an operator command on the shard that owns the alarm.
    pub async fn command(&self, cmd: Command) -> Result<Alarm, PipelineError> {
        let id = cmd.alarm_id().to_string();
        let idx = self
            .views
            .iter()
            .position(|v| v.has_alarm(&id))
            .ok_or(PipelineError::Command(CommandError::NotFound(id)))?;
        let (tx, rx) = oneshot::channel();
        self.senders[idx]
            .send(Input::Command(cmd, tx))
            .await
            .map_err(|_| PipelineError::Stopped)?;
        Ok(rx.await.map_err(|_| PipelineError::Stopped)??)
    }

    /// Raises or clears a condition that no device reported (the collector's
    /// own watchdog), on the shard that owns the site.
    pub async fn external(&self, spec: crate::alarm::RaiseSpec, active: bool) -> Result<(), PipelineError> {
        let tx = &self.senders[shard_of(spec.site.as_str(), self.senders.len())];
        tx.send(Input::External(spec, active))
            .await
            .map_err(|_| PipelineError::Stopped)
    }

    /// Every open alarm occurrence, across shards.
    pub fn open_alarms(&self) -> Vec<Alarm> {
        self.views.iter().flat_map(|v| v.alarms()).collect()
    }

    pub fn site_statuses(&self) -> Vec<SiteStatus> {
        self.views.iter().flat_map(|v| v.sites()).collect()
    }
}
