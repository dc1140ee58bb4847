//! Admission for event streams (`/api/v1/events`): at most `max` open in all
//! (more: 503) and `per_caller` per token or user (more: 429), so a script in
//! a loop or a flood of connections cannot take the service's memory. A
//! stream holds a [`StreamPermit`]; dropping it (the client went away, or the
//! service is shutting down) gives the place back. A std Mutex: a counter
//! update, never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct EventStreams {
    max: usize,
    per_caller: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The service has `max` streams open.
    Full,
    /// This caller has `per_caller` streams open.
    CallerFull,
}

pub struct StreamPermit {
    streams: Arc<EventStreams>,
    caller: String,
}

impl EventStreams {
    pub fn new(max: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            per_caller: per_caller.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn admit(self: &Arc<Self>, caller: &str) -> Result<StreamPermit, Refused> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = g.1.get(caller).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(Refused::CallerFull);
        }
        if g.0 >= self.max {
            return Err(Refused::Full);
        }
        g.0 += 1;
        *g.1.entry(caller.to_string()).or_default() += 1;
        Ok(StreamPermit {
            streams: self.clone(),
            caller: caller.to_string(),
        })
    }

    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut g = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_caller_and_in_all_and_gives_places_back() {
        let s = EventStreams::new(3, 2);
        let a1 = s.admit("a").unwrap();
        let _a2 = s.admit("a").unwrap();
        assert_eq!(s.admit("a").err(), Some(Refused::CallerFull));
        let _b1 = s.admit("b").unwrap();
        assert_eq!(s.admit("c").err(), Some(Refused::Full));
        drop(a1);
        assert_eq!(s.open(), 2);
        assert!(s.admit("c").is_ok());
    }
}
