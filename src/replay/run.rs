//! The replay runner: recorded inputs through the same decoding and the same
//! [`Engine`] as the live service, on a clock that follows the recorded
//! arrival times. Ticks (comm supervision, shelve expiry) are interleaved on
//! the live service's one-second grid, at the moments something is due.
//! Nothing is stored or sent; what the engine decides is collected in memory
//! per alarm occurrence (not per reading, so memory stays flat as the
//! capture grows).

use crate::alarm::{Alarm, Transition, COMM_LOSS};
use crate::config::Config;
use crate::device::Profile;
use crate::engine::{decode_publish, profiles_in_order, Engine, Input, Message, Resume, Step};
use crate::model::Timestamp;
use crate::notify::config::NotifyConfig;
use crate::notify::plan::{CountedIds, DryMessage, JournalRow, MemLedger, Planner, RateWindow};
use crate::notify::Incident;
use crate::store::{InputBody, RecordedInput};
use chrono::Duration;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// One change of an occurrence, as the journal holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Replay clock (the arrival time of the input behind it).
    pub at: Timestamp,
    /// The device's time of the reading behind it (process changes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<Timestamp>,
    pub action: crate::alarm::Action,
    pub to: &'static str,
    /// Worth telling on-call staff.
    pub notify: bool,
    /// Raised from data that arrived after the fact (for review only).
    pub late: bool,
}

/// An alarm occurrence as replay saw it: the alarm object at its last change,
/// and every change.
#[derive(Debug, Clone, Serialize)]
pub struct Occurrence {
    #[serde(flatten)]
    pub alarm: Alarm,
    pub changes: Vec<Change>,
}

/// What one rule set made of the inputs.
#[derive(Debug, Default, Serialize)]
pub struct RunResult {
    pub name: String,
    /// In order of raise (event time), then site, condition and id.
    pub alarms: Vec<Occurrence>,
    pub readings: u64,
    pub late_samples: u64,
    pub duplicate_samples: u64,
    pub duplicate_messages: u64,
    /// Quarantined by the engine (an unknown device, bad samples), by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// What notification routing, rosters, grouping, rate limits and
    /// escalation would have sent, in order (a dry run: every message counts
    /// as delivered, and nobody acknowledges from a message). Empty without
    /// a notification configuration.
    pub notifications: Vec<DryMessage>,
    /// Messages the rate limit would have held back for a summary.
    pub held_notifications: u64,
}

/// The notification planner running dry beside one engine.
struct Dry {
    n: Arc<NotifyConfig>,
    public_url: String,
    ledger: MemLedger,
    open: Vec<Incident>,
    ids: CountedIds,
    rates: RateWindow,
    /// The last planning step: the live engine steps every 100 ms, so work
    /// due at or before it is done at the next such step, never twice at one
    /// instant (which would not move the clock).
    last: Option<Timestamp>,
}

impl Dry {
    fn new(cfg: &Config) -> Option<Self> {
        let n = cfg.notify.clone()?;
        Some(Self {
            ledger: MemLedger::new(&n),
            public_url: cfg.http.public_url.clone().unwrap_or_default(),
            n,
            open: Vec::new(),
            ids: CountedIds::default(),
            rates: Default::default(),
            last: None,
        })
    }

    fn step(&mut self, cfg: &Config, rows: &[JournalRow], now: Timestamp) {
        let mut planner = Planner {
            cfg,
            n: &self.n,
            public_url: &self.public_url,
            ids: &mut self.ids,
        };
        let Ok(()) = planner.step(&mut self.ledger, rows, &mut self.open, now, &mut self.rates);
        self.ledger.forget(&self.open);
        self.last = Some(now);
    }

    /// The next moment the planner has time-driven work.
    fn due(&self) -> Option<Timestamp> {
        let release = self.ledger.next_release(&self.n);
        let due = Planner::next_due(&self.open).into_iter().chain(release).min()?;
        Some(match self.last {
            Some(last) => due.max(last + Duration::milliseconds(100)),
            None => due,
        })
    }
}

struct Run {
    name: String,
    engine: Engine,
    /// Next time a tick can matter; recomputed when a step may move it.
    due: Option<Timestamp>,
    alarms: HashMap<String, Occurrence>,
    result: RunResult,
    cfg: Arc<Config>,
    dry: Option<Dry>,
}

impl Run {
    fn apply(&mut self, step: Step, now: Timestamp) {
        let r = &mut self.result;
        r.readings += step.readings.len() as u64;
        r.late_samples += step.counts.late_samples;
        r.duplicate_samples += step.counts.duplicate_samples;
        r.duplicate_messages += step
            .notes
            .iter()
            .filter(|n| matches!(n, crate::engine::Note::DuplicateMessage { .. }))
            .count() as u64;
        for q in step.quarantined {
            *r.quarantined.entry(q.reason).or_default() += 1;
        }
        let moves_due = step.reschedule || step.transitions.iter().any(|t| t.alarm.condition == COMM_LOSS);
        if let Some(dry) = self.dry.as_mut().filter(|_| !step.transitions.is_empty()) {
            // What the journal would hold after this commit, as the live
            // notification engine reads it.
            let rows: Vec<JournalRow> = step
                .transitions
                .iter()
                .map(|t| {
                    dry.ledger.update(&t.alarm);
                    JournalRow::of(t)
                })
                .collect();
            dry.step(&self.cfg, &rows, now);
        }
        for t in step.transitions {
            record(&mut self.alarms, t);
        }
        if moves_due || self.due.is_none() {
            self.due = self.engine.next_due();
        }
    }
}

fn record(alarms: &mut HashMap<String, Occurrence>, t: Transition) {
    let change = Change {
        at: t.at,
        event_time: t.event_time,
        action: t.action,
        to: t.to.as_str(),
        notify: t.notify,
        late: t.alarm.late,
    };
    match alarms.get_mut(&t.alarm.id) {
        Some(o) => {
            o.alarm = t.alarm;
            o.changes.push(change);
        }
        None => {
            alarms.insert(
                t.alarm.id.clone(),
                Occurrence {
                    alarm: t.alarm,
                    changes: vec![change],
                },
            );
        }
    }
}

/// Counts of the inputs themselves (the same for every rule set).
#[derive(Debug, Default, Clone)]
pub struct InputCounts {
    pub inputs: u64,
    pub mqtt: u64,
    pub polls: u64,
    pub poll_errors: u64,
    /// Publishes no profile accepted, or for sites not configured, by reason
    /// (as the live collector quarantines them).
    pub rejected: BTreeMap<String, u64>,
}

/// Each point's readings over the span, in `BUCKETS` buckets of (min, max):
/// enough to draw a trend of any length in a report, at a few KiB a point.
pub struct Trends {
    pub from: Timestamp,
    pub to: Timestamp,
    pub points: HashMap<String, Vec<(f32, f32)>>,
}

pub const BUCKETS: usize = 240;

impl Trends {
    fn add(&mut self, point: &str, t: Timestamp, v: f64) {
        let span = (self.to - self.from).num_milliseconds().max(1);
        let off = (t - self.from).num_milliseconds();
        if off < 0 || off >= span {
            return;
        }
        let i = (off as i128 * BUCKETS as i128 / span as i128) as usize;
        let b = match self.points.get_mut(point) {
            Some(b) => b,
            None => self
                .points
                .entry(point.to_string())
                .or_insert_with(|| vec![(f32::NAN, f32::NAN); BUCKETS]),
        };
        let (lo, hi) = &mut b[i];
        let v = v as f32;
        *lo = if lo.is_nan() { v } else { lo.min(v) };
        *hi = if hi.is_nan() { v } else { hi.max(v) };
    }
}

pub struct Replay {
    cfg: Arc<Config>,
    /// Trends of the readings (for a report), when asked for.
    pub trends: Option<Trends>,
    profiles: Vec<Arc<Profile>>,
    runs: Vec<Run>,
    /// The replay clock: the arrival time of the last input fed.
    now: Option<Timestamp>,
    start: Timestamp,
    pub counts: InputCounts,
}

/// The live shards look at the clock this often.
const TICK: i64 = 1000;

impl Replay {
    /// One run per `(name, configuration)`; the first configuration's sites
    /// and profiles decode the inputs (a candidate differs in rules only).
    /// The engines start at `start` (a device not heard from by then is
    /// given its first full period from it, as a freshly started service does).
    pub fn new(runs: Vec<(String, Arc<Config>)>, start: Timestamp) -> Self {
        let cfg = runs.first().expect("at least one rule set").1.clone();
        let runs = runs
            .into_iter()
            .map(|(name, c)| {
                let engine = Engine::new(c.clone(), |_| true, &mut Resume::default(), start).for_replay();
                let due = engine.next_due();
                Run {
                    dry: Dry::new(&c),
                    cfg: c,
                    result: RunResult {
                        name: name.clone(),
                        ..Default::default()
                    },
                    name,
                    engine,
                    due,
                    alarms: HashMap::new(),
                }
            })
            .collect();
        Self {
            profiles: profiles_in_order(&cfg),
            cfg,
            trends: None,
            runs,
            now: None,
            start,
            counts: InputCounts::default(),
        }
    }

    /// Ticks every run that has something due up to `until` (inclusive), on
    /// the one-second grid from the start, and runs its notification planner
    /// at the moments it has something due (a group wait, an escalation, a
    /// rate limit that lets a summary out), in time order.
    fn tick_until(&mut self, until: Timestamp) {
        let start = self.start;
        // The first grid point at or after `due`.
        let grid = |due: Timestamp| {
            let since = (due - start).num_milliseconds().max(0);
            start + Duration::milliseconds((since + TICK - 1) / TICK * TICK)
        };
        for run in &mut self.runs {
            loop {
                let tick = run.due.map(grid).filter(|at| *at <= until);
                let plan = run.dry.as_ref().and_then(Dry::due).filter(|at| *at <= until);
                // The engine's tick first when both fall at one instant.
                match (tick, plan) {
                    (None, None) => break,
                    (Some(at), p) if p.is_none_or(|p| at <= p) => {
                        let step = run.engine.step(Input::Tick, at);
                        run.apply(step, at);
                        run.due = run.engine.next_due();
                        if run.due.is_some_and(|d| d <= at) {
                            // Nothing more can happen before the next grid point.
                            run.due = Some(at + Duration::milliseconds(TICK));
                        }
                    }
                    (_, p) => {
                        let at = p.expect("the tick arm takes a tick without a planner time");
                        let cfg = run.cfg.clone();
                        if let Some(d) = run.dry.as_mut() {
                            d.step(&cfg, &[], at);
                        }
                    }
                }
            }
        }
    }

    pub fn feed(&mut self, input: RecordedInput) {
        let arrived = input.arrived;
        // Inputs are in arrival order; a capture written by hand may not be:
        // the clock never runs backwards.
        let now = self.now.map_or(arrived, |n| n.max(arrived));
        self.tick_until(now);
        self.now = Some(now);
        let c = &mut self.counts;
        c.inputs += 1;
        let msg = match input.body {
            InputBody::Mqtt { topic, payload } => {
                c.mqtt += 1;
                match decode_publish(&self.cfg, &self.profiles, &topic, &payload, arrived, false) {
                    Ok((_, m)) => m,
                    Err(r) => {
                        *c.rejected.entry(r.reason).or_default() += 1;
                        return;
                    }
                }
            }
            InputBody::Poll(poll) => {
                c.polls += 1;
                let site = input.site.as_deref().and_then(|s| self.cfg.site(s));
                let map = site
                    .and_then(|s| self.cfg.profiles.get(&s.profile))
                    .and_then(|p| p.modbus.as_ref());
                let (Some(site), Some(map)) = (site, map) else {
                    *c.rejected.entry("unknown_site".into()).or_default() += 1;
                    return;
                };
                let data = poll.ranges();
                Message {
                    decoded: crate::device::modbus::poll_decoded(site, map, &data, arrived),
                    topic: crate::device::modbus::poll_topic(site),
                    raw: format!("{data:?}").chars().take(2048).collect(),
                    arrived,
                }
            }
            InputBody::PollError(_) => {
                // Live, a failed poll reaches no shard: the station's silence
                // is what the next tick sees.
                c.poll_errors += 1;
                return;
            }
        };
        let n = self.runs.len();
        let mut msg = Some(msg);
        for (i, run) in self.runs.iter_mut().enumerate() {
            let m = if i + 1 == n {
                msg.take().expect("one per run")
            } else {
                msg.clone().expect("kept for the last run")
            };
            let step = run.engine.step(Input::Message(Box::new(m)), now);
            if i == 0 {
                if let Some(tr) = self.trends.as_mut() {
                    for r in &step.readings {
                        if let (Some(v), crate::model::Quality::Good) = (r.value, r.quality) {
                            tr.add(r.point.as_str(), r.t, v);
                        }
                    }
                }
            }
            run.apply(step, now);
        }
    }

    /// Runs the clock on to `to` (the end of the span) and hands back each
    /// run's result.
    pub fn finish(mut self, to: Option<Timestamp>) -> (InputCounts, Vec<RunResult>, Option<Trends>) {
        if let Some(to) = to.or(self.now) {
            self.tick_until(to);
        }
        let trends = self.trends.take();
        let results = self
            .runs
            .into_iter()
            .map(|mut r| {
                let mut alarms: Vec<Occurrence> = r.alarms.into_values().collect();
                alarms.sort_by(|a, b| {
                    (
                        a.alarm.raised_at,
                        a.alarm.site.as_str(),
                        &a.alarm.condition,
                        &a.alarm.id,
                    )
                        .cmp(&(
                            b.alarm.raised_at,
                            b.alarm.site.as_str(),
                            &b.alarm.condition,
                            &b.alarm.id,
                        ))
                });
                if let Some(d) = r.dry {
                    // `paged` as live: a message about it went out.
                    let told: std::collections::HashSet<&str> = d
                        .ledger
                        .sent
                        .iter()
                        .flat_map(|m| m.alarms.iter().map(String::as_str))
                        .collect();
                    for o in &mut alarms {
                        o.alarm.paged = told.contains(o.alarm.id.as_str());
                    }
                    r.result.held_notifications = d.ledger.held_total;
                    r.result.notifications = d.ledger.sent;
                }
                r.result.alarms = alarms;
                r.result.name = r.name;
                r.result
            })
            .collect();
        (self.counts, results, trends)
    }
}
