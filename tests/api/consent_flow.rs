//! Inbound keywords, the alert pipeline and the dispatcher together: what a worker's STOP/START does to the
//! alerts that follow, and which transactional messages still go out.

use reqwest::{Method, StatusCode};
use secur360::domain::twilio_signature;
use secur360::sms::dispatcher::run_once;
use serde_json::json;

use crate::fake_twilio::{self, AUTH_TOKEN};
use crate::helpers::*;
use crate::sms::{sms_app, T0};

/// POST form fields to one of our Twilio webhooks, signed as Twilio would sign them.
async fn signed(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> StatusCode {
    let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let sig = twilio_signature::compute(&format!("{}{path}", fake_twilio::APP_URL), &pairs, AUTH_TOKEN);
    app.request(Method::POST, path, None).form(&pairs).header("x-twilio-signature", sig).send().await.unwrap().status()
}

async fn inbound(app: &TestApp, sid: &str, from: &str, body: &str) {
    let status = signed(app, "/api/sms/inbound", &[("MessageSid", sid), ("From", from), ("Body", body)]).await;
    assert_eq!(status, StatusCode::OK);
}

async fn consenting_worker(app: &TestApp, key: &str) -> serde_json::Value {
    let body = json!({"name": "Jean", "phone": "514 873 2015", "sms_consent": true});
    let (s, w) = app.send(Method::POST, "/api/workers", Some(key), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    w
}

async fn alert(app: &TestApp, key: &str, worker: &str) -> serde_json::Value {
    let (s, a) = app
        .send(
            Method::POST,
            "/api/sms/alerts",
            Some(key),
            Some(json!({
                "kind": "lock_applied", "body": "Cadenas posé sur la presse 3", "recipients": {"worker_ids": [worker]}
            })),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    a
}

async fn story(backend: Backend) {
    let (app, fake) = sms_app(backend, true, &[("OWNER_MOBILE", "+14384031234")]).await;
    let key = app.tenant_with_key("acme").await;
    let w = consenting_worker(&app, &key).await;
    let id = w["id"].as_str().unwrap().to_owned();

    inbound(&app, "SM1", "+15148732015", "ARRÊT").await;
    let a = alert(&app, &key, &id).await;
    assert_eq!(
        (a["recipients"][0]["outcome"].as_str(), a["recipients"][0]["reason"].as_str()),
        (Some("skipped"), Some("opted_out")),
        "{a}"
    );

    inbound(&app, "SM2", "+15148732015", "START").await;
    let a = alert(&app, &key, &id).await;
    assert_eq!(a["recipients"][0]["outcome"], "queued", "{a}");
    let report = run_once(&app.state, T0 + 1_000).await.unwrap();
    assert_eq!(report.accepted, 1, "{report:?}");
    let sent = fake.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].field("To"), Some("+15148732015"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stop_alerts_skip_the_worker_and_after_start_they_are_sent_again_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_stop_alerts_skip_the_worker_and_after_start_they_are_sent_again_on_postgres() {
    story(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_messages_go_out_without_alert_consent_but_never_after_stop() {
    let (app, fake) = sms_app(Backend::Sqlite, true, &[("OWNER_MOBILE", "+14384031234")]).await;
    let key = app.tenant_with_key("acme").await;
    // No alert consent: a verification code still goes (the administrator asked for it)…
    let (_, w) = app
        .send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean", "phone": "514 873 2015"})))
        .await;
    let id = w["id"].as_str().unwrap().to_owned();
    let (s, _) = app.send(Method::POST, &format!("/api/workers/{id}/verification"), Some(&key), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // …and so does the forward of a non-keyword text to the owner.
    inbound(&app, "SM9", "+14165550123", "Bonjour, rappelez-moi").await;
    let report = run_once(&app.state, T0 + 1_000).await.unwrap();
    assert_eq!((report.accepted, report.canceled), (2, 0), "{report:?}");
    let to: Vec<String> = fake.requests().iter().map(|r| r.field("To").unwrap().to_owned()).collect();
    assert!(to.contains(&"+15148732015".to_owned()) && to.contains(&"+14384031234".to_owned()), "{to:?}");

    // After STOP nothing more goes to that phone, not even a verification code.
    inbound(&app, "SM10", "+15148732015", "STOP").await;
    app.exec("UPDATE phone_verifications SET last_sent_at = 0").await;
    let (s, b) = app.send(Method::POST, &format!("/api/workers/{id}/verification"), Some(&key), None).await;
    assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "opted_out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sms_outcomes_by_kind_job_runs_the_queue_and_the_delivery_rate() {
    let (app, _fake) = sms_app(Backend::Sqlite, true, &[]).await;
    let key = app.tenant_with_key("acme").await;
    let w = consenting_worker(&app, &key).await;
    alert(&app, &key, w["id"].as_str().unwrap()).await;
    run_once(&app.state, T0 + 1_000).await.unwrap();
    let sid: String =
        secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT twilio_sid FROM sms_messages").fetch_one(p).await)
            .unwrap();
    let status = signed(&app, "/api/sms/status", &[("MessageSid", sid.as_str()), ("MessageStatus", "delivered")]).await;
    assert!(status.is_success());
    app.operator(Method::POST, "/api/sms/cleanup", None).await;

    let (s, _) = app.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let text = app.request(Method::GET, "/metrics", Some(ADMIN_TOKEN)).send().await.unwrap().text().await.unwrap();
    for needle in [
        "sms_messages_total{kind=\"lock_applied\",outcome=\"sending\"}",
        "sms_messages_total{kind=\"lock_applied\",outcome=\"delivered\"}",
        "job_runs_total{job=\"sms_cleanup\",outcome=\"succeeded\"}",
        "sms_queue_depth",
        "sms_delivery_rate_24h",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}
