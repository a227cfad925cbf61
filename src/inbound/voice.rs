//! Voice (SPEC §5): greet in French then English and forward to `OWNER_MOBILE`; when nobody answers, invite
//! the caller to text and tell the owner by SMS (through the queue). Every call is recorded.

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::call_log::Call;
use crate::audit::{self, Entry, Zone};
use crate::config::Settings;
use crate::db::voice::NewCall;
use crate::domain::ids::new_id;
use crate::domain::twiml::{self, Verb};
use crate::error::ApiResult;
use crate::http::twilio_webhook::TwilioForm;
use crate::on_tx;
use crate::outbox::{self, Outgoing};
use crate::state::AppState;

pub const DIAL_TIMEOUT_SECS: u32 = 25;

const GREETING_FR: &str = "Bonjour, vous avez joint C-Secur360. Veuillez patienter, nous transférons votre appel.";
const GREETING_EN: &str = "Hello, you have reached C-Secur360. Please hold while we transfer your call.";
const SORRY_FR: &str =
    "Désolé, personne ne peut prendre votre appel pour le moment. Envoyez-nous plutôt un texto à ce numéro.";
const SORRY_EN: &str =
    "Sorry, nobody can take your call right now. Please send us a text message at this number instead.";
const MISSED_FR: &str = "Nous n'avons pas pu répondre. Envoyez-nous un texto à ce numéro et nous vous rappellerons.";
const MISSED_EN: &str = "We could not answer. Please text this number and we will call you back.";

/// `POST /api/voice/inbound`: the TwiML at once ([`inbound_answer`], rendered once at start-up from the
/// configuration); the call is handed to the call log, which records it (and audits a new one) off the answer
/// path (`call_log`: a database outage does not stop calls being put through; `dial-status` records the call
/// durably when the `<Dial>` ends).
pub async fn inbound(state: &AppState, form: &TwilioForm) -> ApiResult<Bytes> {
    let sid = form.require("CallSid")?.to_owned();
    state
        .call_log
        .record(Call {
            call: NewCall {
                sid,
                from: form.get("From").unwrap_or_default().to_owned(),
                to: form.get("To").unwrap_or_default().to_owned(),
                status: form.get("CallStatus").unwrap_or("ringing").to_owned(),
                at: state.now(),
            },
            forwarded: state.settings.owner_mobile.is_some(),
        })
        .await;
    Ok(state.voice_answer.clone())
}

/// The answer to every inbound call: greet in French then English and `<Dial>` `OWNER_MOBILE` with the absolute
/// `dial-status` action; without an owner number, an apology and hang up.
pub fn inbound_answer(settings: &Settings) -> String {
    match &settings.owner_mobile {
        Some(owner) => twiml::response(&[
            Verb::Say { language: "fr-CA", text: GREETING_FR },
            Verb::Say { language: "en-CA", text: GREETING_EN },
            Verb::Dial {
                number: owner.as_str(),
                timeout_secs: DIAL_TIMEOUT_SECS,
                action: &settings.absolute_url("/api/voice/dial-status"),
            },
        ]),
        None => twiml::response(&[
            Verb::Say { language: "fr-CA", text: SORRY_FR },
            Verb::Say { language: "en-CA", text: SORRY_EN },
            Verb::Hangup,
        ]),
    }
}

/// `POST /api/voice/dial-status`: the outcome of the `<Dial>`.
pub async fn dial_status(state: &AppState, form: &TwilioForm) -> ApiResult<String> {
    let sid = form.require("CallSid")?.to_owned();
    let dial_status = form.get("DialCallStatus").unwrap_or("failed").to_owned();
    let duration: Option<i64> = form.get("DialCallDuration").and_then(|d| d.parse().ok());
    let from = form.get("From").unwrap_or_default().to_owned();
    let to = form.get("To").unwrap_or_default().to_owned();
    let missed = matches!(dial_status.as_str(), "no-answer" | "busy" | "failed" | "canceled");
    let now = state.now();

    let mut tx = state.db.begin().await?;
    // The call may be unknown if the first webhook was lost: record it now.
    on_tx!(&mut tx, c => sqlx::query(
        "INSERT INTO voice_calls (id, twilio_call_sid, from_phone, to_phone, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'in-progress', $5, $5) ON CONFLICT (twilio_call_sid) DO NOTHING"
    ).bind(new_id("call")).bind(&sid).bind(&from).bind(&to).bind(now)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let (caller, notified): (String, Option<String>) = on_tx!(&mut tx, c => sqlx::query_as(
        "SELECT from_phone, notified_message_id FROM voice_calls WHERE twilio_call_sid = $1"
    ).bind(&sid).fetch_one(&mut *c).await)?;
    on_tx!(&mut tx, c => sqlx::query(
        "UPDATE voice_calls SET dial_status = $2, dial_duration = $3, status = 'completed', updated_at = $4 WHERE twilio_call_sid = $1"
    ).bind(&sid).bind(&dial_status).bind(duration).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;

    // One missed-call SMS per call, even when Twilio retries this webhook.
    let mut notified_now = false;
    if missed && notified.is_none() {
        if let Some(owner) = &state.settings.owner_mobile {
            let local = DateTime::<Utc>::from_timestamp_millis(now)
                .map(|t| t.with_timezone(&state.settings.cron_tz).format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default();
            let text = format!("Appel manqué de {caller} le {local} ({dial_status}).");
            let msg =
                Outgoing { kind: "missed_call", tenant_id: None, worker_id: None, to: owner, body: &text, priority: 5 };
            let msg_id = outbox::enqueue(&mut tx, &msg, now).await?;
            // Guarded: a concurrent retry that got here first wins, and this transaction rolls back its message.
            let claimed = on_tx!(&mut tx, c => sqlx::query(
                "UPDATE voice_calls SET notified_message_id = $2 WHERE twilio_call_sid = $1 AND notified_message_id IS NULL"
            ).bind(&sid).bind(&msg_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            if claimed == 0 {
                return Ok(twiml::response(&[
                    Verb::Say { language: "fr-CA", text: MISSED_FR },
                    Verb::Say { language: "en-CA", text: MISSED_EN },
                    Verb::Hangup,
                ]));
            }
            notified_now = true;
        }
    }
    let entry = Entry::new(Zone::Voice, "dial_status", "twilio").subject(&sid).details(json!({
        "dial_status": dial_status, "duration": duration, "owner_notified": notified_now || notified.is_some(),
    }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;

    Ok(if missed {
        twiml::response(&[
            Verb::Say { language: "fr-CA", text: MISSED_FR },
            Verb::Say { language: "en-CA", text: MISSED_EN },
            Verb::Hangup,
        ])
    } else {
        twiml::response(&[Verb::Hangup])
    })
}
