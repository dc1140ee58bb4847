//! Route handlers. Each checks the caller's role first.

use super::auth::{cookie_value, COOKIE};
use super::{ApiError, AppState, Caller};
use crate::alarm::{Alarm, AlarmState};
use crate::config::Role;
use crate::model::{PointId, Timestamp};
use crate::pipeline::Command;
use crate::store::JournalFilter;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Parses an optional JSON body: empty means `T::default()`; bad JSON is 400,
/// JSON of the wrong shape 422, too large 413.
pub(super) fn body<T: DeserializeOwned + Default>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let b = b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest(e.body_text())
        }
    })?;
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let v: Value = serde_json::from_slice(&b).map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::Unprocessable(format!("body: {e}")))
}

fn parse_time(name: &str, s: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    match s {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| ApiError::BadRequest(format!("{name}: {s:?} is not an RFC 3339 time: {e}"))),
    }
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The board page. Its script and style are files of their own so that the
/// Content-Security-Policy (set for every response) needs no `unsafe-inline`.
pub async fn board() -> impl IntoResponse {
    Html(include_str!("board.html"))
}

pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Result<Response, ApiError> {
    let (ty, body): (&str, &'static str) = match name.as_str() {
        "board.js" => ("text/javascript; charset=utf-8", include_str!("board.js")),
        "board.css" => ("text/css; charset=utf-8", include_str!("board.css")),
        "ack.css" => ("text/css; charset=utf-8", include_str!("ack.css")),
        _ => return Err(ApiError::NotFound(format!("no asset {name}"))),
    };
    Ok(([(header::CONTENT_TYPE, ty), (header::CACHE_CONTROL, "no-cache")], body).into_response())
}

/// Like everything under `/api/` but health, the document needs a viewer.
pub async fn openapi(caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(super::openapi::document()))
}

pub async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(want) = &st.cfg.http.metrics_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        if !super::auth::same(sent.trim(), want) {
            return ApiError::Unauthenticated.into_response();
        }
    }
    let mut counts = HashMap::new();
    for v in st.pipeline.views.iter() {
        v.count_by_state(&mut counts);
    }
    for s in AlarmState::ALL {
        st.metrics
            .alarms
            .get_or_create(&crate::telemetry::StateLabelPub {
                state: s.as_str().into(),
            })
            .set(counts.get(&s).copied().unwrap_or(0));
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.encode(),
    )
        .into_response()
}

pub async fn health(State(st): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    if !st.store.is_healthy() {
        reasons.push("store: writes failing".to_string());
    }
    if st.collectors.contains(&"mqtt") && st.metrics.mqtt_connected.get() != 1 {
        reasons.push(format!(
            "mqtt: not connected to {}:{}",
            st.cfg.mqtt.host, st.cfg.mqtt.port
        ));
    }
    if st.collectors.contains(&"mqtt") && st.metrics.mqtt_stalled.get() == 1 {
        reasons.push(format!(
            "mqtt: intake stalled: {} messages owed to the broker, none acknowledged for {} s",
            st.metrics.mqtt_owed.get(),
            st.metrics.mqtt_stalled_seconds.get()
        ));
    }
    let body = json!({
        "status": if reasons.is_empty() { "ok" } else { "unavailable" },
        "reasons": reasons,
        "started": st.started,
        "sites": st.cfg.sites.len(),
        "shards": st.pipeline.shard_count(),
        "open_alarms": st.pipeline.open_alarms().len(),
        // How far behind the devices' send times mizuban is receiving (the
        // latest message that said when it was sent); lateness of data is
        // judged from the device's own clock, so this lag never makes data late.
        "ingest_lag_s": st.metrics.ingest_lag_last.get(),
    });
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    user: String,
    password: String,
}

/// `; Secure` when the board is reached over TLS: configured, a public https
/// address, or a TLS-terminating proxy that says so.
fn secure_attr(st: &AppState, headers: &HeaderMap) -> &'static str {
    let http = &st.cfg.http;
    let tls = http.secure_cookies.unwrap_or_else(|| {
        http.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("https"))
    });
    if tls {
        "; Secure"
    } else {
        ""
    }
}

/// The client behind a request: the peer, or when the peer is a trusted proxy
/// the last `X-Forwarded-For` hop that is not one.
fn client_ip(st: &AppState, peer: std::net::IpAddr, headers: &HeaderMap) -> std::net::IpAddr {
    let trusted = &st.cfg.http.trusted_proxies;
    if !trusted.contains(&peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .rev()
        .find(|a| !trusted.contains(a))
        .unwrap_or(peer)
}

pub async fn login(
    State(st): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: LoginBody = body(b)?;
    if req.user.len() > super::auth::MAX_NAME || req.password.len() > super::auth::MAX_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "user names are at most {} bytes and passwords at most {}",
            super::auth::MAX_NAME,
            super::auth::MAX_PASSWORD
        )));
    }
    let client = client_ip(&st, peer.ip(), &headers);
    let (name, role) = match st.sessions.login(client, &st.cfg.users, &req.user, &req.password).await {
        Ok(u) => u,
        Err(super::auth::LoginRefused::Wrong) => return Err(ApiError::Unauthenticated),
        Err(super::auth::LoginRefused::Throttled(wait)) => return Err(ApiError::TooMany(wait.as_secs().max(1))),
    };
    let (sid, s) = st.sessions.create(&name, role);
    let cookie = format!(
        "{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        super::auth::SESSION_HOURS * 3600,
        secure_attr(&st, &headers)
    );
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"user": s.user, "role": s.role, "csrf": s.csrf})),
    )
        .into_response())
}

/// Ends the session; answered once the logout is durable, so the old cookie
/// is refused after a restart too.
pub async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(sid) = cookie_value(&headers, COOKIE) {
        if let Some((mac, expires)) = st.sessions.remove(&sid) {
            st.store.revoke_session(&mac, expires).await?;
        }
    }
    Ok((
        [(
            header::SET_COOKIE,
            format!(
                "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
                secure_attr(&st, &headers)
            ),
        )],
        Json(json!({"status": "logged out"})),
    )
        .into_response())
}

pub async fn session(State(st): State<AppState>, caller: Caller, headers: HeaderMap) -> Json<Value> {
    let csrf = cookie_value(&headers, COOKIE)
        .and_then(|sid| st.sessions.get(&sid))
        .map(|s| s.csrf);
    Json(
        json!({"user": caller.name, "role": caller.role, "via": caller.via, "csrf": csrf,
        "service": st.cfg.service.name, "language": st.cfg.service.language}),
    )
}

pub async fn sites(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let statuses: HashMap<String, _> = st
        .pipeline
        .site_statuses()
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let out: Vec<Value> = st
        .cfg
        .sites
        .iter()
        .map(|s| {
            let stt = statuses.get(s.id.as_str());
            json!({
                "id": s.id, "kind": s.kind.as_str(), "name": s.name, "name_en": s.name_en, "area": s.area,
                "lat": s.lat, "lon": s.lon, "device": s.device,
                "status": stt.map(|x| x.status).unwrap_or("ok"),
                "last_seen": stt.and_then(|x| x.last_seen),
                "online": stt.and_then(|x| x.online),
                "values": stt.map(|x| json!(x.values)).unwrap_or(json!({})),
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

pub async fn site(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let s = st
        .cfg
        .site(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no site {id}")))?;
    let status = st.pipeline.site_statuses().into_iter().find(|x| x.id == id);
    let alarms: Vec<Alarm> = st
        .pipeline
        .open_alarms()
        .into_iter()
        .filter(|a| a.site.as_str() == id)
        .collect();
    let store = st.store.clone();
    let sid = id.clone();
    let raw = tokio::task::spawn_blocking(move || store.latest_raw(&sid))
        .await
        .map_err(|e| ApiError::Unavailable(format!("query task failed: {e}")))??;
    let profile = st.cfg.profiles.get(&s.profile);
    Ok(Json(json!({
        "site": **s,
        "status": status,
        "alarms": sorted(served(&st, alarms)),
        "points": profile.map(|p| p.point_names().iter().map(|n| format!("{id}.{n}")).collect::<Vec<_>>()),
        "latest_raw": raw.map(|(r, at)| json!({"arrived": at, "message": r})),
    })))
}

/// Alarms as served: `paged` from the outbox (a message about it was
/// delivered), never from the pipeline's copy.
pub fn served(st: &AppState, mut v: Vec<Alarm>) -> Vec<Alarm> {
    match &st.notifier {
        Some(n) => n.mark_paged(&mut v),
        None => v.iter_mut().for_each(|a| a.paged = false),
    }
    v
}

/// Highest priority first, then newest.
pub fn sorted(mut v: Vec<Alarm>) -> Vec<Alarm> {
    v.sort_by(|a, b| {
        a.priority
            .rank()
            .cmp(&b.priority.rank())
            .then(b.detected_at.cmp(&a.detected_at))
            .then(a.id.cmp(&b.id))
    });
    v
}

#[derive(Deserialize)]
pub struct AlarmQuery {
    state: Option<String>,
    site: Option<String>,
    all: Option<bool>,
}

pub async fn alarms(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<AlarmQuery>,
) -> Result<Json<Vec<Alarm>>, ApiError> {
    caller.require(Role::Viewer)?;
    let states: Option<Vec<AlarmState>> = match &q.state {
        None => None,
        Some(s) => Some(
            s.split(',')
                .map(|x| {
                    AlarmState::parse(x.trim()).ok_or_else(|| ApiError::BadRequest(format!("unknown state {x:?}")))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let all = q.all.unwrap_or(false);
    let mut v: Vec<Alarm> = st.pipeline.open_alarms();
    if all {
        let store = st.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.closed_alarms(500))
            .await
            .map_err(|e| ApiError::Unavailable(format!("query task failed: {e}")))??;
        v.extend(closed.into_iter().map(|mut a| {
            a.state = AlarmState::Normal;
            a
        }));
    }
    v.retain(|a| {
        (all || states.is_some() || a.needs_attention())
            && states.as_ref().is_none_or(|s| s.contains(&a.state))
            && q.site.as_ref().is_none_or(|s| a.site.as_str() == s)
    });
    Ok(Json(sorted(served(&st, v))))
}

pub async fn alarm(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Alarm>, ApiError> {
    caller.require(Role::Viewer)?;
    if let Some(a) = st.pipeline.open_alarms().into_iter().find(|a| a.id == id) {
        return Ok(Json(served(&st, vec![a]).remove(0)));
    }
    let store = st.store.clone();
    let i = id.clone();
    let a = tokio::task::spawn_blocking(move || store.alarm(&i))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))??;
    a.map(|mut a| {
        a.state = a.derive_state();
        Json(served(&st, vec![a]).remove(0))
    })
    .ok_or_else(|| ApiError::NotFound(format!("no alarm with id {id}")))
}

pub async fn alarm_journal(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let store = st.store.clone();
    let f = JournalFilter {
        alarm_id: Some(id.clone()),
        limit: 1000,
        ..Default::default()
    };
    let rows = tokio::task::spawn_blocking(move || store.journal(&f))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))??;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!("no alarm with id {id}")));
    }
    Ok(Json(json!(rows)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    comment: Option<String>,
}

/// A shelve or a change of service needs a reason for the journal.
fn required_reason(r: Option<String>) -> Result<String, ApiError> {
    check_text("reason", &r)?;
    r.filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ApiError::Unprocessable("reason is required".into()))
}

/// `?limit=`: the default when absent, refused (400) outside 1..=max as the
/// OpenAPI document says, never silently clamped.
pub(super) fn check_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!("limit must be 1..={max}, not {n}"))),
    }
}

fn check_text(name: &str, s: &Option<String>) -> Result<(), ApiError> {
    if s.as_ref().is_some_and(|s| s.chars().count() > 1000) {
        return Err(ApiError::Unprocessable(format!(
            "{name} is longer than 1000 characters"
        )));
    }
    Ok(())
}

pub async fn ack(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Alarm>, ApiError> {
    caller.require(Role::Operator)?;
    let req: AckBody = body(b)?;
    check_text("comment", &req.comment)?;
    let comment = req.comment.filter(|c| !c.trim().is_empty());
    let a = st
        .pipeline
        .command(Command::Ack {
            id,
            who: caller.name,
            comment,
        })
        .await?;
    Ok(Json(served(&st, vec![a]).remove(0)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ShelveBody {
    /// A number, not `i64`: JSON Schema counts `30.0` as the integer 30.
    minutes: Option<f64>,
    reason: Option<String>,
}

/// Longest shelve an operator may set: a shelve is for a visit or a known
/// nuisance, not a way to silence an alarm for good (that is out-of-service).
pub const MAX_SHELVE_MIN: i64 = 7 * 24 * 60;

pub async fn shelve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Alarm>, ApiError> {
    caller.require(Role::Operator)?;
    let req: ShelveBody = body(b)?;
    let minutes = req
        .minutes
        .ok_or_else(|| ApiError::Unprocessable("minutes is required".into()))?;
    if minutes.fract() != 0.0 {
        return Err(ApiError::Unprocessable("minutes must be a whole number".into()));
    }
    let minutes = minutes as i64;
    if !(1..=MAX_SHELVE_MIN).contains(&minutes) {
        return Err(ApiError::Unprocessable(format!("minutes must be 1..={MAX_SHELVE_MIN}")));
    }
    let reason = required_reason(req.reason)?;
    let a = st
        .pipeline
        .command(Command::Shelve {
            id,
            minutes: minutes as u32,
            reason,
            who: caller.name,
        })
        .await?;
    Ok(Json(served(&st, vec![a]).remove(0)))
}

pub async fn unshelve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Alarm>, ApiError> {
    caller.require(Role::Operator)?;
    let a = st.pipeline.command(Command::Unshelve { id, who: caller.name }).await?;
    Ok(Json(served(&st, vec![a]).remove(0)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Option<String>,
}

async fn oos(
    st: AppState,
    caller: Caller,
    id: String,
    b: Result<Bytes, BytesRejection>,
    oos: bool,
) -> Result<Json<Alarm>, ApiError> {
    caller.require(Role::Engineer)?;
    let req: ReasonBody = body(b)?;
    let reason = required_reason(req.reason)?;
    let a = st
        .pipeline
        .command(Command::OutOfService {
            id,
            oos,
            who: caller.name,
            reason,
        })
        .await?;
    Ok(Json(served(&st, vec![a]).remove(0)))
}

pub async fn out_of_service(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Alarm>, ApiError> {
    oos(st, caller, id, b, true).await
}

pub async fn return_to_service(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Alarm>, ApiError> {
    oos(st, caller, id, b, false).await
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    /// `raw` (the default), `1m` or `1h`; an unknown one is refused (400).
    resolution: Option<crate::store::Resolution>,
}

pub async fn readings(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Role::Viewer)?;
    let point = PointId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let site = id.split_once('.').map(|(s, _)| s).unwrap_or("");
    let s = st
        .cfg
        .site(site)
        .ok_or_else(|| ApiError::NotFound(format!("no site {site}")))?;
    // Pump stations also have the pump-health points derived from their data.
    let derived =
        s.kind == crate::model::SiteKind::PumpStation && crate::health::DERIVED_POINTS.contains(&point.local());
    let known = derived
        || st
            .cfg
            .profiles
            .get(&s.profile)
            .is_some_and(|p| p.point_names().contains(&point.local()));
    if !known {
        return Err(ApiError::NotFound(format!(
            "site {site} has no point {:?}",
            point.local()
        )));
    }
    let to = parse_time("to", &q.to)?.unwrap_or_else(Utc::now);
    let from = parse_time("from", &q.from)?.unwrap_or(to - Duration::hours(24));
    if from > to {
        return Err(ApiError::BadRequest("from is after to".into()));
    }
    let limit = check_limit(q.limit, 10_000, 100_000)?;
    let res = q.resolution.unwrap_or(crate::store::Resolution::Raw);
    let store = st.store.clone();
    // Rows as served, and the time of the last one (where a next page starts).
    let (out, last, more) = tokio::task::spawn_blocking(move || {
        if res == crate::store::Resolution::Raw {
            store.readings(&point, from, to, limit).map(|(rows, more)| {
                let last = rows.last().map(|r| r.0);
                let out: Vec<Value> = rows
                    .into_iter()
                    .map(|(t, v, q, arrived)| json!({"t": t, "value": v, "quality": q.as_str(), "arrived": arrived}))
                    .collect();
                (out, last, more)
            })
        } else {
            store.rollups(&point, res, from, to, limit).map(|(rows, more)| {
                let last = rows.last().map(|b| b.t);
                let out: Vec<Value> = rows
                    .into_iter()
                    .map(|b| json!({"t": b.t, "value": b.mean, "min": b.min, "max": b.max, "count": b.count}))
                    .collect();
                (out, last, more)
            })
        }
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))??;
    // More in the span than one page: the next page starts just after the
    // last row (a point has one reading per millisecond at most, one bucket
    // per start time), and says so in a `Link` header (RFC 8288), as
    // GitHub's API pages.
    let next = last.filter(|_| more).map(|t| {
        let stamp = |t: Timestamp| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let res = match res {
            crate::store::Resolution::Raw => String::new(),
            r => format!("&resolution={}", r.as_str()),
        };
        format!(
            "</api/v1/points/{id}/readings?from={}&to={}&limit={limit}{res}>; rel=\"next\"",
            stamp(t + Duration::milliseconds(1)),
            stamp(to)
        )
    });
    let mut resp = Json(Value::Array(out)).into_response();
    if let Some(link) = next.and_then(|l| axum::http::HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert(axum::http::header::LINK, link);
    }
    Ok(resp)
}

#[derive(Deserialize)]
pub struct JournalQuery {
    site: Option<String>,
    condition: Option<String>,
    /// An unknown priority is refused by the query parser (400).
    priority: Option<crate::device::Priority>,
    alarm: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    /// `csv` for a spreadsheet; JSON otherwise.
    format: Option<String>,
}

/// One CSV field, quoted when it must be (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiQuery {
    from: Option<String>,
    to: Option<String>,
}

/// Alarm-management KPIs over a span (default: the last 24 hours), from the
/// journal and the pages sent; the same computation as a replay's.
pub async fn kpis(State(st): State<AppState>, caller: Caller, Query(q): Query<KpiQuery>) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let to = parse_time("to", &q.to)?.unwrap_or_else(|| st.clock.now());
    let from = parse_time("from", &q.from)?.unwrap_or(to - chrono::Duration::hours(24));
    // An empty or inverted span has no alarms (as the journal answers it);
    // a long one costs at most the journal rows it holds.
    let from = from.min(to);
    let f = JournalFilter {
        from: Some(from),
        to: Some(to),
        limit: 2_000_000,
        ..Default::default()
    };
    let store = st.store.clone();
    let notifier = st.notifier.clone();
    let offset = st.cfg.service.utc_offset_hours;
    let k = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        use crate::alarm::kpi;
        let rows = store.journal(&f)?;
        let events: Vec<kpi::AlarmEvent> = rows
            .iter()
            .filter_map(|r| {
                Some(kpi::AlarmEvent {
                    kind: kpi::classify(r.action, &r.to, r.late)?,
                    at: r.at,
                    alarm: r.alarm_id.clone(),
                    site: r.site.clone(),
                    source: r.source.clone(),
                    condition: r.condition.clone(),
                    priority: crate::device::Priority::from_name(&r.priority)?,
                })
            })
            .collect();
        let pages = match &notifier {
            Some(n) => n
                .pages_between(from, to)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?,
            None => vec![],
        };
        Ok(kpi::compute(&events, &pages, from, to, offset))
    })
    .await
    .map_err(|e| ApiError::Unavailable(e.to_string()))??;
    Ok(Json(json!(k)).into_response())
}

pub async fn journal(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<JournalQuery>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let f = JournalFilter {
        alarm_id: q.alarm,
        site: q.site,
        condition: q.condition,
        priority: q.priority,
        from: parse_time("from", &q.from)?,
        to: parse_time("to", &q.to)?,
        limit: check_limit(q.limit, 500, 10_000)?,
    };
    let store = st.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.journal(&f))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))??;
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(json!(rows)).into_response()),
        Some("csv") => {
            // A UTF-8 BOM so spreadsheet programs read the Japanese text right.
            let mut out = String::from(
                "\u{feff}at,site,source,condition,priority,action,from,to,who,why,event_time,notify,late,alarm_id\r\n",
            );
            for r in &rows {
                let fields = [
                    r.at.to_rfc3339(),
                    r.site.clone(),
                    r.source.clone(),
                    r.condition.clone(),
                    r.priority.clone(),
                    r.action.as_str().to_string(),
                    r.from.clone(),
                    r.to.clone(),
                    r.who.clone(),
                    r.why.clone().unwrap_or_default(),
                    r.event_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    r.notify.to_string(),
                    r.late.to_string(),
                    r.alarm_id.clone(),
                ];
                out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
                out.push_str("\r\n");
            }
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"mizuban-journal.csv\"",
                    ),
                ],
                out,
            )
                .into_response())
        }
        Some(other) => Err(ApiError::BadRequest(format!("format {other:?} is not json or csv"))),
    }
}

#[derive(Deserialize)]
pub struct LimitQuery {
    limit: Option<usize>,
}

pub async fn quarantine(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(json!(st
        .pipeline
        .quarantine
        .list(check_limit(q.limit, 100, 10_000)?))))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    command: String,
    #[serde(default)]
    value: Option<bool>,
    reason: Option<String>,
}

/// `POST /api/v1/sites/{id}/commands`: a device command (engineer), confirmed
/// by read-back and journaled with who and why whatever the outcome.
pub async fn command(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    use crate::collect::modbus::CommandFailure as F;
    caller.require(Role::Engineer)?;
    let site = st
        .cfg
        .site(&id)
        .ok_or_else(|| ApiError::NotFound(format!("no site {id}")))?
        .clone();
    let req: CommandBody = body(b)?;
    let reason = required_reason(req.reason)?;
    let value = req.value.unwrap_or(true);
    let result = st.commander.send(&id, &req.command, value).await;
    let outcome = match &result {
        Ok(_) => "confirmed".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    if !matches!(result, Err(F::NotModbus(_)) | Err(F::Unknown { .. })) {
        let rec = crate::store::CommandRecord {
            at: chrono::Utc::now(),
            site: id.clone(),
            device: site.device.to_string(),
            command: req.command.clone(),
            value,
            who: caller.name.clone(),
            why: reason.clone(),
            result: outcome.clone(),
        };
        // Answered only once the journal row is durable: whoever reads the
        // journal after the reply finds the command there.
        let (durable, committed) = tokio::sync::oneshot::channel::<()>();
        st.store
            .submit(
                crate::store::Batch {
                    commands: vec![rec],
                    acks: vec![Box::new(durable)],
                    ..Default::default()
                },
                &st.metrics,
            )
            .await?;
        committed
            .await
            .map_err(|_| ApiError::Unavailable("the command's journal entry could not be written".into()))?;
    }
    match result {
        Ok(readback) => Ok(Json(
            json!({"site": id, "command": req.command, "value": readback, "result": "confirmed", "by": caller.name}),
        )),
        Err(e @ (F::NotModbus(_) | F::Exception(_) | F::NotConfirmed { .. })) => Err(ApiError::Conflict(e.to_string())),
        Err(e @ F::Unknown { .. }) => Err(ApiError::Unprocessable(e.to_string())),
        Err(e @ (F::Unreachable(_) | F::Stopped)) => Err(ApiError::Unavailable(format!("site {id}: {e}"))),
    }
}
