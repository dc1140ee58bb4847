//! Plain values shared by every stage: identifiers (newtypes that validate on
//! construction), readings with their quality, and the event/arrival time pair.
//! Nothing here does I/O.

mod ids;
mod reading;

pub use ids::{DeviceId, IdError, PointId, SiteId};
pub use reading::{Quality, Reading, SiteKind, Timestamp};
mod clock;
pub mod secret;
pub use clock::{Clock, ManualClock, SystemClock};
