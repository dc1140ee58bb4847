//! A reading is one value of one point at one event time, with its quality and the
//! time mizuban received it. Both times are kept: rules run on event time, comm
//! loss and lateness are judged on arrival time, and replay needs both.

use super::PointId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub type Timestamp = DateTime<Utc>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Good,
    /// The device flagged the value (`estimated`, `clock_stepped`) or it is
    /// plausible but suspicious. Stored and shown, not used for limit alarms.
    Uncertain,
    /// Missing, `null`, not-a-number, out of the physically possible range, or
    /// flagged `sensor_fault`. Stored so the gap is visible; never alarmed on.
    Bad,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "good" => Some(Self::Good),
            "uncertain" => Some(Self::Uncertain),
            "bad" => Some(Self::Bad),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    Dma,
    PumpStation,
}

impl SiteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Dma => "dma",
            SiteKind::PumpStation => "pump_station",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub point: PointId,
    /// Event time: the device's timestamp for the sample.
    pub t: Timestamp,
    /// `None` when the device sent nothing usable (quality is then `Bad`).
    pub value: Option<f64>,
    pub quality: Quality,
    /// When mizuban received the message that carried it.
    pub arrived: Timestamp,
}
