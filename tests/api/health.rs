use reqwest::{Method, StatusCode};

use crate::both_backends;
use crate::helpers::*;

both_backends! {
    async fn liveness_and_readiness_answer_ok(app) {
        let (s, b) = app.send(Method::GET, "/healthz", None, None).await;
        assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ok")));
        let (s, b) = app.send(Method::GET, "/readyz", None, None).await;
        assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ready")));
    }

    async fn readiness_is_503_when_the_database_is_gone(app) {
        app.state.db.close().await;
        let (s, b) = app.send(Method::GET, "/readyz", None, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&b), "database_unavailable");
        // Liveness does not depend on the database.
        let (s, _) = app.send(Method::GET, "/healthz", None, None).await;
        assert_eq!(s, StatusCode::OK);
        // A tenant request gets 503 too, not a hang or a 500.
        let (s, b) = app.operator(Method::GET, "/api/tenants", None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
        assert_eq!(error_code(&b), "database_unavailable");
    }

    async fn unknown_routes_get_a_json_404_and_wrong_methods_a_json_405(app) {
        let (s, b) = app.send(Method::GET, "/nope/../etc/passwd", None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(error_code(&b), "not_found");
        let (s, b) = app.send(Method::PUT, "/healthz", None, None).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(error_code(&b), "method_not_allowed");
    }

    async fn every_response_carries_security_headers_and_a_request_id(app) {
        for path in ["/healthz", "/nope", "/api/tenants"] {
            let res = app.request(Method::GET, path, None).send().await.unwrap();
            let h = res.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(h["x-frame-options"], "DENY");
            assert!(h["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
            assert_eq!(h["referrer-policy"], "no-referrer");
            assert!(!h["x-request-id"].is_empty());
        }
    }
}

mod canonical_host {
    use super::*;

    both_backends! {
        with &[("APP_URL", "https://c-secur360.ca")];
        async fn www_redirects_to_the_apex_keeping_path_and_query(app) {
            let res = app.request(Method::GET, "/api/sites?page=2&q=a%20b", None)
                .header("host", "www.c-secur360.ca").send().await.unwrap();
            assert_eq!(res.status(), StatusCode::PERMANENT_REDIRECT);
            assert_eq!(res.headers()["location"], "https://c-secur360.ca/api/sites?page=2&q=a%20b");
            assert!(res.headers()["strict-transport-security"].to_str().unwrap().contains("max-age"));
            // The apex itself and other hosts are served normally.
            let res = app.request(Method::GET, "/healthz", None).header("host", "c-secur360.ca").send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let res = app.request(Method::GET, "/healthz", None).header("host", "www.other.ca").send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }

        async fn cors_allows_only_the_app_origin(app) {
            let res = app.request(Method::OPTIONS, "/api/sites", None)
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "GET")
                .send().await.unwrap();
            assert!(res.headers().get("access-control-allow-origin").is_none());
            let res = app.request(Method::GET, "/healthz", None).header("origin", "https://evil.example").send().await.unwrap();
            assert!(res.headers().get("access-control-allow-origin").is_none());
            // The app's own origin is allowed, by name (never `*`).
            let res = app.request(Method::GET, "/healthz", None).header("origin", "https://c-secur360.ca").send().await.unwrap();
            assert_eq!(res.headers()["access-control-allow-origin"], "https://c-secur360.ca");
        }
    }
}
