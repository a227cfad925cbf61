//! Paper consent and phone verification by SMS code.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

async fn worker(app: &TestApp, key: &str) -> String {
    let (_, w) = app
        .send(
            Method::POST,
            "/api/workers",
            Some(key),
            Some(json!({"name": "Jean", "phone": "514 873 2015", "language": "fr"})),
        )
        .await;
    w["id"].as_str().unwrap().to_owned()
}

async fn code_sent(app: &TestApp, message_id: &str) -> String {
    let body: String = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT body FROM sms_messages WHERE id = $1").bind(message_id).fetch_one(p).await).unwrap();
    body.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_digit()))
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .expect("a 6-digit code in the SMS")
        .to_owned()
}

/// A worker with a verification in progress: the key, the code sent, a wrong code and the check path.
struct Started {
    key: String,
    code: String,
    wrong: &'static str,
    check: String,
}

async fn start(app: &TestApp) -> Started {
    let key = app.tenant_with_key("acme").await;
    let id = worker(app, &key).await;
    let (s, started) = app.send(Method::POST, &format!("/api/workers/{id}/verification"), Some(&key), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let code = code_sent(app, started["message_id"].as_str().unwrap()).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let check = format!("/api/workers/{id}/verification/check");
    Started { key, code, wrong, check }
}

both_backends! {
    async fn paper_consent_is_recorded_in_the_ledger_with_its_evidence(app) {
        let key = app.tenant_with_key("acme").await;
        let id = worker(&app, &key).await;
        let path = format!("/api/workers/{id}/consent");
        let (s, b) = app.send(Method::POST, &path, Some(&key), Some(json!({"consent": true, "evidence": "  "}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
        let (s, w) = app.send(Method::POST, &path, Some(&key), Some(json!({"consent": true, "evidence": "Formulaire F-7 signé le 2026-11-20"}))).await;
        assert_eq!((s, w["sms_consent"].as_bool(), w["sms_consent_source"].as_str()), (StatusCode::CREATED, Some(true), Some("paper")));
        let (_, h) = app.send(Method::GET, &path, Some(&key), None).await;
        let ev = &h["events"][0];
        assert_eq!((ev["source"].as_str(), ev["evidence"].as_str()), (Some("paper"), Some("Formulaire F-7 signé le 2026-11-20")));
    }

    async fn a_correct_code_verifies_the_phone_and_wrong_codes_are_counted(app) {
        let Started { key, code, wrong, check } = start(&app).await;
        let stored: String = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT code_hash FROM phone_verifications").fetch_one(p).await).unwrap();
        assert!(!stored.contains(&code) && stored.len() == 64);

        let (s, b) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": wrong}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code"));
        assert!(b["error"]["message"].as_str().unwrap().contains("4 attempt(s) left"));
        let (s, b) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": "12ab"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
        let (s, w) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": code}))).await;
        assert_eq!((s, w["phone_verified"].as_bool()), (StatusCode::OK, Some(true)), "{w}");
        assert!(w["phone_verified_at"].is_string());
        // The code is spent.
        let (s, b) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": code}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::GONE, "no_active_code"));
    }

    async fn five_wrong_codes_lock_the_verification(app) {
        let Started { key, code, wrong, check } = start(&app).await;
        for _ in 0..5 {
            app.send(Method::POST, &check, Some(&key), Some(json!({"code": wrong}))).await;
        }
        let (s, b) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": code}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"));
    }

    async fn parallel_guesses_cannot_exceed_five_attempts(app) {
        let Started { key, code, wrong, check } = start(&app).await;
        let guesses = (0..12).map(|_| app.send(Method::POST, &check, Some(&key), Some(json!({"code": wrong}))));
        let results = futures::future::join_all(guesses).await;
        let counted = results.iter().filter(|(s, _)| *s == StatusCode::UNPROCESSABLE_ENTITY).count();
        assert_eq!(counted, 5, "{results:?}");
        let (s, _) = app.send(Method::POST, &check, Some(&key), Some(json!({"code": code}))).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    }

    async fn resends_are_throttled_and_expired_codes_refused(app) {
        let key = app.tenant_with_key("acme").await;
        let id = worker(&app, &key).await;
        let start = format!("/api/workers/{id}/verification");
        app.send(Method::POST, &start, Some(&key), None).await;
        let res = app.request(Method::POST, &start, Some(&key)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("retry-after"));
        // A minute later a resend works and replaces the code.
        app.exec("UPDATE phone_verifications SET last_sent_at = last_sent_at - 61000").await;
        let (s, again) = app.send(Method::POST, &start, Some(&key), None).await;
        assert_eq!((s, again["sends"].as_i64()), (StatusCode::ACCEPTED, Some(2)));
        let code = code_sent(&app, again["message_id"].as_str().unwrap()).await;
        // Ten minutes later the code has expired.
        app.exec("UPDATE phone_verifications SET expires_at = 1").await;
        let (s, b) = app.send(Method::POST, &format!("/api/workers/{id}/verification/check"), Some(&key), Some(json!({"code": code}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::GONE, "no_active_code"));
    }

    async fn verification_is_bound_to_the_tenant(app) {
        let a = app.tenant_with_key("acme").await;
        let b = app.tenant_with_key("other").await;
        let id = worker(&app, &b).await;
        let (s, _) = app.send(Method::POST, &format!("/api/workers/{id}/verification"), Some(&a), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.send(Method::POST, &format!("/api/workers/{id}/consent"), Some(&a), Some(json!({"consent": true, "evidence": "x"}))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(app.count("sms_messages").await, 0);
    }
}
