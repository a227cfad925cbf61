use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode as AxStatus;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::both_backends;
use crate::helpers::*;

/// A provider stand-in at the HTTP boundary: answers every request with `status` and counts the calls.
pub async fn fake_provider(status: u16) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (
                AxStatus::from_u16(status).unwrap(),
                axum::Json(serde_json::json!({"code": 20003, "message": "Authenticate"})),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

both_backends! {
    async fn the_status_lists_every_check_and_says_loudly_that_sms_are_simulated(app) {
        let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["status"], "warning");
        for name in ["configuration", "database", "stripe", "twilio", "last_stripe_event", "last_twilio_callback",
                     "job_billing_sync", "job_sms_cleanup", "sms_queue", "sms_delivery_rate", "dns", "www_redirect", "version"] {
            let c = find(&r, name);
            assert!(c["zone"].is_string() && c["status"].is_string() && c["detail"].is_string() && c["latency_ms"].is_u64(), "{c}");
        }
        let tw = find(&r, "twilio");
        assert_eq!((tw["zone"].as_str(), tw["status"].as_str()), (Some("twilio"), Some("warning")));
        assert!(tw["detail"].as_str().unwrap().contains("SIMULATED"));
        let db = find(&r, "database");
        assert_eq!(db["status"], "healthy");
        assert_eq!(db["data"]["backend"], match app.backend { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" });
        assert!(db["data"]["size_bytes"].as_i64().unwrap() > 0);
        // Presence only, never values.
        assert_eq!(find(&r, "configuration")["data"]["ADMIN_TOKEN"], true);
        assert!(!r.to_string().contains(ADMIN_TOKEN));
    }

    async fn the_status_says_how_tenants_are_kept_apart_and_alarms_when_a_table_loses_forced_rls(app) {
        let (_, r) = app.operator(Method::GET, "/api/system/status", None).await;
        let c = find(&r, "tenant_isolation");
        assert_eq!((c["zone"].as_str(), c["status"].as_str()), (Some("database"), Some("healthy")), "{c}");
        match app.backend {
            Backend::Sqlite => assert_eq!(c["data"]["row_level_security"], false),
            Backend::Postgres => {
                assert_eq!((c["data"]["role"].as_str(), c["data"]["tables_owned_by_role"].as_i64()), (Some(RUNTIME_LOGIN), Some(0)));
                assert!(c["detail"].as_str().unwrap().starts_with("row-level security forced on 20 tables"), "{c}");
                // Someone with the owner role relaxes one table: the status turns critical and names it.
                app.exec("ALTER TABLE workers NO FORCE ROW LEVEL SECURITY").await;
                let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
                let c = find(&r, "tenant_isolation");
                assert_eq!((s, c["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("critical")), "{c}");
                assert_eq!(c["data"]["unprotected_tables"], serde_json::json!(["workers"]));
            }
        }
    }

    async fn a_stopped_database_is_a_critical_database_check(app) {
        app.state.db.close().await;
        let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r["status"], "critical");
        let db = find(&r, "database");
        assert_eq!((db["zone"].as_str(), db["status"].as_str()), (Some("database"), Some("critical")));
    }

    async fn the_status_needs_the_operator_token(app) {
        let (s, _) = app.send(Method::GET, "/api/system/status", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
}

mod missing_webhook_secret {
    use super::*;

    both_backends! {
        with &[("STRIPE_SECRET_KEY", "sk_test_123456789")];
        async fn a_stripe_key_without_webhook_secret_is_a_critical_stripe_check(app) {
            let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
            let st = find(&r, "stripe");
            assert_eq!((st["zone"].as_str(), st["status"].as_str()), (Some("stripe"), Some("critical")));
            assert!(st["detail"].as_str().unwrap().contains("STRIPE_WEBHOOK_SECRET"));
            assert!(!r.to_string().contains("sk_test_123456789"));
        }
    }
}

async fn twilio_app(backend: Backend, status: u16) -> (TestApp, Arc<AtomicUsize>) {
    let (base, hits) = fake_provider(status).await;
    let app = spawn_app_with(
        backend,
        &[
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", "wrong-token-0123456789"),
            ("TWILIO_PHONE_NUMBER", "+15148732015"),
            ("TWILIO_API_BASE", base.as_str()),
        ],
    )
    .await;
    (app, hits)
}

async fn wrong_twilio_token(backend: Backend) {
    let (app, hits) = twilio_app(backend, 401).await;
    let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let tw = find(&r, "twilio");
    assert_eq!((tw["zone"].as_str(), tw["status"].as_str()), (Some("twilio"), Some("critical")), "{tw}");
    assert!(tw["detail"].as_str().unwrap().contains("refused"));
    assert!(!r.to_string().contains("wrong-token-0123456789"));
    // The probe is cached: a second status call does not call Twilio again.
    let (_, r2) = app.operator(Method::GET, "/api/system/status", None).await;
    assert_eq!(find(&r2, "twilio")["cached"], true);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_wrong_twilio_token_is_a_critical_twilio_check_on_sqlite() {
    wrong_twilio_token(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_wrong_twilio_token_is_a_critical_twilio_check_on_postgres() {
    wrong_twilio_token(Backend::Postgres).await;
}

#[tokio::test]
async fn accepted_twilio_credentials_are_a_healthy_twilio_check() {
    let (app, _) = twilio_app(Backend::Sqlite, 200).await;
    let (_, r) = app.operator(Method::GET, "/api/system/status", None).await;
    assert_eq!(find(&r, "twilio")["status"], "healthy");
}
