//! The pipeline's logic as a pure, synchronous engine: `Engine::step(input,
//! now) -> Step`. In: one decoded message (MQTT publish or Modbus poll), an
//! operator command, a clock tick or an external condition, with the time.
//! Out: a plain value — readings and state to store, alarm transitions,
//! quarantined items, counters and notes, the status of the sites it changed
//! and a command's reply. No store, channel, view or metrics handle inside:
//! the live shard (`crate::pipeline`) and replay (`crate::replay`) are
//! runners around the same engine.

mod analytic;
mod core;
mod dedup;
mod intake;
mod site;

pub use analytic::{Analytic, Finding, Findings, LateFinding, SiteRef};
pub use core::{Command, Counts, Engine, Input, Message, Note, Resume, Step};
pub use intake::{decode_publish, profiles_in_order, Rejected};
pub use site::{LatestValue, SiteStatus};
