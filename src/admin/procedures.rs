//! The runbook's procedures as plain functions, called by the admin page's POST handlers.
//!
//! Each returns the message shown to the operator (and stored in the audit row): `Ok` when the work happened,
//! `Err` when it did not — never a success that did not happen.

use crate::db::admin as store;
use crate::domain::phone::Phone;
use crate::jobs::{self, Job, RunStatus, StartError, Trigger};
use crate::state::AppState;

pub type ProcedureResult = Result<String, String>;

fn db_error(e: sqlx::Error) -> String {
    tracing::error!(error = %e, "admin procedure: database error");
    "base de données indisponible / database unavailable".to_owned()
}

/// « Envoyer un SMS de test »: one message to `to` through the normal SMS pipeline.
/// Wire to the SMS service (same path as `POST /api/send-sms`).
pub async fn send_test_sms(state: &AppState, to: &Phone, body: &str) -> ProcedureResult {
    let actor = crate::tenancy::Actor::new("admin", None);
    let request = serde_json::json!({ "to": to.as_str(), "body": body });
    match crate::sms::alerts::send_test(state, request, None, &actor).await {
        Err(e) => Err(e.message),
        Ok(answer) => {
            let provider = answer["provider"].as_str().unwrap_or("?");
            let id = answer["message_id"].as_str().unwrap_or("?");
            let status = answer["status"].as_str().unwrap_or("?");
            if status != "queued" {
                return Err(format!("message {id} not queued ({status}) / non mis en file"));
            }
            let simulated =
                if provider == "simulated" { " — SIMULÉ : aucun SMS réel / SIMULATED: nothing sent" } else { "" };
            Ok(format!("message {id} en file d'attente / queued ({} segment(s)){simulated}", answer["segments"]))
        }
    }
}

/// One run of `job` with trigger `admin`: a success only when every step succeeded.
async fn run_job(state: &AppState, job: Job) -> ProcedureResult {
    match jobs::run(state, job, Trigger::Admin, None, "admin").await {
        Ok(r) if r.status == RunStatus::Succeeded => {
            let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok(format!("{} {} ({})", job.as_str(), r.run_id, counts.join(", ")))
        }
        Ok(r) => Err(format!("{} {} : {:?} — {}", job.as_str(), r.run_id, r.status, r.errors.join("; "))),
        Err(StartError::Db(e)) => Err(db_error(e)),
        Err(e) => Err(e.to_string()),
    }
}

/// « Lancer la synchro de facturation »: one run of the billing sync job (trigger `admin`).
pub async fn run_billing_sync(state: &AppState) -> ProcedureResult {
    run_job(state, Job::BillingSync).await
}

/// « Lancer le nettoyage SMS »: one run of the cleanup job (trigger `admin`).
pub async fn run_sms_cleanup(state: &AppState) -> ProcedureResult {
    run_job(state, Job::SmsCleanup).await
}

/// « Resynchroniser un client »: re-fetch one tenant's customer, subscription and invoices from Stripe.
pub async fn resync_tenant(state: &AppState, tenant_id: &str) -> ProcedureResult {
    if !store::tenant_exists(&state.db, tenant_id).await.map_err(db_error)? {
        return Err(format!("client inconnu / unknown tenant: {tenant_id}"));
    }
    let r = crate::billing::sync::resync_tenant(state, tenant_id, state.now()).await;
    let summary = format!(
        "{} abonnement(s), {} facture(s), {} correction(s)",
        r.subscriptions_seen, r.invoices_seen, r.corrected
    );
    if r.ok {
        Ok(format!("{tenant_id} resynchronisé / resynced: {summary}"))
    } else {
        Err(format!("{tenant_id}: {summary}; {}", r.errors.join("; ")))
    }
}

/// « Rejouer un événement Stripe en échec »: apply a stored event whose processing failed, again.
pub async fn replay_stripe_event(state: &AppState, event_id: &str) -> ProcedureResult {
    match store::billing_event_status(&state.db, event_id).await.map_err(db_error)? {
        None => Err(format!("événement inconnu / unknown event: {event_id}")),
        Some(s) if s != "failed" => {
            Err(format!("l'événement n'est pas en échec (état {s}) / the event has not failed (status {s})"))
        }
        Some(_) => match crate::billing::events::process(state, event_id, state.now()).await {
            Ok(crate::billing::events::Processed::Done) => Ok(format!("événement rejoué / event replayed: {event_id}")),
            Ok(crate::billing::events::Processed::GivenUp) => Err(format!(
                "échec, abandonné (reçu il y a plus de 72 h) / failed again and given up (received more than 72 h \
                 ago): {event_id}"
            )),
            Ok(_) => {
                Err(format!("l'événement est déjà traité par une autre instance / already being processed: {event_id}"))
            }
            Err(e) => Err(format!("échec / failed again: {e:#}")),
        },
    }
}
