use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn a_tenant_admin_creates_lists_reads_updates_and_deletes_sites(app) {
        let key = app.tenant_with_key("acme").await;
        let (s, site) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine Nord", "address": "1 rue A"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{site}");
        let id = site["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("site_"));
        assert_eq!(site["tenant_id"], "acme");

        let (s, list) = app.send(Method::GET, "/api/sites", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!((list["sites"].as_array().unwrap().len(), list["max_sites"].as_i64(), list["sites_used"].as_i64()), (1, Some(1), Some(1)));

        let (s, got) = app.send(Method::GET, &format!("/api/sites/{id}"), Some(&key), None).await;
        assert_eq!((s, got["name"].as_str()), (StatusCode::OK, Some("Usine Nord")));

        let (s, upd) = app.send(Method::PATCH, &format!("/api/sites/{id}"), Some(&key), Some(json!({"address": null}))).await;
        assert_eq!((s, upd["name"].as_str(), upd["address"].is_null()), (StatusCode::OK, Some("Usine Nord"), true));
        let (_, upd) = app.send(Method::PATCH, &format!("/api/sites/{id}"), Some(&key), Some(json!({"name": "Usine Sud"}))).await;
        assert_eq!(upd["name"], "Usine Sud");

        let (s, _) = app.send(Method::DELETE, &format!("/api/sites/{id}"), Some(&key), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = app.send(Method::GET, &format!("/api/sites/{id}"), Some(&key), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    async fn a_site_beyond_the_entitlement_is_refused_naming_the_limit(app) {
        let key = app.tenant_with_key("acme").await;
        let (s, _) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "One"}))).await;
        assert_eq!(s, StatusCode::CREATED);
        let before = app.snapshot().await;
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Two"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::PAYMENT_REQUIRED, "site_limit_reached"));
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains("1 site") && msg.contains("add-on"), "{msg}");
        assert_eq!(app.snapshot().await, before);
    }

    async fn the_site_limit_follows_the_subscription_add_on(app) {
        let key = app.tenant_without_subscription("acme").await;
        subscribe(&app.db, "acme", "active", 2).await;
        for name in ["A", "B", "C"] {
            let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": name}))).await;
            assert_eq!(s, StatusCode::CREATED, "{name}: {b}");
        }
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "D"}))).await;
        assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("allows 3 site(s)"));
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64(), e["sites_used"].as_i64()), (Some("full"), Some(3), Some(3)));
    }

    async fn a_canceled_subscription_grants_one_site_only(app) {
        let key = app.tenant_without_subscription("acme").await;
        subscribe(&app.db, "acme", "canceled", 4).await;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("suspended"), Some(1)));
    }

    async fn concurrent_creations_cannot_exceed_the_limit(app) {
        let key = app.tenant_without_subscription("acme").await;
        subscribe(&app.db, "acme", "active", 1).await;
        let requests = (0..8).map(|i| app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": format!("S{i}")}))));
        let results = futures::future::join_all(requests).await;
        let created = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
        let refused = results.iter().filter(|(s, _)| *s == StatusCode::PAYMENT_REQUIRED).count();
        assert_eq!((created, refused), (2, 6), "{results:?}");
        assert_eq!(app.count("sites").await, 2);
    }

    async fn a_duplicate_site_name_is_a_conflict(app) {
        let key = app.tenant_without_subscription("acme").await;
        subscribe(&app.db, "acme", "active", 5).await;
        app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "site_exists"));
        let (_, other) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Autre"}))).await;
        let (s, b) = app.send(Method::PATCH, &format!("/api/sites/{}", other["id"].as_str().unwrap()), Some(&key), Some(json!({"name": "Usine"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "site_exists"));
    }

    async fn a_tenant_key_never_reaches_another_tenants_sites(app) {
        let a = app.tenant_with_key("acme").await;
        let b = app.tenant_with_key("other").await;
        let (_, site) = app.send(Method::POST, "/api/sites", Some(&b), Some(json!({"name": "Secret"}))).await;
        let path = format!("/api/sites/{}", site["id"].as_str().unwrap());
        let before = app.snapshot().await;
        for (method, body) in [(Method::GET, None), (Method::PATCH, Some(json!({"name": "Pwned"}))), (Method::DELETE, None)] {
            let (s, body) = app.send(method.clone(), &path, Some(&a), body).await;
            assert_eq!((s, error_code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{method}");
        }
        assert_eq!(app.snapshot().await, before);
        let (_, list) = app.send(Method::GET, "/api/sites", Some(&a), None).await;
        assert_eq!(list["sites"].as_array().unwrap().len(), 0);
        let (_, got) = app.send(Method::GET, &path, Some(&b), None).await;
        assert_eq!(got["name"], "Secret");
    }
}
