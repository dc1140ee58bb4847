//! Replays started from the board (engineer): `POST /api/v1/replays` with a
//! span of the service's own record and, optionally, a candidate rules file's
//! text; the replay runs off the async workers (one at a time), its progress
//! is polled with `GET /api/v1/replays/{id}`, and when it is done its JSON
//! and its report are served. The last few are kept in memory; a restart
//! forgets them (run `mizuban replay` for anything to keep).

use super::{ApiError, AppState, Caller};
use crate::config::{Config, Role};
use crate::model::Timestamp;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Replays kept for reading after they finish.
const KEPT: usize = 8;
/// The report's own policy: its styles are inline (it is one file), it runs
/// no script and fetches nothing.
const REPORT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum State_ {
    Running,
    Done,
    Failed,
}

struct Job {
    id: String,
    who: String,
    from: Timestamp,
    to: Timestamp,
    candidate: bool,
    started_at: Timestamp,
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
    outcome: Mutex<Outcome>,
    finished_at: Mutex<Option<Timestamp>>,
}

type Outcome = Option<Result<(serde_json::Value, String), String>>;

fn state_of(o: &Outcome) -> State_ {
    match o {
        None => State_::Running,
        Some(Ok(_)) => State_::Done,
        Some(Err(_)) => State_::Failed,
    }
}

impl Job {
    fn state(&self) -> State_ {
        state_of(&self.outcome.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn view(&self) -> serde_json::Value {
        // One lock for the whole view (a std Mutex is not re-entrant).
        let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let state = state_of(&outcome);
        let (done, total) = (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed));
        let summary = outcome.as_ref().and_then(|o| o.as_ref().ok()).map(|(v, _)| {
            json!({
                "inputs": v["capture"]["inputs"],
                "readings": v["capture"]["readings"],
                "runs": v["runs"].as_array().map(|rs| rs.iter().map(|r| json!({
                    "name": r["name"], "alarms": r["alarms"].as_array().map_or(0, |a| a.len()),
                    "annunciations": r["kpis"]["annunciations"]})).collect::<Vec<_>>()),
                "diff": v.get("diff").map(|d| json!({
                    "added": d["added"].as_array().map_or(0, |a| a.len()),
                    "removed": d["removed"].as_array().map_or(0, |a| a.len()),
                    "changed": d["changed"].as_array().map_or(0, |a| a.len())})),
            })
        });
        json!({
            "id": self.id, "state": state, "who": self.who, "from": self.from, "to": self.to,
            "candidate": self.candidate, "started_at": self.started_at,
            "finished_at": *self.finished_at.lock().unwrap_or_else(|p| p.into_inner()),
            "progress": if total == 0 { 0.0 } else { (done as f64 / total as f64).min(1.0) },
            "error": outcome.as_ref().and_then(|o| o.as_ref().err()),
            "summary": summary,
        })
    }
}

#[derive(Default)]
pub struct Replays {
    // A std Mutex: held only to look up or push, never across an await.
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Replays {
    fn get(&self, id: &str) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|j| j.id == id)
            .cloned()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartReplay {
    from: Timestamp,
    to: Timestamp,
    /// A candidate rules file's text (TOML, as `--candidate` reads).
    #[serde(default)]
    candidate_rules: Option<String>,
}

struct Progress {
    done: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl crate::replay::Progress for Progress {
    fn update(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }
}

pub async fn start(
    State(st): State<AppState>,
    caller: Caller,
    Json(body): Json<StartReplay>,
) -> Result<Response, ApiError> {
    caller.require(Role::Engineer)?;
    if body.from >= body.to {
        return Err(ApiError::BadRequest("from must be before to".into()));
    }
    if st
        .replays
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|j| j.state() == State_::Running)
    {
        return Err(ApiError::Conflict("a replay is running; wait for it to finish".into()));
    }
    let cfg = st.cfg.clone();
    // The candidate is checked before anything starts: its errors are the
    // engineer's to fix, with file positions.
    let candidate = match &body.candidate_rules {
        None => None,
        Some(text) => {
            let dir = tempfile_dir(&cfg)?;
            let path = dir.join(format!("candidate-{}.toml", crate::model::secret::random_hex(6)));
            std::fs::write(&path, text)
                .map_err(|e| ApiError::Unavailable(format!("cannot write the candidate: {e}")))?;
            let loaded = Config::load_with_rules(&cfg.file, &path);
            let _ = std::fs::remove_file(&path); // read already; a leftover file only costs disk
            match loaded {
                Ok(c) => Some(Arc::new(c)),
                Err(errors) => {
                    let msg = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
                    return Err(ApiError::Unprocessable(format!("candidate rules: {msg}")));
                }
            }
        }
    };
    let job = Arc::new(Job {
        id: format!("rp-{}", crate::model::secret::random_hex(8)),
        who: caller.name.clone(),
        from: body.from,
        to: body.to,
        candidate: candidate.is_some(),
        started_at: chrono::Utc::now(),
        done: Arc::new(AtomicU64::new(0)),
        total: Arc::new(AtomicU64::new(0)),
        outcome: Mutex::new(None),
        finished_at: Mutex::new(None),
    });
    {
        let mut jobs = st.replays.jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.push_back(job.clone());
        while jobs.len() > KEPT {
            jobs.pop_front();
        }
    }
    tracing::info!(id = %job.id, who = %job.who, from = %job.from, to = %job.to, "replay started");
    let j = job.clone();
    tokio::task::spawn_blocking(move || {
        let p = Progress {
            done: j.done.clone(),
            total: j.total.clone(),
        };
        let inputs = crate::replay::Inputs::Record { from: j.from, to: j.to };
        let res = crate::replay::replay_with(cfg.clone(), candidate, &inputs, &p, true)
            .map_err(|e| e.to_string())
            .map(|(out, trends)| {
                let html = trends
                    .map(|t| crate::replay::report::render(&out, &t, &cfg))
                    .unwrap_or_default();
                (serde_json::to_value(&out).unwrap_or_default(), html)
            });
        if let Err(e) = &res {
            tracing::warn!(id = %j.id, error = %e, "replay failed");
        }
        *j.finished_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(chrono::Utc::now());
        *j.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(res);
    });
    Ok((StatusCode::ACCEPTED, Json(job.view())).into_response())
}

/// Where a candidate's text is put while it is loaded: beside the store.
fn tempfile_dir(cfg: &Config) -> Result<std::path::PathBuf, ApiError> {
    let dir = cfg
        .store_path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::Unavailable(format!("cannot write the candidate: {e}")))?;
    Ok(dir)
}

pub async fn list(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Role::Engineer)?;
    let jobs = st.replays.jobs.lock().unwrap_or_else(|p| p.into_inner());
    Ok(Json(jobs.iter().rev().map(|j| j.view()).collect::<Vec<_>>()).into_response())
}

pub async fn one(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    caller.require(Role::Engineer)?;
    let j = st
        .replays
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no replay {id}")))?;
    Ok(Json(j.view()).into_response())
}

fn finished(st: &AppState, id: &str) -> Result<(serde_json::Value, String), ApiError> {
    let j = st
        .replays
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("no replay {id}")))?;
    let outcome = j.outcome.lock().unwrap_or_else(|p| p.into_inner());
    match &*outcome {
        None => Err(ApiError::Conflict(format!("replay {id} is still running"))),
        Some(Err(e)) => Err(ApiError::Conflict(format!("replay {id} failed: {e}"))),
        Some(Ok(r)) => Ok(r.clone()),
    }
}

pub async fn result(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    caller.require(Role::Engineer)?;
    Ok(Json(finished(&st, &id)?.0).into_response())
}

pub async fn report(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    caller.require(Role::Engineer)?;
    let (_, html) = finished(&st, &id)?;
    let mut r = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response();
    r.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPORT_CSP));
    Ok(r)
}
