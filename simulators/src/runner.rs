//! Connects a simulated device to a broker and drives it. `Mode::Realtime`
//! follows the wall clock (demo); `Mode::Stepped` moves only when a test calls
//! `advance`, which returns once the broker has acknowledged everything sent.

use crate::wire::{Device, Msg};
use crate::Scenario;
use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

#[derive(Debug, Clone)]
pub enum Mode {
    /// Step the device every `step` of wall time, at wall-clock time.
    Realtime { step: Duration },
    /// Device time starts at `start` and moves in `step`s when told to.
    Stepped {
        start: DateTime<Utc>,
        step: chrono::Duration,
    },
}

#[derive(Debug, Clone)]
pub struct SpawnOptions {
    pub host: String,
    pub port: u16,
    pub mode: Mode,
    /// Prepended to every topic (lets parallel tests share one broker).
    pub topic_prefix: String,
    /// User name and password for the broker.
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator {device}: broker did not accept the connection: {reason}")]
    Connect { device: String, reason: String },
    #[error("simulator {device}: broker did not acknowledge {pending} message(s) within {waited:?}")]
    NotAcked {
        device: String,
        pending: usize,
        waited: Duration,
    },
    #[error("simulator {0} has stopped")]
    Stopped(String),
    #[error("simulator {0}: advance needs Mode::Stepped")]
    NotStepped(String),
}

enum Cmd {
    Inject(Scenario),
    Advance(chrono::Duration, oneshot::Sender<Result<DateTime<Utc>, SimError>>),
    Raw(Msg, oneshot::Sender<Result<(), SimError>>),
    Stop(bool, oneshot::Sender<()>),
}

/// Scriptable handle to one running simulated device.
#[derive(Clone)]
pub struct Handle {
    id: String,
    site: String,
    tx: mpsc::Sender<Cmd>,
    sent: Arc<AtomicUsize>,
}

struct Link {
    sent: Arc<AtomicUsize>,
    prefix: String,
    client: AsyncClient,
    pending: Arc<AtomicUsize>,
    acked: Arc<Notify>,
    id: String,
}

impl Link {
    async fn send(&self, m: Msg) -> Result<(), SimError> {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if !m.resend {
            self.sent.fetch_add(1, Ordering::SeqCst);
        }
        self.client
            .publish(
                format!("{}{}", self.prefix, m.topic),
                QoS::AtLeastOnce,
                m.retain,
                m.payload,
            )
            .await
            .map_err(|_| SimError::Stopped(self.id.clone()))
    }

    /// Waits (bounded) until the broker acknowledged every publish.
    async fn flush(&self) -> Result<(), SimError> {
        let waited = Duration::from_secs(20);
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            let notified = self.acked.notified();
            let n = self.pending.load(Ordering::SeqCst);
            if n == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(SimError::NotAcked {
                    device: self.id.clone(),
                    pending: n,
                    waited,
                });
            }
        }
    }
}

/// Connects the device and starts driving it. Returns once the broker accepted
/// the connection.
pub async fn spawn(mut dev: Box<dyn Device>, opts: SpawnOptions) -> Result<Handle, SimError> {
    let id = dev.id().to_string();
    let site = dev.site().to_string();
    // Unique per namespace: two tests simulating the same device on one broker
    // must not take each other's session.
    let mut mo = MqttOptions::new(
        format!("sim-{}{id}", opts.topic_prefix.replace('/', "-")),
        &opts.host,
        opts.port,
    );
    mo.set_keep_alive(Duration::from_secs(30));
    mo.set_max_packet_size(8 * 1024 * 1024, 8 * 1024 * 1024);
    if let Some((u, p)) = &opts.credentials {
        mo.set_credentials(u, p);
    }
    let will = dev.will();
    mo.set_last_will(LastWill::new(
        format!("{}{}", opts.topic_prefix, will.topic),
        will.payload,
        QoS::AtLeastOnce,
        will.retain,
    ));
    let (client, mut eventloop) = AsyncClient::new(mo, 64);
    let pending = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Notify::new());
    let (conn_tx, conn_rx) = oneshot::channel::<Result<(), String>>();
    let stop_loop = Arc::new(AtomicBool::new(false));
    {
        let pending = pending.clone();
        let acked = acked.clone();
        let stop_loop = stop_loop.clone();
        let mut conn_tx = Some(conn_tx);
        tokio::spawn(async move {
            let mut failures = 0u32;
            while !stop_loop.load(Ordering::SeqCst) {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failures = 0;
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        pending.fetch_sub(1, Ordering::SeqCst);
                        acked.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator connection error; reconnecting");
                        failures += 1;
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        if stop_loop.load(Ordering::SeqCst) {
                            return;
                        }
                        // Reconnect like a device: back off, keep the outbox.
                        tokio::time::sleep(Duration::from_millis((100 * 2u64.pow(failures.min(6))).min(5000))).await;
                    }
                }
            }
        });
    }
    match tokio::time::timeout(Duration::from_secs(10), conn_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(reason))) => return Err(SimError::Connect { device: id, reason }),
        _ => {
            return Err(SimError::Connect {
                device: id,
                reason: "no CONNACK within 10 s".into(),
            })
        }
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let link = Link {
        sent: sent.clone(),
        prefix: opts.topic_prefix.clone(),
        client,
        pending,
        acked,
        id: id.clone(),
    };
    let (tx, mut rx) = mpsc::channel::<Cmd>(64);
    let dev_id = id.clone();
    tokio::spawn(async move {
        let mut sim_now = match &opts.mode {
            Mode::Stepped { start, .. } => *start,
            Mode::Realtime { .. } => Utc::now(),
        };
        // A device starts working when it is switched on: its first step is
        // its start time (status on boot, first sample one interval later).
        if let Mode::Stepped { .. } = &opts.mode {
            for m in dev.step(sim_now) {
                if link.send(m).await.is_err() {
                    break;
                }
            }
        }
        let mut iv = match &opts.mode {
            Mode::Realtime { step } => Some(tokio::time::interval(*step)),
            Mode::Stepped { .. } => None,
        };
        loop {
            let tick = async {
                match iv.as_mut() {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Inject(s)) => dev.inject(s, sim_now),
                    Some(Cmd::Raw(m, reply)) => {
                        let r = link.send(m).await;
                        let r = match r { Ok(()) => link.flush().await, Err(e) => Err(e) };
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Advance(d, reply)) => {
                        let Mode::Stepped { step, .. } = &opts.mode else {
                            let _ = reply.send(Err(SimError::NotStepped(dev_id.clone())));
                            continue;
                        };
                        let target = sim_now + d;
                        let mut result = Ok(());
                        while sim_now < target && result.is_ok() {
                            sim_now = (sim_now + *step).min(target);
                            for m in dev.step(sim_now) {
                                if let Err(e) = link.send(m).await { result = Err(e); break; }
                            }
                        }
                        let result = match result { Ok(()) => link.flush().await, Err(e) => Err(e) };
                        let _ = reply.send(result.map(|_| sim_now));
                    }
                    Some(Cmd::Stop(graceful, reply)) => {
                        if graceful {
                            // A clean DISCONNECT: no last will.
                            let _ = link.flush().await;
                            let _ = link.client.disconnect().await;
                        }
                        stop_loop.store(true, Ordering::SeqCst);
                        let _ = reply.send(());
                        break;
                    }
                },
                _ = tick => {
                    sim_now = Utc::now();
                    for m in dev.step(sim_now) {
                        if link.send(m).await.is_err() { break; }
                    }
                }
            }
        }
    });
    Ok(Handle { id, site, tx, sent })
}

impl Handle {
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Distinct messages published so far (raw ones included, byte-identical
    /// redeliveries not).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    pub async fn inject(&self, s: Scenario) -> Result<(), SimError> {
        self.tx
            .send(Cmd::Inject(s))
            .await
            .map_err(|_| SimError::Stopped(self.id.clone()))
    }

    /// Stepped mode: moves device time by `d`, publishing what the device
    /// sends; returns the new device time once the broker acknowledged all.
    pub async fn advance(&self, d: chrono::Duration) -> Result<DateTime<Utc>, SimError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Advance(d, tx))
            .await
            .map_err(|_| SimError::Stopped(self.id.clone()))?;
        rx.await.map_err(|_| SimError::Stopped(self.id.clone()))?
    }

    /// Publishes an arbitrary payload on this device's connection (broken
    /// payloads for robustness tests); returns once acknowledged. The topic is
    /// given without the namespace prefix, like every topic of the device.
    pub async fn publish_raw(&self, topic: &str, payload: &[u8]) -> Result<(), SimError> {
        let (tx, rx) = oneshot::channel();
        let m = Msg {
            topic: topic.into(),
            payload: payload.to_vec(),
            retain: false,
            resend: false,
        };
        self.tx
            .send(Cmd::Raw(m, tx))
            .await
            .map_err(|_| SimError::Stopped(self.id.clone()))?;
        rx.await.map_err(|_| SimError::Stopped(self.id.clone()))?
    }

    /// Clean stop (DISCONNECT, no last will).
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(true, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Drops the connection without DISCONNECT: the broker sends the last will.
    pub async fn kill(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(false, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
