//! Bounded quarantine of rejected messages, for engineers to inspect over the
//! API. Oldest entries are dropped when full (policy: drop oldest); the
//! per-reason counters in /metrics keep the full count.

use crate::model::Timestamp;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub at: Timestamp,
    pub topic: String,
    pub reason: String,
    pub error: String,
    /// Whole message rejected (`false`: only some samples were).
    pub whole: bool,
    /// The payload as text (lossy), cut to 2 KiB.
    pub payload: String,
    pub size: usize,
}

pub struct Quarantine {
    cap: usize,
    // A std Mutex: held for a push or a copy, never across an await.
    entries: Mutex<VecDeque<QuarantineEntry>>,
}

pub const PREVIEW_BYTES: usize = 2048;

pub fn preview(payload: &[u8]) -> String {
    let cut = &payload[..payload.len().min(PREVIEW_BYTES)];
    String::from_utf8_lossy(cut).into_owned()
}

impl Quarantine {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: Mutex::new(VecDeque::new()),
        }
    }

    pub fn push(&self, e: QuarantineEntry) {
        let mut q = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.cap {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// Newest first.
    pub fn list(&self, limit: usize) -> Vec<QuarantineEntry> {
        let q = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().rev().take(limit).cloned().collect()
    }
}
