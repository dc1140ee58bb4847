//! Duplicate detection: messages by `(device, boot, seq)`, samples by
//! `(point, time)`. What is remembered is kept as runs (a device numbers its
//! messages one after another, a logger samples every 300 s), so a point
//! sampled regularly for a year costs a few bytes, not a set of 100,000
//! times: memory stays flat as data accumulates, for a service that runs
//! for months and for a replay of a year alike. Bounded per boot and per
//! point: a device whose seqs or times never form runs keeps its most recent
//! `MAX_RUNS` runs, and what falls out is old enough that a QoS 1
//! redelivery of it is no longer plausible.

use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, VecDeque};

const BOOTS_KEPT: usize = 4;
/// Runs kept per boot (of seqs) and per point (of sample times).
const MAX_RUNS: usize = 256;
/// Runs an out-of-order member may continue (newest first).
const EXTEND_TRIES: usize = 16;

/// A set of integers as arithmetic runs `start, start + step, …` (`n` items).
#[derive(Debug, Default)]
struct Runs {
    /// The newest run, kept inline: data in order only ever touches this
    /// one, and reaching it in `runs` was a cache miss per sample.
    head: Option<(i64, i64, u32)>,
    /// The older runs, oldest first.
    runs: VecDeque<(i64, i64, u32)>,
    /// The largest member: anything larger is new without a search (data
    /// mostly arrives in order).
    max: Option<i64>,
}

impl Runs {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.runs.len() + self.head.is_some() as usize
    }

    fn holds(&self, x: i64) -> bool {
        // Newest first: a duplicate is most often of something recent.
        // The range test first: most runs lie wholly before or after `x`,
        // and a division for each of them was most of a backlog's cost.
        self.head.iter().chain(self.runs.iter().rev()).any(|&(start, step, n)| {
            x >= start && x <= start + step * (n as i64 - 1) && (step == 0 || (x - start) % step == 0)
        })
    }

    /// Grows run `r` by `x` at either end, if `x` continues it.
    fn extend(r: &mut (i64, i64, u32), x: i64) -> bool {
        let (start, step, n) = *r;
        if n == 1 {
            // A run of one takes its step from its second member.
            *r = (start.min(x), (x - start).abs(), 2);
            return true;
        }
        if x == start + step * n as i64 {
            r.2 += 1;
            return true;
        }
        if x == start - step {
            *r = (x, step, n + 1);
            return true;
        }
        false
    }

    /// `true` if `x` is new (and records it).
    fn insert(&mut self, x: i64) -> bool {
        let newest = self.max.is_none_or(|m| x > m);
        if !newest && self.holds(x) {
            return false;
        }
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
        // In order: only the newest run can continue. Out of order: any.
        let extended = if newest {
            self.head.as_mut().is_some_and(|r| Self::extend(r, x))
        } else {
            // Only the most recent runs: an irregular point has hundreds of
            // runs of two, and trying each for every out-of-order sample was
            // the most of dedup's cost; a new run records `x` as exactly.
            self.head
                .iter_mut()
                .chain(self.runs.iter_mut().rev())
                .take(EXTEND_TRIES)
                .any(|r| Self::extend(r, x))
        };
        if !extended {
            if let Some(h) = self.head.replace((x, 0, 1)) {
                self.runs.push_back(h);
            }
            if self.runs.len() + 1 > MAX_RUNS {
                self.runs.pop_front();
            }
        }
        true
    }
}

#[derive(Debug, Default)]
pub struct MessageDedup {
    boots: BTreeMap<u64, Runs>,
}

impl MessageDedup {
    /// `true` if this is the first time the message is seen (and records it).
    pub fn first_time(&mut self, boot: u64, seq: u64) -> bool {
        if !self.boots.entry(boot).or_default().insert(seq as i64) {
            return false;
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
    points: FxHashMap<String, Runs>,
}

impl SampleDedup {
    pub fn first_time(&mut self, point: &str, t_ms: i64) -> bool {
        // Looked up before inserting: a String per sample is the cost of a
        // point's first sample only.
        let runs = match self.points.get_mut(point) {
            Some(r) => r,
            None => self.points.entry(point.to_string()).or_default(),
        };
        runs.insert(t_ms)
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

    #[test]
    fn a_year_of_regular_samples_is_a_few_runs_and_every_repeat_is_caught() {
        let mut s = SampleDedup::default();
        let five_min = 300_000;
        for i in 0..105_120 {
            assert!(s.first_time("B17.q", i * five_min));
        }
        assert_eq!(s.points["B17.q"].len(), 1, "one run for a year of 5-minute samples");
        // Redeliveries from anywhere in the year, a backlog arriving out of
        // order, and samples between the regular ones.
        assert!(!s.first_time("B17.q", 0));
        assert!(!s.first_time("B17.q", 50_000 * five_min));
        assert!(s.first_time("B17.q", 7), "off the grid: new");
        assert!(!s.first_time("B17.q", 7));
        let mut m = MessageDedup::default();
        for seq in (0..10_000).rev() {
            assert!(m.first_time(1, seq), "backlog newest first: every seq new");
        }
        for seq in 0..10_000 {
            assert!(!m.first_time(1, seq), "and each one a duplicate after");
        }
    }

    #[test]
    fn irregular_times_are_bounded_to_the_most_recent_runs() {
        let mut s = SampleDedup::default();
        // Event-driven status times: no two gaps alike.
        let mut t = 0;
        for i in 0..10_000i64 {
            t += 1_000 + (i * 7919) % 5_000;
            s.first_time("MP-0001.level", t);
        }
        assert!(s.points["MP-0001.level"].len() <= MAX_RUNS);
        assert!(!s.first_time("MP-0001.level", t), "the latest is still known");
    }
}
