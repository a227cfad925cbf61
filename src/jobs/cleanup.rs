//! Weekly SMS cleanup (SPEC §4): retention steps, each independent and reported. The consent ledger is
//! never touched, and message rows stay (status, kind, segments) for the delivery metrics.

use crate::audit;
use crate::db::Db;
use crate::domain::phone::Phone;
use crate::jobs::JobReport;
use crate::on_db;
use crate::state::AppState;

const DAY_MS: i64 = 86_400_000;

/// Mask a stored number for retention; a value that does not parse is replaced entirely.
fn mask(phone: &str) -> String {
    Phone::mask_stored(phone).unwrap_or_else(|| "•••".to_owned())
}

async fn exec(db: &Db, sql: &str, binds: &[i64]) -> Result<u64, sqlx::Error> {
    on_db!(db, p => {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.execute(p).await.map(|r| r.rows_affected())
    })
}

/// Scrub the `phone_col` of rows older than `cutoff` in `table`, one row at a time (masking happens in Rust).
async fn scrub_numbers(
    db: &Db,
    table: &str,
    phone_col: &str,
    extra: &str,
    cutoff: i64,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let select = format!(
        "SELECT id, {phone_col} FROM {table} WHERE scrubbed_at IS NULL AND {} < $1 ORDER BY id LIMIT 500",
        if table == "voice_calls" { "created_at" } else { "received_at" }
    );
    let update = format!("UPDATE {table} SET {phone_col} = $2, {extra} scrubbed_at = $3 WHERE id = $1");
    let mut total = 0;
    loop {
        let rows: Vec<(String, String)> = on_db!(db, p => sqlx::query_as(&select).bind(cutoff).fetch_all(p).await)?;
        if rows.is_empty() {
            return Ok(total);
        }
        for (id, phone) in rows {
            total += on_db!(db, p => sqlx::query(&update).bind(&id).bind(mask(&phone)).bind(now)
                .execute(p).await.map(|r| r.rows_affected()))?;
        }
    }
}

pub async fn run(state: &AppState, now: i64) -> JobReport {
    let db = &state.db;
    let sms_cutoff = now - i64::from(state.settings.sms_retention_days) * DAY_MS;
    let audit_cutoff = now - i64::from(state.settings.audit_retention_days) * DAY_MS;
    let mut report = JobReport::default();

    let steps: [(&str, Result<u64, sqlx::Error>); 8] = [
        (
            "messages_scrubbed",
            exec(
                db,
                "UPDATE sms_messages SET body = NULL, to_phone = to_phone_masked, error_message = NULL, scrubbed_at = $2 \
                 WHERE created_at < $1 AND scrubbed_at IS NULL AND status NOT IN ('queued', 'sending')",
                &[sms_cutoff, now],
            )
            .await,
        ),
        (
            "alert_bodies_scrubbed",
            exec(
                db,
                "UPDATE sms_alerts SET body = NULL, body_scrubbed_at = $2 WHERE created_at < $1 AND body_scrubbed_at IS NULL",
                &[sms_cutoff, now],
            )
            .await,
        ),
        ("inbound_scrubbed", scrub_numbers(db, "sms_inbound", "from_phone", "body = NULL,", sms_cutoff, now).await),
        ("calls_scrubbed", scrub_numbers(db, "voice_calls", "from_phone", "", sms_cutoff, now).await),
        (
            "status_callbacks_deleted",
            exec(db, "DELETE FROM sms_status_events WHERE received_at < $1", &[sms_cutoff]).await,
        ),
        ("audit_rows_purged", audit::purge_before(db, audit_cutoff).await),
        (
            "sessions_deleted",
            crate::db::admin::delete_expired_sessions(db, now).await,
        ),
        (
            "verification_codes_deleted",
            exec(db, "DELETE FROM phone_verifications WHERE expires_at < $1", &[now]).await,
        ),
    ];
    for (name, result) in steps {
        match result {
            Ok(n) => report.count(name, n),
            Err(e) => report.error(name, e),
        }
    }
    match exec(db, "DELETE FROM rate_limits WHERE window_start < $1", &[now - 3_600_000]).await {
        Ok(n) => report.count("rate_windows_deleted", n),
        Err(e) => report.error("rate_windows_deleted", e),
    }
    report
}
