//! Manhole pump station notifier (field-devices.md §2) over a station with two
//! alternating pumps and simple physics: the level rises with inflow and falls
//! while pumps run; the lead pump starts at the start level, the lag pump at
//! the lag level, both stop at the stop level.

use crate::wire::{Device, Msg, Outbox, Pending};
use crate::{rfc3339, DeviceClock, Scenario};
use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

pub const HH_LEVEL: u8 = 0;
pub const HIGH_LEVEL: u8 = 1;
pub const LOW_LEVEL: u8 = 2;
pub const P1_FAULT: u8 = 3;
pub const P2_FAULT: u8 = 4;
pub const P1_OVERCURRENT: u8 = 5;
pub const P2_OVERCURRENT: u8 = 6;
pub const POWER_FAIL: u8 = 10;
pub const DOOR_OPEN: u8 = 12;
pub const BATT_LOW: u8 = 15;
pub const P1_FAIL_TO_RUN: u8 = 16;
pub const P2_FAIL_TO_RUN: u8 = 17;

/// Codes in bit order (the notifier's alarm_bits table).
pub const CODES: [&str; 19] = [
    "HH_LEVEL",
    "HIGH_LEVEL",
    "LOW_LEVEL",
    "P1_FAULT",
    "P2_FAULT",
    "P1_OVERCURRENT",
    "P2_OVERCURRENT",
    "P1_SEAL_LEAK",
    "P2_SEAL_LEAK",
    "EARTH_LEAKAGE",
    "POWER_FAIL",
    "PHASE_LOSS",
    "DOOR_OPEN",
    "LEVEL_SENSOR_FAULT",
    "CONTROLLER_COMM_FAIL",
    "BATT_LOW",
    "P1_FAIL_TO_RUN",
    "P2_FAIL_TO_RUN",
    "MAX_RUNTIME",
];

#[derive(Debug, Clone)]
pub struct MpsOptions {
    pub station_id: String,
    pub device_id: String,
    pub boot: u64,
    pub seed: u64,
    /// Mean dry-weather inflow, m3/min.
    pub inflow_m3_min: f64,
    /// Pumping rate of one healthy pump, m3/min.
    pub pump_m3_min: f64,
    pub well_area_m2: f64,
    pub start_cm: f64,
    pub stop_cm: f64,
    pub lag_cm: f64,
    pub high_cm: f64,
    pub hh_cm: f64,
    pub status_every_s: i64,
    pub heartbeat_every_s: i64,
    pub noise: bool,
}

impl MpsOptions {
    pub fn new(station: &str, device: &str) -> Self {
        Self {
            station_id: station.into(),
            device_id: device.into(),
            boot: 1,
            seed: 1,
            inflow_m3_min: 0.12,
            pump_m3_min: 0.45,
            well_area_m2: 1.77,
            start_cm: 90.0,
            stop_cm: 40.0,
            lag_cm: 120.0,
            high_cm: 130.0,
            hh_cm: 150.0,
            status_every_s: 600,
            heartbeat_every_s: 3600,
            noise: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Pump {
    run: bool,
    fault: bool,
    /// Held off by the master station (Modbus coil p1/p2_inhibit).
    inhibit: bool,
    ragging: bool,
    /// Extra current from wear, as a fraction, growing `wear_per_day` a day.
    wear: f64,
    wear_per_day: f64,
    run_s: f64,
    starts: u64,
    current: f64,
}

pub struct MpsNotifier {
    o: MpsOptions,
    rng: StdRng,
    clock: DeviceClock,
    seq: u64,
    last_step: Option<DateTime<Utc>>,
    next_status: Option<DateTime<Utc>>,
    next_hb: Option<DateTime<Utc>>,
    started: Option<DateTime<Utc>>,
    level: f64,
    pumps: [Pump; 2],
    lead: usize,
    bits: u64,
    power_until: Option<DateTime<Utc>>,
    rain: Option<(f64, DateTime<Utc>)>,
    door_until: Option<DateTime<Utc>>,
    chatter_until: Option<DateTime<Utc>>,
    outage_until: Option<DateTime<Utc>>,
    batt_v: f64,
    outbox: Outbox,
    dead: bool,
}

impl MpsNotifier {
    pub fn new(o: MpsOptions) -> Self {
        let mut pumps: [Pump; 2] = Default::default();
        pumps[0].starts = 60_000 + o.seed * 7;
        pumps[1].starts = 59_000 + o.seed * 5;
        pumps[0].run_s = 184_000.0 * 60.0;
        pumps[1].run_s = 181_000.0 * 60.0;
        Self {
            rng: StdRng::seed_from_u64(o.seed),
            level: o.stop_cm + (o.seed % 40) as f64,
            o,
            clock: DeviceClock::default(),
            seq: 0,
            last_step: None,
            next_status: None,
            next_hb: None,
            started: None,
            pumps,
            lead: 0,
            bits: 0,
            power_until: None,
            rain: None,
            door_until: None,
            chatter_until: None,
            outage_until: None,
            batt_v: 13.1,
            outbox: Outbox::default(),
            dead: false,
        }
    }

    pub fn level_cm(&self) -> f64 {
        self.level
    }

    pub fn bits(&self) -> u64 {
        self.bits
    }

    fn topic(&self, leaf: &str) -> String {
        format!("akita/v1/mps/{}/{leaf}", self.o.station_id)
    }

    fn power(&self, now: DateTime<Utc>) -> bool {
        self.power_until.is_none_or(|u| now >= u)
    }

    fn inflow(&mut self, now: DateTime<Utc>) -> f64 {
        let mut q = self.o.inflow_m3_min * crate::dma::diurnal_at(now);
        if let Some((f, until)) = self.rain {
            if now < until {
                q *= f;
            }
        }
        if self.o.noise {
            q *= 1.0 + self.rng.random_range(-0.05..=0.05);
        }
        q
    }

    fn next_seq(&mut self) -> (u64, u64) {
        let s = self.seq;
        self.seq += 1;
        (self.o.boot, s)
    }

    fn header(&mut self, schema: &str, now: DateTime<Utc>) -> Value {
        let (boot, seq) = self.next_seq();
        json!({"schema": schema, "station_id": self.o.station_id, "device_id": self.o.device_id, "boot": boot, "seq": seq,
               "t": rfc3339(self.clock.read(now))})
    }

    fn status_msg(&mut self, now: DateTime<Utc>) {
        let mut b = self.header("mps-status/1", now);
        let mains = self.power(now);
        let status_bits = (self.pumps[0].run as u64) | (self.pumps[1].run as u64) << 1 | 1 << 2 | 1 << 3;
        b["backlog"] = json!(0);
        b["alarm_bits"] = json!(self.bits);
        b["status_bits"] = json!(status_bits);
        b["level_cm"] = json!(self.level.round() as i64);
        b["pumps"] = json!([
            {"n":1,"run":self.pumps[0].run,"auto":true,"current_a":(self.pumps[0].current*10.0).round()/10.0,
             "run_min":(self.pumps[0].run_s/60.0) as u64,"starts":self.pumps[0].starts},
            {"n":2,"run":self.pumps[1].run,"auto":true,"current_a":(self.pumps[1].current*10.0).round()/10.0,
             "run_min":(self.pumps[1].run_s/60.0) as u64,"starts":self.pumps[1].starts}]);
        b["power"] = json!({"mains": mains, "on_battery": !mains, "batt_v": (self.batt_v*10.0).round()/10.0});
        b["rssi_dbm"] = json!(-79 - (self.o.seed % 20) as i64);
        self.outbox.push(Pending {
            topic: self.topic("status"),
            body: b,
            retain: false,
            fill_sent: false,
            resend: false,
        });
    }

    fn set_bit(&mut self, bit: u8, on: bool, now: DateTime<Utc>) -> bool {
        let mask = 1u64 << bit;
        if (self.bits & mask != 0) == on {
            return false;
        }
        self.bits ^= mask;
        let mut b = self.header("mps-event/1", now);
        b["code"] = json!(CODES[bit as usize]);
        b["bit"] = json!(bit);
        b["state"] = json!(if on { "raise" } else { "clear" });
        b["level_cm"] = json!(self.level.round() as i64);
        self.outbox.push(Pending {
            topic: self.topic("event"),
            body: b,
            retain: false,
            fill_sent: false,
            resend: false,
        });
        true
    }

    /// One physics step of `dt` seconds. Returns whether anything reportable changed.
    fn physics(&mut self, now: DateTime<Utc>, dt: f64) -> bool {
        let mut changed = false;
        let mains = self.power(now);
        let inflow = self.inflow(now);
        let want_lead = self.level >= self.o.start_cm;
        let want_lag = self.level >= self.o.lag_cm;
        let stop = self.level <= self.o.stop_cm;
        let lead = self.lead;
        let lag = 1 - lead;
        let any_ran = self.pumps.iter().any(|p| p.run);
        let mut pumped = 0.0;
        for p in self.pumps.iter_mut() {
            p.wear += p.wear_per_day * dt / 86_400.0;
        }
        for (i, p) in self.pumps.iter_mut().enumerate() {
            let demanded = if stop {
                false
            } else {
                p.run || (i == lead && want_lead) || (i == lag && want_lag)
            };
            let can = mains && !p.fault && !p.inhibit;
            let run = demanded && can;
            if run && !p.run {
                p.starts += 1;
                changed = true;
            }
            if !run && p.run {
                changed = true;
            }
            p.run = run;
            if run {
                p.run_s += dt;
                let rate = if p.ragging { 0.35 } else { 1.0 };
                pumped += rate;
                p.current = if p.ragging { 9.5 } else { 7.2 } * (1.0 + p.wear);
            } else {
                p.current = 0.0;
            }
        }
        let pumped_m3_min = pumped * self.o.pump_m3_min;
        self.level =
            (self.level + (inflow - pumped_m3_min) * dt / 60.0 / self.o.well_area_m2 * 100.0).clamp(0.0, 400.0);
        if stop && any_ran && !self.pumps.iter().any(|p| p.run) {
            // The cycle ended (pumps stopped at the stop level): alternate the
            // lead pump. Keyed on the stop itself, not on the level crossing,
            // which sensor noise can cross twice.
            self.lead = 1 - self.lead;
        }
        if self.o.noise {
            self.level += self.rng.random_range(-0.2..=0.2);
        }
        if self.chatter_until.is_some_and(|u| now < u) {
            self.level = self.o.high_cm + if now.timestamp() % 20 < 10 { -1.0 } else { 1.0 };
        }
        if !mains {
            self.batt_v = (self.batt_v - 0.00005 * dt).max(10.5);
        } else {
            self.batt_v = (self.batt_v + 0.0001 * dt).min(13.1);
        }
        let lvl = self.level;
        changed |= self.set_bit(HH_LEVEL, lvl >= self.o.hh_cm, now);
        changed |= self.set_bit(HIGH_LEVEL, lvl >= self.o.high_cm, now);
        changed |= self.set_bit(LOW_LEVEL, lvl < 10.0, now);
        changed |= self.set_bit(P1_FAULT, self.pumps[0].fault, now);
        changed |= self.set_bit(P2_FAULT, self.pumps[1].fault, now);
        changed |= self.set_bit(POWER_FAIL, !mains, now);
        changed |= self.set_bit(DOOR_OPEN, self.door_until.is_some_and(|u| now < u), now);
        changed |= self.set_bit(BATT_LOW, self.batt_v < 11.5, now);
        changed
    }
}

/// What the station's controller exposes over Modbus (field-devices.md §3).
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerImage {
    /// Discrete inputs 0..=37: alarm bits 0-18, reserved 19-31, status 32-37.
    pub discrete: Vec<bool>,
    /// Input registers 0..=22.
    pub input: Vec<u16>,
    /// Holding registers 0..=8.
    pub holding: Vec<u16>,
}

impl MpsNotifier {
    /// The controller's register image now. `now` gives `controller_utc`.
    pub fn controller_image(&self, now: DateTime<Utc>) -> ControllerImage {
        let mut discrete = vec![false; 38];
        for (b, d) in discrete.iter_mut().enumerate().take(19) {
            *d = self.bits & (1 << b) != 0;
        }
        let status = [self.pumps[0].run, self.pumps[1].run, true, true, false, false];
        discrete[32..38].copy_from_slice(&status);
        let u32w = |v: u64| [((v >> 16) & 0xFFFF) as u16, (v & 0xFFFF) as u16];
        let mut input = vec![0u16; 23];
        input[0] = self.level.round().clamp(0.0, 600.0) as u16;
        input[1] = (self.pumps[0].current * 10.0).round() as u16;
        input[2] = (self.pumps[1].current * 10.0).round() as u16;
        input[3..5].copy_from_slice(&u32w((self.pumps[0].run_s / 60.0) as u64));
        input[5..7].copy_from_slice(&u32w((self.pumps[1].run_s / 60.0) as u64));
        input[7..9].copy_from_slice(&u32w(self.pumps[0].starts));
        input[9..11].copy_from_slice(&u32w(self.pumps[1].starts));
        input[15] = (self.o.inflow_m3_min * 60.0 * 10.0).round() as u16;
        input[16] = if self.power(now) { 2020 } else { 0 };
        input[17] = 125; // 12.5 °C panel
        input[18..20].copy_from_slice(&u32w(self.bits));
        input[20] = status
            .iter()
            .enumerate()
            .fold(0u16, |a, (i, on)| a | ((*on as u16) << i));
        input[21..23].copy_from_slice(&u32w(self.clock.read(now).timestamp().max(0) as u64));
        let holding = vec![
            self.o.start_cm as u16,
            self.o.stop_cm as u16,
            self.o.lag_cm as u16,
            self.o.high_cm as u16,
            self.o.hh_cm as u16,
            10,
            1,
            120,
            5,
        ];
        ControllerImage {
            discrete,
            input,
            holding,
        }
    }
}

impl MpsNotifier {
    /// Coil writes from the master station: 0 alarm reset (rising edge clears
    /// tripped pumps), 1/2 inhibit pump 1/2, 3 remote pump-down (rising edge
    /// starts the lead pump now; it stops at the stop level as usual).
    pub fn coil_written(&mut self, coil: u16, value: bool, previous: bool) {
        match (coil, value, previous) {
            (0, true, false) => {
                for p in &mut self.pumps {
                    p.fault = false;
                }
            }
            (1, v, _) => self.pumps[0].inhibit = v,
            (2, v, _) => self.pumps[1].inhibit = v,
            (3, true, false) => {
                let lead = self.lead;
                if !self.pumps[lead].inhibit && !self.pumps[lead].fault {
                    self.pumps[lead].run = true;
                    self.pumps[lead].starts += 1;
                }
            }
            _ => {}
        }
    }
}

impl Device for MpsNotifier {
    fn id(&self) -> &str {
        &self.o.device_id
    }
    fn site(&self) -> &str {
        &self.o.station_id
    }
    fn radio_up(&self) -> bool {
        !self.dead
    }
    fn will(&self) -> Msg {
        Msg {
            topic: self.topic("will"),
            payload: br#"{"online":false}"#.to_vec(),
            retain: false,
            resend: false,
        }
    }

    fn step(&mut self, now: DateTime<Utc>) -> Vec<Msg> {
        if self.dead {
            return vec![];
        }
        let start = *self.started.get_or_insert(now);
        let prev = self.last_step.unwrap_or(now);
        self.clock.tick(now - prev);
        // Physics in steps of at most 5 s so pump starts and stops are seen.
        let mut t = prev;
        let mut changed = false;
        while t < now {
            let dt = (now - t).min(Duration::seconds(5));
            t += dt;
            changed |= self.physics(t, dt.num_milliseconds() as f64 / 1000.0);
        }
        self.last_step = Some(now);
        let ns = *self.next_status.get_or_insert(start);
        if ns <= now || changed {
            self.status_msg(now);
            self.next_status = Some(now + Duration::seconds(self.o.status_every_s));
        }
        let hb = *self
            .next_hb
            .get_or_insert(start + Duration::seconds(self.o.heartbeat_every_s));
        if hb <= now {
            let mut b = self.header("mps-heartbeat/1", now);
            b["uptime_s"] = json!((now - start).num_seconds());
            b["rssi_dbm"] = json!(-79);
            b["batt_v"] = json!((self.batt_v * 10.0).round() / 10.0);
            self.outbox.push(Pending {
                topic: self.topic("heartbeat"),
                body: b,
                retain: false,
                fill_sent: false,
                resend: false,
            });
            self.next_hb = Some(now + Duration::seconds(self.o.heartbeat_every_s));
        }
        let up = self.outage_until.is_none_or(|u| now >= u);
        self.outbox.drain(up, 4, self.clock.read(now))
    }

    fn inject(&mut self, s: Scenario, now: DateTime<Utc>) {
        match s {
            Scenario::PumpFail { pump } => self.pumps[(pump.clamp(1, 2) - 1) as usize].fault = true,
            Scenario::BothPumpsFail => {
                self.pumps[0].fault = true;
                self.pumps[1].fault = true;
            }
            Scenario::Ragging { pump } => self.pumps[(pump.clamp(1, 2) - 1) as usize].ragging = true,
            Scenario::PumpWear { pump, pct_per_day } => {
                self.pumps[(pump.clamp(1, 2) - 1) as usize].wear_per_day = pct_per_day / 100.0
            }
            Scenario::PowerCut { duration } => self.power_until = Some(now + duration),
            Scenario::RainInflow { factor, duration } => self.rain = Some((factor, now + duration)),
            Scenario::DoorOpen { duration } => self.door_until = Some(now + duration),
            Scenario::Chattering { duration } => self.chatter_until = Some(now + duration),
            Scenario::LteOutage { duration } => self.outage_until = Some(now + duration),
            Scenario::SuddenDeath => self.dead = true,
            Scenario::Reboot => {
                self.o.boot += 1;
                self.seq = 0;
            }
            s @ (Scenario::ClockDrift { .. } | Scenario::ClockStep { .. } | Scenario::ClockReset) => {
                self.clock.apply(&s, now);
            }
            Scenario::Redeliver => self.outbox.redeliver_last(),
            Scenario::Repair => {
                for p in &mut self.pumps {
                    p.fault = false;
                    p.ragging = false;
                    p.wear = 0.0;
                    p.wear_per_day = 0.0;
                }
                self.power_until = None;
                self.rain = None;
                self.door_until = None;
                self.chatter_until = None;
                self.dead = false;
                self.clock = DeviceClock::default();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-07-03T05:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn cycles_alternate_and_both_pumps_failing_reaches_hh() {
        let mut o = MpsOptions::new("MP-0001", "AKT-MPN-0001");
        o.noise = false;
        let mut d = MpsNotifier::new(o);
        let mut t = t0();
        for _ in 0..(3 * 3600 / 10) {
            t += Duration::seconds(10);
            d.step(t);
        }
        assert!(
            d.pumps[0].starts > 60_000 && d.pumps[1].starts > 59_000,
            "both pumps cycled"
        );
        assert_eq!(d.bits() & 1, 0);
        d.inject(Scenario::BothPumpsFail, t);
        let mut events = vec![];
        for _ in 0..(3600 / 10) {
            t += Duration::seconds(10);
            events.extend(d.step(t).into_iter().filter(|m| m.topic.ends_with("/event")));
        }
        let codes: Vec<String> = events
            .iter()
            .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
            .map(|v| format!("{}:{}", v["code"].as_str().unwrap(), v["state"].as_str().unwrap()))
            .collect();
        assert!(codes.contains(&"HH_LEVEL:raise".to_string()), "{codes:?}");
        assert!(codes.contains(&"P1_FAULT:raise".to_string()));
    }
}
