//! Credentials: the operator's bearer `ADMIN_TOKEN` and tenant API keys.
//!
//! A tenant key looks like `s360_key_<20 chars>_<64 hex>`. Only the SHA-256 of the whole key is stored; the
//! key id before the secret finds the row, and the hash is compared in constant time.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::api_keys;
use crate::db::scope::{self, Scope};
use crate::domain::ids;
use crate::error::ApiError;
use crate::state::AppState;

pub const KEY_PREFIX: &str = "s360_";

/// The operator, authenticated by `Authorization: Bearer $ADMIN_TOKEN`.
#[derive(Debug, Clone)]
pub struct Operator;

/// A tenant administrator: every tenant-scoped query uses `tenant_id` from the key, never from the request.
#[derive(Debug, Clone)]
pub struct TenantAdmin {
    pub tenant_id: String,
    pub key_id: String,
}

impl TenantAdmin {
    pub fn actor(&self) -> String {
        format!("api_key:{}", self.key_id)
    }
}

pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Constant-time equality of two secrets (length differences leak only the length).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub fn is_operator_token(state: &AppState, token: &str) -> bool {
    state.settings.admin_token.as_ref().is_some_and(|t| secret_eq(t.expose(), token))
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.settings.admin_token.is_none() {
            return Err(ApiError::unauthorized("operator access is disabled because ADMIN_TOKEN is not configured"));
        }
        match bearer(parts) {
            None => Err(ApiError::unauthorized("send the operator token as `Authorization: Bearer <ADMIN_TOKEN>`")),
            Some(t) if is_operator_token(state, t) => {
                scope::enter(Scope::System("operator"));
                Ok(Operator)
            }
            Some(_) => Err(ApiError::unauthorized("the operator token is not valid")),
        }
    }
}

/// A job trigger: `Authorization: Bearer $CRON_SECRET` (Vercel-cron compatible) or the operator token.
/// With `CRON_SECRET` unset only the operator token works (fail closed).
#[derive(Debug, Clone)]
pub struct CronCaller {
    pub actor: &'static str,
}

impl FromRequestParts<AppState> for CronCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized("send `Authorization: Bearer $CRON_SECRET` (or the operator token)"));
        };
        if state.settings.cron_secret.as_ref().is_some_and(|s| secret_eq(s.expose(), token)) {
            scope::enter(Scope::System("cron"));
            return Ok(CronCaller { actor: "cron" });
        }
        if is_operator_token(state, token) {
            scope::enter(Scope::System("operator"));
            return Ok(CronCaller { actor: "operator" });
        }
        Err(ApiError::unauthorized(if state.settings.cron_secret.is_none() {
            "CRON_SECRET is not configured, so job triggers accept only the operator token"
        } else {
            "the cron secret is not valid"
        }))
    }
}

/// A freshly issued key: the full key (shown once) and what is stored.
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub secret_hash: String,
}

pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

pub fn issue_key() -> NewKey {
    let id = ids::new_id("key");
    let key = format!("{KEY_PREFIX}{id}_{}", ids::random_hex(32));
    let secret_hash = hash_key(&key);
    NewKey { id, key, secret_hash }
}

/// The key id inside a presented key, if it has our shape.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.rsplit_once('_')?;
    (id.starts_with("key_") && secret.len() == 64).then_some(id)
}

impl FromRequestParts<AppState> for TenantAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::unauthorized("send a tenant API key as `Authorization: Bearer s360_…`"));
        };
        let invalid = || ApiError::unauthorized("the API key is not valid; ask the operator for a new key");
        let id = key_id(token).ok_or_else(invalid)?;
        // Finding the key is platform work (the tenant is not known yet): a system read of that one row.
        let row = scope::system("api-key-auth", api_keys::find(&state.db, id)).await?.ok_or_else(invalid)?;
        if !secret_eq(&row.secret_hash, &hash_key(token)) {
            return Err(invalid());
        }
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthorized("this API key was revoked; ask the operator for a new key"));
        }
        // From here the request sees only this tenant's rows (row-level security on PostgreSQL).
        scope::enter(Scope::Tenant(row.tenant_id.clone()));
        api_keys::touch(&state.db, &row.id, state.now()).await?;
        Ok(TenantAdmin { tenant_id: row.tenant_id, key_id: row.id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_back_to_their_id() {
        let k = issue_key();
        assert_eq!(key_id(&k.key), Some(k.id.as_str()));
        assert_eq!(k.secret_hash, hash_key(&k.key));
        assert!(!k.secret_hash.contains(&k.key));
    }

    #[test]
    fn foreign_shapes_are_not_keys() {
        for bad in ["", "s360_", "s360_key_x", "sk_live_abc", "s360_key_abc_short", "s360_nokey_aaaa"] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn secret_comparison_needs_exact_equality() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
    }
}
