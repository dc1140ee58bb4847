//! Recorded inputs through the same pipeline, for engineers: `mizuban export`
//! writes what the service received as a capture (`capture`), and `mizuban
//! replay` feeds a capture, or the service's own record for a span, through
//! the same decoding and engine on a clock that follows the arrival times
//! (`run`), beside a candidate rule set if one is given, and reports what
//! each would have raised and how they differ (`diff`). In: a capture file or
//! the store's `inputs`; out: the JSON of `interfaces.md`. Nothing is sent
//! and the live store is only read.

pub mod capture;
pub mod diff;
pub mod report;
pub mod run;

use crate::config::Config;
use crate::model::Timestamp;
use crate::store::{InputFilter, RecordedInput, Store};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use capture::{CaptureReader, CaptureWriter, Header};
pub use run::{InputCounts, Occurrence, Replay, RunResult};

/// Where the inputs come from.
pub enum Inputs {
    Capture(PathBuf),
    /// The service's own record (its store) for `[from, to)`.
    Record {
        from: Timestamp,
        to: Timestamp,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[derive(Serialize)]
pub struct CaptureSummary {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub inputs: u64,
    /// Readings the configured rule set stored (deduplicated, as live).
    pub readings: u64,
    pub mqtt: u64,
    pub polls: u64,
    pub poll_errors: u64,
    /// Publishes rejected before any rule saw them, by reason.
    pub rejected: std::collections::BTreeMap<String, u64>,
}

/// One rule set's result with its KPIs.
#[derive(Serialize)]
pub struct RunOut {
    #[serde(flatten)]
    pub run: RunResult,
    /// ISA-18.2 / EEMUA 191 KPIs of this run over the capture's span (pages
    /// per person and night from the dry run's notifications).
    pub kpis: crate::alarm::kpi::Kpis,
}

/// The KPI events of a run's occurrences, classified as the live journal's are.
fn kpi_events(alarms: &[Occurrence]) -> Vec<crate::alarm::kpi::AlarmEvent> {
    use crate::alarm::kpi;
    alarms
        .iter()
        .flat_map(|o| {
            o.changes.iter().filter_map(move |c| {
                Some(kpi::AlarmEvent {
                    kind: kpi::classify(c.action, c.to, c.late)?,
                    at: c.at,
                    alarm: o.alarm.id.clone(),
                    site: o.alarm.site.to_string(),
                    source: o.alarm.source.clone(),
                    condition: o.alarm.condition.clone(),
                    priority: o.alarm.priority,
                })
            })
        })
        .collect()
}

/// One dry-run message as a sentence: "would have paged tanaka by email at
/// 2026-12-01 02:14 (alarm.raised, MP-0190 HH_LEVEL)", "escalated to sato …".
pub fn describe(m: &crate::notify::plan::DryMessage, alarms: &[Occurrence], utc_offset_hours: i32) -> String {
    let tz =
        chrono::FixedOffset::east_opt(utc_offset_hours * 3600).unwrap_or(chrono::FixedOffset::east_opt(0).unwrap());
    let at = m.at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S");
    let how = m.channel.split(':').next().unwrap_or("");
    let verb = match (m.kind.as_str(), m.escalation_level) {
        ("alarm.escalated", _) => "escalated to",
        (_, Some(1)) => "paged",
        (k, _) if k.ends_with(".brief") => "sent a brief to",
        ("summary", _) => "sent a summary to",
        _ => "told",
    };
    let about = m
        .alarm
        .as_deref()
        .and_then(|id| alarms.iter().find(|o| o.alarm.id == id))
        .map(|o| format!(", {} {}", o.alarm.site, o.alarm.condition))
        .unwrap_or_default();
    let more = if m.alarms.len() > 1 {
        format!(" and {} more", m.alarms.len() - 1)
    } else {
        String::new()
    };
    format!(
        "would have {verb} {} by {how} at {at} ({}{about}{more})",
        m.recipient, m.kind
    )
}

/// The replay's answer (`--json`); the same capture and configuration give
/// the same bytes.
#[derive(Serialize)]
pub struct Output {
    pub capture: CaptureSummary,
    pub runs: Vec<RunOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<diff::Diff>,
}

/// Progress of a long replay, for a terminal.
pub trait Progress {
    /// `done` of `total` units (bytes of a capture, or inputs of a record).
    fn update(&self, done: u64, total: u64);
}

impl Progress for () {
    fn update(&self, _: u64, _: u64) {}
}

/// Runs the replay of `inputs` with the configured rule set (and the
/// candidate's, if any).
pub fn replay(
    cfg: Arc<Config>,
    candidate: Option<Arc<Config>>,
    inputs: &Inputs,
    progress: &dyn Progress,
) -> Result<Output, ReplayError> {
    replay_with(cfg, candidate, inputs, progress, false).map(|(o, _)| o)
}

/// As [`replay`]; with `trends`, also each point's trend over the span (for
/// the report).
pub fn replay_with(
    cfg: Arc<Config>,
    candidate: Option<Arc<Config>>,
    inputs: &Inputs,
    progress: &dyn Progress,
    trends: bool,
) -> Result<(Output, Option<run::Trends>), ReplayError> {
    let want = |from, to| {
        trends.then(|| run::Trends {
            from,
            to,
            points: Default::default(),
        })
    };
    let mut runs = vec![("configured".to_string(), cfg.clone())];
    if let Some(c) = candidate {
        runs.push(("candidate".to_string(), c));
    }
    let (counts, results, span, tr) = match inputs {
        Inputs::Capture(path) => {
            let mut r = CaptureReader::open(path)?;
            let mut replay = Replay::new(runs, r.header.from);
            replay.trends = want(r.header.from, r.header.to);
            let mut n = 0u64;
            while let Some(input) = r.next_input()? {
                replay.feed(input);
                n += 1;
                if n % 4096 == 0 {
                    progress.update(r.read.load(std::sync::atomic::Ordering::Relaxed), r.size);
                }
            }
            progress.update(r.size, r.size);
            let to = r.header.to;
            let (c, res, tr) = replay.finish(Some(to));
            (c, res, (r.header.from, to), tr)
        }
        Inputs::Record { from, to } => {
            let mut replay = Replay::new(runs, *from);
            replay.trends = want(*from, *to);
            let filter = InputFilter {
                from: *from,
                to: *to,
                sites: vec![],
            };
            let total = (*to - *from).num_milliseconds().max(1) as u64;
            let mut n = 0u64;
            Store::inputs(&cfg.store_location(), &filter, |i: RecordedInput| {
                let at = (i.arrived - *from).num_milliseconds().max(0) as u64;
                replay.feed(i);
                n += 1;
                if n % 4096 == 0 {
                    progress.update(at, total);
                }
                Ok(())
            })?;
            progress.update(total, total);
            let (c, res, tr) = replay.finish(Some(*to));
            (c, res, (*from, *to), tr)
        }
    };
    let offset = cfg.service.utc_offset_hours;
    let diff = (results.len() == 2).then(|| diff::diff(&results[0].alarms, &results[1].alarms));
    Ok((
        Output {
            capture: CaptureSummary {
                from: Some(span.0),
                to: Some(span.1),
                inputs: counts.inputs,
                readings: results.first().map_or(0, |r| r.readings),
                mqtt: counts.mqtt,
                polls: counts.polls,
                poll_errors: counts.poll_errors,
                rejected: counts.rejected,
            },
            runs: results
                .into_iter()
                .map(|r| {
                    let pages: Vec<crate::alarm::kpi::Page> = r
                        .notifications
                        .iter()
                        .map(|m| crate::alarm::kpi::Page {
                            at: m.at,
                            person: m.recipient.clone(),
                        })
                        .collect();
                    RunOut {
                        kpis: crate::alarm::kpi::compute(&kpi_events(&r.alarms), &pages, span.0, span.1, offset),
                        run: r,
                    }
                })
                .collect(),
            diff,
        },
        tr,
    ))
}

/// Writes the service's recorded inputs for `filter` to `out` as a capture.
pub fn export(cfg: &Config, filter: &InputFilter, out: &Path, created_at: Timestamp) -> Result<u64, ReplayError> {
    let header = Header {
        capture: capture::FORMAT.into(),
        from: filter.from,
        to: filter.to,
        created_at,
    };
    let mut w = CaptureWriter::create(out, &header)?;
    let mut failed = None;
    Store::inputs(&cfg.store_location(), filter, |i| {
        w.write(&i).map_err(|e| {
            let msg = e.to_string();
            failed = Some(e);
            std::io::Error::other(msg)
        })
    })
    .map_err(|e| match failed.take() {
        Some(c) => ReplayError::Capture(c),
        None => ReplayError::Store(e),
    })?;
    Ok(w.finish()?)
}
