//! Workers of a tenant and the consent ledger rows their changes write. Every query is tenant-bound.

use serde::Serialize;

use super::{Db, Tx};
use crate::{on_db, on_tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub tenant_id: String,
    pub site_id: Option<String>,
    pub name: String,
    pub phone: String,
    pub language: String,
    pub phone_verified: bool,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub phone_verified_at: Option<i64>,
    pub sms_consent: bool,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub sms_consent_at: Option<i64>,
    pub sms_consent_source: Option<String>,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub updated_at: i64,
}

const COLUMNS: &str = "id, tenant_id, site_id, name, phone, language, phone_verified, phone_verified_at, \
    sms_consent, sms_consent_at, sms_consent_source, created_at, updated_at";

pub async fn insert(tx: &mut Tx, w: &WorkerRow) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO workers (id, tenant_id, site_id, name, phone, language, phone_verified, phone_verified_at, \
         sms_consent, sms_consent_at, sms_consent_source, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
    .bind(&w.id).bind(&w.tenant_id).bind(&w.site_id).bind(&w.name).bind(&w.phone).bind(&w.language)
    .bind(w.phone_verified).bind(w.phone_verified_at).bind(w.sms_consent).bind(w.sms_consent_at)
    .bind(&w.sms_consent_source).bind(w.created_at).bind(w.updated_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Workers of a tenant, optionally only those of one site.
pub async fn list(db: &Db, tenant_id: &str, site_id: Option<&str>) -> Result<Vec<WorkerRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM workers WHERE tenant_id = $1 AND ($2 IS NULL OR site_id = $2) ORDER BY created_at, id"
    );
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).bind(site_id).fetch_all(p).await)
}

pub async fn get(db: &Db, tenant_id: &str, id: &str) -> Result<Option<WorkerRow>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM workers WHERE tenant_id = $1 AND id = $2");
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).bind(id).fetch_optional(p).await)
}

/// Read a worker to change it in this transaction: on PostgreSQL the row is locked (`FOR UPDATE`) so concurrent
/// read-modify-writes cannot undo each other; SQLite's `BEGIN IMMEDIATE` already serialises writers.
pub async fn get_in_tx(tx: &mut Tx, tenant_id: &str, id: &str) -> Result<Option<WorkerRow>, sqlx::Error> {
    let lock = if tx.backend() == super::Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {COLUMNS} FROM workers WHERE tenant_id = $1 AND id = $2{lock}");
    on_tx!(tx, c => sqlx::query_as(&sql).bind(tenant_id).bind(id).fetch_optional(&mut *c).await)
}

/// Write back every mutable field of `w` (read in the same transaction and changed by the caller).
pub async fn save(tx: &mut Tx, w: &WorkerRow) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "UPDATE workers SET site_id = $3, name = $4, phone = $5, language = $6, phone_verified = $7, \
         phone_verified_at = $8, sms_consent = $9, sms_consent_at = $10, sms_consent_source = $11, updated_at = $12 \
         WHERE tenant_id = $1 AND id = $2"
    )
    .bind(&w.tenant_id).bind(&w.id).bind(&w.site_id).bind(&w.name).bind(&w.phone).bind(&w.language)
    .bind(w.phone_verified).bind(w.phone_verified_at).bind(w.sms_consent).bind(w.sms_consent_at)
    .bind(&w.sms_consent_source).bind(w.updated_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn delete(tx: &mut Tx, tenant_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, c => sqlx::query("DELETE FROM workers WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id).bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// One consent-ledger entry (append-only).
pub struct ConsentEvent<'a> {
    pub tenant_id: Option<&'a str>,
    pub worker_id: Option<&'a str>,
    pub phone: &'a str,
    pub old_consent: Option<bool>,
    pub new_consent: bool,
    pub source: &'a str,
    pub evidence: &'a str,
    pub actor: &'a str,
    pub at: i64,
}

pub async fn insert_consent_event(tx: &mut Tx, e: &ConsentEvent<'_>) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO consent_events (tenant_id, worker_id, phone, old_consent, new_consent, source, evidence, actor, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    )
    .bind(e.tenant_id).bind(e.worker_id).bind(e.phone).bind(e.old_consent).bind(e.new_consent)
    .bind(e.source).bind(e.evidence).bind(e.actor).bind(e.at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ConsentEventRow {
    pub id: i64,
    pub old_consent: Option<bool>,
    pub new_consent: bool,
    pub source: String,
    pub evidence: String,
    pub actor: String,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
}

pub async fn consent_history(db: &Db, tenant_id: &str, worker_id: &str) -> Result<Vec<ConsentEventRow>, sqlx::Error> {
    on_db!(db, p => sqlx::query_as(
        "SELECT id, old_consent, new_consent, source, evidence, actor, created_at FROM consent_events \
         WHERE tenant_id = $1 AND worker_id = $2 ORDER BY id"
    ).bind(tenant_id).bind(worker_id).fetch_all(p).await)
}
