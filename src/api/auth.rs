//! Who is calling: a bearer token from configuration (scripts) or a session
//! cookie from logging in (browsers). Sessions carry a CSRF token that every
//! state-changing request made with the cookie must echo in `X-CSRF-Token`;
//! bearer requests are not exposed to CSRF (browsers never add the header).

use super::error::ApiError;
use super::AppState;
use crate::config::Role;
use crate::model::secret::{hex, hmac_sha256_hex, random_hex, unhex};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Method;
use chrono::{Duration, Utc};
use std::collections::HashMap;
use std::sync::Mutex;

pub const COOKIE: &str = "mizuban_session";

#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// How the caller authenticated: `token` or `session`.
    pub via: &'static str,
}

impl Caller {
    pub fn require(&self, need: Role) -> Result<(), ApiError> {
        if self.role >= need {
            Ok(())
        } else {
            Err(ApiError::Forbidden { need: need.as_str() })
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub expires: chrono::DateTime<Utc>,
}

/// Sessions as signed tokens: `user.role.expires.csrf.mac`, the MAC an
/// HMAC-SHA256 under a key kept in the store, so sessions survive a restart of
/// the service (the board reconnects by itself) without a session table.
/// Logged-out tokens are remembered in memory until they expire; the cookie is
/// also cleared in the browser. Also the login rate limiter. std Mutexes: held
/// for a map operation only.
pub struct Sessions {
    key: Vec<u8>,
    revoked: Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    failures: Mutex<HashMap<String, Vec<chrono::DateTime<Utc>>>>,
}

pub const SESSION_HOURS: i64 = 12;
const MAX_FAILURES: usize = 5;
const FAILURE_WINDOW_MIN: i64 = 5;

fn role_of(s: &str) -> Option<Role> {
    [Role::Viewer, Role::Operator, Role::Engineer, Role::Admin]
        .into_iter()
        .find(|r| r.as_str() == s)
}

impl Sessions {
    pub fn new(key: Vec<u8>) -> Self {
        Self {
            key,
            revoked: Default::default(),
            failures: Default::default(),
        }
    }

    fn mac(&self, payload: &str) -> String {
        hmac_sha256_hex(&self.key, payload.as_bytes())
    }

    pub fn create(&self, user: &str, role: Role) -> (String, Session) {
        let s = Session {
            user: user.into(),
            role,
            csrf: random_hex(16),
            expires: Utc::now() + Duration::hours(SESSION_HOURS),
        };
        let payload = format!(
            "{}.{}.{}.{}",
            hex(user.as_bytes()),
            role.as_str(),
            s.expires.timestamp(),
            s.csrf
        );
        let id = format!("{payload}.{}", self.mac(&payload));
        (id, s)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let (payload, mac) = id.rsplit_once('.')?;
        if !same(&self.mac(payload), mac) {
            return None;
        }
        if self.revoked.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id) {
            return None;
        }
        let mut parts = payload.split('.');
        let user = String::from_utf8(unhex(parts.next()?)?).ok()?;
        let role = role_of(parts.next()?)?;
        let expires = chrono::DateTime::<Utc>::from_timestamp(parts.next()?.parse().ok()?, 0)?;
        let csrf = parts.next()?.to_string();
        (expires > Utc::now()).then_some(Session {
            user,
            role,
            csrf,
            expires,
        })
    }

    pub fn remove(&self, id: &str) {
        if let Some(s) = self.get(id) {
            let mut r = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            let now = Utc::now();
            r.retain(|_, exp| *exp > now);
            r.insert(id.to_string(), s.expires);
        }
    }

    /// `false` when this user name has failed too often recently.
    pub fn login_allowed(&self, user: &str) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = Utc::now() - Duration::minutes(FAILURE_WINDOW_MIN);
        let v = f.entry(user.to_string()).or_default();
        v.retain(|t| *t > cutoff);
        v.len() < MAX_FAILURES
    }
    pub fn login_failed(&self, user: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(user.to_string())
            .or_default()
            .push(Utc::now());
    }
}

pub fn cookie_value(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    let h = headers.get(axum::http::header::COOKIE)?.to_str().ok()?;
    h.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn query_token(parts: &Parts) -> Option<String> {
    // EventSource cannot set headers: the event stream also takes ?token=.
    if parts.uri.path() != "/api/v1/events" {
        return None;
    }
    parts
        .uri
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// Constant-time comparison, so a token cannot be guessed byte by byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
            .or_else(|| query_token(parts));
        if let Some(tok) = bearer {
            return st
                .cfg
                .tokens
                .iter()
                .find(|t| same(&t.token, &tok))
                .map(|t| Caller {
                    name: t.name.clone(),
                    role: t.role,
                    via: "token",
                })
                .ok_or(ApiError::Unauthenticated);
        }
        if let Some(sid) = cookie_value(&parts.headers, COOKIE) {
            if let Some(s) = st.sessions.get(&sid) {
                let changes = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                if changes {
                    let sent = parts
                        .headers
                        .get("x-csrf-token")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("");
                    if !same(sent, &s.csrf) {
                        return Err(ApiError::Forbidden {
                            need: "a valid X-CSRF-Token header",
                        });
                    }
                }
                return Ok(Caller {
                    name: s.user,
                    role: s.role,
                    via: "session",
                });
            }
        }
        Err(ApiError::Unauthenticated)
    }
}
