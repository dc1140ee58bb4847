//! Who is calling: a bearer token from configuration (scripts) or a session
//! cookie from logging in (browsers). Sessions carry a CSRF token that every
//! state-changing request made with the cookie must echo in `X-CSRF-Token`;
//! bearer requests are not exposed to CSRF (browsers never add the header).

use super::error::ApiError;
use super::throttle::Throttle;
use super::AppState;
use crate::config::{Role, UserSpec};
use crate::model::secret::{hex, hmac_sha256_hex, random_hex, unhex};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::Method;
use chrono::{Duration, Utc};
use std::collections::HashMap;
use std::net::IpAddr;
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

/// Sessions as signed tokens: `user.role.expires.csrf.account.mac`, the MAC an
/// HMAC-SHA256 under a key kept in the store, so sessions survive a restart of
/// the service (the board reconnects by itself) without a session table.
///
/// A session ends when it should, across restarts too:
/// - `account` is a fingerprint of the user's configured name, role and
///   password hash: a user removed from configuration, or given another role
///   or password, has every session end at the next start that loads it;
/// - a logout is written to the store (until the token would have expired)
///   before it is answered, and loaded again at start;
/// - a demo started afresh makes new passwords, so new fingerprints.
///
/// std Mutexes: held for a map operation only.
pub struct Sessions {
    key: Vec<u8>,
    /// Account fingerprints of the configured users, by name.
    accounts: HashMap<String, (Role, String)>,
    /// MACs of logged-out tokens, until they expire.
    revoked: Mutex<HashMap<String, chrono::DateTime<Utc>>>,
    throttle: Mutex<Throttle>,
    /// A hash of no real password, verified for unknown names so that they
    /// take as long as known ones.
    dummy_hash: String,
    /// Password checks at once: each argon2 verification takes its memory
    /// cost (19 MiB by default), so a login flood must queue, not fan out
    /// over the blocking pool (45 at once took RSS to 870 MiB).
    hashing: tokio::sync::Semaphore,
    /// argon2's working memory, one block buffer per concurrent check, kept
    /// and reused: allocated fresh per login, glibc keeps each freed 19 MiB
    /// (RSS grew by ~15 MiB per failed login until the arenas were full).
    memory: Mutex<Vec<Vec<argon2::Block>>>,
}

/// Verifies `password` against an argon2 PHC string with the caller's
/// working memory (grown to the hash's cost once, then reused).
fn verify_argon2(phc: &str, password: &[u8], mem: &mut Vec<argon2::Block>) -> bool {
    use argon2::password_hash::PasswordHash;
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(params), Ok(alg)) = (argon2::Params::try_from(&h), argon2::Algorithm::try_from(h.algorithm)) else {
        return false;
    };
    let version = match h.version {
        Some(v) => match argon2::Version::try_from(v) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => argon2::Version::V0x13,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if mem.len() < params.block_count() {
        mem.resize(params.block_count(), argon2::Block::default());
    }
    let blocks = params.block_count();
    let a = argon2::Argon2::new(alg, version, params);
    a.hash_password_into_with_memory(password, salt, &mut out, &mut mem[..blocks])
        .is_ok()
        && out.len() == expected.len()
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Concurrent password verifications (about the cores of a small server).
pub const HASHING_AT_ONCE: usize = 2;

/// A hash of a random password with the same argon2 variant and cost as the
/// configured users' (the first one's), so verifying it takes as long.
fn dummy_hash(users: &[UserSpec]) -> String {
    use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
    let like = users.first().and_then(|u| {
        let h = PasswordHash::new(&u.password_hash).ok()?;
        let params = argon2::Params::try_from(&h).ok()?;
        let alg = argon2::Algorithm::try_from(h.algorithm).ok()?;
        Some(argon2::Argon2::new(alg, argon2::Version::V0x13, params))
    });
    let hasher = like.unwrap_or_default();
    let salt = SaltString::encode_b64(random_hex(16).as_bytes()).expect("16 bytes fit a salt");
    hasher
        .hash_password(random_hex(16).as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
}

pub const SESSION_HOURS: i64 = 12;
/// Longer names and passwords are refused before any work is done.
pub const MAX_NAME: usize = 256;
pub const MAX_PASSWORD: usize = 1024;

fn role_of(s: &str) -> Option<Role> {
    [Role::Viewer, Role::Operator, Role::Engineer, Role::Admin]
        .into_iter()
        .find(|r| r.as_str() == s)
}

/// Why a login did not happen.
pub enum LoginRefused {
    /// Wrong name or password (the same answer for both).
    Wrong,
    /// This client tried too often; try again after this long.
    Throttled(std::time::Duration),
}

impl Sessions {
    pub fn new(key: Vec<u8>, users: &[UserSpec], revoked: Vec<(String, chrono::DateTime<Utc>)>) -> Self {
        let fingerprint = |u: &UserSpec| {
            hmac_sha256_hex(
                &key,
                format!("account\0{}\0{}\0{}", u.name, u.role.as_str(), u.password_hash).as_bytes(),
            )[..16]
                .to_string()
        };
        let accounts = users
            .iter()
            .map(|u| (u.name.clone(), (u.role, fingerprint(u))))
            .collect();
        let dummy_hash = dummy_hash(users);
        Self {
            key,
            accounts,
            revoked: Mutex::new(revoked.into_iter().collect()),
            throttle: Mutex::new(Throttle::new()),
            dummy_hash,
            hashing: tokio::sync::Semaphore::new(HASHING_AT_ONCE),
            memory: Mutex::new(Vec::new()),
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
        let account = self.accounts.get(user).map(|a| a.1.as_str()).unwrap_or("-");
        let payload = format!(
            "{}.{}.{}.{}.{account}",
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
        if self.revoked.lock().unwrap_or_else(|p| p.into_inner()).contains_key(mac) {
            return None;
        }
        let mut parts = payload.split('.');
        let user = String::from_utf8(unhex(parts.next()?)?).ok()?;
        let role = role_of(parts.next()?)?;
        let expires = chrono::DateTime::<Utc>::from_timestamp(parts.next()?.parse().ok()?, 0)?;
        let csrf = parts.next()?.to_string();
        let account = parts.next()?;
        // The account as configured now: still there, same role and password.
        let (now_role, now_account) = self.accounts.get(&user)?;
        if *now_role != role || !same(now_account, account) {
            return None;
        }
        (expires > Utc::now()).then_some(Session {
            user,
            role,
            csrf,
            expires,
        })
    }

    /// Ends a session: returns what the store must remember (its MAC and
    /// expiry) so that the logout holds after a restart; `None` if it was not
    /// a valid session.
    pub fn remove(&self, id: &str) -> Option<(String, chrono::DateTime<Utc>)> {
        let s = self.get(id)?;
        let (_, mac) = id.rsplit_once('.')?;
        let mut r = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        r.retain(|_, exp| *exp > now);
        r.insert(mac.to_string(), s.expires);
        Some((mac.to_string(), s.expires))
    }

    /// Checks a name and password: throttled by client and name, equal time
    /// for unknown names, the argon2 work on the blocking pool.
    pub async fn login(
        self: &std::sync::Arc<Self>,
        client: IpAddr,
        users: &[UserSpec],
        name: &str,
        password: &str,
    ) -> Result<(String, Role), LoginRefused> {
        let now = std::time::Instant::now();
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(client, name, now)
            .map_err(LoginRefused::Throttled)?;
        let user = users.iter().find(|u| u.name == name).cloned();
        let hash = user
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.to_string();
        // Closed never: the semaphore lives as long as the sessions.
        let _turn = self.hashing.acquire().await.ok();
        let mut mem = self
            .memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        let (ok, mem) = tokio::task::spawn_blocking(move || {
            let ok = verify_argon2(&hash, password.as_bytes(), &mut mem);
            (ok, mem)
        })
        .await
        .unwrap_or((false, Vec::new()));
        self.memory.lock().unwrap_or_else(|p| p.into_inner()).push(mem);
        let mut t = self.throttle.lock().unwrap_or_else(|p| p.into_inner());
        match user.filter(|_| ok) {
            Some(u) => {
                t.succeeded(client, name);
                Ok((u.name, u.role))
            }
            None => {
                t.failed(client, name, std::time::Instant::now());
                Err(LoginRefused::Wrong)
            }
        }
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
pub(super) fn same(a: &str, b: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Unknown names must cost what known ones cost: the dummy hash has the
    /// configured users' argon2 variant and parameters (memory, passes, lanes).
    #[test]
    fn verifying_with_reused_memory_agrees_with_argon2() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let mut mem = Vec::new();
        for params in [
            argon2::Params::default(),
            argon2::Params::new(8 * 1024, 1, 1, None).unwrap(),
        ] {
            let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
            let phc = a
                .hash_password(b"correct horse", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
                .unwrap()
                .to_string();
            assert!(verify_argon2(&phc, b"correct horse", &mut mem));
            assert!(!verify_argon2(&phc, b"correct horsf", &mut mem));
        }
        assert!(!verify_argon2("not a hash", b"x", &mut mem));
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
        let params = argon2::Params::new(32 * 1024, 3, 2, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let real = a
            .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
            .unwrap()
            .to_string();
        let users = vec![UserSpec {
            name: "op".into(),
            password_hash: real.clone(),
            role: Role::Operator,
        }];
        let dummy = dummy_hash(&users);
        let (r, d) = (PasswordHash::new(&real).unwrap(), PasswordHash::new(&dummy).unwrap());
        assert_eq!(r.algorithm, d.algorithm);
        assert_eq!(
            argon2::Params::try_from(&r).unwrap(),
            argon2::Params::try_from(&d).unwrap()
        );
    }
}
