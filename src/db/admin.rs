//! Admin runbook page: server-side sessions (only the SHA-256 of the session token is stored) and the reads
//! the page shows (recent job runs, failed Stripe events, tenants).

use super::Db;
use crate::on_db;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub token_hash: String,
    pub csrf_token: String,
    pub language: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

const SESSION_COLUMNS: &str = "id, token_hash, csrf_token, language, created_at, last_seen_at, expires_at";

pub async fn insert_session(db: &Db, s: &SessionRow) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query(
        "INSERT INTO admin_sessions (id, token_hash, csrf_token, language, created_at, last_seen_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    .bind(&s.id).bind(&s.token_hash).bind(&s.csrf_token).bind(&s.language).bind(s.created_at)
    .bind(s.last_seen_at).bind(s.expires_at)
    .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// The live (not expired at `now`) session whose token hashes to `token_hash`.
pub async fn find_live_session(db: &Db, token_hash: &str, now: i64) -> Result<Option<SessionRow>, sqlx::Error> {
    let sql = format!("SELECT {SESSION_COLUMNS} FROM admin_sessions WHERE token_hash = $1 AND expires_at > $2");
    on_db!(db, p => sqlx::query_as(&sql).bind(token_hash).bind(now).fetch_optional(p).await)
}

/// Record activity at most once a minute per session.
pub async fn touch_session(db: &Db, id: &str, now: i64) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query("UPDATE admin_sessions SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $3")
        .bind(id).bind(now).bind(now - 60_000).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn set_session_language(db: &Db, id: &str, language: &str) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query("UPDATE admin_sessions SET language = $2 WHERE id = $1")
        .bind(id).bind(language).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

pub async fn delete_session(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let n = on_db!(db, p => sqlx::query("DELETE FROM admin_sessions WHERE id = $1")
        .bind(id).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Cleanup step: remove sessions expired before `now`.
pub async fn delete_expired_sessions(db: &Db, now: i64) -> Result<u64, sqlx::Error> {
    on_db!(db, p => sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
        .bind(now).execute(p).await.map(|r| r.rows_affected()))
}

pub async fn tenant_exists(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_db!(db, p => sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE id = $1")
        .bind(id).fetch_one(p).await)?;
    Ok(n > 0)
}

/// The processing status of a stored Stripe event, if we have it.
pub async fn billing_event_status(db: &Db, stripe_event_id: &str) -> Result<Option<String>, sqlx::Error> {
    on_db!(db, p => sqlx::query_scalar(
        "SELECT processing_status FROM billing_events WHERE stripe_event_id = $1"
    ).bind(stripe_event_id).fetch_optional(p).await)
}
