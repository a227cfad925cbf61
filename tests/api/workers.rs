use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn workers_are_created_with_phones_normalised_to_e164(app) {
        let key = app.tenant_with_key("acme").await;
        let (s, w) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean Tremblay", "phone": "(514) 873-2015", "language": "fr"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{w}");
        assert_eq!((w["phone"].as_str(), w["phone_verified"].as_bool(), w["sms_consent"].as_bool()), (Some("+15148732015"), Some(false), Some(false)));
        assert!(w["id"].as_str().unwrap().starts_with("wrk_"));

        let (s, list) = app.send(Method::GET, "/api/workers", Some(&key), None).await;
        assert_eq!((s, list["workers"].as_array().unwrap().len()), (StatusCode::OK, 1));
        let path = format!("/api/workers/{}", w["id"].as_str().unwrap());
        let (s, got) = app.send(Method::GET, &path, Some(&key), None).await;
        assert_eq!((s, got["name"].as_str()), (StatusCode::OK, Some("Jean Tremblay")));
        let (s, _) = app.send(Method::DELETE, &path, Some(&key), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.send(Method::GET, &path, Some(&key), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    async fn invalid_phones_are_refused_with_the_field_and_reason(app) {
        let key = app.tenant_with_key("acme").await;
        for phone in ["", "abc", "123", "+1 514 873 20155555555555", "+999 123"] {
            let (s, b) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "X", "phone": phone}))).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{phone:?}: {b}");
            assert_eq!(error_code(&b), "invalid_phone");
            assert!(b["error"]["message"].as_str().unwrap().starts_with("phone: "), "{b}");
        }
        assert_eq!(app.count("workers").await, 0);
        assert_eq!(app.count("system_audit_logs").await, 2); // tenant + key only
    }

    async fn a_duplicate_phone_in_a_tenant_is_a_conflict_but_other_tenants_may_share_it(app) {
        let a = app.tenant_with_key("acme").await;
        let b = app.tenant_with_key("other").await;
        app.send(Method::POST, "/api/workers", Some(&a), Some(json!({"name": "Jean", "phone": "514-873-2015"}))).await;
        let before = app.snapshot().await;
        let (s, body) = app.send(Method::POST, "/api/workers", Some(&a), Some(json!({"name": "Paul", "phone": "+1 514 873 2015"}))).await;
        assert_eq!((s, error_code(&body)), (StatusCode::CONFLICT, "phone_exists"));
        assert_eq!(app.snapshot().await, before);
        let (s, _) = app.send(Method::POST, "/api/workers", Some(&b), Some(json!({"name": "Jean", "phone": "514 873 2015"}))).await;
        assert_eq!(s, StatusCode::CREATED);
    }

    async fn consent_given_at_registration_and_changed_later_is_in_the_ledger(app) {
        let key = app.tenant_with_key("acme").await;
        let (_, w) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({
            "name": "Jean", "phone": "514 873 2015", "sms_consent": true, "consent_evidence": "formulaire F-12 signé"
        }))).await;
        assert_eq!((w["sms_consent"].as_bool(), w["sms_consent_source"].as_str()), (Some(true), Some("worker_registration")));
        let path = format!("/api/workers/{}", w["id"].as_str().unwrap());
        let (s, w2) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"sms_consent": false, "consent_evidence": "appel du 3 nov."}))).await;
        assert_eq!((s, w2["sms_consent"].as_bool()), (StatusCode::OK, Some(false)));
        // No change, no ledger row.
        app.send(Method::PATCH, &path, Some(&key), Some(json!({"sms_consent": false}))).await;

        let (s, h) = app.send(Method::GET, &format!("{path}/consent"), Some(&key), None).await;
        assert_eq!(s, StatusCode::OK);
        let events = h["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{h}");
        assert_eq!((events[0]["source"].as_str(), events[0]["old_consent"].is_null(), events[0]["new_consent"].as_bool()), (Some("worker_registration"), true, Some(true)));
        assert_eq!(events[0]["evidence"], "formulaire F-12 signé");
        assert_eq!((events[1]["source"].as_str(), events[1]["old_consent"].as_bool(), events[1]["new_consent"].as_bool()), (Some("admin_api"), Some(true), Some(false)));
    }

    async fn changing_the_phone_clears_its_verification(app) {
        let key = app.tenant_with_key("acme").await;
        let (_, w) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean", "phone": "514 873 2015"}))).await;
        let id = w["id"].as_str().unwrap();
        app.exec(&format!("UPDATE workers SET phone_verified = TRUE, phone_verified_at = 5 WHERE id = '{id}'")).await;
        let path = format!("/api/workers/{id}");
        let (_, same) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"phone": "+15148732015"}))).await;
        assert_eq!(same["phone_verified"], true);
        let (s, w2) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"phone": "438 403 1234", "language": "en"}))).await;
        assert_eq!(s, StatusCode::OK, "{w2}");
        assert_eq!((w2["phone"].as_str(), w2["phone_verified"].as_bool(), w2["language"].as_str()), (Some("+14384031234"), Some(false), Some("en")));
    }

    async fn a_new_phone_number_needs_its_own_consent(app) {
        let key = app.tenant_with_key("acme").await;
        let (_, w) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean", "phone": "514 873 2015", "sms_consent": true}))).await;
        let path = format!("/api/workers/{}", w["id"].as_str().unwrap());
        let (_, w2) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"phone": "438 403 1234"}))).await;
        assert_eq!(w2["sms_consent"], false, "{w2}");
        let (_, h) = app.send(Method::GET, &format!("{path}/consent"), Some(&key), None).await;
        let last = h["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!((last["new_consent"].as_bool(), last["source"].as_str()), (Some(false), Some("admin_api")));
        assert!(last["evidence"].as_str().unwrap().contains("phone number changed"));
        // Consent given in the same request as the new number is kept.
        let (_, w3) = app.send(Method::PATCH, &path, Some(&key), Some(json!({"phone": "514 873 2015", "sms_consent": true, "consent_evidence": "oral, 2026-11-24"}))).await;
        assert_eq!(w3["sms_consent"], true);
    }

    async fn a_worker_can_only_be_placed_on_a_site_of_its_own_tenant(app) {
        let a = app.tenant_with_key("acme").await;
        let b = app.tenant_with_key("other").await;
        let (_, own) = app.send(Method::POST, "/api/sites", Some(&a), Some(json!({"name": "Usine"}))).await;
        let (_, foreign) = app.send(Method::POST, "/api/sites", Some(&b), Some(json!({"name": "Autre"}))).await;
        let (s, body) = app.send(Method::POST, "/api/workers", Some(&a), Some(json!({"name": "Jean", "phone": "514 873 2015", "site_id": foreign["id"]}))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with("site_id"));
        let (s, w) = app.send(Method::POST, "/api/workers", Some(&a), Some(json!({"name": "Jean", "phone": "514 873 2015", "site_id": own["id"]}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let (_, list) = app.send(Method::GET, &format!("/api/workers?site_id={}", own["id"].as_str().unwrap()), Some(&a), None).await;
        assert_eq!(list["workers"].as_array().unwrap().len(), 1);
        // Clearing the site with an explicit null.
        let (_, w2) = app.send(Method::PATCH, &format!("/api/workers/{}", w["id"].as_str().unwrap()), Some(&a), Some(json!({"site_id": null}))).await;
        assert!(w2["site_id"].is_null());
    }

    async fn a_tenant_key_never_reaches_another_tenants_workers(app) {
        let a = app.tenant_with_key("acme").await;
        let b = app.tenant_with_key("other").await;
        let (_, w) = app.send(Method::POST, "/api/workers", Some(&b), Some(json!({"name": "Secret", "phone": "514 873 2015"}))).await;
        let path = format!("/api/workers/{}", w["id"].as_str().unwrap());
        let before = app.snapshot().await;
        for (method, p, body) in [
            (Method::GET, path.clone(), None),
            (Method::GET, format!("{path}/consent"), None),
            (Method::PATCH, path.clone(), Some(json!({"name": "Pwned", "sms_consent": true}))),
            (Method::DELETE, path.clone(), None),
        ] {
            let (s, body) = app.send(method.clone(), &p, Some(&a), body).await;
            assert_eq!((s, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{method} {p}");
        }
        assert_eq!(app.snapshot().await, before);
        let (_, list) = app.send(Method::GET, "/api/workers", Some(&a), None).await;
        assert_eq!(list["workers"].as_array().unwrap().len(), 0);
    }
}
