//! Rollups: count, sum, min and max of a point's good values per 1-minute and
//! 1-hour bucket, kept as readings commit. Both stores fold a transaction's
//! new readings into per-bucket sums here first, so each bucket is written
//! once per commit, and a late reading corrects only the buckets it falls in.

use rustc_hash::FxHashMap;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;

/// Count, sum, min and max of a bucket's values.
#[derive(Debug, Clone, Copy)]
pub struct Rollup {
    pub n: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Rollup {
    pub fn empty() -> Self {
        Self {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
    pub fn add(&mut self, v: f64) {
        self.merge(&Rollup {
            n: 1,
            sum: v,
            min: v,
            max: v,
        });
    }
    pub fn merge(&mut self, o: &Rollup) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// Minute buckets keyed by `(point id, bucket start)` (with the point's name,
/// for errors) summed into their hours.
pub fn hours_of<'a>(minutes: &FxHashMap<(i64, i64), (&'a str, Rollup)>) -> FxHashMap<(i64, i64), (&'a str, Rollup)> {
    let mut hours: FxHashMap<(i64, i64), (&str, Rollup)> = FxHashMap::default();
    for ((p, t), (name, r)) in minutes {
        hours
            .entry((*p, t - t.rem_euclid(HOUR_MS)))
            .or_insert_with(|| (name, Rollup::empty()))
            .1
            .merge(r);
    }
    hours
}
