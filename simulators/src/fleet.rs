//! The whole Akita fleet — 41 distribution-block loggers and 200 pump-station
//! notifiers — as one set of simulated devices, with incidents for the demo.

use crate::dma::{DmaLogger, DmaOptions};
use crate::mps::{MpsNotifier, MpsOptions};
use crate::runner::{spawn, Handle, Mode, SimError, SpawnOptions};
use crate::Scenario;
use chrono::Duration;
use rand::Rng;

/// Device ids follow the Akita numbering: `AKT-DMA-017` for block `B17`,
/// `AKT-MPN-0123` for station `MP-0123`.
pub fn dma_ids(n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (format!("B{i:02}"), format!("AKT-DMA-{i:03}")))
        .collect()
}
pub fn mps_ids(n: usize) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (format!("MP-{i:04}"), format!("AKT-MPN-{i:04}")))
        .collect()
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub host: String,
    pub port: u16,
    pub blocks: usize,
    pub stations: usize,
    /// Logger cadence (the field default is 300 s / 3600 s; the demo uses a
    /// shorter one so the board moves).
    pub log_interval_s: u32,
    pub upload_interval_s: u32,
    pub mode: Mode,
    pub topic_prefix: String,
    pub credentials: Option<(String, String)>,
}

pub struct Fleet {
    pub loggers: Vec<Handle>,
    pub stations: Vec<Handle>,
}

impl Fleet {
    pub async fn spawn(o: FleetOptions) -> Result<Self, SimError> {
        let so = SpawnOptions {
            host: o.host.clone(),
            port: o.port,
            mode: o.mode.clone(),
            topic_prefix: o.topic_prefix.clone(),
            credentials: o.credentials.clone(),
        };
        let mut loggers = Vec::new();
        for (i, (block, dev)) in dma_ids(o.blocks).into_iter().enumerate() {
            let mut d = DmaOptions::new(&block, &dev);
            d.seed = i as u64 + 1;
            d.mean_flow = [40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 180.0, 220.0, 260.0][i % 9];
            d.base_pressure = 0.36 + (i % 7) as f64 * 0.02;
            d.log_interval_s = o.log_interval_s;
            d.upload_interval_s = o.upload_interval_s;
            loggers.push(spawn(Box::new(DmaLogger::new(d)), so.clone()).await?);
        }
        let mut stations = Vec::new();
        for (i, (st, dev)) in mps_ids(o.stations).into_iter().enumerate() {
            let mut m = MpsOptions::new(&st, &dev);
            m.seed = i as u64 + 1;
            m.inflow_m3_min = 0.05 + (i % 10) as f64 * 0.02;
            stations.push(spawn(Box::new(MpsNotifier::new(m)), so.clone()).await?);
        }
        Ok(Self { loggers, stations })
    }

    /// A random incident somewhere in the fleet; returns what was done, for the log.
    pub async fn random_incident(&self) -> Result<String, SimError> {
        let (kind, pick) = {
            let mut rng = rand::rng();
            (rng.random_range(0..3u8), rng.random_range(0..usize::MAX))
        };
        match kind {
            0 if !self.stations.is_empty() => {
                let h = &self.stations[pick % self.stations.len()];
                h.inject(Scenario::PumpFail {
                    pump: 1 + (pick % 2) as u8,
                })
                .await?;
                Ok(format!("pump failure at {}", h.site()))
            }
            1 if !self.loggers.is_empty() => {
                let h = &self.loggers[pick % self.loggers.len()];
                h.inject(Scenario::PipeBurst {
                    extra_m3h: 80.0,
                    pressure_drop_mpa: 0.12,
                    duration: Duration::minutes(20),
                })
                .await?;
                Ok(format!("pipe burst in {}", h.site()))
            }
            _ if !self.stations.is_empty() => {
                // An area power cut: a run of neighbouring stations.
                let n = 10 + pick % 20;
                let start = pick % self.stations.len();
                for k in 0..n.min(self.stations.len()) {
                    let h = &self.stations[(start + k) % self.stations.len()];
                    h.inject(Scenario::PowerCut {
                        duration: Duration::minutes(8),
                    })
                    .await?;
                }
                Ok(format!(
                    "area power cut over {} stations from {}",
                    n.min(self.stations.len()),
                    self.stations[start].site()
                ))
            }
            _ => Ok("no incident (empty fleet)".into()),
        }
    }

    /// Repairs a random broken device so the demo does not only get worse.
    pub async fn repair_all(&self) -> Result<(), SimError> {
        for h in self.loggers.iter().chain(self.stations.iter()) {
            h.inject(Scenario::Repair).await?;
        }
        Ok(())
    }

    pub async fn stop(&self) {
        for h in self.loggers.iter().chain(self.stations.iter()) {
            h.stop().await;
        }
    }
}
