//! Intake of Stripe webhooks: verify the signature over the raw body, store the event once, apply it (a new
//! event in one commit with its audit row, shared with the other new events of its batch; see
//! [`super::ingest`]).

use serde_json::Value;

use super::events::{self, Event, NewEvent, Processed};
use crate::db::billing as store;
use crate::domain::stripe_signature::{self, StripeSignatureError, DEFAULT_TOLERANCE_SECS};
use crate::error::ApiError;
use crate::state::AppState;

/// What the endpoint answers (Stripe retries anything but 2xx).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    pub received: bool,
    pub event_id: String,
    /// `true` when this delivery had no effect because the event was already stored and applied (or is being
    /// applied by a concurrent delivery).
    pub duplicate: bool,
    pub status: &'static str,
}

/// Verify, store, apply. Errors: 503 when no secret is configured (fail closed), 400 for a missing/bad signature
/// or a malformed event (nothing stored), 500 when applying failed (recorded as `failed`, retried later), 503 when
/// the ingest workers are saturated or stopped (nothing stored; Stripe retries).
pub async fn receive(state: &AppState, signature: Option<&str>, body: &[u8]) -> Result<Receipt, ApiError> {
    let secrets: Vec<&str> = state.settings.stripe.webhook_secrets.iter().map(|s| s.expose()).collect();
    if secrets.is_empty() {
        return Err(ApiError::unavailable(
            "webhook_not_configured",
            "Stripe webhooks are refused: STRIPE_WEBHOOK_SECRET is not configured",
        ));
    }
    let now = state.now();
    let header = signature.unwrap_or("");
    if let Err(e) = stripe_signature::verify(header, body, &secrets, now.div_euclid(1000), DEFAULT_TOLERANCE_SECS) {
        let code = match e {
            StripeSignatureError::MissingHeader => "missing_signature",
            _ => "invalid_signature",
        };
        tracing::warn!(error = %e, "Stripe webhook refused");
        return Err(ApiError::bad_request(code, format!("{e}; nothing was recorded")));
    }
    // Signed by Stripe: from here the request works in the Stripe system context (row-level security).
    crate::db::scope::enter(crate::db::scope::Scope::System("stripe-webhook"));
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("malformed_event", format!("the event is not valid JSON: {e}")))?;
    let ev = Event::parse(&value).map_err(|e| ApiError::bad_request("malformed_event", e))?;
    let payload = String::from_utf8_lossy(body);
    let mut row = ev.row(&payload, "webhook", now);
    if !ev.is_handled() {
        row.processing_status = "ignored".into();
        row.processed_at = Some(now);
    }
    if !ev.is_handled() {
        let inserted = store::insert_event(&state.db, &row).await?;
        return Ok(Receipt { received: true, event_id: ev.id, duplicate: !inserted, status: "ignored" });
    }
    // Network reads first, outside any transaction; then the event joins a batch (one commit for many events).
    match events::prefetch(state, &ev).await {
        Ok(pre) => {
            let new = NewEvent { ev: ev.clone(), row: row.clone(), pre, now };
            if let Some(status) = state.stripe_ingest.submit(new).await? {
                return Ok(Receipt { received: true, event_id: ev.id, duplicate: false, status });
            }
        }
        Err(e) => {
            tracing::debug!(event_id = %ev.id, error = %format!("{e:#}"), "prefetch failed; taking the stored path")
        }
    }
    // Already stored (a redelivery), or applying it in its batch failed: store it (once) and take the stored
    // path, which claims it, applies it or records the failure for the retries.
    store::insert_event(&state.db, &row).await?;
    match events::process(state, &ev.id, now).await {
        Ok(Processed::Done) => Ok(Receipt { received: true, event_id: ev.id, duplicate: false, status: "processed" }),
        // A redelivery (or a resend from the dashboard) of an event that still fails more than 72 h after its
        // receipt: given up now, settled; acknowledged so Stripe stops.
        Ok(Processed::GivenUp) => Ok(Receipt { received: true, event_id: ev.id, duplicate: true, status: "ignored" }),
        Ok(Processed::NotMine) => {
            let status = store::event(&state.db, &ev.id).await?.map(|r| r.processing_status);
            let status = match status.as_deref() {
                Some("processed") => "processed",
                Some("ignored") => "ignored",
                _ => "processing",
            };
            Ok(Receipt { received: true, event_id: ev.id, duplicate: true, status })
        }
        Err(e) => {
            let mut err = ApiError::internal(e.context(format!("applying Stripe event {}", ev.id)));
            err.code = "event_processing_failed";
            err.message = "the event was stored but could not be applied; it will be retried".into();
            Err(err)
        }
    }
}
