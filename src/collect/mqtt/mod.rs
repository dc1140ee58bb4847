//! MQTT collector (rumqttc): subscribes to every topic of every device profile
//! at QoS 1 on a persistent session, decodes each message with its profile and
//! hands it to its site's pipeline shard. Acknowledgements are manual: a
//! message is PUBACKed only after the store committed it (or after it was
//! quarantined or recognised as a duplicate), so the broker redelivers anything
//! we had not made durable when we stopped.
//!
//! Three tasks, so that the connection is never starved by the work behind it:
//!
//! - the **event loop** does nothing but poll rumqttc (keep-alive pings,
//!   reading, flushing acks) and hand each PUBLISH to the intake queue without
//!   waiting. A full intake queue (policy: defer and reconnect — only a broker
//!   whose in-flight window is larger than the queue gets there) takes nothing
//!   more until what it took is acknowledged, then drops the connection on
//!   purpose so the broker redelivers the rest: never lost, never blocking;
//! - the **intake** decodes and submits to the pipeline, waiting while the
//!   pipeline is behind (policy: block; the broker's in-flight window then
//!   holds the rest back);
//! - the **acker** sends the PUBACKs the [`ledger`] releases, in order, waiting
//!   for room in rumqttc's request queue (never `try_ack`: a dropped PUBACK
//!   holds the broker's in-flight window for ever).
//!
//! A watchdog checks the ledger every second: messages owed and none
//! acknowledged for `stall_after_s` is a stall, shown in health (503) and
//! `mizuban_mqtt_stalled`; when acks are what is stuck, or a message was
//! dropped without a decision, the connection is re-established so the broker
//! redelivers. Failures of the connection are retried with exponential backoff
//! and jitter; each is logged and counted.

pub mod credentials;
mod ledger;
pub mod tls;

pub use ledger::{Ledger, Stall, Ticket};

use crate::config::{Config, MqttSection};
use crate::device::Profile;
use crate::model::{Clock, Timestamp};
use crate::pipeline::{preview, Incoming, Pipeline, QuarantineEntry};
use crate::store::Ack;
use crate::store::{InputBody, RecordedInput};
use crate::telemetry::{events, Metrics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// State the collector's three tasks share.
struct Shared {
    // A std Mutex: held for a few map operations, never across an await.
    ledger: Mutex<Ledger<Publish>>,
    /// Wakes the acker: something was released.
    acks_ready: Notify,
    /// Asks the event loop to drop the connection, and why.
    reconnect: Mutex<Option<&'static str>>,
    reconnect_wake: Notify,
    /// Payload bytes of the messages taken and not yet acknowledged (see [`Held`]).
    taken_bytes: AtomicUsize,
}

/// A taken message's payload bytes, counted against `mqtt.intake_bytes`
/// until its acknowledgement is handed to the ledger, or it is dropped.
struct Held {
    shared: Arc<Shared>,
    bytes: usize,
}

impl Held {
    fn new(shared: &Arc<Shared>, bytes: usize) -> Self {
        shared.taken_bytes.fetch_add(bytes, Ordering::Relaxed);
        Self {
            shared: shared.clone(),
            bytes,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared.taken_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger<Publish>> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn want_reconnect(&self, why: &'static str) {
        *self.reconnect.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.reconnect_wake.notify_one();
    }

    fn take_reconnect(&self) -> Option<&'static str> {
        self.reconnect.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// PUBACKs one message (in arrival order) once it is durable. Dropped without
/// `ack` (its batch was lost), it can never be acknowledged and nothing after
/// it either: the connection is re-established so the broker redelivers.
struct MqttAck {
    shared: Arc<Shared>,
    ticket: Ticket,
    publish: Option<Publish>,
    _held: Held,
}

impl Ack for MqttAck {
    fn ack(mut self: Box<Self>) {
        if let Some(p) = self.publish.take() {
            if self.shared.ledger().done(self.ticket, p) > 0 {
                self.shared.acks_ready.notify_one();
            }
        }
    }
}

impl Drop for MqttAck {
    fn drop(&mut self) {
        if self.publish.is_some() && self.shared.ledger().is_current(self.ticket) {
            self.shared.want_reconnect("abandoned");
        }
    }
}

/// A PUBLISH on its way from the event loop to the intake task.
struct Taken {
    ticket: Ticket,
    held: Held,
    publish: Publish,
    arrived: Timestamp,
    received: Instant,
}

pub struct MqttCollector {
    cfg: Arc<Config>,
    profiles: Vec<Arc<Profile>>,
    pipeline: Pipeline,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

/// Connection options; `base` is the configuration's directory (TLS files
/// are relative to it).
pub fn options(m: &MqttSection, base: &std::path::Path) -> Result<MqttOptions, tls::TlsError> {
    let mut o = MqttOptions::new(&m.client_id, &m.host, m.port);
    if let Some(t) = &m.tls {
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            tls::client_config(t, base)?,
        )));
    }
    o.set_keep_alive(Duration::from_secs(m.keep_alive_s.max(5) as u64));
    o.set_clean_session(!m.persistent_session);
    o.set_manual_acks(true);
    // Accept far more than our own limit so an oversized payload is read and
    // quarantined with a reason instead of breaking the connection (and then
    // being redelivered for ever).
    let incoming = (m.max_payload_bytes * 4).max(16 * 1024 * 1024);
    o.set_max_packet_size(incoming, 64 * 1024);
    o.set_inflight(100);
    if let (Some(u), Some(p)) = (&m.username, &m.password) {
        o.set_credentials(u, p);
    }
    Ok(o)
}

/// Every subscription filter of every profile, deduplicated.
pub fn filters(cfg: &Config) -> Vec<String> {
    let mut f: Vec<String> = cfg
        .profiles
        .values()
        .flat_map(|p| {
            p.topics
                .iter()
                .map(|t| format!("{}{}", cfg.mqtt.topic_prefix, t.filter()))
        })
        .collect();
    f.sort();
    f.dedup();
    f
}

fn error_kind(e: &rumqttc::ConnectionError) -> &'static str {
    match e {
        rumqttc::ConnectionError::Io(_) => "io",
        rumqttc::ConnectionError::ConnectionRefused(_) => "refused",
        rumqttc::ConnectionError::MqttState(_) => "protocol",
        rumqttc::ConnectionError::NetworkTimeout | rumqttc::ConnectionError::FlushTimeout => "timeout",
        _ => "other",
    }
}

impl MqttCollector {
    pub fn new(cfg: Arc<Config>, pipeline: Pipeline, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let profiles = crate::engine::profiles_in_order(&cfg);
        Self {
            cfg,
            profiles,
            pipeline,
            clock,
            metrics,
            shared: Arc::new(Shared {
                ledger: Mutex::new(Ledger::new(Instant::now())),
                acks_ready: Notify::new(),
                reconnect: Mutex::new(None),
                reconnect_wake: Notify::new(),
                taken_bytes: AtomicUsize::new(0),
            }),
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let m = self.cfg.mqtt.clone();
        // Room for a whole in-flight window of acks and the subscriptions.
        let base = self.cfg.file.parent().unwrap_or(std::path::Path::new("")).to_path_buf();
        let opts = match options(&m, &base) {
            Ok(o) => o,
            Err(e) => {
                // Checked at load too; here only if a file went away since.
                tracing::error!(error = %e, "mqtt TLS configuration unusable; collector not started");
                self.metrics.mqtt_connected.set(0);
                return;
            }
        };
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let (intake_tx, intake_rx) = mpsc::channel::<Taken>(m.intake_queue.max(1));
        let this = Arc::new(self);
        let tasks_cancel = cancel.child_token();
        let intake = tokio::spawn(this.clone().intake(intake_rx, tasks_cancel.clone()));
        let acker = tokio::spawn(this.clone().acker(client.clone(), tasks_cancel.clone()));

        let stall_after = Duration::from_secs(m.stall_after_s.max(1));
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_forced: Option<Instant> = None;
        // After an intake overflow: take nothing more until everything already
        // taken is acknowledged, then reconnect (see `take`).
        let mut draining = false;
        let mut backoff = m.backoff_min_ms;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = eventloop.poll() => ev,
                _ = watchdog.tick() => {
                    if draining && this.shared.ledger().owed() == 0 {
                        draining = false;
                        last_forced = Some(Instant::now());
                        this.force_reconnect(&mut eventloop, "intake_full");
                    }
                    let (stall, owed) = {
                        let mut l = this.shared.ledger();
                        (l.check(Instant::now(), stall_after), l.owed())
                    };
                    this.show_stall(stall.as_ref(), owed);
                    if let Some(s) = stall {
                        // Reconnecting helps only when our acks are what is stuck;
                        // owed messages still in the pipeline are the store's story.
                        let due = last_forced.is_none_or(|t| t.elapsed() >= stall_after);
                        if s.acks_stuck && due {
                            this.shared.want_reconnect("acks_stuck");
                        }
                    }
                    continue;
                }
                _ = this.shared.reconnect_wake.notified() => {
                    if let Some(why) = this.shared.take_reconnect() {
                        last_forced = Some(Instant::now());
                        this.force_reconnect(&mut eventloop, why);
                    }
                    continue;
                }
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = m.backoff_min_ms;
                    this.shared.ledger().reset(Instant::now());
                    this.metrics.mqtt_connected.set(1);
                    tracing::info!(session_present = ack.session_present, "mqtt connected");
                    // Subscribe every time: cheap, and right even if the broker
                    // lost the session. From a task: the request queue drains
                    // only while this loop polls.
                    let c = client.clone();
                    let subs: Vec<_> = filters(&this.cfg)
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce))
                        .collect();
                    tokio::spawn(async move {
                        if let Err(e) = c.subscribe_many(subs).await {
                            tracing::error!(error = %e, "subscribe request failed");
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if draining {
                        // Not registered, never acknowledged: the broker sends
                        // it again after the reconnect below.
                        this.metrics.mqtt_deferred.inc();
                    } else if !this.take(&intake_tx, p) {
                        draining = true;
                    }
                    if draining && this.shared.ledger().owed() == 0 {
                        // Everything taken before the overflow is acknowledged:
                        // reconnect, and the broker redelivers the rest.
                        draining = false;
                        last_forced = Some(Instant::now());
                        this.force_reconnect(&mut eventloop, "intake_full");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // rumqttc has dropped the connection; nothing of it can be
                    // acknowledged any more.
                    this.metrics.mqtt_connected.set(0);
                    this.shared.ledger().reset(Instant::now());
                    let jitter = rand::random::<u64>() % (backoff / 4 + 1);
                    let wait = backoff + jitter;
                    events::MqttError {
                        kind: error_kind(&e),
                        error: &e.to_string(),
                        retry_in_ms: wait,
                    }
                    .emit(&this.metrics);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    backoff = (backoff * 2).min(m.backoff_max_ms);
                }
            }
        }
        this.metrics.mqtt_connected.set(0);
        tasks_cancel.cancel();
        for t in [intake, acker] {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "mqtt collector task ended abnormally");
            }
        }
        if let Err(e) = client.try_disconnect() {
            tracing::debug!(error = %e, "disconnect not sent");
        }
        tracing::info!("mqtt collector stopped");
    }

    /// Registers a PUBLISH and queues it for the intake without waiting.
    /// `false` when the intake is full (policy: defer and reconnect). A
    /// broker keeps at most its in-flight window unacknowledged, so this
    /// happens only when the window is larger than `mqtt.intake_queue`. Then
    /// the overflowing message and the ones after it are not taken; once
    /// everything taken is acknowledged the connection is re-established and
    /// the broker redelivers them. Every round acknowledges what it took, so
    /// the intake always makes progress (a reconnect that dropped taken work
    /// could repeat for ever).
    ///
    /// The same holds for bytes: once the payloads taken and not yet
    /// acknowledged would pass `mqtt.intake_bytes`. A message is always
    /// taken when nothing of this connection is owed: payloads of the last
    /// connection still in the pipeline must not defer the new one's first
    /// message (a reconnect at once, again and again, until they are stored).
    fn take(&self, intake: &mpsc::Sender<Taken>, publish: Publish) -> bool {
        let full = || {
            self.metrics
                .queue_full
                .get_or_create(&crate::telemetry::metrics_edge("mqtt->intake"))
                .inc();
            self.metrics.mqtt_deferred.inc();
            false
        };
        let bytes = publish.payload.len();
        let taken = self.shared.taken_bytes.load(Ordering::Relaxed);
        if taken > 0 && taken + bytes > self.cfg.mqtt.intake_bytes && self.shared.ledger().owed() > 0 {
            return full();
        }
        let permit = match intake.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => return full(),
            Err(mpsc::error::TrySendError::Closed(())) => return true,
        };
        let ticket = self.shared.ledger().register(Instant::now());
        permit.send(Taken {
            ticket,
            held: Held::new(&self.shared, bytes),
            publish,
            arrived: self.clock.now(),
            received: Instant::now(),
        });
        true
    }

    /// Drops the connection on purpose; the next poll reconnects and the
    /// broker redelivers everything not acknowledged.
    fn force_reconnect(&self, eventloop: &mut rumqttc::EventLoop, why: &'static str) {
        events::MqttForcedReconnect {
            reason: why,
            owed: self.shared.ledger().owed(),
        }
        .emit(&self.metrics);
        self.shared.ledger().reset(Instant::now());
        // Closes the socket, keeps what rumqttc must resend and drops the
        // PUBACKs still queued (they belong to the old connection).
        eventloop.clean();
        self.metrics.mqtt_connected.set(0);
    }

    fn show_stall(&self, stall: Option<&Stall>, owed: u64) {
        self.metrics.mqtt_owed.set(owed as i64);
        let was = self.metrics.mqtt_stalled.get() == 1;
        match stall {
            Some(s) => {
                self.metrics.mqtt_stalled.set(1);
                self.metrics.mqtt_stalled_seconds.set(s.for_s as i64);
                if !was {
                    events::MqttStalled(s).emit(&self.metrics);
                }
            }
            None => {
                self.metrics.mqtt_stalled.set(0);
                self.metrics.mqtt_stalled_seconds.set(0);
                if was {
                    tracing::info!("mqtt intake moving again");
                }
            }
        }
    }

    /// Sends released PUBACKs in order, waiting for room in the client's queue.
    async fn acker(self: Arc<Self>, client: AsyncClient, cancel: CancellationToken) {
        loop {
            let next = self.shared.ledger().pop_ready();
            let Some((gen, publish)) = next else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.shared.acks_ready.notified() => continue,
                }
            };
            if gen != self.shared.ledger().generation() {
                continue; // of a connection that is gone: the broker redelivers
            }
            let sent = tokio::select! {
                _ = cancel.cancelled() => return,
                r = client.ack(&publish) => r,
            };
            match sent {
                Ok(()) => self.shared.ledger().sent(Instant::now()),
                Err(e) => {
                    // Only when the event loop is gone (shutdown).
                    tracing::warn!(topic = %publish.topic, error = %e, "ack not sent: client closed");
                    return;
                }
            }
        }
    }

    /// Decodes and submits each taken message, waiting while the pipeline is behind.
    async fn intake(self: Arc<Self>, mut rx: mpsc::Receiver<Taken>, cancel: CancellationToken) {
        loop {
            let taken = tokio::select! {
                _ = cancel.cancelled() => return,
                t = rx.recv() => match t { Some(t) => t, None => return },
            };
            if !self.shared.ledger().is_current(taken.ticket) {
                continue; // its connection was replaced: the broker redelivers it
            }
            tokio::select! {
                // Shutdown while the pipeline is full: not acked, redelivered.
                _ = cancel.cancelled() => return,
                _ = self.on_publish(taken) => {}
            }
        }
    }

    async fn on_publish(&self, taken: Taken) {
        let Taken {
            ticket,
            held,
            publish: p,
            arrived,
            received,
        } = taken;
        let topic = p.topic.clone();
        let payload = p.payload.clone();
        let ack = Box::new(MqttAck {
            shared: self.shared.clone(),
            ticket,
            publish: Some(p),
            _held: held,
        });
        let quarantine = |reason: &str, error: String| {
            events::Quarantined {
                topic: &topic,
                reason,
                error: &error,
            }
            .emit(&self.metrics);
            self.pipeline.quarantine.push(QuarantineEntry {
                at: arrived,
                topic: topic.clone(),
                reason: reason.into(),
                error,
                whole: true,
                payload: preview(&payload),
                size: payload.len(),
            });
        };
        let record = |site: Option<String>| RecordedInput {
            arrived,
            site,
            body: InputBody::Mqtt {
                topic: topic.clone(),
                payload: payload.clone(),
            },
        };
        let (site, msg) =
            match crate::engine::decode_publish(&self.cfg, &self.profiles, &topic, &payload, arrived, true) {
                Ok(m) => m,
                Err(r) => {
                    quarantine(&r.reason, r.error);
                    // Recorded as received (replay judges it the same way), and
                    // acknowledged once that record is durable.
                    if let Err(e) = self.pipeline.record(record(None), Some(ack)).await {
                        // Not acked (the ack's drop asks for a reconnect); the broker redelivers.
                        tracing::error!(topic = %topic, error = %e, "store unavailable");
                    }
                    return;
                }
            };
        let msg = Incoming {
            decoded: msg.decoded,
            topic: msg.topic,
            raw: msg.raw,
            arrived,
            received,
            ack: Some(ack),
            input: record(Some(site.to_string())),
        };
        if let Err(e) = self.pipeline.submit(&site, msg).await {
            // Not acked (the ack's drop asks for a reconnect); the broker redelivers.
            tracing::error!(topic = %topic, error = %e, "pipeline unavailable");
        }
    }
}
