//! HTTP API (axum): the routes of interfaces.md, the event stream, Prometheus
//! metrics, the OpenAPI document and the board page. Handlers read the
//! pipeline's shard views and the store; changes go to the pipeline as
//! commands, never to alarm state directly.

mod auth;
mod error;
mod notify_routes;
pub mod openapi;
mod replays;
mod routes;
mod sse;
pub mod streams;
mod throttle;

pub use auth::{Caller, Sessions, COOKIE};
pub use error::ApiError;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::store::Store;
use crate::telemetry::Metrics;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tower_http::set_header::SetResponseHeaderLayer;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub pipeline: Pipeline,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Names of collectors that must be connected for the service to be healthy.
    pub collectors: Vec<&'static str>,
    /// Cancelled at shutdown: ends the event streams so the server can stop.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Device commands to Modbus controllers.
    pub commander: crate::collect::modbus::Commander,
    /// Alerts (ack links and codes, who was told what); `None` when not configured.
    pub notifier: Option<crate::notify::Notifier>,
    /// Admission of event streams (capped in all and per caller).
    pub streams: Arc<streams::EventStreams>,
    /// Replays started from the board.
    pub replays: Arc<replays::Replays>,
    /// The service's clock (a default span ends at its now).
    pub clock: Arc<dyn crate::model::Clock>,
}

/// `(method, path)` of every route the router serves; the OpenAPI test checks
/// this list, the router and the document agree.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/assets/{name}"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/login"),
    ("POST", "/api/v1/logout"),
    ("GET", "/api/v1/session"),
    ("GET", "/api/v1/sites"),
    ("GET", "/api/v1/sites/{id}"),
    ("POST", "/api/v1/sites/{id}/commands"),
    ("GET", "/api/v1/alarms"),
    ("GET", "/api/v1/alarms/{id}"),
    ("GET", "/api/v1/alarms/{id}/journal"),
    ("POST", "/api/v1/alarms/{id}/ack"),
    ("POST", "/api/v1/alarms/{id}/shelve"),
    ("POST", "/api/v1/alarms/{id}/unshelve"),
    ("POST", "/api/v1/alarms/{id}/out_of_service"),
    ("POST", "/api/v1/alarms/{id}/return_to_service"),
    ("GET", "/api/v1/points/{id}/readings"),
    ("GET", "/api/v1/journal"),
    ("GET", "/api/v1/kpis"),
    ("GET", "/api/v1/replays"),
    ("POST", "/api/v1/replays"),
    ("GET", "/api/v1/replays/{id}"),
    ("GET", "/api/v1/replays/{id}/result"),
    ("GET", "/api/v1/replays/{id}/report"),
    ("GET", "/api/v1/quarantine"),
    ("GET", "/api/v1/events"),
    ("GET", "/ack/{token}"),
    ("POST", "/ack/{token}"),
    ("POST", "/api/v1/ack-codes"),
    ("GET", "/api/v1/alarms/{id}/notifications"),
    ("GET", "/api/v1/notifications"),
    ("GET", "/api/v1/oncall"),
];

/// Request bodies are small JSON documents; anything bigger is refused (413).
pub const MAX_BODY: usize = 64 * 1024;

/// Headers on every response: no framing by other sites, no MIME sniffing,
/// no referrer (ack links carry their token in the path), and a
/// Content-Security-Policy with no inline script or style. A route that sets
/// its own policy (the ack page) keeps it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn security_headers(r: Router) -> Router {
    r.layer(SetResponseHeaderLayer::if_not_present(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    ))
    .layer(SetResponseHeaderLayer::overriding(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ))
    .layer(SetResponseHeaderLayer::overriding(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ))
    .layer(SetResponseHeaderLayer::overriding(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    ))
}

/// The Prometheus endpoint alone, for `http.metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    security_headers(
        Router::new()
            .route("/metrics", get(routes::metrics))
            .fallback(routes::not_found)
            .with_state(state),
    )
}

pub fn router(state: AppState) -> Router {
    let metrics_here = state.cfg.http.metrics_listen.is_none();
    let r = Router::new()
        .route("/", get(routes::board))
        .route("/assets/{name}", get(routes::asset));
    let r = if metrics_here {
        r.route("/metrics", get(routes::metrics))
    } else {
        r
    };
    let r = r
        .route("/api/v1/health", get(routes::health))
        .route("/api/v1/openapi.json", get(routes::openapi))
        .route("/api/v1/login", post(routes::login))
        .route("/api/v1/logout", post(routes::logout))
        .route("/api/v1/session", get(routes::session))
        .route("/api/v1/sites", get(routes::sites))
        .route("/api/v1/sites/{id}", get(routes::site))
        .route("/api/v1/sites/{id}/commands", post(routes::command))
        .route("/api/v1/alarms", get(routes::alarms))
        .route("/api/v1/alarms/{id}", get(routes::alarm))
        .route("/api/v1/alarms/{id}/journal", get(routes::alarm_journal))
        .route("/api/v1/alarms/{id}/ack", post(routes::ack))
        .route("/api/v1/alarms/{id}/shelve", post(routes::shelve))
        .route("/api/v1/alarms/{id}/unshelve", post(routes::unshelve))
        .route("/api/v1/alarms/{id}/out_of_service", post(routes::out_of_service))
        .route("/api/v1/alarms/{id}/return_to_service", post(routes::return_to_service))
        .route("/api/v1/points/{id}/readings", get(routes::readings))
        .route("/api/v1/journal", get(routes::journal))
        .route("/api/v1/kpis", get(routes::kpis))
        .route("/api/v1/replays", get(replays::list).post(replays::start))
        .route("/api/v1/replays/{id}", get(replays::one))
        .route("/api/v1/replays/{id}/result", get(replays::result))
        .route("/api/v1/replays/{id}/report", get(replays::report))
        .route("/api/v1/quarantine", get(routes::quarantine))
        .route("/api/v1/events", get(sse::events))
        .route(
            "/ack/{token}",
            get(notify_routes::ack_page).post(notify_routes::ack_link),
        )
        .route("/api/v1/ack-codes", post(notify_routes::ack_code))
        .route(
            "/api/v1/alarms/{id}/notifications",
            get(notify_routes::alarm_notifications),
        )
        .route("/api/v1/notifications", get(notify_routes::notifications))
        .route("/api/v1/oncall", get(notify_routes::oncall))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::map_response(json_rejections))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    security_headers(r.with_state(state))
}

/// axum's own extractor rejections (a bad query string, a wrong content type)
/// answer in plain text; the API promises `{"error": "..."}` for every error.
async fn json_rejections(res: axum::response::Response) -> axum::response::Response {
    let ty = res
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let plain = ty.is_none_or(|v| v.starts_with("text/plain"));
    let error = res.status().is_client_error() || res.status().is_server_error();
    if !(error && plain) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let mut msg = String::from_utf8_lossy(&text).trim().to_string();
    if msg.is_empty() {
        msg = parts.status.canonical_reason().unwrap_or("error").to_lowercase();
    }
    (parts.status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

/// A password for generated accounts: 16 characters, no look-alikes.
pub fn random_password() -> String {
    crate::model::secret::random_from(b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789", 16)
}
