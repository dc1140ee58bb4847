//! Distribution-block flow/pressure logger (field-devices.md §1).

use crate::wire::{Device, Msg, Outbox, Pending};
use crate::{rfc3339, DeviceClock, Scenario};
use chrono::{DateTime, Duration, Timelike, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct DmaOptions {
    pub device_id: String,
    pub block_id: String,
    pub boot: u64,
    /// Mean inflow of the block, m3/h.
    pub mean_flow: f64,
    /// Pressure at mean flow, MPa.
    pub base_pressure: f64,
    pub log_interval_s: u32,
    pub upload_interval_s: u32,
    pub battery_pct: f64,
    pub seed: u64,
    /// Random noise on flow and pressure (off for exact tests).
    pub noise: bool,
}

impl DmaOptions {
    pub fn new(block: &str, device: &str) -> Self {
        Self {
            device_id: device.into(),
            block_id: block.into(),
            boot: 1,
            mean_flow: 100.0,
            base_pressure: 0.40,
            log_interval_s: 300,
            upload_interval_s: 3600,
            battery_pct: 80.0,
            seed: 1,
            noise: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Regulator {
    Normal,
    StuckOpen,
    StuckClosed,
    Hunting,
}

pub struct DmaLogger {
    o: DmaOptions,
    rng: StdRng,
    clock: DeviceClock,
    seq: u64,
    started: Option<DateTime<Utc>>,
    last_step: Option<DateTime<Utc>>,
    next_log: Option<DateTime<Utc>>,
    next_upload: Option<DateTime<Utc>>,
    fast_until: Option<DateTime<Utc>>,
    samples: Vec<Value>,
    outbox: Outbox,
    tot: f64,
    batt_pct: f64,
    drain_pct_per_h: f64,
    dead: bool,
    outage_until: Option<DateTime<Utc>>,
    burst: Option<(f64, f64, DateTime<Utc>)>,
    leak_pct_per_week: f64,
    leak_since: Option<DateTime<Utc>>,
    thaw: Option<(f64, DateTime<Utc>)>,
    regulator: Regulator,
    sensor_fault_until: Option<DateTime<Utc>>,
    chatter_until: Option<DateTime<Utc>>,
    chatter_flip: bool,
    alarms_on: std::collections::BTreeSet<&'static str>,
    status_sent: bool,
}

const DIURNAL: [f64; 24] = [
    0.55, 0.42, 0.35, 0.32, 0.36, 0.6, 1.1, 1.55, 1.6, 1.35, 1.2, 1.2, 1.3, 1.15, 1.05, 1.05, 1.15, 1.35, 1.55, 1.5,
    1.3, 1.1, 0.9, 0.7,
];

/// Diurnal demand as a share of the daily mean, by local (JST) hour: night
/// flow 15-40 % of the mean, morning and evening peaks.
pub fn diurnal(hour_local: u32) -> f64 {
    DIURNAL[hour_local as usize % 24]
}

/// The same curve, continuous: demand changes smoothly between the hours.
pub fn diurnal_at(t: DateTime<Utc>) -> f64 {
    let local = t + Duration::hours(9);
    let h = local.hour() as usize;
    let frac = (local.minute() as f64 * 60.0 + local.second() as f64) / 3600.0;
    DIURNAL[h] + (DIURNAL[(h + 1) % 24] - DIURNAL[h]) * frac
}

/// Weight of "night" (0..1) at local time: 1 from 23:00 to 05:00, ramping over
/// the two hours either side.
fn night_weight(t: DateTime<Utc>) -> f64 {
    let local = t + Duration::hours(9);
    let h = local.hour() as f64 + local.minute() as f64 / 60.0;
    match h {
        h if !(5.0..23.0).contains(&h) => 1.0,
        h if h < 7.0 => (7.0 - h) / 2.0,
        h if h >= 21.0 => (h - 21.0) / 2.0,
        _ => 0.0,
    }
}

const P_LOW: f64 = 0.15;
const P_HIGH: f64 = 0.74;

impl DmaLogger {
    pub fn new(o: DmaOptions) -> Self {
        Self {
            rng: StdRng::seed_from_u64(o.seed),
            batt_pct: o.battery_pct,
            tot: 1_000_000.0 + o.seed as f64 * 137.0,
            o,
            clock: DeviceClock::default(),
            seq: 0,
            started: None,
            last_step: None,
            next_log: None,
            next_upload: None,
            fast_until: None,
            samples: Vec::new(),
            outbox: Outbox::default(),
            drain_pct_per_h: 0.0,
            dead: false,
            outage_until: None,
            burst: None,
            leak_pct_per_week: 0.0,
            leak_since: None,
            thaw: None,
            regulator: Regulator::Normal,
            sensor_fault_until: None,
            chatter_until: None,
            chatter_flip: false,
            alarms_on: Default::default(),
            status_sent: false,
        }
    }

    fn topic(&self, leaf: &str) -> String {
        format!("akita/v1/dma/{}/{}/{leaf}", self.o.block_id, self.o.device_id)
    }

    fn batt_v(&self) -> f64 {
        3.2 + 0.47 * (self.batt_pct / 100.0)
    }

    /// The upload interval the logger uses now: stretched as the battery drops.
    pub fn upload_interval_s(&self) -> u32 {
        let base = self.o.upload_interval_s;
        if self.batt_pct < 10.0 {
            base * 4
        } else if self.batt_pct < 35.0 {
            base * 2
        } else {
            base
        }
    }

    fn log_interval(&self, now: DateTime<Utc>) -> Duration {
        if self.fast_until.is_some_and(|u| now < u) {
            Duration::seconds(60.min(self.o.log_interval_s as i64))
        } else {
            Duration::seconds(self.o.log_interval_s as i64)
        }
    }

    fn noise(&mut self, scale: f64) -> f64 {
        if self.o.noise {
            self.rng.random_range(-scale..=scale)
        } else {
            0.0
        }
    }

    /// Flow and pressure the block has at true time `now`.
    pub fn process(&mut self, now: DateTime<Utc>) -> (f64, f64) {
        let mut q = self.o.mean_flow * diurnal_at(now);
        if let Some(since) = self.leak_since {
            // A slow leak shows at night: a constant addition that grows weekly.
            let weeks = (now - since).num_seconds() as f64 / (7.0 * 86400.0);
            q += self.o.mean_flow * 0.35 * (self.leak_pct_per_week / 100.0) * weeks * 4.0;
        }
        if let Some((f, until)) = self.thaw {
            if now < until {
                q *= 1.0 + (f - 1.0) * night_weight(now);
            }
        }
        let mut p = self.o.base_pressure - 0.06 * (q / self.o.mean_flow - 1.0);
        if let Some((extra, dp, until)) = self.burst {
            if now < until {
                q += extra;
                p -= dp;
            }
        }
        p = match self.regulator {
            Regulator::Normal => p,
            Regulator::StuckOpen => 0.68 + 0.08 * (1.0 - q / (2.0 * self.o.mean_flow)).max(0.0),
            Regulator::StuckClosed => p - 0.18 * (q / self.o.mean_flow),
            Regulator::Hunting => p + if (now.timestamp() / 60) % 2 == 0 { 0.05 } else { -0.05 },
        };
        if self.chatter_until.is_some_and(|u| now < u) {
            // Sitting on the low-pressure threshold: every sample lands on the other side.
            self.chatter_flip = !self.chatter_flip;
            p = P_LOW + if self.chatter_flip { -0.004 } else { 0.004 };
        }
        q += self.noise(q * 0.03);
        p += self.noise(0.003);
        (q.max(0.0), p.max(0.0))
    }

    fn next_seq(&mut self) -> (u64, u64) {
        let s = self.seq;
        self.seq += 1;
        (self.o.boot, s)
    }

    fn local_alarm(
        &mut self,
        now_dev: DateTime<Utc>,
        true_now: DateTime<Utc>,
        code: &'static str,
        on: bool,
        value: f64,
        threshold: f64,
    ) {
        if on == self.alarms_on.contains(code) {
            return;
        }
        if on {
            self.alarms_on.insert(code);
            // A local alarm switches the logger to 60 s sampling for an hour.
            self.fast_until = Some(true_now + Duration::hours(1));
        } else {
            self.alarms_on.remove(code);
        }
        let (boot, seq) = self.next_seq();
        let body = json!({"schema":"dma-alarm/1","device_id":self.o.device_id,"block_id":self.o.block_id,"boot":boot,"seq":seq,
            "t":rfc3339(now_dev),"alarm":code,"state":if on {"raise"} else {"clear"},"value":(value*1000.0).round()/1000.0,"threshold":threshold});
        self.outbox.push(Pending {
            topic: self.topic("alarm"),
            body,
            retain: false,
            fill_sent: false,
            resend: false,
        });
    }

    fn log_sample(&mut self, now: DateTime<Utc>) {
        let dev_t = self.clock.read(now);
        let (q, p) = self.process(now);
        let dt_h = self.log_interval(now).num_seconds() as f64 / 3600.0;
        self.tot += q * dt_h;
        let mut s = json!({"t": rfc3339(dev_t), "q": (q * 10.0).round() / 10.0, "p": (p * 1000.0).round() / 1000.0, "tot": (self.tot * 10.0).round() / 10.0});
        if self.sensor_fault_until.is_some_and(|u| now < u) {
            s["p"] = Value::Null;
            s["flags"] = json!(["sensor_fault"]);
        }
        self.samples.push(s);
        self.local_alarm(dev_t, now, "pressure_low", p < P_LOW, p, P_LOW);
        self.local_alarm(dev_t, now, "pressure_high", p > P_HIGH, p, P_HIGH);
        self.local_alarm(dev_t, now, "batt_low", self.batt_pct < 10.0, self.batt_v(), 3.25);
    }

    fn make_upload(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let (boot, seq) = self.next_seq();
        let body = json!({"schema":"dma-telemetry/1","device_id":self.o.device_id,"block_id":self.o.block_id,"boot":boot,"seq":seq,
            "sent_at": Value::Null, "log_interval_s": self.o.log_interval_s, "upload_interval_s": self.upload_interval_s(), "backlog": 0,
            "units":{"q":"m3/h","p":"MPa","tot":"m3"},
            "samples": std::mem::take(&mut self.samples),
            "diag":{"batt_v":(self.batt_v()*100.0).round()/100.0,"batt_pct":self.batt_pct.round(),"rssi_dbm":-87 - (self.o.seed % 15) as i64,"temp_c":3.5}});
        self.outbox.push(Pending {
            topic: self.topic("telemetry"),
            body,
            retain: false,
            fill_sent: true,
            resend: false,
        });
    }

    fn status(&mut self, now: DateTime<Utc>) {
        let (boot, seq) = self.next_seq();
        let body = json!({"schema":"dma-status/1","device_id":self.o.device_id,"block_id":self.o.block_id,"boot":boot,"seq":seq,
            "t":rfc3339(self.clock.read(now)),"online":true,"fw":"2.4.1"});
        self.outbox.push(Pending {
            topic: self.topic("status"),
            body,
            retain: true,
            fill_sent: false,
            resend: false,
        });
    }
}

impl Device for DmaLogger {
    fn id(&self) -> &str {
        &self.o.device_id
    }
    fn site(&self) -> &str {
        &self.o.block_id
    }
    fn radio_up(&self) -> bool {
        !self.dead && self.batt_pct >= 2.0
    }

    fn will(&self) -> Msg {
        Msg {
            topic: self.topic("status"),
            payload: br#"{"online":false}"#.to_vec(),
            retain: true,
            resend: false,
        }
    }

    fn step(&mut self, now: DateTime<Utc>) -> Vec<Msg> {
        if self.dead {
            return vec![];
        }
        let start = *self.started.get_or_insert(now);
        if let Some(prev) = self.last_step {
            self.clock.tick(now - prev);
            self.batt_pct =
                (self.batt_pct - self.drain_pct_per_h * (now - prev).num_seconds() as f64 / 3600.0).max(0.0);
        }
        self.last_step = Some(now);
        if !self.status_sent {
            self.status_sent = true;
            self.status(now);
        }
        let first_log = start + Duration::seconds(self.o.log_interval_s as i64);
        let mut next_log = *self.next_log.get_or_insert(first_log);
        while next_log <= now {
            self.log_sample(next_log);
            next_log += self.log_interval(next_log);
        }
        self.next_log = Some(next_log);
        let mut next_up = *self
            .next_upload
            .get_or_insert(start + Duration::seconds(self.o.upload_interval_s as i64));
        if next_up <= now {
            self.make_upload();
            next_up = now + Duration::seconds(self.upload_interval_s() as i64);
        }
        self.next_upload = Some(next_up);
        let up = self.outage_until.is_none_or(|u| now >= u) && self.radio_up();
        self.outbox.drain(up, 4, self.clock.read(now))
    }

    fn inject(&mut self, s: Scenario, now: DateTime<Utc>) {
        match s {
            Scenario::PipeBurst {
                extra_m3h,
                pressure_drop_mpa,
                duration,
            } => self.burst = Some((extra_m3h, pressure_drop_mpa, now + duration)),
            Scenario::SlowLeak { pct_per_week } => {
                self.leak_pct_per_week = pct_per_week;
                self.leak_since = Some(now);
            }
            Scenario::ColdSnapThaw { factor, duration } => self.thaw = Some((factor, now + duration)),
            Scenario::RegulatorStuckOpen => self.regulator = Regulator::StuckOpen,
            Scenario::RegulatorStuckClosed => self.regulator = Regulator::StuckClosed,
            Scenario::RegulatorHunting => self.regulator = Regulator::Hunting,
            Scenario::BatteryDrain { pct_per_hour } => self.drain_pct_per_h = pct_per_hour,
            Scenario::SuddenDeath => self.dead = true,
            Scenario::SensorFault { duration } => self.sensor_fault_until = Some(now + duration),
            Scenario::Chattering { duration } => self.chatter_until = Some(now + duration),
            Scenario::LteOutage { duration } => self.outage_until = Some(now + duration),
            Scenario::Reboot => {
                self.o.boot += 1;
                self.seq = 0;
                self.status_sent = false;
            }
            s @ (Scenario::ClockDrift { .. } | Scenario::ClockStep { .. } | Scenario::ClockReset) => {
                self.clock.apply(&s, now);
            }
            Scenario::Redeliver => self.outbox.redeliver_last(),
            Scenario::Repair => {
                self.burst = None;
                self.thaw = None;
                self.leak_since = None;
                self.regulator = Regulator::Normal;
                self.sensor_fault_until = None;
                self.chatter_until = None;
                self.drain_pct_per_h = 0.0;
                self.dead = false;
                self.clock = DeviceClock::default();
            }
            // Pump-station scenarios do not apply to a logger.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_seq() {
        let mut o = DmaOptions::new("B17", "AKT-DMA-017");
        o.noise = false;
        let mut d = DmaLogger::new(o);
        let t0 = DateTime::parse_from_rfc3339("2025-01-21T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = d.step(t0);
        assert_eq!(first.len(), 1, "status on start");
        let mut msgs = vec![];
        for i in 1..=120 {
            msgs.extend(d.step(t0 + Duration::seconds(30 * i)));
        }
        let tele: Vec<Value> = msgs
            .iter()
            .filter(|m| m.topic.ends_with("/telemetry"))
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        assert_eq!(tele.len(), 1);
        assert_eq!(tele[0]["samples"].as_array().unwrap().len(), 12);
        assert_eq!(tele[0]["seq"], 1);
        assert!(tele[0]["sent_at"].is_string());
    }
}
