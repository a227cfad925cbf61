use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn operator_routes_refuse_missing_and_wrong_tokens(app) {
        for token in [None, Some("wrong-token-wrong-token-wrong"), Some("")] {
            let (s, b) = app.send(Method::GET, "/api/tenants", token, None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{token:?}");
            assert_eq!(error_code(&b), "unauthorized");
        }
        let res = app.request(Method::GET, "/api/tenants", None).send().await.unwrap();
        assert!(res.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }

    async fn a_tenant_key_is_not_an_operator_token(app) {
        let key = app.tenant_with_key("acme").await;
        let (s, _) = app.send(Method::GET, "/api/tenants", Some(&key), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        // …and the operator token is not a tenant key.
        let (s, _) = app.send(Method::GET, "/api/sites", Some(ADMIN_TOKEN), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }

    async fn tenant_routes_refuse_missing_malformed_forged_and_revoked_keys(app) {
        let key = app.tenant_with_key("acme").await;
        let forged = format!("{}{}", &key[..key.len() - 1], if key.ends_with('0') { '1' } else { '0' });
        for bad in [None, Some("garbage"), Some("s360_key_x_y"), Some(forged.as_str())] {
            let (s, b) = app.send(Method::GET, "/api/sites", bad, None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert_eq!(error_code(&b), "unauthorized");
        }
        let (s, _) = app.send(Method::GET, "/api/sites", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK);

        let key_id = key.trim_start_matches("s360_").rsplit_once('_').unwrap().0.to_owned();
        let (s, _) = app.operator(Method::DELETE, &format!("/api/tenants/acme/api-keys/{key_id}"), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, b) = app.send(Method::GET, "/api/sites", Some(&key), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(b["error"]["message"].as_str().unwrap().contains("revoked"));
        // Revoking twice is a 404, not a silent success.
        let (s, _) = app.operator(Method::DELETE, &format!("/api/tenants/acme/api-keys/{key_id}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    async fn keys_are_stored_hashed_and_record_their_last_use(app) {
        let key = app.tenant_with_key("acme").await;
        let (_, list) = app.operator(Method::GET, "/api/tenants/acme/api-keys", None).await;
        let listed = &list["api_keys"][0];
        assert!(listed["last_used_at"].is_null());
        assert!(listed.get("secret_hash").is_none() && listed.get("key").is_none());
        let stored: Vec<String> = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT secret_hash FROM api_keys").fetch_all(p).await).unwrap();
        assert!(stored.iter().all(|h| !h.contains(&key) && h.len() == 64));

        app.send(Method::GET, "/api/sites", Some(&key), None).await;
        let (_, list) = app.operator(Method::GET, "/api/tenants/acme/api-keys", None).await;
        assert!(list["api_keys"][0]["last_used_at"].is_string());
    }

    async fn a_key_revoked_for_another_tenant_is_not_found(app) {
        let key = app.tenant_with_key("acme").await;
        app.tenant_with_key("other").await;
        let key_id = key.trim_start_matches("s360_").rsplit_once('_').unwrap().0.to_owned();
        let (s, _) = app.operator(Method::DELETE, &format!("/api/tenants/other/api-keys/{key_id}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.send(Method::GET, "/api/sites", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK);
    }
}

mod without_admin_token {
    use super::*;

    #[tokio::test]
    async fn operator_access_is_refused_when_admin_token_is_unset() {
        let (db, url, _dir) = fresh_database(Backend::Sqlite).await;
        let vars = [("BIND_ADDR", "127.0.0.1:0"), ("DATABASE_URL", url.as_str())];
        let settings =
            secur360::config::Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
                .unwrap();
        let app =
            secur360::startup::Application::build_with(settings, db, secur360::time::Clock::system()).await.unwrap();
        let addr = app.local_addr();
        tokio::spawn(app.run_until(std::future::pending()));
        let res = reqwest::Client::new()
            .post(format!("http://{addr}/api/tenants"))
            .bearer_auth("")
            .json(&json!({"id": "acme", "name": "Acme"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains("ADMIN_TOKEN"));
    }
}
