//! Every kind of bad request body gets a clear 4xx in the SPEC §7 shape and writes nothing.

use reqwest::{Method, StatusCode};

use crate::both_backends;
use crate::helpers::*;

enum Who {
    Operator,
    Tenant,
}

both_backends! {
    async fn bad_bodies_are_refused_with_the_right_status_and_write_nothing(app) {
        let key = app.tenant_with_key("acme").await;
        let (_, site) = app.send(Method::POST, "/api/sites", Some(&key), Some(serde_json::json!({"name": "Usine"}))).await;
        let (_, worker) = app.send(Method::POST, "/api/workers", Some(&key), Some(serde_json::json!({"name": "Jean", "phone": "514 873 2015"}))).await;
        let site_path = format!("/api/sites/{}", site["id"].as_str().unwrap());
        let worker_path = format!("/api/workers/{}", worker["id"].as_str().unwrap());
        let endpoints: Vec<(Who, Method, String)> = vec![
            (Who::Operator, Method::POST, "/api/tenants".into()),
            (Who::Operator, Method::PATCH, "/api/tenants/acme".into()),
            (Who::Tenant, Method::POST, "/api/sites".into()),
            (Who::Tenant, Method::PATCH, site_path),
            (Who::Tenant, Method::POST, "/api/workers".into()),
            (Who::Tenant, Method::PATCH, worker_path),
        ];
        let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(300 * 1024));
        let cases: Vec<(&str, Option<&str>, String, StatusCode, &str)> = vec![
            ("malformed JSON", Some("application/json"), "{\"name\": ".into(), StatusCode::BAD_REQUEST, "malformed_json"),
            ("not JSON at all", Some("application/json"), "name=x".into(), StatusCode::BAD_REQUEST, "malformed_json"),
            ("no content type", None, "{\"name\": \"x\"}".into(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ("form content type", Some("application/x-www-form-urlencoded"), "name=x".into(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ("too large", Some("application/json"), huge, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ("unknown field", Some("application/json"), "{\"nmae\": \"x\"}".into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            ("wrong type", Some("application/json"), "{\"name\": 42}".into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            ("array body", Some("application/json"), "[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        ];
        let before = app.snapshot().await;
        for (who, method, path) in &endpoints {
            let token = match who { Who::Operator => ADMIN_TOKEN, Who::Tenant => key.as_str() };
            for (label, ctype, body, want, code) in &cases {
                let mut rb = app.request(method.clone(), path, Some(token)).body(body.clone());
                if let Some(c) = ctype {
                    rb = rb.header("content-type", *c);
                }
                let (s, b) = read(rb.send().await.unwrap()).await;
                assert_eq!(s, *want, "{method} {path} {label}: {b}");
                assert_eq!(error_code(&b), *code, "{method} {path} {label}");
            }
        }
        assert_eq!(app.snapshot().await, before);
    }

    async fn sql_metacharacters_and_traversal_in_fields_are_data_not_code(app) {
        let key = app.tenant_with_key("acme").await;
        let nasty = "Robert'); DROP TABLE workers;-- ../../etc/passwd %00 <script>";
        let (s, site) = app.send(Method::POST, "/api/sites", Some(&key), Some(serde_json::json!({"name": nasty}))).await;
        assert_eq!(s, StatusCode::CREATED, "{site}");
        assert_eq!(site["name"], nasty);
        let (s, _) = app.send(Method::GET, "/api/sites/'%20OR%201=1--", Some(&key), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, list) = app.send(Method::GET, "/api/workers?site_id=x'%20OR%20'1'='1", Some(&key), None).await;
        assert_eq!((s, list["workers"].as_array().unwrap().len()), (StatusCode::OK, 0));
        assert_eq!(app.count("workers").await, 0);
    }

    async fn an_unknown_query_parameter_is_refused(app) {
        let key = app.tenant_with_key("acme").await;
        let (s, b) = app.send(Method::GET, "/api/workers?sit_id=x", Some(&key), None).await;
        assert_eq!((s, error_code(&b)), (StatusCode::BAD_REQUEST, "invalid_query"));
        let (s, b) = app.operator(Method::GET, "/api/audit?limit=abc", None).await;
        assert_eq!((s, error_code(&b)), (StatusCode::BAD_REQUEST, "invalid_query"));
        let (s, b) = app.operator(Method::GET, "/api/audit?zone=moon", None).await;
        assert_eq!((s, error_code(&b)), (StatusCode::BAD_REQUEST, "invalid_query"));
    }
}
