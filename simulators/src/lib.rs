//! Field-device simulators for mizuban: the distribution-block flow/pressure
//! logger and the manhole pump station notifier, as MQTT clients that behave as
//! `shared/spec/field-devices.md` says — batching, backlog after an outage,
//! QoS 1 with redelivery, `boot`/`seq`, clock trouble — with the §4 incident
//! scenarios. Each device is a pure state machine (`step(now) -> messages`);
//! `runner` connects it to a broker and drives it in real time or in steps a
//! test controls. This crate never imports the service: it writes payloads the
//! way the devices do, not the way mizuban reads them.

pub mod dma;
pub mod fleet;
pub mod modbus;
pub mod mps;
pub mod runner;
mod wire;

pub use runner::{spawn, Handle, Mode, SimError, SpawnOptions};
pub use wire::{Device, Msg};

use chrono::{DateTime, Duration, Utc};

/// Incidents and misbehaviour a test or the demo can inject (field-devices.md §4).
#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    // Distribution block logger
    PipeBurst {
        extra_m3h: f64,
        pressure_drop_mpa: f64,
        duration: Duration,
    },
    SlowLeak {
        pct_per_week: f64,
    },
    ColdSnapThaw {
        factor: f64,
        duration: Duration,
    },
    RegulatorStuckOpen,
    RegulatorStuckClosed,
    RegulatorHunting,
    BatteryDrain {
        pct_per_hour: f64,
    },
    SuddenDeath,
    SensorFault {
        duration: Duration,
    },
    /// Pressure sitting on a threshold (or level on HIGH) crossing it several times a minute.
    Chattering {
        duration: Duration,
    },
    // Pump station
    PumpFail {
        pump: u8,
    },
    BothPumpsFail,
    /// Bearing/impeller wear: running current creeps up by `pct_per_day` % a day.
    PumpWear {
        pump: u8,
        pct_per_day: f64,
    },
    Ragging {
        pump: u8,
    },
    PowerCut {
        duration: Duration,
    },
    RainInflow {
        factor: f64,
        duration: Duration,
    },
    DoorOpen {
        duration: Duration,
    },
    // Any device
    LteOutage {
        duration: Duration,
    },
    Reboot,
    ClockDrift {
        s_per_day: f64,
    },
    ClockStep {
        secs: i64,
    },
    ClockReset,
    /// Publish the last message again, byte-identical (a QoS 1 redelivery).
    Redeliver,
    /// Back to healthy running (repairs, power back, sensor replaced).
    Repair,
}

/// The device's own clock: true time plus drift, steps, or a reset after a
/// battery loss.
#[derive(Debug, Clone, Default)]
pub struct DeviceClock {
    pub offset_s: f64,
    pub drift_s_per_day: f64,
    /// After a reset: the device believes it is this long after 2000-01-01.
    pub reset_at: Option<DateTime<Utc>>,
}

impl DeviceClock {
    pub fn read(&self, truth: DateTime<Utc>) -> DateTime<Utc> {
        if let Some(r) = self.reset_at {
            let epoch = DateTime::parse_from_rfc3339("2000-01-01T00:00:00Z")
                .expect("constant")
                .with_timezone(&Utc);
            return epoch + (truth - r);
        }
        truth + Duration::milliseconds((self.offset_s * 1000.0) as i64)
    }
    /// Applies a clock scenario; `false` if `s` is not about the clock.
    pub fn apply(&mut self, s: &Scenario, now: DateTime<Utc>) -> bool {
        match s {
            Scenario::ClockDrift { s_per_day } => self.drift_s_per_day = *s_per_day,
            Scenario::ClockStep { secs } => self.offset_s += *secs as f64,
            Scenario::ClockReset => self.reset_at = Some(now),
            _ => return false,
        }
        true
    }

    pub fn tick(&mut self, dt: Duration) {
        self.offset_s += self.drift_s_per_day * dt.num_milliseconds() as f64 / 86_400_000.0;
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
