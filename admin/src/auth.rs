//! Who is asking: bearer tokens for the API, session cookies and CSRF tokens for the page.
//!
//! - Tokens are compared as BLAKE3 hashes, in constant time (`blake3::Hash`'s equality),
//!   against every principal, without stopping at the first match.
//! - A page session is a random 256-bit id in an `HttpOnly; SameSite=Strict; Path=/`
//!   cookie (`Secure` when configured), held in memory (a restart logs everyone out), with
//!   an absolute expiry. The server keeps the id's hash, not the id.
//! - Every form that changes something carries the session's CSRF token, checked in
//!   constant time; the login form carries a one-time value that must match a cookie of the
//!   same page (login CSRF). Requests a browser marks `Sec-Fetch-Site: cross-site` are
//!   refused outright.
//! - The bearer API is CSRF-exempt: a browser never attaches an `Authorization` header to a
//!   cross-site request by itself, and the API accepts no cookies.
//! - Nothing here logs a token, a session id or a CSRF value.

use std::collections::HashMap;
use std::sync::Mutex;

use annal::Actor;
use axum::http::{header, HeaderMap};

use crate::config::{random_hex, AdminConfig, Principal};
use crate::error::ApiError;

/// The session cookie's name.
pub(crate) const SESSION_COOKIE: &str = "annal_session";
/// The login form's one-time cookie.
pub(crate) const LOGIN_COOKIE: &str = "annal_login";
/// Most sessions one actor may hold; the oldest goes first.
const SESSIONS_PER_ACTOR_MAX: usize = 16;

/// Principals by token hash.
pub(crate) struct Principals {
    entries: Vec<(blake3::Hash, Principal)>,
}

impl Principals {
    pub(crate) fn new(config: &AdminConfig) -> Self {
        let entries = config
            .principals
            .iter()
            .filter_map(|p| {
                blake3::Hash::from_hex(p.token_blake3.trim())
                    .ok()
                    .map(|h| (h, p.clone()))
            })
            .collect();
        Self { entries }
    }

    /// The principal whose token this is. Every entry is compared (constant time each), so
    /// how long this takes says nothing about which one matched.
    pub(crate) fn by_token(&self, token: &str) -> Option<&Principal> {
        let presented = blake3::hash(token.as_bytes());
        let mut found = None;
        for (hash, principal) in &self.entries {
            if *hash == presented {
                found = Some(principal);
            }
        }
        found
    }
}

/// Someone who proved who they are.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) actor: Actor,
}

/// A page session.
struct Session {
    actor: Actor,
    csrf: String,
    created_ms: u64,
    expires_ms: u64,
}

/// A live session as a handler sees it.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub(crate) actor: Actor,
    pub(crate) csrf: String,
}

/// Why a session cookie did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSession {
    /// No cookie, or one the server never issued (or forgot in a restart).
    Missing,
    /// Issued, but past its expiry.
    Expired,
}

/// The page sessions, keyed by the BLAKE3 hash of their id.
#[derive(Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Opens a session for `actor`; returns its id (for the cookie only).
    pub(crate) fn open(&self, actor: Actor, now_ms: u64, ttl_ms: u64) -> Result<String, ApiError> {
        let id = random_hex::<32>().map_err(|_| no_randomness())?;
        let csrf = random_hex::<32>().map_err(|_| no_randomness())?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires_ms > now_ms);
        let mut mine: Vec<([u8; 32], u64)> = map
            .iter()
            .filter(|(_, s)| s.actor.id == actor.id)
            .map(|(k, s)| (*k, s.created_ms))
            .collect();
        if mine.len() >= SESSIONS_PER_ACTOR_MAX {
            mine.sort_by_key(|(_, created)| *created);
            for (key, _) in &mine[..=mine.len() - SESSIONS_PER_ACTOR_MAX] {
                map.remove(key);
            }
        }
        map.insert(
            key(&id),
            Session {
                actor,
                csrf,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(ttl_ms),
            },
        );
        Ok(id)
    }

    /// The session a request's cookie names.
    pub(crate) fn get(&self, headers: &HeaderMap, now_ms: u64) -> Result<SessionView, NoSession> {
        let id = cookie(headers, SESSION_COOKIE).ok_or(NoSession::Missing)?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(&id);
        match map.get(&k) {
            None => Err(NoSession::Missing),
            Some(s) if s.expires_ms <= now_ms => {
                map.remove(&k);
                Err(NoSession::Expired)
            }
            Some(s) => Ok(SessionView {
                actor: s.actor.clone(),
                csrf: s.csrf.clone(),
            }),
        }
    }

    /// Ends the session a request's cookie names.
    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key(&id));
        }
    }
}

fn no_randomness() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "no randomness from the OS",
    )
}

fn key(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

/// Whether two secrets are equal, in time that depends only on their lengths.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    // Hashes of equal length compared in constant time by blake3::Hash.
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

/// The value of cookie `name`, if the request has one.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value: `HttpOnly; SameSite=Strict`, `Secure` when configured.
pub(crate) fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age_secs: u64,
    secure: bool,
) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age_secs}{secure}"
    )
}

/// The bearer token of an API request: the caller, or why not.
pub(crate) fn bearer(principals: &Principals, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated());
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthenticated)?;
    principals
        .by_token(token)
        .map(|p| Caller { actor: p.actor() })
        .ok_or_else(ApiError::bad_token)
}

/// Whether the browser says the request comes from another site.
pub(crate) fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PrincipalKind;

    #[test]
    fn tokens_find_their_principal_and_sessions_expire() {
        let config = AdminConfig::default()
            .with_principal(
                "dana",
                &["finance"],
                PrincipalKind::Human,
                "token-of-dana-0123456789",
            )
            .with_principal(
                "bot",
                &[],
                PrincipalKind::Agent,
                "token-of-bot-0123456789ab",
            );
        let principals = Principals::new(&config);
        assert_eq!(
            principals
                .by_token("token-of-dana-0123456789")
                .unwrap()
                .actor,
            "dana"
        );
        assert!(principals.by_token("token-of-dana-012345678").is_none());
        let sessions = Sessions::default();
        let id = sessions.open(Actor::new("dana", &[]), 1_000, 500).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("x=1; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        assert_eq!(sessions.get(&headers, 1_400).unwrap().actor.id, "dana");
        assert!(matches!(
            sessions.get(&headers, 1_500),
            Err(NoSession::Expired)
        ));
        assert!(matches!(
            sessions.get(&headers, 1_600),
            Err(NoSession::Missing)
        ));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
