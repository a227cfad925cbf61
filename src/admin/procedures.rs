//! The runbook's procedures as plain functions, called by the admin page's POST handlers.
//!
//! Each returns the message shown to the operator (and stored in the audit row): `Ok` when the work happened,
//! `Err` when it did not. SMS, billing and cleanup are built in parallel; until they are wired here, those
//! procedures validate what they can and answer [`NOT_AVAILABLE`] — never a success that did not happen.

use crate::db::admin as store;
use crate::domain::phone::Phone;
use crate::state::AppState;

pub const NOT_AVAILABLE: &str = "pas encore disponible / not available yet";

pub type ProcedureResult = Result<String, String>;

fn db_error(e: sqlx::Error) -> String {
    tracing::error!(error = %e, "admin procedure: database error");
    "base de données indisponible / database unavailable".to_owned()
}

/// « Envoyer un SMS de test »: one message to `to` through the normal SMS pipeline.
/// Wire to the SMS service (same path as `POST /api/send-sms`).
pub async fn send_test_sms(_state: &AppState, _to: &Phone, _body: &str) -> ProcedureResult {
    Err(NOT_AVAILABLE.to_owned())
}

/// « Lancer la synchro de facturation »: one run of the billing sync job (trigger `admin`).
pub async fn run_billing_sync(_state: &AppState) -> ProcedureResult {
    Err(NOT_AVAILABLE.to_owned())
}

/// « Lancer le nettoyage SMS »: one run of the cleanup job (trigger `admin`).
pub async fn run_sms_cleanup(_state: &AppState) -> ProcedureResult {
    Err(NOT_AVAILABLE.to_owned())
}

/// « Resynchroniser un client »: re-fetch one tenant's customer, subscription and invoices from Stripe.
pub async fn resync_tenant(state: &AppState, tenant_id: &str) -> ProcedureResult {
    if !store::tenant_exists(&state.db, tenant_id).await.map_err(db_error)? {
        return Err(format!("client inconnu / unknown tenant: {tenant_id}"));
    }
    Err(NOT_AVAILABLE.to_owned())
}

/// « Rejouer un événement Stripe en échec »: apply a stored event whose processing failed, again.
pub async fn replay_stripe_event(state: &AppState, event_id: &str) -> ProcedureResult {
    match store::billing_event_status(&state.db, event_id).await.map_err(db_error)? {
        None => Err(format!("événement inconnu / unknown event: {event_id}")),
        Some(s) if s != "failed" => {
            Err(format!("l'événement n'est pas en échec (état {s}) / the event has not failed (status {s})"))
        }
        Some(_) => Err(NOT_AVAILABLE.to_owned()),
    }
}
