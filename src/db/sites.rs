//! Sites of a tenant. Every query is bound to the caller's tenant.

use serde::Serialize;

use super::{Db, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SiteRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub address: Option<String>,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub updated_at: i64,
}

const COLUMNS: &str = "id, tenant_id, name, address, created_at, updated_at";

pub async fn insert(tx: &mut Tx, s: &SiteRow) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, address, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(&s.id).bind(&s.tenant_id).bind(&s.name).bind(&s.address).bind(s.created_at).bind(s.updated_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn count(tx: &mut Tx, tenant_id: &str) -> Result<i64, sqlx::Error> {
    on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE tenant_id = $1")
        .bind(tenant_id).fetch_one(&mut *c).await)
}

pub async fn list(db: &Db, tenant_id: &str) -> Result<Vec<SiteRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM sites WHERE tenant_id = $1 ORDER BY created_at, id");
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).fetch_all(p).await)
}

pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<Option<SiteRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM sites WHERE tenant_id = $1 AND id = $2");
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).bind(id).fetch_optional(p).await)
}

pub async fn exists(tx: &mut Tx, tenant_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id).bind(id).fetch_one(&mut *c).await)?;
    Ok(n == 1)
}

/// `address`: `None` keeps it, `Some(None)` clears it.
pub async fn update(
    tx: &mut Tx,
    tenant_id: &str,
    id: &str,
    name: Option<&str>,
    address: Option<Option<&str>>,
    now: i64,
) -> Result<Option<SiteRow>, sqlx::Error> {
    let sql = format!(
        "UPDATE sites SET name = COALESCE($3, name), \
         address = CASE WHEN $4 THEN $5 ELSE address END, updated_at = $6 \
         WHERE tenant_id = $1 AND id = $2 RETURNING {COLUMNS}"
    );
    on_tx!(tx, c => sqlx::query_as(&sql)
        .bind(tenant_id).bind(id).bind(name).bind(address.is_some()).bind(address.flatten()).bind(now)
        .fetch_optional(&mut *c).await)
}

pub async fn delete(tx: &mut Tx, tenant_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM sites WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id).bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}
