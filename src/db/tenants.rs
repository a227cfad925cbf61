//! Tenants (operator-managed).

use serde::Serialize;

use super::{Db, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub province: String,
    pub language: String,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, province, language, created_at, updated_at";

pub async fn insert(tx: &mut Tx, t: &TenantRow) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO tenants (id, name, province, language, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(&t.id).bind(&t.name).bind(&t.province).bind(&t.language).bind(t.created_at).bind(t.updated_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn list(db: &Db) -> Result<Vec<TenantRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenants ORDER BY id");
    on_db!(db, p => sqlx::query_as(&sql).fetch_all(p).await)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<TenantRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id = $1");
    on_db!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await)
}

/// Update the given fields; `None` keeps the current value. Returns the updated row, `None` if absent.
pub async fn update(
    tx: &mut Tx,
    id: &str,
    name: Option<&str>,
    province: Option<&str>,
    language: Option<&str>,
    now: i64,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE tenants SET name = COALESCE($2, name), province = COALESCE($3, province), \
         language = COALESCE($4, language), updated_at = $5 WHERE id = $1 RETURNING {COLUMNS}"
    );
    on_tx!(tx, c => sqlx::query_as(&sql)
        .bind(id).bind(name).bind(province).bind(language).bind(now)
        .fetch_optional(&mut *c).await)
}

/// Take the tenant's row lock (PostgreSQL) / the write lock (SQLite) so that per-tenant limits checked in
/// this transaction cannot race. Returns false when the tenant does not exist.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, c => sqlx::query("UPDATE tenants SET updated_at = updated_at WHERE id = $1")
        .bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

pub async fn has_billing(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM customers WHERE tenant_id = $1) + (SELECT COUNT(*) FROM subscriptions WHERE tenant_id = $1)"
    ).bind(id).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}

pub async fn delete(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM tenants WHERE id = $1").bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}
