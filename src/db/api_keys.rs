//! Tenant API keys: stored as a SHA-256 hash of the whole key; the key itself is shown once.

use serde::Serialize;

use super::{Db, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub label: String,
    #[serde(skip)]
    pub secret_hash: String,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub last_used_at: Option<i64>,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str = "id, tenant_id, label, secret_hash, created_at, last_used_at, revoked_at";

pub async fn insert(tx: &mut Tx, k: &ApiKeyRow) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, label, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)"
    )
    .bind(&k.id).bind(&k.tenant_id).bind(&k.label).bind(&k.secret_hash).bind(k.created_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn find(db: &Db, id: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1");
    on_db!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await)
}

pub async fn list(db: &Db, tenant_id: &str) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id");
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).fetch_all(p).await)
}

/// Record use at most once a minute per key (the write is skipped when already recent).
pub async fn touch(db: &Db, id: &str, now: i64) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query(
        "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)"
    ).bind(id).bind(now).bind(now - 60_000).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Revoke a key of `tenant_id`; returns false when no such live key exists.
pub async fn revoke(tx: &mut Tx, tenant_id: &str, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, c => sqlx::query(
        "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL"
    ).bind(tenant_id).bind(id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}
