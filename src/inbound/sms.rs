//! Inbound SMS (SPEC §4): store once per `MessageSid`, apply STOP/START in every tenant with a ledger row per
//! change, answer HELP, and forward anything else to `OWNER_MOBILE` through the queue — never dropped.

use serde_json::json;

use crate::audit::{self, Entry, Zone};
use crate::config::KeywordReplies;
use crate::db::workers::{self, ConsentEvent};
use crate::db::Tx;
use crate::domain::ids::new_id;
use crate::domain::keywords::{classify, Keyword, KeywordKind, Language};
use crate::domain::phone::Phone;
use crate::domain::twiml::{self, Verb};
use crate::error::ApiResult;
use crate::http::twilio_webhook::TwilioForm;
use crate::outbox::{self, Outgoing};
use crate::state::AppState;
use crate::{on_db, on_tx};

/// A forwarded message is cut to this many segments; the full text stays on the admin page.
pub const FORWARD_MAX_SEGMENTS: u32 = 4;
pub const FORWARD_CUT_MARKER: &str = " […] (texte complet sur la page admin)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyLanguage {
    Fr,
    En,
    /// Unknown sender: French then English.
    Both,
}

fn contact(state: &AppState) -> Option<String> {
    state.settings.public_contact_number.as_ref().map(|p| p.to_string())
}

fn reply_text(kind: KeywordKind, lang: Language, contact: Option<&str>) -> String {
    let (fr_help, en_help) = match contact {
        Some(c) => (format!(" Aide : {c}"), format!(" Help: {c}")),
        None => (String::new(), String::new()),
    };
    match (kind, lang) {
        (KeywordKind::OptOut, Language::Fr) => {
            format!("C-Secur360 : vous ne recevrez plus d'alertes SMS. Répondez START pour les réactiver.{fr_help}")
        }
        (KeywordKind::OptOut, Language::En) => {
            format!("C-Secur360: you will no longer receive SMS alerts. Reply START to resume.{en_help}")
        }
        (KeywordKind::OptIn, Language::Fr) => {
            format!("C-Secur360 : alertes SMS réactivées. Répondez ARRET pour vous désabonner.{fr_help}")
        }
        (KeywordKind::OptIn, Language::En) => {
            format!("C-Secur360: SMS alerts resumed. Reply STOP to unsubscribe.{en_help}")
        }
        (KeywordKind::Help, Language::Fr) => {
            format!("C-Secur360 : alertes de sécurité au travail.{fr_help} Répondez ARRET pour vous désabonner.")
        }
        (KeywordKind::Help, Language::En) => {
            format!("C-Secur360: workplace safety alerts.{en_help} Reply STOP to unsubscribe.")
        }
    }
}

fn reply(kind: KeywordKind, lang: ReplyLanguage, contact: Option<&str>) -> String {
    match lang {
        ReplyLanguage::Fr => reply_text(kind, Language::Fr, contact),
        ReplyLanguage::En => reply_text(kind, Language::En, contact),
        ReplyLanguage::Both => {
            format!("{} / {}", reply_text(kind, Language::Fr, contact), reply_text(kind, Language::En, contact))
        }
    }
}

/// Languages of the workers with this phone, in creation order (any tenant).
async fn worker_language(state: &AppState, phone: &str) -> Result<Option<String>, sqlx::Error> {
    on_db!(&state.db, p => sqlx::query_scalar(
        "SELECT language FROM workers WHERE phone = $1 ORDER BY created_at, id LIMIT 1"
    ).bind(phone).fetch_optional(p).await)
}

async fn reply_language(
    state: &AppState,
    keyword: &Keyword,
    phone: Option<&Phone>,
) -> Result<ReplyLanguage, sqlx::Error> {
    if keyword.language == Some(Language::Fr) {
        return Ok(ReplyLanguage::Fr);
    }
    let Some(phone) = phone else { return Ok(ReplyLanguage::Both) };
    Ok(match worker_language(state, phone.as_str()).await?.as_deref() {
        Some("en") => ReplyLanguage::En,
        Some(_) => ReplyLanguage::Fr,
        None => ReplyLanguage::Both,
    })
}

/// Consent for `phone` in every tenant: one ledger row per worker whose consent changes, or one phone-level row
/// when none changes (so later messages to the number follow it). Returns the number of worker changes.
async fn apply_consent(
    tx: &mut Tx,
    phone: &Phone,
    consent: bool,
    evidence: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let rows: Vec<(String, String, bool, Option<String>)> = on_tx!(tx, c => sqlx::query_as(
        "SELECT tenant_id, id, sms_consent, sms_consent_source FROM workers WHERE phone = $1 ORDER BY tenant_id, id"
    ).bind(phone.as_str()).fetch_all(&mut *c).await)?;
    let actor = "sms_keyword";
    let mut changed = 0;
    for (tenant_id, worker_id, old, source) in rows {
        // START restores what STOP (or the carrier) withdrew; it does not grant consent a tenant never had or
        // withdrew itself (the phone-level row below still lifts the owner's own block).
        let withdrawn_by_owner = matches!(source.as_deref(), Some("keyword" | "carrier_21610"));
        if old == consent || (consent && !withdrawn_by_owner) {
            continue;
        }
        on_tx!(tx, c => sqlx::query(
            "UPDATE workers SET sms_consent = $3, sms_consent_at = $4, sms_consent_source = 'keyword', updated_at = $4 \
             WHERE tenant_id = $1 AND id = $2"
        ).bind(&tenant_id).bind(&worker_id).bind(consent).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        let ev = ConsentEvent {
            tenant_id: Some(&tenant_id),
            worker_id: Some(&worker_id),
            phone: phone.as_str(),
            old_consent: Some(old),
            new_consent: consent,
            source: "keyword",
            evidence,
            actor,
            at: now,
        };
        workers::insert_consent_event(tx, &ev).await?;
        let entry =
            Entry::new(Zone::Sms, "consent_change", actor).tenant(&tenant_id).subject(&worker_id).details(json!({
                "new_consent": consent, "source": "keyword", "phone": phone.masked(),
            }));
        audit::append(tx, &entry, now).await?;
        changed += 1;
    }
    if changed == 0 {
        // No worker's flag changed (unknown number, or already in that state): the decision is still the
        // phone owner's and is recorded at phone level, so it governs every later message to this number.
        let ev = ConsentEvent {
            tenant_id: None,
            worker_id: None,
            phone: phone.as_str(),
            old_consent: None,
            new_consent: consent,
            source: "keyword",
            evidence,
            actor,
            at: now,
        };
        workers::insert_consent_event(tx, &ev).await?;
    }
    Ok(changed)
}

/// Handle one signed inbound SMS and return the TwiML answer.
pub async fn handle(state: &AppState, form: &TwilioForm) -> ApiResult<String> {
    let sid = form.require("MessageSid")?.to_owned();
    let from_raw = form.require("From")?.to_owned();
    let to = form.get("To").unwrap_or_default().to_owned();
    let body = form.get("Body").unwrap_or_default().to_owned();
    let from = Phone::parse(&from_raw).ok();
    let keyword = classify(&body);
    let now = state.now();

    let mut tx = state.db.begin().await?;
    let id = new_id("in");
    let inserted = on_tx!(&mut tx, c => sqlx::query(
        "INSERT INTO sms_inbound (id, twilio_message_sid, from_phone, to_phone, body, keyword, keyword_kind, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (twilio_message_sid) DO NOTHING"
    )
    .bind(&id).bind(&sid).bind(from.as_ref().map_or(from_raw.as_str(), |p| p.as_str())).bind(&to).bind(&body)
    .bind(keyword.map(|k| k.word))
    .bind(keyword.map(|k| match k.kind { KeywordKind::OptOut => "opt_out", KeywordKind::OptIn => "opt_in", KeywordKind::Help => "help" }))
    .bind(now)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;

    // A redelivery (same MessageSid) has no second effect; it gets the same answer.
    let first_delivery = inserted == 1;
    let mut forwarded = false;
    let mut consent_changes = 0;
    if first_delivery {
        match (keyword.map(|k| k.kind), &from) {
            (Some(k @ (KeywordKind::OptOut | KeywordKind::OptIn)), Some(phone)) => {
                let evidence = format!("SMS {sid}: {}", keyword.map_or("", |k| k.word));
                consent_changes = apply_consent(&mut tx, phone, k == KeywordKind::OptIn, &evidence, now).await?;
            }
            (Some(_), _) => {}
            (None, _) => {
                if let Some(owner) = &state.settings.owner_mobile {
                    let text =
                        outbox::fit(&format!("SMS de {from_raw}: {body}"), FORWARD_MAX_SEGMENTS, FORWARD_CUT_MARKER);
                    let msg = Outgoing {
                        kind: "forward",
                        tenant_id: None,
                        worker_id: None,
                        to: owner,
                        body: &text,
                        priority: 5,
                    };
                    let msg_id = outbox::enqueue(&mut tx, &msg, now).await?;
                    on_tx!(&mut tx, c => sqlx::query("UPDATE sms_inbound SET forwarded_message_id = $2 WHERE id = $1")
                        .bind(&id).bind(&msg_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
                    forwarded = true;
                }
            }
        }
        let masked = from.as_ref().map_or_else(|| "non-numeric sender".to_owned(), |p| p.masked());
        let entry = Entry::new(Zone::Twilio, "inbound", "twilio").subject(&sid).details(json!({
            "from": masked,
            "keyword": keyword.map(|k| k.word),
            "consent_changes": consent_changes,
            "forwarded": forwarded,
            "not_forwarded_reason": (keyword.is_none() && !forwarded).then_some("OWNER_MOBILE is not configured"),
        }));
        audit::append(&mut tx, &entry, now).await?;
    }
    tx.commit().await?;

    let verbs = match keyword {
        Some(k) if state.settings.keyword_replies == KeywordReplies::Service => {
            let lang = reply_language(state, &k, from.as_ref()).await?;
            vec![reply(k.kind, lang, contact(state).as_deref())]
        }
        _ => Vec::new(),
    };
    let verbs: Vec<Verb<'_>> = verbs.iter().map(|t| Verb::Message(t)).collect();
    Ok(twiml::response(&verbs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::sms_segments::analyze;

    #[test]
    fn single_language_replies_fit_one_segment_with_the_contact_number() {
        for kind in [KeywordKind::OptOut, KeywordKind::OptIn, KeywordKind::Help] {
            for lang in [Language::Fr, Language::En] {
                let text = reply_text(kind, lang, Some("+15148732015"));
                assert_eq!(analyze(&text).segments, 1, "{text}");
                assert!(text.contains("+15148732015"));
            }
        }
    }

    #[test]
    fn an_unknown_sender_gets_french_first_then_english() {
        let text = reply(KeywordKind::OptOut, ReplyLanguage::Both, None);
        let (fr, en) = text.split_once(" / ").unwrap();
        assert!(fr.contains("vous ne recevrez plus") && en.contains("no longer receive"));
    }
}
