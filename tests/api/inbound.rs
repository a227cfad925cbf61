//! Inbound SMS keywords, consent ledger, forwarding, voice forwarding, paper consent and phone verification.

use reqwest::{Method, StatusCode};
use secur360::domain::twilio_signature;
use serde_json::json;

use crate::helpers::*;

pub const APP_URL: &str = "https://c-secur360.ca";
pub const TOKEN: &str = "twilio-primary-token-0123456789";
pub const SECONDARY: &str = "twilio-secondary-token-0123456789";
pub const OWNER: &str = "+14384031234";
pub const CONTACT: &str = "+15148739999";

pub fn twilio_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("APP_URL", APP_URL),
        ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("TWILIO_AUTH_TOKEN_SECONDARY", SECONDARY),
        ("TWILIO_PHONE_NUMBER", CONTACT),
        // Nothing listens here: no test in this file sends anything.
        ("TWILIO_API_BASE", "http://127.0.0.1:9"),
        ("OWNER_MOBILE", OWNER),
        ("PUBLIC_CONTACT_NUMBER", CONTACT),
    ]
}

pub async fn app_with(backend: Backend, extra: &[(&'static str, &'static str)]) -> TestApp {
    let mut vars = twilio_vars();
    vars.extend_from_slice(extra);
    spawn_app_with(backend, &vars).await
}

/// POST a form signed as Twilio would sign it for `APP_URL + path`.
pub async fn twilio_post(
    app: &TestApp,
    path: &str,
    params: &[(&str, &str)],
    token: Option<&str>,
) -> (StatusCode, String) {
    let pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut rb = app.request(Method::POST, path, None).form(&pairs);
    if let Some(t) = token {
        rb = rb.header("x-twilio-signature", twilio_signature::compute(&format!("{APP_URL}{path}"), &pairs, t));
    }
    let res = rb.send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

pub fn messages_in(twiml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(twiml).unwrap_or_else(|e| panic!("not XML ({e}): {twiml}"));
    assert_eq!(doc.root_element().tag_name().name(), "Response");
    doc.descendants().filter(|n| n.has_tag_name("Message")).map(|n| n.text().unwrap_or_default().to_owned()).collect()
}

async fn sms(app: &TestApp, sid: &str, from: &str, body: &str) -> (StatusCode, String) {
    twilio_post(
        app,
        "/api/sms/inbound",
        &[("MessageSid", sid), ("From", from), ("To", CONTACT), ("Body", body)],
        Some(TOKEN),
    )
    .await
}

async fn worker(app: &TestApp, key: &str, phone: &str, language: &str) -> String {
    let (s, w) = app
        .send(
            Method::POST,
            "/api/workers",
            Some(key),
            Some(json!({
                "name": "Jean", "phone": phone, "language": language, "sms_consent": true
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    w["id"].as_str().unwrap().to_owned()
}

async fn consent_of(app: &TestApp, key: &str, id: &str) -> bool {
    let (_, w) = app.send(Method::GET, &format!("/api/workers/{id}"), Some(key), None).await;
    w["sms_consent"].as_bool().unwrap()
}

async fn keyword_story(backend: Backend) {
    let app = app_with(backend, &[]).await;
    let a = app.tenant_with_key("acme").await;
    let b = app.tenant_with_key("other").await;
    let wa = worker(&app, &a, "514 873 2015", "fr").await;
    let wb = worker(&app, &b, "514 873 2015", "en").await;
    let ledger_before = app.count("consent_events").await;

    let (s, twiml) = sms(&app, "SM0001", "+15148732015", " stop! ").await;
    assert_eq!(s, StatusCode::OK, "{twiml}");
    let replies = messages_in(&twiml);
    assert_eq!(replies.len(), 1);
    assert!(replies[0].contains("vous ne recevrez plus") && replies[0].contains(CONTACT), "{replies:?}");
    assert!(!consent_of(&app, &a, &wa).await && !consent_of(&app, &b, &wb).await);
    assert_eq!(app.count("consent_events").await, ledger_before + 2);
    let (_, h) = app.send(Method::GET, &format!("/api/workers/{wa}/consent"), Some(&a), None).await;
    let last = h["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["source"].as_str(), last["old_consent"].as_bool(), last["new_consent"].as_bool()),
        (Some("keyword"), Some(true), Some(false))
    );
    assert!(last["evidence"].as_str().unwrap().contains("SM0001"));

    // Twilio redelivers the same message: same answer, no second effect.
    let (s, again) = sms(&app, "SM0001", "+15148732015", " stop! ").await;
    assert_eq!((s, messages_in(&again)), (StatusCode::OK, replies));
    assert_eq!(app.count("consent_events").await, ledger_before + 2);
    assert_eq!(app.count("sms_inbound").await, 1);

    // START restores consent everywhere; the reply follows the worker's language (first registered: fr).
    let (_, twiml) = sms(&app, "SM0002", "+15148732015", "Start").await;
    assert!(messages_in(&twiml)[0].contains("réactivées"));
    assert!(consent_of(&app, &a, &wa).await && consent_of(&app, &b, &wb).await);

    // A French keyword always answers in French.
    let (_, twiml) = sms(&app, "SM0003", "+15148732015", "«Arrêt»").await;
    assert!(messages_in(&twiml)[0].starts_with("C-Secur360 : vous"));

    // HELP changes nothing and quotes the public number.
    let before = app.count("consent_events").await;
    let (_, twiml) = sms(&app, "SM0004", "+15148732015", "aide").await;
    assert!(messages_in(&twiml)[0].contains(CONTACT));
    assert_eq!(app.count("consent_events").await, before);

    // Inbound audit rows never carry the body or the full number.
    let (_, audit) = app.operator(Method::GET, "/api/audit?action=inbound", None).await;
    let text = audit.to_string();
    assert!(!text.contains("+15148732015") && !text.contains("stop!"));
    assert_eq!(audit["entries"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn stop_and_start_change_consent_in_every_tenant_once_on_sqlite() {
    keyword_story(Backend::Sqlite).await;
}

#[tokio::test]
async fn stop_and_start_change_consent_in_every_tenant_once_on_postgres() {
    keyword_story(Backend::Postgres).await;
}

async fn unknown_and_forwarded(backend: Backend) {
    let app = app_with(backend, &[]).await;
    // An unknown sender gets French then English, and a phone-level ledger row blocks that phone.
    let (_, twiml) = sms(&app, "SM0100", "+14165550123", "STOP").await;
    let reply = &messages_in(&twiml)[0];
    assert!(reply.contains("vous ne recevrez plus") && reply.contains("no longer receive"), "{reply}");
    let n: i64 = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM consent_events WHERE phone = '+14165550123' AND new_consent = FALSE AND tenant_id IS NULL").fetch_one(p).await).unwrap();
    assert_eq!(n, 1);

    // Anything else is stored and forwarded to the owner through the queue, never dropped.
    let (s, twiml) = sms(&app, "SM0101", "+14165550123", "Stop the machine, the guard is open").await;
    assert_eq!(s, StatusCode::OK);
    assert!(messages_in(&twiml).is_empty());
    let long = "Bonjour, ".repeat(120);
    sms(&app, "SM0102", "+14165550123", &long).await;
    let rows: Vec<(String, String, String, String)> = secur360::on_db!(&app.db, p => sqlx::query_as(
        "SELECT kind, to_phone, body, status FROM sms_messages ORDER BY created_at, id").fetch_all(p).await)
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].3.as_str()), ("forward", OWNER, "queued"));
    assert_eq!(rows[0].2, "SMS de +14165550123: Stop the machine, the guard is open");
    assert!(rows[1].2.ends_with("(texte complet sur la page admin)"), "{}", rows[1].2);
    assert!(rows[1].2.len() < long.len());
    let stored: String = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT body FROM sms_inbound WHERE twilio_message_sid = 'SM0102'").fetch_one(p).await).unwrap();
    assert_eq!(stored, long);
}

#[tokio::test]
async fn unknown_senders_get_both_languages_and_other_texts_are_forwarded_on_sqlite() {
    unknown_and_forwarded(Backend::Sqlite).await;
}

#[tokio::test]
async fn unknown_senders_get_both_languages_and_other_texts_are_forwarded_on_postgres() {
    unknown_and_forwarded(Backend::Postgres).await;
}

async fn forged(backend: Backend) {
    let app = app_with(backend, &[]).await;
    let params = [("MessageSid", "SM0200"), ("From", "+15148732015"), ("Body", "STOP")];
    for token in [None, Some("not-the-token-0123456789")] {
        let (s, body) = twilio_post(&app, "/api/sms/inbound", &params, token).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    }
    // Signed, then tampered with.
    let pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let sig = twilio_signature::compute(&format!("{APP_URL}/api/sms/inbound"), &pairs, TOKEN);
    let res = app
        .request(Method::POST, "/api/sms/inbound", None)
        .form(&[("MessageSid", "SM0200"), ("From", "+15148732015"), ("Body", "START")])
        .header("x-twilio-signature", sig)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    for path in ["/api/voice/inbound", "/api/voice/dial-status"] {
        let (s, _) = twilio_post(&app, path, &[("CallSid", "CA1")], None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    app.state.call_log.flush().await;
    assert_eq!(
        (app.count("sms_inbound").await, app.count("consent_events").await, app.count("voice_calls").await),
        (0, 0, 0)
    );
    // The secondary token (rotation) is accepted.
    let (s, _) = twilio_post(&app, "/api/sms/inbound", &params, Some(SECONDARY)).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn forged_and_unsigned_twilio_requests_are_refused_with_no_effect_on_sqlite() {
    forged(Backend::Sqlite).await;
}

#[tokio::test]
async fn forged_and_unsigned_twilio_requests_are_refused_with_no_effect_on_postgres() {
    forged(Backend::Postgres).await;
}

#[tokio::test]
async fn without_a_twilio_token_every_webhook_is_refused() {
    let app = spawn_app_with(Backend::Sqlite, &[("APP_URL", APP_URL)]).await;
    let (s, body) =
        twilio_post(&app, "/api/sms/inbound", &[("MessageSid", "SM1"), ("From", "+15148732015")], Some(TOKEN)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(body.contains("TWILIO_AUTH_TOKEN"));
}

#[tokio::test]
async fn a_request_signed_by_the_official_twilio_sdk_is_accepted() {
    let app = app_with(Backend::Sqlite, &[]).await;
    let url = format!("{APP_URL}/api/sms/inbound");
    let params = json!({"MessageSid": "SM0300", "From": "+15148732015", "To": CONTACT, "Body": "Arrêt 🙏 merci"});
    let python = std::env::var("SECUR360_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/peers-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let mut child = std::process::Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/sign.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("the official twilio SDK is needed at {python} (run scripts/test): {e}"));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"provider": "twilio", "url": url, "params": params, "token": TOKEN}).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let signature =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["signature"].as_str().unwrap().to_owned();
    let res = app
        .request(Method::POST, "/api/sms/inbound", None)
        .form(&[("MessageSid", "SM0300"), ("From", "+15148732015"), ("To", CONTACT), ("Body", "Arrêt 🙏 merci")])
        .header("x-twilio-signature", signature)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(app.count("sms_inbound").await, 1);
}

#[tokio::test]
async fn with_advanced_opt_out_we_change_consent_but_stay_silent() {
    let app = app_with(Backend::Sqlite, &[("SMS_KEYWORD_REPLIES", "twilio")]).await;
    let key = app.tenant_with_key("acme").await;
    let w = worker(&app, &key, "514 873 2015", "fr").await;
    let (_, twiml) = sms(&app, "SM0400", "+15148732015", "STOP").await;
    assert!(messages_in(&twiml).is_empty());
    assert!(!consent_of(&app, &key, &w).await);
}

fn parse(twiml: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(twiml).unwrap_or_else(|e| panic!("not XML ({e}): {twiml}"))
}

async fn voice_story(backend: Backend) {
    let app = app_with(backend, &[]).await;
    let (s, twiml) = twilio_post(
        &app,
        "/api/voice/inbound",
        &[("CallSid", "CA0001"), ("From", "+14165550123"), ("To", CONTACT), ("CallStatus", "ringing")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{twiml}");
    let doc = parse(&twiml);
    let says: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("Say")).collect();
    assert_eq!(says.iter().map(|n| n.attribute("language").unwrap()).collect::<Vec<_>>(), ["fr-CA", "en-CA"]);
    let dial = doc.descendants().find(|n| n.has_tag_name("Dial")).unwrap();
    assert_eq!(dial.text(), Some(OWNER));
    assert_eq!(dial.attribute("action"), Some("https://c-secur360.ca/api/voice/dial-status"));
    assert!(dial.attribute("timeout").unwrap().parse::<u32>().unwrap() > 0);

    // Nobody answers: an invitation to text, and ONE missed-call SMS to the owner even if Twilio retries.
    let params = [("CallSid", "CA0001"), ("DialCallStatus", "no-answer"), ("From", "+14165550123")];
    let (_, twiml) = twilio_post(&app, "/api/voice/dial-status", &params, Some(TOKEN)).await;
    let doc = parse(&twiml);
    assert!(doc.descendants().any(|n| n.has_tag_name("Hangup")));
    assert!(doc.descendants().filter(|n| n.has_tag_name("Say")).any(|n| n.text().unwrap().contains("texto")));
    twilio_post(&app, "/api/voice/dial-status", &params, Some(TOKEN)).await;
    let rows: Vec<(String, String, String)> = secur360::on_db!(&app.db, p => sqlx::query_as(
        "SELECT kind, to_phone, body FROM sms_messages").fetch_all(p).await)
    .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("missed_call", OWNER));
    assert!(rows[0].2.contains("Appel manqué de +14165550123"));

    // Answered: just hang up.
    twilio_post(&app, "/api/voice/inbound", &[("CallSid", "CA0002"), ("From", "+14165550123")], Some(TOKEN)).await;
    let (_, twiml) = twilio_post(
        &app,
        "/api/voice/dial-status",
        &[("CallSid", "CA0002"), ("DialCallStatus", "completed"), ("DialCallDuration", "42")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(parse(&twiml).descendants().filter(|n| n.is_element()).count(), 2); // Response + Hangup
    let calls: Vec<(String, Option<String>, Option<i64>)> = secur360::on_db!(&app.db, p => sqlx::query_as(
        "SELECT twilio_call_sid, dial_status, dial_duration FROM voice_calls ORDER BY twilio_call_sid").fetch_all(p).await).unwrap();
    assert_eq!(
        calls,
        vec![("CA0001".into(), Some("no-answer".into()), None), ("CA0002".into(), Some("completed".into()), Some(42))]
    );
}

#[tokio::test]
async fn calls_are_greeted_forwarded_recorded_and_missed_calls_reported_on_sqlite() {
    voice_story(Backend::Sqlite).await;
}

#[tokio::test]
async fn calls_are_greeted_forwarded_recorded_and_missed_calls_reported_on_postgres() {
    voice_story(Backend::Postgres).await;
}

#[tokio::test]
async fn markup_in_the_owner_number_or_caller_fields_cannot_break_the_twiml() {
    // An OWNER_MOBILE with markup is refused at start-up (it must be a phone number)…
    let vars =
        [("OWNER_MOBILE", "+1 514 873 2015 & <Hangup/>")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let err = secur360::config::Settings::from_vars(vars).unwrap_err().to_string();
    assert!(err.contains("OWNER_MOBILE"), "{err}");
    // …and hostile caller-controlled fields are escaped (escaping itself is unit-tested in domain::twiml).
    let app = app_with(Backend::Sqlite, &[]).await;
    let (_, twiml) =
        twilio_post(&app, "/api/voice/inbound", &[("CallSid", "CA<&>\"'"), ("From", "<Hangup/>&amp;")], Some(TOKEN))
            .await;
    parse(&twiml);
    let (_, twiml) = twilio_post(
        &app,
        "/api/voice/dial-status",
        &[("CallSid", "CA<&>\"'"), ("DialCallStatus", "busy")],
        Some(TOKEN),
    )
    .await;
    parse(&twiml);
    let body: String =
        secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT body FROM sms_messages").fetch_one(p).await).unwrap();
    assert!(body.contains("<Hangup/>&amp;"));
}

#[tokio::test]
async fn without_an_owner_number_the_caller_hears_an_apology_and_the_call_ends() {
    let vars: Vec<(&str, &str)> = twilio_vars().into_iter().filter(|(k, _)| *k != "OWNER_MOBILE").collect();
    let app = spawn_app_with(Backend::Sqlite, &vars).await;
    let (_, twiml) =
        twilio_post(&app, "/api/voice/inbound", &[("CallSid", "CA9"), ("From", "+14165550123")], Some(TOKEN)).await;
    let doc = parse(&twiml);
    assert!(doc.descendants().any(|n| n.has_tag_name("Hangup")));
    assert!(!doc.descendants().any(|n| n.has_tag_name("Dial")));
    app.state.call_log.flush().await;
    assert_eq!(app.count("voice_calls").await, 1);
}
