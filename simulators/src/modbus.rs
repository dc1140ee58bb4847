//! A manhole pump station controller as a Modbus TCP server (tokio-modbus,
//! server side), over the same station physics as the notifier simulator. One
//! server can be a single controller (unit 1) or a gateway exposing many
//! stations as unit ids. Protocol faults are injected per unit: slow answers,
//! no answer (the client times out), Modbus exceptions, and a hang that keeps
//! the TCP connection open but never answers again.

use crate::mps::{MpsNotifier, MpsOptions};
use crate::wire::Device;
use crate::Scenario;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};

/// How a unit misbehaves on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Answer after this long (LTE: 100-800 ms).
    Slow(Duration),
    /// Answer after a random time in this range, per request.
    SlowRange(Duration, Duration),
    /// Drop requests: the client times out.
    NoAnswer,
    /// Answer every request with this exception.
    Exception(ExceptionCode),
    /// Never answer again on this connection, keeping it open (half-open).
    Hang,
}

struct Unit {
    station: MpsNotifier,
    coils: [bool; 4],
    fault: Fault,
}

struct Inner {
    // A std Mutex: held to read or step a unit, never across an await.
    units: Mutex<BTreeMap<u8, Unit>>,
    now: Mutex<DateTime<Utc>>,
}

/// Handle to a running controller (or gateway) simulator.
#[derive(Clone)]
pub struct Controllers {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Svc {
    inner: Arc<Inner>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

fn slice<T: Clone>(v: &[T], addr: u16, cnt: u16) -> Result<Vec<T>, ExceptionCode> {
    let (a, c) = (addr as usize, cnt as usize);
    if cnt == 0 || a + c > v.len() {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(v[a..a + c].to_vec())
}

impl Svc {
    fn answer(&self, unit: u8, req: Request<'static>) -> (Fault, Answer) {
        let now = self.inner.now();
        let mut units = self.inner.units();
        let Some(u) = units.get_mut(&unit) else {
            return (Fault::None, Err(ExceptionCode::GatewayTargetDevice));
        };
        let img = u.station.controller_image(now);
        let r = match req {
            Request::ReadCoils(a, c) => slice(&u.coils, a, c).map(Response::ReadCoils),
            Request::ReadDiscreteInputs(a, c) => slice(&img.discrete, a, c).map(Response::ReadDiscreteInputs),
            Request::ReadInputRegisters(a, c) => slice(&img.input, a, c).map(Response::ReadInputRegisters),
            Request::ReadHoldingRegisters(a, c) => slice(&img.holding, a, c).map(Response::ReadHoldingRegisters),
            Request::WriteSingleCoil(a, v) if (a as usize) < u.coils.len() => {
                let previous = u.coils[a as usize];
                u.coils[a as usize] = v;
                u.station.coil_written(a, v, previous);
                Ok(Response::WriteSingleCoil(a, v))
            }
            Request::WriteSingleCoil(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        (u.fault.clone(), r.map(Some))
    }
}

impl tokio_modbus::server::Service for Svc {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let (fault, answer) = self.answer(req.slave, req.request);
        Box::pin(async move {
            match fault {
                Fault::None => answer,
                Fault::Slow(d) => {
                    tokio::time::sleep(d).await;
                    answer
                }
                Fault::SlowRange(lo, hi) => {
                    let ms = rand::random_range(lo.as_millis() as u64..=hi.as_millis().max(lo.as_millis()) as u64);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    answer
                }
                Fault::NoAnswer => Ok(None),
                Fault::Exception(code) => Err(code),
                // The server handles one request at a time per connection: a
                // request that never completes hangs the whole connection.
                Fault::Hang => std::future::pending().await,
            }
        })
    }
}

impl Inner {
    // Poisoning only means a panic elsewhere; the simulated state is still usable.
    fn units(&self) -> std::sync::MutexGuard<'_, BTreeMap<u8, Unit>> {
        self.units.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Controllers {
    /// Starts a server on `127.0.0.1:port` (0: ephemeral) with the given units
    /// (`unit id -> station options`), device time starting at `start`.
    pub async fn start(port: u16, units: Vec<(u8, MpsOptions)>, start: DateTime<Utc>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let mut map = BTreeMap::new();
        for (id, o) in units {
            let mut station = MpsNotifier::new(o);
            station.step(start);
            map.insert(
                id,
                Unit {
                    station,
                    coils: [false; 4],
                    fault: Fault::None,
                },
            );
        }
        let inner = Arc::new(Inner {
            units: Mutex::new(map),
            now: Mutex::new(start),
        });
        let svc = Svc { inner: inner.clone() };
        let server = Server::new(listener);
        tokio::spawn(async move {
            let on_connected = move |stream, addr| {
                let svc = svc.clone();
                async move { accept_tcp_connection(stream, addr, move |_| Ok(Some(svc.clone()))) }
            };
            let on_error = |e: std::io::Error| tracing::debug!(error = %e, "controller simulator connection ended");
            if let Err(e) = server.serve(&on_connected, on_error).await {
                tracing::warn!(error = %e, "controller simulator stopped");
            }
        });
        Ok(Self { addr, inner })
    }

    pub fn set_fault(&self, unit: u8, fault: Fault) {
        if let Some(u) = self.inner.units().get_mut(&unit) {
            u.fault = fault;
        }
    }

    pub fn inject(&self, unit: u8, s: Scenario) {
        let now = self.inner.now();
        if let Some(u) = self.inner.units().get_mut(&unit) {
            u.station.inject(s, now);
        }
    }

    /// Moves every station's physics to `now`.
    pub fn step_to(&self, now: DateTime<Utc>) {
        *self.inner.now.lock().unwrap_or_else(|p| p.into_inner()) = now;
        for u in self.inner.units().values_mut() {
            // The controller's MQTT-side output is not used here.
            u.station.step(now);
        }
    }

    /// Follows the wall clock (demo): steps the physics every `every`.
    pub fn run_realtime(&self, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            loop {
                iv.tick().await;
                me.step_to(Utc::now());
            }
        });
    }

    pub fn coil(&self, unit: u8, addr: usize) -> Option<bool> {
        self.inner.units().get(&unit).and_then(|u| u.coils.get(addr).copied())
    }
}
