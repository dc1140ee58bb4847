//! Wiring: configuration -> store -> pipeline -> collectors -> HTTP, and the
//! ordered shutdown back down: collectors stop taking messages, the pipeline
//! drains its queues, the store commits the rest, then HTTP closes.

use crate::api::{self, AppState, Sessions};
use crate::collect::mqtt::MqttCollector;
use crate::config::Config;
use crate::model::{Clock, SystemClock};
use crate::pipeline::{Pipeline, PipelineDeps};
use crate::store::Store;
use crate::telemetry::Metrics;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Options {
    /// Overrides `[http] listen`.
    pub http: Option<SocketAddr>,
    pub clock: Arc<dyn Clock>,
    /// How often shards check comm loss and shelve expiry.
    pub tick: Duration,
    /// Start the MQTT collector (tests of the pipeline alone turn it off).
    pub mqtt: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            http: None,
            clock: Arc::new(SystemClock),
            tick: Duration::from_secs(1),
            mqtt: true,
        }
    }
}

pub struct Running {
    pub http_addr: SocketAddr,
    pub pipeline: Pipeline,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    /// Device commands to Modbus controllers.
    pub commander: crate::collect::modbus::Commander,
    /// Alerts to on-call staff, when configured.
    pub notifier: Option<crate::notify::Notifier>,
    notify: (CancellationToken, Option<JoinHandle<()>>),
    sink: (CancellationToken, Option<JoinHandle<()>>),
    collectors: (CancellationToken, Vec<JoinHandle<()>>),
    shards: (CancellationToken, Vec<JoinHandle<()>>),
    http: (CancellationToken, JoinHandle<()>),
}

/// Batches (one per message or command) waiting for the store writer. The
/// writer commits everything waiting as one group (up to 4,096), so this is
/// what lets a group grow with the load: with 64, a commit took at most 64
/// messages and the shards waited on the writer from ~8,000 msg/s on, while
/// each commit's sync was shared by a handful of messages.
const STORE_QUEUE: usize = 4096;

pub async fn start(cfg: Config, opts: Options) -> anyhow::Result<Running> {
    let cfg = Arc::new(cfg);
    let metrics = Arc::new(Metrics::new());
    let quarantine = Arc::new(crate::pipeline::Quarantine::new(cfg.service.quarantine_capacity));
    let (store, mut restored) = Store::open_at(
        &cfg.store_location(),
        STORE_QUEUE,
        crate::store::Retention {
            inputs_days: cfg.store.inputs_retention_days,
            readings_days: cfg.store.readings_retention_days,
            rollup_1m_days: cfg.store.rollup_1m_retention_days,
            rollup_1h_days: cfg.store.rollup_1h_retention_days,
        },
        cfg.influx.is_some(),
        metrics.clone(),
        quarantine.clone(),
    )
    .with_context(|| format!("opening the store at {}", cfg.store_location()))?;
    tracing::info!(
        store = %cfg.store_location(),
        open_alarms = restored.open_alarms.len(),
        rule_states = restored.rule_states.len(),
        "store opened"
    );
    let session_key = restored.session_key.clone();
    let revoked_sessions = std::mem::take(&mut restored.revoked_sessions);
    let shard_cancel = CancellationToken::new();
    let (pipeline, shard_tasks) = Pipeline::start(PipelineDeps {
        config: cfg.clone(),
        clock: opts.clock.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        restored,
        cancel: shard_cancel.clone(),
        quarantine,
        tick: opts.tick,
    });

    let coll_cancel = CancellationToken::new();
    let mut coll_tasks = Vec::new();
    let mut collectors = Vec::new();
    if opts.mqtt {
        let c = MqttCollector::new(cfg.clone(), pipeline.clone(), opts.clock.clone(), metrics.clone());
        coll_tasks.push(tokio::spawn(c.run(coll_cancel.clone())));
        collectors.push("mqtt");
    }

    let modbus = crate::collect::modbus::ModbusCollector::new(
        cfg.clone(),
        pipeline.clone(),
        opts.clock.clone(),
        metrics.clone(),
    );
    let commander = modbus.commander();
    let state_commander = commander.clone();
    if modbus.has_work() {
        coll_tasks.push(tokio::spawn(modbus.run(coll_cancel.clone())));
    }

    let addr = opts.http.unwrap_or(cfg.http_listen);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP on {addr}"))?;
    let http_addr = listener.local_addr()?;
    let http_cancel = CancellationToken::new();
    let notify_cancel = CancellationToken::new();
    let mut notify_task = None;
    let notifier = match &cfg.notify {
        Some(n) => {
            let public = cfg
                .http
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{http_addr}"));
            let (notifier, task) = crate::notify::Notifier::start(
                cfg.clone(),
                n.clone(),
                opts.clock.clone(),
                pipeline.clone(),
                metrics.clone(),
                public,
                store.subscribe(),
                notify_cancel.clone(),
            )
            .context("starting notifications")?;
            notify_task = Some(task);
            Some(notifier)
        }
        None => None,
    };
    // The InfluxDB sink reads the export feed (durable: whatever commits
    // before it runs, or was left by an earlier run, is in the feed).
    let sink_cancel = CancellationToken::new();
    let sink_task = match &cfg.influx {
        Some(i) => Some(
            crate::sink::influx::Sink::new(&cfg, i, metrics.clone())
                .context("starting the InfluxDB sink")?
                .start(store.subscribe(), sink_cancel.clone()),
        ),
        None => None,
    };
    let state = AppState {
        cfg: cfg.clone(),
        pipeline: pipeline.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        sessions: Arc::new(Sessions::new(session_key, &cfg.users, revoked_sessions)),
        started: chrono::Utc::now(),
        collectors,
        commander,
        shutdown: http_cancel.clone(),
        notifier: notifier.clone(),
        streams: api::streams::EventStreams::new(cfg.http.max_event_streams, cfg.http.max_event_streams_per_caller),
        replays: Default::default(),
        clock: opts.clock.clone(),
    };
    if let Some(addr) = cfg.http.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        let app = api::metrics_router(state.clone());
        let hc = http_cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(async move { hc.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    let hc = http_cancel.clone();
    let http_task = tokio::spawn(async move {
        let app = api::router(state);
        // With the peer's address: login throttling is by client.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { hc.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(http = %http_addr, sites = cfg.sites.len(), shards = cfg.service.shards, "mizuban running");
    Ok(Running {
        http_addr,
        pipeline,
        store,
        metrics,
        config: cfg,
        commander: state_commander,
        notifier,
        notify: (notify_cancel, notify_task),
        sink: (sink_cancel, sink_task),
        collectors: (coll_cancel, coll_tasks),
        shards: (shard_cancel, shard_tasks),
        http: (http_cancel, http_task),
    })
}

impl Running {
    /// Stops in order; everything accepted before the call is stored.
    pub async fn shutdown(self) {
        self.collectors.0.cancel();
        for t in self.collectors.1 {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "collector task ended abnormally");
            }
        }
        // The notification engine keeps its place in the journal; whatever the
        // shards still commit is picked up at the next start.
        self.notify.0.cancel();
        if let Some(t) = self.notify.1 {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "notification task ended abnormally");
            }
        }
        self.shards.0.cancel();
        for t in self.shards.1 {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "pipeline task ended abnormally");
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final store flush failed");
        }
        // What the sink has not delivered stays in the export feed for the next start.
        self.sink.0.cancel();
        if let Some(t) = self.sink.1 {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "InfluxDB sink task ended abnormally");
            }
        }
        self.http.0.cancel();
        // Event streams end on the cancellation; other requests get 5 s to finish.
        let mut task = self.http.1;
        if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
            tracing::warn!("HTTP connections still open at shutdown; closing them");
            task.abort();
        }
        tracing::info!("mizuban stopped");
    }
}
