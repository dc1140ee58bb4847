//! The one place errors become HTTP answers: a JSON `{"error": "..."}` with the
//! status interfaces.md allows, never internals or a stack trace.

use crate::alarm::CommandError;
use crate::pipeline::PipelineError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("role {need} required")]
    Forbidden { need: &'static str },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    TooLarge,
    #[error("{0}")]
    Unprocessable(String),
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Too many attempts or open streams; try again after this many seconds.
    #[error("too many requests; try again in {0} s")]
    TooMany(u64),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status(), Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if let Self::TooMany(s) = self {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        if matches!(self, Self::Unavailable(_)) {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        if matches!(self, Self::Unauthenticated) {
            r.headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        r
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Stopped => Self::Unavailable("alarm pipeline is not running".into()),
            PipelineError::Command(CommandError::NotFound(id)) => Self::NotFound(format!("no open alarm with id {id}")),
            PipelineError::Command(c @ CommandError::Conflict { .. }) => Self::Conflict(c.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "store query failed");
        Self::Unavailable("history store unavailable".into())
    }
}
