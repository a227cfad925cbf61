//! SPEC §2: access follows billing. A suspended tenant (no subscription, one that ended, or one past due beyond
//! its grace period) is read-only; reading, billing, deleting workers and sites and withdrawing consent stay open.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::*;

const DAY_MS: i64 = 86_400_000;

/// A paying tenant with a site, a consenting worker (with a verification code sent) and an alert sent with
/// `Idempotency-Key: k1`: `(key, site id, worker id, the alert's answer)`.
async fn tenant_with_data(app: &TestApp) -> (String, String, String, Value) {
    let key = app.tenant_with_key("acme").await;
    let (s, site) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{site}");
    let worker = json!({"name": "Jean", "phone": "514 873 2015", "sms_consent": true});
    let (s, worker) = app.send(Method::POST, "/api/workers", Some(&key), Some(worker)).await;
    assert_eq!(s, StatusCode::CREATED, "{worker}");
    let worker_id = worker["id"].as_str().unwrap().to_owned();
    let (s, b) = app.send(Method::POST, &format!("/api/workers/{worker_id}/verification"), Some(&key), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let (s, answer) = alert_with_key(app, &key, "k1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{answer}");
    (key, site["id"].as_str().unwrap().to_owned(), worker_id, answer)
}

/// The alert these tests send, with `Idempotency-Key: idem`.
async fn alert_with_key(app: &TestApp, key: &str, idem: &str) -> (StatusCode, Value) {
    let body = json!({"kind": "general_alert", "body": "Exercice d'évacuation à 14 h", "recipients": {"all": true}});
    crate::sms::alert_with_key(app, key, idem, body).await
}

/// The 402 of a suspended tenant, naming why and the way out (Checkout or the portal, by status: billing.rs).
fn assert_suspended(s: StatusCode, b: &Value, why: &str, request: &str) {
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{request}: {b}");
    assert_eq!(error_code(b), "tenant_suspended", "{request}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains(why) && message.contains("POST /api/billing/"), "{message}");
}

async fn access(app: &TestApp, key: &str) -> String {
    app.entitlements(key).await["access"].as_str().unwrap().to_owned()
}

both_backends! {
    async fn a_suspended_tenant_reads_but_creates_changes_and_sends_nothing(app) {
        let (key, site, worker, _) = tenant_with_data(&app).await;
        app.exec("UPDATE subscriptions SET status = 'canceled' WHERE tenant_id = 'acme'").await;
        assert_eq!(access(&app, &key).await, "suspended");
        for path in ["/api/sites".to_owned(), format!("/api/sites/{site}"), "/api/workers".to_owned(),
                     format!("/api/workers/{worker}"), format!("/api/workers/{worker}/consent"),
                     "/api/billing/subscription".to_owned()] {
            let (s, b) = app.send(Method::GET, &path, Some(&key), None).await;
            assert_eq!(s, StatusCode::OK, "{path}: {b}");
        }

        let before = app.snapshot().await;
        let worker_path = format!("/api/workers/{worker}");
        let refused: Vec<(Method, String, Option<Value>)> = vec![
            (Method::POST, "/api/sites".into(), Some(json!({"name": "Autre"}))),
            (Method::PATCH, format!("/api/sites/{site}"), Some(json!({"name": "Usine Sud"}))),
            (Method::POST, "/api/workers".into(), Some(json!({"name": "Paul", "phone": "514 873 2016"}))),
            (Method::PATCH, worker_path.clone(), Some(json!({"name": "Jean-Paul"}))),
            // A withdrawal bundled with another change is a change.
            (Method::PATCH, worker_path.clone(), Some(json!({"sms_consent": false, "language": "en"}))),
            (Method::POST, format!("{worker_path}/consent"), Some(json!({"consent": true, "evidence": "form 12"}))),
            (Method::POST, format!("{worker_path}/verification"), None),
            (Method::POST, format!("{worker_path}/verification/check"), Some(json!({"code": "123456"}))),
        ];
        for (method, path, body) in refused {
            let request = format!("{method} {path}");
            let (s, b) = app.send(method, &path, Some(&key), body).await;
            assert_suspended(s, &b, "subscription that is canceled", &request);
        }
        let (s, b) = alert_with_key(&app, &key, "k2").await;
        assert_suspended(s, &b, "subscription that is canceled", "POST /api/sms/alerts");
        assert_eq!(app.snapshot().await, before, "a refused request wrote something");
    }

    async fn a_suspended_tenant_can_still_withdraw_consent_delete_workers_and_sites_and_replay_an_accepted_alert(app) {
        let (key, site, worker, answer) = tenant_with_data(&app).await;
        app.exec("UPDATE subscriptions SET status = 'unpaid' WHERE tenant_id = 'acme'").await;

        // The alert accepted before the suspension is answered again as it was, not refused.
        assert_eq!(alert_with_key(&app, &key, "k1").await, (StatusCode::ACCEPTED, answer));

        let path = format!("/api/workers/{worker}");
        let (s, w) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"sms_consent": false}))).await;
        assert_eq!((s, w["sms_consent"].as_bool()), (StatusCode::OK, Some(false)), "{w}");
        let paper = json!({"consent": false, "evidence": "lettre de retrait du 2026-12-01"});
        let (s, w) = app.send(Method::POST, &format!("{path}/consent"), Some(&key), Some(paper)).await;
        assert_eq!((s, w["sms_consent"].as_bool()), (StatusCode::CREATED, Some(false)), "{w}");
        let (_, ledger) = app.send(Method::GET, &format!("{path}/consent"), Some(&key), None).await;
        assert!(ledger.to_string().contains("lettre de retrait"), "{ledger}");

        let (s, b) = app.send(Method::DELETE, &path, Some(&key), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
        assert_eq!(app.count("workers").await, 0);
        // Sites too can be removed (to fit a lower add-on count before paying again).
        let (s, b) = app.send(Method::DELETE, &format!("/api/sites/{site}"), Some(&key), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
        assert_eq!(app.count("sites").await, 0);
    }

    async fn a_past_due_subscription_keeps_full_use_during_its_grace_period_only(app) {
        let key = app.tenant_with_key("acme").await;
        let now = app.state.now();
        app.exec(&format!(
            "UPDATE subscriptions SET status = 'past_due', past_due_since = {} WHERE tenant_id = 'acme'",
            now - DAY_MS
        ))
        .await;
        assert_eq!(access(&app, &key).await, "grace");
        // The banner's date: when the grace ends (past due since yesterday + 7 days).
        let e = app.entitlements(&key).await;
        assert_eq!(e["grace_ends_at"], secur360::time::to_rfc3339(now + 6 * DAY_MS));
        let (_, view) = app.send(Method::GET, "/api/billing/subscription", Some(&key), None).await;
        assert_eq!(view["grace_ends_at"], e["grace_ends_at"], "{view}");
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");

        // The default grace is 7 days.
        app.exec(&format!("UPDATE subscriptions SET past_due_since = {} WHERE tenant_id = 'acme'", now - 8 * DAY_MS))
            .await;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), &e["grace_ends_at"]), (Some("suspended"), &Value::Null), "{e}");
        let (s, b) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean", "phone": "514 873 2015"}))).await;
        assert_suspended(s, &b, "past due beyond its grace period", "POST /api/workers");
    }

    async fn a_new_tenant_without_a_subscription_is_told_to_subscribe(app) {
        let key = app.tenant_without_subscription("acme").await;
        assert_eq!(access(&app, &key).await, "suspended");
        let before = app.snapshot().await;
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        assert_suspended(s, &b, "has no subscription", "POST /api/sites");
        assert!(b["error"]["message"].as_str().unwrap().contains("POST /api/billing/checkout"), "{b}");
        assert_eq!(app.snapshot().await, before);
        // (That billing itself stays open is in billing.rs, against the fake Stripe.)
    }
}
