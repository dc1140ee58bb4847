//! Alerts to on-call staff: routing, rosters, grouping into incidents,
//! escalation until acknowledged, acknowledgement from the message itself,
//! e-mail and webhook delivery with retries, a durable outbox, a rate limit
//! per person.
//!
//! The engine is one task per node, off the hot path: it follows the journal
//! (the durable record of every alarm transition) with a cursor of its own and
//! keeps all of its state in SQLite, so a crash at any point resumes without a
//! gap and without sending anything twice.

pub mod config;
mod engine;
pub mod message;
pub mod plan;
pub mod render;
pub mod roster;
pub mod route;

pub use crate::store::outbox::{Incident, OutboxRow};
pub use engine::{AckError, AckKey, Notifier};
