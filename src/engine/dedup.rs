//! Duplicate detection: messages by `(device, boot, seq)`, samples by
//! `(point, time)`. Bounded per device and per point so a chatty or broken
//! device cannot grow memory; what falls out of the window is old enough that
//! QoS 1 redelivery of it is no longer plausible.

use std::collections::{BTreeMap, BTreeSet, HashMap};

const SEQS_PER_BOOT: usize = 8192;
const BOOTS_KEPT: usize = 4;
const TIMES_PER_POINT: usize = 4096;

#[derive(Debug, Default)]
pub struct MessageDedup {
    boots: BTreeMap<u64, BTreeSet<u64>>,
}

impl MessageDedup {
    /// `true` if this is the first time the message is seen (and records it).
    pub fn first_time(&mut self, boot: u64, seq: u64) -> bool {
        let seqs = self.boots.entry(boot).or_default();
        if !seqs.insert(seq) {
            return false;
        }
        if seqs.len() > SEQS_PER_BOOT {
            let oldest = *seqs.iter().next().expect("non-empty");
            seqs.remove(&oldest);
        }
        while self.boots.len() > BOOTS_KEPT {
            let oldest = *self.boots.keys().next().expect("non-empty");
            self.boots.remove(&oldest);
        }
        true
    }
}

#[derive(Debug, Default)]
pub struct SampleDedup {
    points: HashMap<String, BTreeSet<i64>>,
}

impl SampleDedup {
    pub fn first_time(&mut self, point: &str, t_ms: i64) -> bool {
        // Looked up before inserting: a String per sample is the cost of a
        // point's first sample only.
        let set = match self.points.get_mut(point) {
            Some(s) => s,
            None => self.points.entry(point.to_string()).or_default(),
        };
        if !set.insert(t_ms) {
            return false;
        }
        if set.len() > TIMES_PER_POINT {
            let oldest = *set.iter().next().expect("non-empty");
            set.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reboot_is_not_a_duplicate() {
        let mut d = MessageDedup::default();
        assert!(d.first_time(12, 48213));
        assert!(!d.first_time(12, 48213));
        assert!(d.first_time(13, 0));
        assert!(d.first_time(12, 0), "seq 0 of the old boot is a different message");
        assert!(!d.first_time(13, 0));
        let mut s = SampleDedup::default();
        assert!(s.first_time("B17.p", 1));
        assert!(!s.first_time("B17.p", 1));
        assert!(s.first_time("B17.q", 1));
    }
}
