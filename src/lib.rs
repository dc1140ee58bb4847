//! mizuban (水番, "water watchman"): telemetry monitoring master station for
//! water utilities. Data flows one way: `collect` -> `pipeline` (`rules`,
//! `alarm`) -> (`store`, `api`); operator commands flow back into `alarm` only
//! through the pipeline's command channel.
// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod alarm;
pub mod api;
pub mod app;
pub mod collect;
pub mod config;
pub mod device;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod sink;
pub mod store;
pub mod telemetry;
