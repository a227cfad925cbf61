//! The operator's runbook page: sessions (cookie `s360_session`, stored server-side as a SHA-256), CSRF and
//! `Origin` checks, the page's texts in French and English, and the procedures its buttons run.

pub mod i18n;
pub mod procedures;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use crate::auth::secret_eq;
use crate::config::Settings;
use crate::db::admin::{self as store, SessionRow};
use crate::db::Db;
use crate::domain::ids;

pub const COOKIE: &str = "s360_session";
pub const SESSION_TTL_MS: i64 = 8 * 60 * 60 * 1000;

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new session: the random token for the cookie (never stored) and the row (its hash, a CSRF token).
pub fn new_session(language: &str, now: i64) -> (String, SessionRow) {
    let token = ids::random_hex(32);
    let row = SessionRow {
        id: ids::new_id("ses"),
        token_hash: hash_token(&token),
        csrf_token: ids::random_hex(32),
        language: if language == "en" { "en" } else { "fr" }.to_owned(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + SESSION_TTL_MS,
    };
    (token, row)
}

/// The `s360_session` value of the request's cookies.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The live session of the request, if its cookie names one (expiry enforced here, server-side).
pub async fn current_session(db: &Db, headers: &HeaderMap, now: i64) -> Result<Option<SessionRow>, sqlx::Error> {
    let Some(token) = session_cookie(headers) else { return Ok(None) };
    let Some(session) = store::find_live_session(db, &hash_token(token), now).await? else { return Ok(None) };
    store::touch_session(db, &session.id, now).await?;
    Ok(Some(session))
}

fn cookie_attributes(settings: &Settings) -> &'static str {
    if settings.app_url.scheme() == "https" {
        "; Path=/admin; HttpOnly; SameSite=Strict; Secure"
    } else {
        "; Path=/admin; HttpOnly; SameSite=Strict"
    }
}

pub fn set_cookie(settings: &Settings, token: &str) -> String {
    format!("{COOKIE}={token}; Max-Age={}{}", SESSION_TTL_MS / 1000, cookie_attributes(settings))
}

pub fn clear_cookie(settings: &Settings) -> String {
    format!("{COOKIE}=; Max-Age=0{}", cookie_attributes(settings))
}

/// A state-changing request is refused when it carries an `Origin` other than `APP_URL`'s.
pub fn origin_allowed(settings: &Settings, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|o| o == settings.app_url.origin().ascii_serialization()),
    }
}

/// The form's CSRF token equals the session's (constant time).
pub fn csrf_valid(session: &SessionRow, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| !p.is_empty() && secret_eq(&session.csrf_token, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; s360_session=abc ; b=2"));
        assert_eq!(session_cookie(&h), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("s360_session_x=1"));
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn only_the_hash_of_the_session_token_is_kept() {
        let (token, row) = new_session("en", 0);
        assert_eq!(row.token_hash, hash_token(&token));
        assert!(!row.token_hash.contains(&token));
        assert_eq!(row.expires_at, SESSION_TTL_MS);
        assert_ne!(row.csrf_token, token);
    }

    #[test]
    fn a_missing_or_wrong_csrf_token_is_refused() {
        let (_, row) = new_session("fr", 0);
        assert!(csrf_valid(&row, Some(&row.csrf_token.clone())));
        assert!(!csrf_valid(&row, None));
        assert!(!csrf_valid(&row, Some("")));
        assert!(!csrf_valid(&row, Some("nope")));
    }
}
