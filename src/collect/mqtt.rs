//! MQTT collector (rumqttc): subscribes to every topic of every device profile
//! at QoS 1 on a persistent session, decodes each message with its profile and
//! hands it to its site's pipeline shard. Acknowledgements are manual: a
//! message is PUBACKed only after the store committed it (or after it was
//! quarantined or recognised as a duplicate), so the broker redelivers anything
//! we had not made durable when we stopped.
//!
//! Failures of the connection are retried with exponential backoff and jitter;
//! each is logged and counted (`mizuban_mqtt_errors`, `mizuban_mqtt_reconnects`).

use crate::config::{Config, MqttSection};
use crate::device::{self, Profile};
use crate::model::{Clock, SiteId};
use crate::pipeline::{preview, Incoming, Pipeline, QuarantineEntry};
use crate::store::Ack;
use crate::telemetry::{events, Metrics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Releases PUBACKs in the order the PUBLISHes arrived, as MQTT 3.1.1 §4.6
/// requires (rumqttd, for one, stops delivering on an out-of-order ack).
/// Messages become durable out of order — a quarantined message at once, a
/// good one after its shard's commit, shards in parallel — so each is marked
/// done here and the contiguous prefix is acknowledged.
#[derive(Default)]
struct AckOrder {
    // A std Mutex: held for a few map operations, never across an await.
    inner: Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    next_id: u64,
    next_to_ack: u64,
    waiting: BTreeMap<u64, Option<Publish>>,
}

impl AckOrder {
    fn register(&self) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = g.next_id;
        g.next_id += 1;
        g.waiting.insert(id, None);
        id
    }

    /// After a reconnect nothing earlier can be acknowledged any more (the
    /// broker redelivers it); start the order afresh.
    fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.waiting.clear();
        g.next_to_ack = g.next_id;
    }

    fn done(&self, id: u64, publish: Publish, client: &AsyncClient) {
        let ready: Vec<Publish> = {
            let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if id < g.next_to_ack {
                return; // from before a reconnect
            }
            g.waiting.insert(id, Some(publish));
            let mut out = Vec::new();
            loop {
                let next = g.next_to_ack;
                match g.waiting.get(&next) {
                    Some(Some(_)) => {
                        if let Some(Some(p)) = g.waiting.remove(&next) {
                            out.push(p);
                        }
                        g.next_to_ack += 1;
                    }
                    _ => break,
                }
            }
            out
        };
        for p in ready {
            if let Err(e) = client.try_ack(&p) {
                // The connection is gone; the broker will redeliver and dedup drops it.
                tracing::debug!(topic = %p.topic, error = %e, "ack not sent");
            }
        }
    }
}

/// PUBACKs one message (in arrival order) once it is durable.
struct MqttAck {
    client: AsyncClient,
    publish: Publish,
    order: Arc<AckOrder>,
    id: u64,
}

impl Ack for MqttAck {
    fn ack(self: Box<Self>) {
        let MqttAck {
            client,
            publish,
            order,
            id,
        } = *self;
        order.done(id, publish, &client);
    }
}

pub struct MqttCollector {
    cfg: Arc<Config>,
    profiles: Vec<Arc<Profile>>,
    pipeline: Pipeline,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    order: Arc<AckOrder>,
}

pub fn options(m: &MqttSection) -> MqttOptions {
    let mut o = MqttOptions::new(&m.client_id, &m.host, m.port);
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
    o
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

impl MqttCollector {
    pub fn new(cfg: Arc<Config>, pipeline: Pipeline, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let mut profiles: Vec<Arc<Profile>> = cfg.profiles.values().cloned().collect();
        profiles.sort_by(|a, b| a.device.model.cmp(&b.device.model));
        Self {
            cfg,
            profiles,
            pipeline,
            clock,
            metrics,
            order: Arc::default(),
        }
    }

    pub async fn run(self, cancel: CancellationToken) {
        let m = &self.cfg.mqtt;
        let (client, mut eventloop) = AsyncClient::new(options(m), 256);
        let span = tracing::info_span!("collector", protocol = "mqtt", broker = %format!("{}:{}", m.host, m.port));
        let _g = span.enter();
        drop(_g);
        let mut backoff = m.backoff_min_ms;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = m.backoff_min_ms;
                    self.order.reset();
                    self.metrics.mqtt_connected.set(1);
                    tracing::info!(session_present = ack.session_present, "mqtt connected");
                    // Subscribe every time: cheap, and right even if the broker lost the session.
                    for f in filters(&self.cfg) {
                        if let Err(e) = client.subscribe(&f, QoS::AtLeastOnce).await {
                            tracing::error!(filter = %f, error = %e, "subscribe request failed");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&client, p).await,
                Ok(_) => {}
                Err(e) => {
                    let kind = match &e {
                        rumqttc::ConnectionError::Io(_) => "io",
                        rumqttc::ConnectionError::ConnectionRefused(_) => "refused",
                        rumqttc::ConnectionError::MqttState(_) => "protocol",
                        rumqttc::ConnectionError::NetworkTimeout | rumqttc::ConnectionError::FlushTimeout => "timeout",
                        _ => "other",
                    };
                    let jitter = rand::random::<u64>() % (backoff / 4 + 1);
                    let wait = backoff + jitter;
                    events::MqttError {
                        kind,
                        error: &e.to_string(),
                        retry_in_ms: wait,
                    }
                    .emit(&self.metrics);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    }
                    backoff = (backoff * 2).min(m.backoff_max_ms);
                }
            }
        }
        self.metrics.mqtt_connected.set(0);
        if let Err(e) = client.try_disconnect() {
            tracing::debug!(error = %e, "disconnect not sent");
        }
        tracing::info!("mqtt collector stopped");
    }

    async fn on_publish(&self, client: &AsyncClient, p: Publish) {
        let arrived = self.clock.now();
        let received = std::time::Instant::now();
        let topic = p.topic.clone();
        let ack = Box::new(MqttAck {
            client: client.clone(),
            publish: p.clone(),
            order: self.order.clone(),
            id: self.order.register(),
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
                payload: preview(&p.payload),
                size: p.payload.len(),
            });
        };
        let Some(local_topic) = topic.strip_prefix(self.cfg.mqtt.topic_prefix.as_str()) else {
            quarantine(
                "unknown_topic",
                format!("topic {topic:?} is outside the prefix {:?}", self.cfg.mqtt.topic_prefix),
            );
            ack.ack();
            return;
        };
        let mut decoded = None;
        for prof in &self.profiles {
            match device::decode(prof, local_topic, &p.payload, arrived, self.cfg.mqtt.max_payload_bytes) {
                Ok(Some(d)) => {
                    decoded = Some(d);
                    break;
                }
                Ok(None) => continue,
                Err(e) => {
                    quarantine(e.reason(), e.to_string());
                    ack.ack();
                    return;
                }
            }
        }
        let Some(d) = decoded else {
            quarantine("unknown_topic", format!("topic {topic:?} matches no device profile"));
            ack.ack();
            return;
        };
        let site = match SiteId::new(&d.site) {
            Ok(s) if self.cfg.site(s.as_str()).is_some() => s,
            _ => {
                quarantine("unknown_site", format!("site {:?} is not configured", d.site));
                ack.ack();
                return;
            }
        };
        let msg = Incoming {
            decoded: d,
            topic: topic.clone(),
            raw: preview(&p.payload),
            arrived,
            received,
            ack: Some(ack),
        };
        if let Err(e) = self.pipeline.submit(&site, msg).await {
            // Not acked: the broker redelivers after we restart.
            tracing::error!(topic = %topic, error = %e, "pipeline unavailable");
        }
    }
}
