//! Inbound calls are answered at once and recorded off the answer path (`inbound::call_log`): each call once,
//! with one audit row, whatever the redeliveries; a batch holding the same call twice records it once; a stop
//! records every queued call; a call the log cannot take is still answered. (A database outage: the process
//! test in `faults.rs` answers calls while PostgreSQL is down and finds them recorded once it is back.)

use reqwest::StatusCode;
use secur360::db::voice::NewCall;
use secur360::inbound::call_log::{self, Call, CallLog};
use secur360::on_db;
use serde_json::Value;

use crate::helpers::*;
use crate::inbound::{app_with, twilio_post, CONTACT, OWNER, TOKEN};

fn call(sid: &str, from: &str, at: i64) -> Call {
    Call {
        call: NewCall { sid: sid.into(), from: from.into(), to: CONTACT.into(), status: "ringing".into(), at },
        forwarded: true,
    }
}

async fn calls(app: &TestApp) -> Vec<(String, String, String, String)> {
    on_db!(&app.db, p => sqlx::query_as(
        "SELECT twilio_call_sid, from_phone, to_phone, status FROM voice_calls ORDER BY twilio_call_sid"
    ).fetch_all(p).await)
    .unwrap()
}

/// (subject, details) of the `inbound_call` audit rows, by subject.
async fn audited(app: &TestApp) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> = on_db!(&app.db, p => sqlx::query_as(
        "SELECT subject, details FROM system_audit_logs WHERE action = 'inbound_call' ORDER BY subject"
    ).fetch_all(p).await)
    .unwrap();
    rows.into_iter().map(|(s, d)| (s, serde_json::from_str(&d).unwrap())).collect()
}

async fn answered_then_recorded(backend: Backend) {
    let app = app_with(backend, &[]).await;
    // CA100 is delivered twice (Twilio retried the webhook): answered twice, recorded once.
    for (sid, from) in [("CA100", "+14165550123"), ("CA101", "+15148732015"), ("CA100", "+14165550123")] {
        let params = [("CallSid", sid), ("From", from), ("To", CONTACT), ("CallStatus", "ringing")];
        let (s, twiml) = twilio_post(&app, "/api/voice/inbound", &params, Some(TOKEN)).await;
        assert_eq!(s, StatusCode::OK, "{twiml}");
        let doc = roxmltree::Document::parse(&twiml).unwrap();
        assert_eq!(doc.descendants().find(|n| n.has_tag_name("Dial")).and_then(|n| n.text()), Some(OWNER));
    }
    app.state.call_log.flush().await;
    assert_eq!(
        calls(&app).await,
        vec![
            ("CA100".into(), "+14165550123".into(), CONTACT.into(), "ringing".into()),
            ("CA101".into(), "+15148732015".into(), CONTACT.into(), "ringing".into()),
        ]
    );
    let audit = audited(&app).await;
    assert_eq!(audit.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["CA100", "CA101"]);
    for (_, details) in &audit {
        assert_eq!(details["forwarded"], Value::Bool(true));
        let from = details["from"].as_str().unwrap();
        assert!(from.contains('•') && !from.contains("5550") && !from.contains("8732"), "masked: {from}");
    }
    // The dial-status of a recorded call completes that row.
    let params = [("CallSid", "CA101"), ("DialCallStatus", "completed"), ("DialCallDuration", "7")];
    let (s, _) = twilio_post(&app, "/api/voice/dial-status", &params, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    let row: (String, Option<String>) = on_db!(&app.db, p => sqlx::query_as(
        "SELECT status, dial_status FROM voice_calls WHERE twilio_call_sid = 'CA101'"
    ).fetch_one(p).await)
    .unwrap();
    assert_eq!(row, ("completed".into(), Some("completed".into())));
    assert_eq!(app.count("voice_calls").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_at_once_and_recorded_once_with_one_audit_row_on_sqlite() {
    answered_then_recorded(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_answered_at_once_and_recorded_once_with_one_audit_row_on_postgres() {
    answered_then_recorded(Backend::Postgres).await;
}

async fn one_batch(backend: Backend) {
    let app = app_with(backend, &[]).await;
    let now = app.state.now();
    let batch = [call("CA1", "+14165550123", now), call("CA2", "garbage", now), call("CA1", "+14165550123", now + 1)];
    let new = secur360::db::scope::system("test", call_log::record(&app.state.db, &batch)).await.unwrap();
    assert_eq!(new, 2);
    // Recorded again (a retried batch): nothing new, no second audit row.
    let new = secur360::db::scope::system("test", call_log::record(&app.state.db, &batch)).await.unwrap();
    assert_eq!(new, 0);
    assert_eq!(calls(&app).await.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["CA1", "CA2"]);
    let audit = audited(&app).await;
    assert_eq!(audit.len(), 2);
    assert_eq!(audit[1].1["from"], Value::String("unknown caller".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_a_call_twice_records_it_once_on_sqlite() {
    one_batch(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_holding_a_call_twice_records_it_once_on_postgres() {
    one_batch(Backend::Postgres).await;
}

/// On a current-thread runtime the log's worker cannot run before `shutdown`: every call is still queued when
/// the stop is asked for, and must be recorded by it.
async fn stop_records_the_queue(backend: Backend) {
    let app = app_with(backend, &[]).await;
    let log = CallLog::start(app.state.db.clone());
    let now = app.state.now();
    for i in 0..300 {
        assert!(log.record(call(&format!("CAq{i:03}"), "+14165550123", now)).await);
    }
    log.shutdown().await;
    assert_eq!(app.count("voice_calls").await, 300);
    assert_eq!(audited(&app).await.len(), 300);
    // Stopped: a call is refused by the log (the webhook still answers it; it is logged and counted).
    assert!(!log.record(call("CAlate", "+14165550123", now)).await);
    log.flush().await; // returns at once once stopped
    assert_eq!(app.count("voice_calls").await, 300);
}

#[tokio::test]
async fn a_stop_records_every_queued_call_on_sqlite() {
    stop_records_the_queue(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_stop_records_every_queued_call_on_postgres() {
    stop_records_the_queue(Backend::Postgres).await;
}

#[tokio::test]
async fn a_call_the_log_cannot_take_is_still_answered_and_counted() {
    let app = app_with(Backend::Sqlite, &[]).await;
    app.state.call_log.shutdown().await;
    let before = secur360::metrics::handle().render();
    let params = [("CallSid", "CA900"), ("From", "+14165550123"), ("To", CONTACT)];
    let (s, twiml) = twilio_post(&app, "/api/voice/inbound", &params, Some(TOKEN)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(twiml.contains("<Dial"), "{twiml}");
    let counted = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("voice_calls_unrecorded_total"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(counted(&secur360::metrics::handle().render()) >= counted(&before) + 1.0);
    assert_eq!(app.count("voice_calls").await, 0);
}
