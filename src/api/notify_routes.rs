//! Acknowledgement from the message (a link, or a short code for the API) and
//! what the service told whom.

use super::{ApiError, AppState, Caller};
use crate::config::Role;
use crate::notify::{AckError, AckKey, Notifier};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};

fn notifier(st: &AppState) -> Result<&Notifier, ApiError> {
    st.notifier
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("notifications are not configured (service.notify_file)".into()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><link rel=\"stylesheet\" href=\"/assets/ack.css\"></head>\
         <body><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    );
    (
        status,
        [(
            "content-security-policy",
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        )],
        Html(html),
    )
        .into_response()
}

fn ack_error_page(e: AckError) -> Response {
    let status = match e {
        AckError::Unknown => StatusCode::NOT_FOUND,
        AckError::Expired | AckError::Used => StatusCode::CONFLICT,
        AckError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let ja = match e {
        AckError::Unknown => "このリンクは無効です。",
        AckError::Expired => "このリンクは有効期限切れです。監視画面から確認してください。",
        AckError::Used => "このリンクは使用済みです（確認済み）。",
        AckError::Failed(_) => "処理できませんでした。監視画面から確認してください。",
    };
    page(
        status,
        "水番 mizuban",
        &format!("<p>{ja}</p><p>{}</p>", esc(&e.to_string())),
    )
}

/// `GET /ack/{token}`: what the link is about and a button. Looking does not
/// acknowledge: mail scanners and link previews open links too.
pub async fn ack_page(State(st): State<AppState>, Path(token): Path<String>) -> Response {
    let Some(n) = st.notifier.as_ref() else {
        return ack_error_page(AckError::Unknown);
    };
    match n.describe_link(&token) {
        Ok((person, alarms)) => {
            let items: String = alarms
                .iter()
                .map(|a| {
                    format!(
                        "<li><b>{}</b> {} / {} — {}</li>",
                        esc(a.site.as_str()),
                        esc(&a.message_ja),
                        esc(&a.message),
                        esc(a.state.as_str())
                    )
                })
                .collect();
            page(
                StatusCode::OK,
                "警報の確認 / Acknowledge",
                &format!(
                    "<p>{} さん / {}</p><ul>{items}</ul><form method=\"post\"><p><label>コメント / comment<br><textarea name=\"comment\" rows=\"2\"></textarea></label></p>\
                     <button>確認する / Acknowledge</button></form>",
                    esc(&person),
                    esc(&person)
                ),
            )
        }
        Err(e) => ack_error_page(e),
    }
}

#[derive(Deserialize, Default)]
pub struct AckForm {
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /ack/{token}`: acknowledges as the person the link was sent to.
pub async fn ack_link(
    State(st): State<AppState>,
    Path(token): Path<String>,
    form: Result<Form<AckForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(n) = st.notifier.as_ref() else {
        return ack_error_page(AckError::Unknown);
    };
    let comment = form.ok().and_then(|f| f.0.comment);
    match n.ack(AckKey::Link(&token), comment).await {
        Ok(alarms) => page(
            StatusCode::OK,
            "確認しました / Acknowledged",
            &format!(
                "<p>{} 件の警報を確認しました。/ {} alarm(s) acknowledged.</p>",
                alarms.len(),
                alarms.len()
            ),
        ),
        Err(e) => ack_error_page(e),
    }
}

#[derive(Deserialize, Default)]
pub struct CodeBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /api/v1/ack-codes`: the short code from a message, for a system that
/// relays the person's answer (SMS gateway, phone menu). Acknowledges as the
/// person the code was sent to; the caller needs `operator`.
pub async fn ack_code(
    State(st): State<AppState>,
    caller: Caller,
    b: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Operator)?;
    let req: CodeBody = super::routes::body(b)?;
    if req.code.trim().is_empty() {
        return Err(ApiError::Unprocessable("code is required".into()));
    }
    match notifier(&st)?.ack(AckKey::Code(&req.code), req.comment).await {
        Ok(alarms) => Ok(Json(json!({"acknowledged": alarms}))),
        Err(AckError::Unknown) => Err(ApiError::NotFound("unknown code".into())),
        Err(e @ (AckError::Expired | AckError::Used)) => Err(ApiError::Conflict(e.to_string())),
        Err(AckError::Failed(e)) => Err(ApiError::Unavailable(e)),
    }
}

/// `GET /api/v1/alarms/{id}/notifications`: who was told about this alarm, when,
/// through what, and whether it was delivered.
pub async fn alarm_notifications(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let Some(n) = st.notifier.as_ref() else {
        return Ok(Json(json!([])));
    };
    let rows = n
        .notifications_for(&id)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!(rows)))
}

#[derive(Deserialize)]
pub struct RecentQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/notifications?state=failed`: the outbox, newest first.
pub async fn notifications(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<RecentQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    if let Some(s) = q.state.as_deref() {
        if !matches!(s, "pending" | "sent" | "failed" | "held" | "summarized") {
            return Err(ApiError::BadRequest(format!(
                "state {s:?} is not pending, sent, failed, held or summarized"
            )));
        }
    }
    let rows = notifier(&st)?
        .recent(q.state.as_deref(), super::routes::check_limit(q.limit, 200, 5000)?)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!(rows)))
}

/// `GET /api/v1/oncall`: who is on call now, per team.
pub async fn oncall(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Viewer)?;
    let teams: Vec<Value> = notifier(&st)?
        .on_call()
        .into_iter()
        .map(|(team, person)| json!({"team": team, "person": person}))
        .collect();
    Ok(Json(json!(teams)))
}
