//! Modbus TCP collector (tokio-modbus): polls pump-station controllers on a
//! schedule from their profile's register map. One task per endpoint
//! (host:port); a gateway's many unit ids share its connection and their
//! requests are serialized, each bounded by its timeout, so a slow unit costs
//! the others at most its timeout. Faults are told apart and counted per
//! device: timeout, Modbus exception (by code), connection refused or reset,
//! and a half-open connection that stays up but stops answering (a timeout,
//! after which the connection is dropped and made again). A successful poll is
//! a message from the device: it keeps comm loss away; polls that fail leave
//! the pipeline to raise comm loss after the profile's missed intervals.

use crate::alarm::{AlarmOrigin, RaiseSpec};
use crate::config::{Config, ModbusEndpoint, Site};
use crate::device::modbus::{ModbusMap, RangeData, ReadRange, Table};
use crate::device::Priority;
use crate::device::Profile;
use crate::model::Clock;
use crate::pipeline::{Incoming, Pipeline};
use crate::store::{InputBody, RecordedInput};
use crate::telemetry::Metrics;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};
use tokio_modbus::prelude::{ExceptionCode, Slave, SlaveContext};
use tokio_util::sync::CancellationToken;

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    /// No answer within the timeout (after the retries).
    Timeout,
    /// The device answered with an exception: the link is fine.
    Exception(u8),
    /// TCP connect refused.
    Refused,
    /// The connection broke (reset, closed) or the answer made no sense.
    Transport(String),
}

impl From<PollError> for CommandFailure {
    /// A command that could not reach the controller (or got no answer).
    fn from(e: PollError) -> Self {
        match e {
            PollError::Exception(code) => CommandFailure::Exception(code),
            e => CommandFailure::Unreachable(format!("{} ({e:?})", e.kind())),
        }
    }
}

impl PollError {
    pub fn kind(&self) -> String {
        match self {
            PollError::Timeout => "timeout".into(),
            PollError::Exception(c) => format!("exception_{c:02x}"),
            PollError::Refused => "refused".into(),
            PollError::Transport(_) => "transport".into(),
        }
    }
    /// Whether the connection must be dropped and made again.
    fn reconnect(&self) -> bool {
        !matches!(self, PollError::Exception(_))
    }
}

/// Why a device command did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandFailure {
    #[error("site {0} is not polled over Modbus")]
    NotModbus(String),
    #[error("unknown command {name:?}; this controller takes: {known}")]
    Unknown { name: String, known: String },
    #[error("controller unreachable: {0}")]
    Unreachable(String),
    #[error("the controller refused the command (Modbus exception {0:#04x})")]
    Exception(u8),
    #[error("the command was written but reading it back gave {got}, not {want}")]
    NotConfirmed { want: bool, got: bool },
    #[error("the Modbus collector is not running")]
    Stopped,
}

struct CommandRequest {
    /// Hold the endpoint's polling for this long (maintenance); no coil.
    pause: Option<Duration>,
    unit: u8,
    coil: u16,
    value: bool,
    pulse: bool,
    timeout: Duration,
    reply: oneshot::Sender<Result<bool, CommandFailure>>,
}

/// Sends commands to controllers through the endpoint task that owns their
/// connection, so a command never races a poll on the same socket.
#[derive(Clone, Default)]
pub struct Commander {
    sites: HashMap<String, (mpsc::Sender<CommandRequest>, u8, ModbusMap)>,
}

impl Commander {
    /// Writes the command's coil and reads it back. `value` is ignored for
    /// pulse commands (they always pulse).
    pub async fn send(&self, site: &str, command: &str, value: bool) -> Result<bool, CommandFailure> {
        let (tx, unit, map) = self
            .sites
            .get(site)
            .ok_or_else(|| CommandFailure::NotModbus(site.into()))?;
        let spec = map
            .commands
            .iter()
            .find(|c| c.name == command)
            .ok_or_else(|| CommandFailure::Unknown {
                name: command.into(),
                known: map
                    .commands
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let (reply, rx) = oneshot::channel();
        let req = CommandRequest {
            pause: None,
            unit: *unit,
            coil: spec.coil,
            value: spec.pulse || value,
            pulse: spec.pulse,
            timeout: Duration::from_millis(map.timeout_ms),
            reply,
        };
        tx.send(req).await.map_err(|_| CommandFailure::Stopped)?;
        rx.await.map_err(|_| CommandFailure::Stopped)?
    }

    /// Holds all polling of the site's endpoint for `d` (a maintenance
    /// window on the router). The collector's watchdog reports a hold longer
    /// than the schedule allows as `collector_stalled` on every site there.
    pub async fn pause(&self, site: &str, d: Duration) -> Result<(), CommandFailure> {
        let (tx, unit, _) = self
            .sites
            .get(site)
            .ok_or_else(|| CommandFailure::NotModbus(site.into()))?;
        let (reply, rx) = oneshot::channel();
        let req = CommandRequest {
            pause: Some(d),
            unit: *unit,
            coil: 0,
            value: false,
            pulse: false,
            timeout: d,
            reply,
        };
        tx.send(req).await.map_err(|_| CommandFailure::Stopped)?;
        rx.await.map_err(|_| CommandFailure::Stopped)?.map(|_| ())
    }
}

struct Unit {
    site: Arc<Site>,
    map: ModbusMap,
    plan: Vec<ReadRange>,
    interval: Duration,
    next: Instant,
}

pub struct ModbusCollector {
    cfg: Arc<Config>,
    pipeline: Pipeline,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    commander: Commander,
    /// When each endpoint task last finished a poll (or command), for the watchdog.
    progress: Arc<std::sync::Mutex<HashMap<(String, u16), Instant>>>,
    /// Command queues of the endpoints, taken by their tasks at start.
    inboxes: std::sync::Mutex<HashMap<(String, u16), mpsc::Receiver<CommandRequest>>>,
}

impl ModbusCollector {
    pub fn new(cfg: Arc<Config>, pipeline: Pipeline, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) -> Self {
        let mut me = Self {
            cfg,
            pipeline,
            clock,
            metrics,
            commander: Commander::default(),
            inboxes: Default::default(),
            progress: Default::default(),
        };
        let mut inboxes = HashMap::new();
        for (ep, units) in me.endpoints() {
            // A handful of commands at a time per endpoint is plenty; more waits (policy: block).
            let (tx, rx) = mpsc::channel(8);
            inboxes.insert(ep, rx);
            for (unit, site, p) in units {
                if let Some(map) = p.modbus.clone() {
                    me.commander.sites.insert(site.id.to_string(), (tx.clone(), unit, map));
                }
            }
        }
        me.inboxes = std::sync::Mutex::new(inboxes);
        me
    }

    pub fn commander(&self) -> Commander {
        self.commander.clone()
    }

    /// Endpoints and their units, from the sites that have a `modbus` address.
    fn endpoints(&self) -> BTreeMap<(String, u16), Vec<(u8, Arc<Site>, Arc<Profile>)>> {
        let mut m: BTreeMap<(String, u16), Vec<_>> = BTreeMap::new();
        for s in &self.cfg.sites {
            if let (Some(ModbusEndpoint { host, port, unit, .. }), Some(p)) =
                (&s.modbus, self.cfg.profiles.get(&s.profile))
            {
                if p.modbus.is_some() {
                    m.entry((host.clone(), *port))
                        .or_default()
                        .push((*unit, s.clone(), p.clone()));
                }
            }
        }
        m
    }

    pub fn has_work(&self) -> bool {
        !self.endpoints().is_empty()
    }

    pub async fn run(self, cancel: CancellationToken) {
        let me = Arc::new(self);
        let mut tasks = Vec::new();
        {
            let me = me.clone();
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move { me.watchdog(cancel).await }));
        }
        for ((host, port), units) in me.endpoints() {
            let me = me.clone();
            let cancel = cancel.clone();
            let inbox = me
                .inboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(host.clone(), port));
            tasks.push(tokio::spawn(async move {
                me.poll_endpoint(host, port, units, inbox, cancel).await
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "modbus endpoint task ended abnormally");
            }
        }
        tracing::info!("modbus collector stopped");
    }

    /// No silent stall: an endpoint whose task has not finished a poll for
    /// longer than its schedule allows raises `collector_stalled` on each of
    /// its sites (and clears it when polling resumes).
    async fn watchdog(&self, cancel: CancellationToken) {
        let endpoints = self.endpoints();
        // Budget: the longest interval plus every unit's worst-case poll (the
        // requests of a gateway are serialized), with half again as margin.
        let budget: HashMap<(String, u16), Duration> = endpoints
            .iter()
            .map(|(ep, units)| {
                let mut worst = Duration::ZERO;
                let mut longest = Duration::ZERO;
                for (_, site, p) in units {
                    if let (Some(map), Some(e)) = (p.modbus.as_ref(), site.modbus.as_ref()) {
                        let timeout = Duration::from_millis(e.timeout_ms.unwrap_or(map.timeout_ms));
                        let retries = e.retries.unwrap_or(map.retries);
                        worst += timeout * (retries + 1) * map.plan().len() as u32;
                        longest = longest.max(Duration::from_millis(
                            e.poll_interval_ms.unwrap_or(map.poll_interval_s as u64 * 1000),
                        ));
                    }
                }
                (ep.clone(), (longest + worst) * 3 / 2 + Duration::from_secs(1))
            })
            .collect();
        let started = Instant::now();
        let mut stalled: HashMap<(String, u16), bool> = HashMap::new();
        let mut iv = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = iv.tick() => {}
            }
            for (ep, units) in &endpoints {
                let last = self
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(ep)
                    .copied()
                    .unwrap_or(started);
                let idle = last.elapsed();
                let is = idle > budget[ep];
                if stalled.get(ep).copied().unwrap_or(false) == is {
                    continue;
                }
                stalled.insert(ep.clone(), is);
                self.metrics
                    .modbus_stalled
                    .set(stalled.values().filter(|v| **v).count() as i64);
                if is {
                    tracing::error!(endpoint = %format!("{}:{}", ep.0, ep.1), idle_s = idle.as_secs(), "modbus collector stalled");
                } else {
                    tracing::info!(endpoint = %format!("{}:{}", ep.0, ep.1), "modbus collector polling again");
                }
                for (_, site, _) in units {
                    let spec = RaiseSpec {
                        site: site.id.clone(),
                        device: site.device.clone(),
                        source: format!("modbus://{}:{}", ep.0, ep.1),
                        condition: "collector_stalled".into(),
                        origin: AlarmOrigin::Comm,
                        priority: Priority::High,
                        value: Some(idle.as_secs_f64()),
                        limit: Some(budget[ep].as_secs_f64()),
                        message: format!(
                            "Modbus collector not polling {}:{} (idle {} s)",
                            ep.0,
                            ep.1,
                            idle.as_secs()
                        ),
                        message_ja: format!("Modbus収集停止 {}:{}（{}秒無応答）", ep.0, ep.1, idle.as_secs()),
                        suppressed_by: vec![],
                    };
                    if let Err(e) = self.pipeline.external(spec, is).await {
                        tracing::error!(error = %e, "cannot report collector stall");
                    }
                }
            }
        }
    }

    async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<Context, PollError> {
        let addr: SocketAddr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| PollError::Transport(e.to_string()))?
            .next()
            .ok_or_else(|| PollError::Transport(format!("{host} has no address")))?;
        match tokio::time::timeout(timeout, tokio_modbus::client::tcp::connect(addr)).await {
            Err(_) => Err(PollError::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(PollError::Refused),
            Ok(Err(e)) => Err(PollError::Transport(e.to_string())),
            Ok(Ok(ctx)) => Ok(ctx),
        }
    }

    async fn read(ctx: &mut Context, r: ReadRange, timeout: Duration) -> Result<RangeData, PollError> {
        let fut = async {
            match r.table {
                Table::Coil => ctx.read_coils(r.address, r.count).await.map(|x| x.map(RangeData::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(r.address, r.count)
                    .await
                    .map(|x| x.map(RangeData::Bits)),
                Table::Input => ctx
                    .read_input_registers(r.address, r.count)
                    .await
                    .map(|x| x.map(RangeData::Words)),
                Table::Holding => ctx
                    .read_holding_registers(r.address, r.count)
                    .await
                    .map(|x| x.map(RangeData::Words)),
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(PollError::Timeout),
            Ok(Err(e)) => Err(PollError::Transport(e.to_string())),
            Ok(Ok(Err(code))) => Err(PollError::Exception(u8::from(code))),
            Ok(Ok(Ok(d))) => Ok(d),
        }
    }

    /// One poll of one unit: every planned range, each with its retries.
    async fn poll(ctx: &mut Context, unit: &Unit) -> Result<Vec<(ReadRange, RangeData)>, PollError> {
        let timeout = Duration::from_millis(unit.map.timeout_ms);
        let mut out = Vec::with_capacity(unit.plan.len());
        for r in &unit.plan {
            let mut attempt = 0;
            loop {
                match Self::read(ctx, *r, timeout).await {
                    Ok(d) => {
                        out.push((*r, d));
                        break;
                    }
                    // Busy is worth asking again; other exceptions are answers.
                    Err(PollError::Exception(c))
                        if c == u8::from(ExceptionCode::ServerDeviceBusy) && attempt < unit.map.retries => {}
                    Err(e @ PollError::Exception(_)) => return Err(e),
                    // A timeout may leave an answer in flight: retrying on the
                    // same connection risks reading it as the next answer.
                    Err(e) => return Err(e),
                }
                attempt += 1;
            }
        }
        Ok(out)
    }

    async fn poll_endpoint(
        &self,
        host: String,
        port: u16,
        units: Vec<(u8, Arc<Site>, Arc<Profile>)>,
        mut inbox: Option<mpsc::Receiver<CommandRequest>>,
        cancel: CancellationToken,
    ) {
        let now = Instant::now();
        let mut units: BTreeMap<u8, Unit> = units
            .into_iter()
            .filter_map(|(id, site, p)| {
                let mut map = p.modbus.clone()?;
                let ep = site.modbus.as_ref()?;
                map.timeout_ms = ep.timeout_ms.unwrap_or(map.timeout_ms);
                map.retries = ep.retries.unwrap_or(map.retries);
                let interval =
                    Duration::from_millis(ep.poll_interval_ms.unwrap_or(map.poll_interval_s as u64 * 1000).max(10));
                let plan = map.plan();
                Some((
                    id,
                    Unit {
                        site,
                        map,
                        plan,
                        interval,
                        next: now,
                    },
                ))
            })
            .collect();
        let mut ctx: Option<Context> = None;
        let mut not_before = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some((&id, due)) = units.iter().map(|(id, u)| (id, u.next)).min_by_key(|(_, n)| *n) else {
                return;
            };
            let cmd = async {
                match inbox.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
                Some(req) = cmd => {
                    if let Some(d) = req.pause {
                        let _ = req.reply.send(Ok(false));
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(d) => {}
                        }
                        continue;
                    }
                    let r = self.command(&mut ctx, &host, port, &req).await;
                    if matches!(r, Err(CommandFailure::Unreachable(_))) {
                        ctx = None;
                    }
                    // The API caller may have hung up; the command stands either way.
                    let _ = req.reply.send(r);
                    continue;
                }
            }
            let unit = units.get_mut(&id).expect("chosen from the map");
            let progress_key = (host.clone(), port);
            let interval = unit.interval;
            unit.next = due + interval;
            if unit.next < Instant::now() {
                // Behind schedule: skip the missed slots rather than bunching polls.
                self.metrics.modbus_overruns.inc();
                unit.next = Instant::now() + interval;
            }
            let device = unit.site.device.to_string();
            let started = Instant::now();
            let result = async {
                if ctx.is_none() {
                    if Instant::now() < not_before {
                        return Err(PollError::Transport("reconnect backoff".into()));
                    }
                    ctx = Some(
                        self.connect(&host, port, Duration::from_millis(unit.map.timeout_ms))
                            .await?,
                    );
                }
                let c = ctx.as_mut().expect("connected above");
                c.set_slave(Slave(id));
                Self::poll(c, unit).await
            }
            .await;
            self.metrics
                .modbus_polls
                .get_or_create(&crate::telemetry::device_label(&device))
                .inc();
            self.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(progress_key, Instant::now());
            match result {
                Ok(data) => {
                    backoff = Duration::from_millis(200);
                    self.metrics
                        .modbus_latency
                        .get_or_create(&crate::telemetry::device_label(&device))
                        .observe(started.elapsed().as_secs_f64());
                    self.deliver(unit, data).await;
                }
                Err(e) => {
                    let kind = e.kind();
                    // Recorded, so a replay sees the gap as the station did.
                    let failed = RecordedInput {
                        arrived: self.clock.now(),
                        site: Some(unit.site.id.to_string()),
                        body: InputBody::PollError(kind.clone()),
                    };
                    if let Err(err) = self.pipeline.record(failed, None).await {
                        tracing::error!(site = %unit.site.id, error = %err, "cannot record the failed poll");
                    }
                    tracing::warn!(site = %unit.site.id, device = %device, unit = id, %kind, error = ?e, "modbus poll failed");
                    self.metrics
                        .modbus_errors
                        .get_or_create(&crate::telemetry::device_kind_label(&device, &kind))
                        .inc();
                    if e.reconnect() {
                        ctx = None;
                        if matches!(e, PollError::Refused | PollError::Transport(_)) {
                            not_before = Instant::now() + backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        }
    }

    /// Executes one command on this endpoint's connection: write the coil,
    /// read it back, and for a pulse write it back to 0.
    async fn command(
        &self,
        ctx: &mut Option<Context>,
        host: &str,
        port: u16,
        req: &CommandRequest,
    ) -> Result<bool, CommandFailure> {
        if ctx.is_none() {
            *ctx = Some(self.connect(host, port, req.timeout).await?);
        }
        let c = ctx.as_mut().expect("connected above");
        c.set_slave(Slave(req.unit));
        let t = req.timeout;
        Self::write_coil(c, req.coil, req.value, t).await?;
        let back = match Self::read(
            c,
            ReadRange {
                table: Table::Coil,
                address: req.coil,
                count: 1,
            },
            t,
        )
        .await
        {
            Ok(RangeData::Bits(b)) if !b.is_empty() => b[0],
            Ok(_) => return Err(CommandFailure::Unreachable("read-back returned no coil".into())),
            Err(e) => return Err(e.into()),
        };
        if back != req.value {
            return Err(CommandFailure::NotConfirmed {
                want: req.value,
                got: back,
            });
        }
        if req.pulse {
            Self::write_coil(c, req.coil, false, t).await?;
        }
        Ok(back)
    }

    async fn write_coil(c: &mut Context, coil: u16, v: bool, t: Duration) -> Result<(), CommandFailure> {
        match tokio::time::timeout(t, tokio_modbus::client::Writer::write_single_coil(c, coil, v)).await {
            Err(_) => Err(PollError::Timeout.into()),
            Ok(Err(e)) => Err(PollError::Transport(e.to_string()).into()),
            Ok(Ok(Err(code))) => Err(CommandFailure::Exception(u8::from(code))),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    }

    async fn deliver(&self, unit: &Unit, data: Vec<(ReadRange, RangeData)>) {
        let now = self.clock.now();
        let msg = Incoming {
            decoded: crate::device::modbus::poll_decoded(&unit.site, &unit.map, &data, now),
            topic: crate::device::modbus::poll_topic(&unit.site),
            raw: format!("{data:?}").chars().take(2048).collect(),
            arrived: now,
            received: std::time::Instant::now(),
            ack: None,
            input: RecordedInput {
                arrived: now,
                site: Some(unit.site.id.to_string()),
                body: InputBody::Poll(crate::device::modbus::Poll::from_ranges(&data)),
            },
        };
        if let Err(e) = self.pipeline.submit(&unit.site.id, msg).await {
            tracing::error!(site = %unit.site.id, error = %e, "pipeline unavailable");
        }
    }
}
