//! Phone verification (SPEC §4): a 6-digit code by SMS, hashed at rest, 10-minute expiry, 5 attempts,
//! resends throttled; the right code sets `phone_verified`.

use axum::http::StatusCode;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Zone};
use crate::auth::secret_eq;
use crate::db::workers;
use crate::domain::ids::new_id;
use crate::domain::phone::Phone;
use crate::error::{ApiError, ApiResult};
use crate::outbox::{self, Outgoing};
use crate::state::AppState;
use crate::tenancy::Actor;
use crate::{on_db, on_tx};

pub const CODE_TTL_MS: i64 = 10 * 60 * 1000;
pub const MAX_ATTEMPTS: i64 = 5;
pub const MAX_SENDS: i64 = 5;
pub const RESEND_AFTER_MS: i64 = 60 * 1000;

fn hash(verification_id: &str, code: &str) -> String {
    hex::encode(Sha256::digest(format!("{verification_id}:{code}").as_bytes()))
}

#[derive(Debug, Serialize)]
pub struct Started {
    pub verification_id: String,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub expires_at: i64,
    pub message_id: String,
    pub sends: i64,
}

#[derive(sqlx::FromRow)]
struct Pending {
    id: String,
    phone: String,
    code_hash: String,
    sends: i64,
    last_sent_at: i64,
    expires_at: i64,
}

async fn pending(state: &AppState, tenant_id: &str, worker_id: &str, now: i64) -> Result<Option<Pending>, sqlx::Error> {
    on_db!(&state.db, p => sqlx::query_as(
        "SELECT id, phone, code_hash, sends, last_sent_at, expires_at FROM phone_verifications \
         WHERE tenant_id = $1 AND worker_id = $2 AND verified_at IS NULL AND expires_at > $3 ORDER BY created_at DESC LIMIT 1"
    ).bind(tenant_id).bind(worker_id).bind(now).fetch_optional(p).await)
}

pub async fn start(state: &AppState, tenant_id: &str, worker_id: &str, actor: &Actor) -> ApiResult<Started> {
    let now = state.now();
    crate::tenancy::ensure_writable_now(state, tenant_id).await?;
    let worker = workers::get(&state.db, tenant_id, worker_id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    if worker.phone_verified {
        return Err(ApiError::conflict("already_verified", "this worker's phone is already verified"));
    }
    // Transactional, so the alert consent flag does not apply; the phone owner's STOP does.
    if crate::db::sms::consent_block(&state.db, "verification", None, None, &worker.phone).await?.is_some() {
        return Err(ApiError::conflict(
            "opted_out",
            "this phone replied STOP (or the carrier reports it unsubscribed); the worker must text START first",
        ));
    }
    let existing = pending(state, tenant_id, worker_id, now).await?.filter(|p| p.phone == worker.phone);
    if let Some(p) = &existing {
        let wait = p.last_sent_at + RESEND_AFTER_MS - now;
        if wait > 0 {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "resend_too_soon",
                format!("a code was sent less than a minute ago; retry in {} s", (wait + 999) / 1000),
            )
            .with_retry_after(((wait + 999) / 1000) as u64));
        }
        if p.sends >= MAX_SENDS {
            let wait = (p.expires_at - now + 999) / 1000;
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_codes",
                format!("{MAX_SENDS} codes were already sent; retry after the current code expires (in {wait} s)"),
            )
            .with_retry_after(wait as u64));
        }
    }
    let phone =
        Phone::parse(&worker.phone).map_err(|e| ApiError::internal(anyhow::anyhow!("stored phone invalid: {e}")))?;
    let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000));
    let text = if worker.language == "en" {
        format!("C-Secur360: your verification code is {code}. It expires in 10 minutes.")
    } else {
        format!("C-Secur360 : votre code de vérification est {code}. Il expire dans 10 minutes.")
    };
    let expires_at = now + CODE_TTL_MS;
    let mut tx = state.db.begin().await?;
    let (id, sends) = match existing {
        Some(p) => {
            on_tx!(&mut tx, c => sqlx::query(
                "UPDATE phone_verifications SET code_hash = $2, attempts = 0, sends = sends + 1, last_sent_at = $3, expires_at = $4 WHERE id = $1"
            ).bind(&p.id).bind(hash(&p.id, &code)).bind(now).bind(expires_at).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            (p.id, p.sends + 1)
        }
        None => {
            let id = new_id("ver");
            on_tx!(&mut tx, c => sqlx::query(
                "INSERT INTO phone_verifications (id, tenant_id, worker_id, phone, code_hash, attempts, sends, last_sent_at, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 0, 1, $6, $7, $6)"
            ).bind(&id).bind(tenant_id).bind(worker_id).bind(&worker.phone).bind(hash(&id, &code)).bind(now).bind(expires_at)
            .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            (id, 1)
        }
    };
    let msg = Outgoing {
        kind: "verification",
        tenant_id: Some(tenant_id),
        worker_id: Some(worker_id),
        to: &phone,
        body: &text,
        priority: 5,
    };
    let message_id = outbox::enqueue(&mut tx, &msg, now).await?;
    let entry = actor
        .entry(Zone::Sms, "phone_verification_sent")
        .tenant(tenant_id)
        .subject(worker_id)
        .details(json!({ "phone": phone.masked(), "sends": sends }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(Started { verification_id: id, expires_at, message_id, sends })
}

pub async fn check(
    state: &AppState,
    tenant_id: &str,
    worker_id: &str,
    code: &str,
    actor: &Actor,
) -> ApiResult<workers::WorkerRow> {
    let now = state.now();
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::unprocessable("invalid_field", "code: enter the 6 digits received by SMS"));
    }
    crate::tenancy::ensure_writable_now(state, tenant_id).await?;
    let worker = workers::get(&state.db, tenant_id, worker_id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    let Some(p) = pending(state, tenant_id, worker_id, now).await? else {
        return Err(ApiError::new(
            StatusCode::GONE,
            "no_active_code",
            "no valid code: it expired or was never sent; start a new verification",
        ));
    };
    if p.phone != worker.phone {
        return Err(ApiError::new(
            StatusCode::GONE,
            "no_active_code",
            "the phone changed since the code was sent; start a new verification",
        ));
    }
    let too_many = || {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("{MAX_ATTEMPTS} wrong codes were entered; start a new verification after this code expires"),
        )
    };
    // Every check spends one attempt first, atomically, so parallel guesses cannot exceed the limit.
    let mut tx = state.db.begin().await?;
    let attempts: Option<i64> = on_tx!(&mut tx, c => sqlx::query_scalar(
        "UPDATE phone_verifications SET attempts = attempts + 1 \
         WHERE id = $1 AND attempts < $2 AND verified_at IS NULL AND expires_at > $3 RETURNING attempts"
    ).bind(&p.id).bind(MAX_ATTEMPTS).bind(now).fetch_optional(&mut *c).await)?;
    let Some(attempts) = attempts else {
        return Err(too_many());
    };
    if !secret_eq(&p.code_hash, &hash(&p.id, code)) {
        tx.commit().await?;
        let left = MAX_ATTEMPTS - attempts;
        return Err(ApiError::unprocessable("wrong_code", format!("the code is not correct; {left} attempt(s) left")));
    }
    on_tx!(&mut tx, c => sqlx::query("UPDATE phone_verifications SET verified_at = $2 WHERE id = $1 AND verified_at IS NULL")
        .bind(&p.id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let mut w =
        workers::get_in_tx(&mut tx, tenant_id, worker_id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    w.phone_verified = true;
    w.phone_verified_at = Some(now);
    w.updated_at = now;
    workers::save(&mut tx, &w).await?;
    let entry = actor.entry(Zone::Sms, "phone_verified").tenant(tenant_id).subject(worker_id);
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(w)
}
