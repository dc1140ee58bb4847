//! The service's notion of "now" (arrival and processing time). Rules never use
//! it: they run on event time. Tests and replay substitute a manual clock.

use super::Timestamp;
use std::sync::Mutex;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        chrono::Utc::now()
    }
}

/// A clock that moves only when told to.
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(t: Timestamp) -> Self {
        Self(Mutex::new(t))
    }
    pub fn advance(&self, d: chrono::Duration) {
        let mut g = self.0.lock().expect("clock mutex poisoned");
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock mutex poisoned")
    }
}
