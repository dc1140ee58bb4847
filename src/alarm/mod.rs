//! ISA-18.2 / IEC 62682 alarm lifecycle. `Alarm` is one occurrence of one
//! condition on one source; `Registry` holds the open occurrences of a set of
//! sites (one pipeline shard) and applies raises, clears, acks, shelving,
//! suppression and out-of-service, returning every `Transition` for the journal,
//! the store, the event stream and (when `notify` is set) the on-call pipeline.
//! Pure: time and actor are passed in.

pub mod kpi;
mod registry;
mod state;

pub use registry::{AlarmKey, CommandError, KeyParts, RaiseSpec, Registry, COMM_LOSS};
pub use state::{Action, Alarm, AlarmOrigin, AlarmState, Transition};
