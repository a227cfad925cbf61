//! The admin runbook page over plain HTTP (both backends), `/metrics`, and the page in real headless Chromium.

use reqwest::{header, Method, StatusCode};
use secur360::audit::{self, Entry, Zone};
use secur360::on_db;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::helpers::*;

/// Log in through the form and return the `Set-Cookie` header and the session token.
pub async fn login(app: &TestApp) -> (String, String) {
    let res = app.client.post(app.url("/admin/login")).form(&[("token", ADMIN_TOKEN)]).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/admin/runbook");
    let set_cookie = res.headers()[header::SET_COOKIE].to_str().unwrap().to_owned();
    let token = set_cookie.strip_prefix("s360_session=").unwrap().split(';').next().unwrap().to_owned();
    (set_cookie, token)
}

pub async fn page(app: &TestApp, token: &str, path: &str) -> (StatusCode, String, Option<String>) {
    let res =
        app.client.get(app.url(path)).header(header::COOKIE, format!("s360_session={token}")).send().await.unwrap();
    let location = res.headers().get(header::LOCATION).map(|v| v.to_str().unwrap().to_owned());
    (res.status(), res.text().await.unwrap(), location)
}

async fn post_form(app: &TestApp, token: &str, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header(header::COOKIE, format!("s360_session={token}"))
        .form(form)
        .send()
        .await
        .unwrap()
}

pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("a CSRF field in the page") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

async fn admin_rows(app: &TestApp, action: &str) -> Vec<audit::AuditRow> {
    let f = audit::Filter { zone: Some("admin".into()), action: Some(action.into()), limit: 100, ..Default::default() };
    audit::query(&app.db, &f).await.unwrap()
}

/// A refused request's answer: an HTML page with the security headers (the middleware's), and no session cookie.
async fn error_page(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let h = res.headers();
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "{status}: {h:?}");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(h[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'none'"));
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(h.get(header::SET_COOKIE).is_none());
    let body = res.text().await.unwrap();
    assert!(body.starts_with("<!DOCTYPE html>") && body.contains("id=\"error-message\""), "{body}");
    (status, body)
}

/// The value of the first sample line starting with `prefix` in Prometheus text, 0 when absent.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).map_or(0.0, |v| v.parse().unwrap())
}

both_backends! {
    async fn without_a_session_the_runbook_redirects_to_the_login_form(app) {
        for token in [None, Some("not-a-session")] {
            let mut rb = app.client.get(app.url("/admin/runbook"));
            if let Some(t) = token {
                rb = rb.header(header::COOKIE, format!("s360_session={t}"));
            }
            let res = rb.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{token:?}");
            assert_eq!(res.headers()[header::LOCATION], "/admin/login");
        }
        let (s, body, _) = page(&app, "none", "/admin/login").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("Connexion opérateur") && body.contains("name=\"token\""), "{body}");
    }

    async fn a_wrong_token_shows_the_form_again_with_a_french_error_and_an_audited_failure(app) {
        let res = app.client.post(app.url("/admin/login")).form(&[("token", "wrong-token-value-123456789")]).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().get(header::SET_COOKIE).is_none());
        let body = res.text().await.unwrap();
        assert!(body.contains("Jeton invalide") && body.contains("name=\"token\""), "{body}");
        assert_eq!(app.count("admin_sessions").await, 0);
        let rows = admin_rows(&app, "login").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, "failure");
        assert!(!rows[0].details.contains("wrong-token-value"), "{}", rows[0].details);
    }

    async fn logging_in_sets_a_strict_http_only_cookie_and_stores_only_the_token_hash(app) {
        let (set_cookie, token) = login(&app).await;
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"] {
            assert!(set_cookie.contains(flag), "{flag} missing from {set_cookie}");
        }
        assert!(!set_cookie.contains("Secure"), "plain-http APP_URL: {set_cookie}");
        let stored: Vec<String> = on_db!(&app.db, p => sqlx::query_scalar("SELECT token_hash FROM admin_sessions").fetch_all(p).await).unwrap();
        assert_eq!(stored, [hex::encode(Sha256::digest(token.as_bytes()))]);
        let rows = admin_rows(&app, "login").await;
        assert_eq!(rows[0].outcome, "success");
        assert!(!rows[0].details.contains(ADMIN_TOKEN) && !rows[0].details.contains(&token));

        let (s, body, _) = page(&app, &token, "/admin/runbook").await;
        assert_eq!(s, StatusCode::OK);
        for section in ["Domaine &#38; DNS", "Variables", "Stripe", "Twilio", "Base de données", "Tâches planifiées",
                        "Procédures", "Surveillance", "Journal d&#39;audit", "MODE SIMULÉ"] {
            assert!(body.contains(section), "{section} missing");
        }
        assert!(!body.contains(ADMIN_TOKEN), "the page shows a secret");
        assert!(body.contains("ADMIN_TOKEN") && body.contains("set (sha256:"));
    }

    async fn the_english_toggle_is_remembered_on_the_session(app) {
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook?lang=en").await;
        assert!(body.contains("Operations runbook") && body.contains("SIMULATED MODE"));
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        assert!(body.contains("Audit log") && body.contains("lang=fr"));
        let (_, body, _) = page(&app, &token, "/admin/runbook?lang=fr").await;
        assert!(body.contains("Journal d&#39;audit"));
    }

    async fn a_procedure_post_without_the_csrf_token_is_refused_and_has_no_effect(app) {
        let (_, token) = login(&app).await;
        let before = app.snapshot().await;
        for form in [&[("to", "+15145550123"), ("body", "x")][..], &[("csrf_token", "forged"), ("to", "+15145550123"), ("body", "x")][..]] {
            let res = post_form(&app, &token, "/admin/procedures/send-test-sms", form).await;
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            assert!(res.text().await.unwrap().contains("Requête refusée"));
        }
        let res = post_form(&app, &token, "/admin/logout", &[]).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(app.snapshot().await, before);
        assert_eq!(app.count("admin_sessions").await, 1);
    }

    async fn a_post_from_a_foreign_origin_is_refused_even_with_the_csrf_token(app) {
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        let before = app.snapshot().await;
        let res = app.client.post(app.url("/admin/procedures/billing-sync"))
            .header(header::COOKIE, format!("s360_session={token}"))
            .header(header::ORIGIN, "https://evil.example")
            .form(&[("csrf_token", csrf_of(&body))])
            .send().await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert_eq!(app.snapshot().await, before);
    }

    async fn a_procedure_redirects_back_with_its_visible_result_and_is_audited(app) {
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        let csrf = csrf_of(&body);
        let res = post_form(&app, &token, "/admin/procedures/send-test-sms",
            &[("csrf_token", &csrf), ("to", "514 555 0123"), ("body", "Test <b>SMS</b>")]).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with("/admin/runbook?result="), "{location}");
        let (_, body, _) = page(&app, &token, &location).await;
        assert!(body.contains("id=\"procedure-result\""), "no result shown");
        // Without Twilio the message is queued for the simulated provider, and the page says so.
        assert!(body.contains("Réussi — Envoyer un SMS de test") && body.contains("SIMULÉ"), "{body}");
        assert_eq!(app.count("sms_messages").await, 1);
        let rows = admin_rows(&app, "send_sms").await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, "success");
        assert!(rows[0].actor.starts_with("admin_session:"));
        assert!(!rows[0].details.contains("5145550123") && !rows[0].details.contains("SMS</b>"), "{}", rows[0].details);

        // A bad number is refused with its reason, and a result id that is not a procedure shows nothing.
        let res = post_form(&app, &token, "/admin/procedures/send-test-sms", &[("csrf_token", &csrf), ("to", "123"), ("body", "x")]).await;
        let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let (_, body, _) = page(&app, &token, &location).await;
        assert!(body.contains("numéro invalide"), "{body}");
        let (_, body, _) = page(&app, &token, "/admin/runbook?result=1").await;
        assert!(!body.contains("id=\"procedure-result\""));

        let res = post_form(&app, &token, "/admin/procedures/resync-tenant", &[("csrf_token", &csrf), ("tenant_id", "ghost")]).await;
        let location = res.headers()[header::LOCATION].to_str().unwrap().to_owned();
        let (_, body, _) = page(&app, &token, &location).await;
        assert!(body.contains("client inconnu / unknown tenant: ghost"), "{body}");
        for (name, action) in [("billing-sync", "sync"), ("sms-cleanup", "cleanup")] {
            let res = post_form(&app, &token, &format!("/admin/procedures/{name}"), &[("csrf_token", &csrf)]).await;
            assert_eq!(res.status(), StatusCode::SEE_OTHER);
            assert_eq!(admin_rows(&app, action).await.len(), 1, "{name}");
        }
    }

    async fn html_in_audit_details_is_shown_as_text(app) {
        let entry = Entry::new(Zone::Sms, "inbound", "tests").details(json!({ "body": "<script>alert(1)</script>" }));
        audit::record(&app.db, &entry, 1_000).await.unwrap();
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        assert!(body.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "not escaped as text");
        assert!(!body.contains("<script>"), "raw script tag in the page");
    }

    async fn the_audit_section_filters_by_zone_action_and_tenant_and_pages_back(app) {
        for i in 0..30 {
            let e = Entry::new(Zone::Billing, "sync", "tests").tenant("acme").details(json!({ "i": i }));
            audit::record(&app.db, &e, 1_000 + i).await.unwrap();
        }
        audit::record(&app.db, &Entry::new(Zone::Dns, "config_check", "tests"), 5_000).await.unwrap();
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook?zone=dns").await;
        assert!(body.contains("config_check") && !body.contains("{&#34;i&#34;:"), "zone filter");
        let (_, body, _) = page(&app, &token, "/admin/runbook?zone=billing&action=sync&tenant=acme").await;
        assert!(body.contains("{&#34;i&#34;:29}") && !body.contains("{&#34;i&#34;:4}"));
        let older = body.split("id=\"audit-older\"").next().unwrap().rsplit("href=\"").next().unwrap().split('"').next().unwrap().replace("&#38;", "&");
        assert!(older.contains("before="), "{older}");
        let (_, body, _) = page(&app, &token, &older).await;
        assert!(body.contains("{&#34;i&#34;:4}") && !body.contains("{&#34;i&#34;:29}"));
    }

    async fn a_malformed_login_form_or_query_gets_an_html_page_naming_the_problem_and_the_fix(app) {
        let before = app.snapshot().await;
        let login = || app.client.post(app.url("/admin/login"));
        // Not form-encoded: 415, in French by default, with what was received (escaped as text).
        let res = login().header(header::CONTENT_TYPE, "application/json").body(format!("{{\"token\": \"{ADMIN_TOKEN}\"}}")).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.contains("<html lang=\"fr\">") && body.contains("Requête invalide"), "{body}");
        assert!(body.contains("formulaire HTML ordinaire") && body.contains("Content-Type: application/json"), "{body}");
        let res = login().body(format!("token={ADMIN_TOKEN}")).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "no content type");
        assert!(body.contains("Content-Type: —"), "{body}");
        let res = login().header(header::CONTENT_TYPE, "text/<b>x</b>").body("token=x").send().await.unwrap();
        let (_, body) = error_page(res).await;
        assert!(body.contains("Content-Type: text/&#60;b&#62;x&#60;/b&#62;") && !body.contains("<b>"), "{body}");
        // In English when the request asks for it: in its query, or in the form itself.
        let res = app.client.post(app.url("/admin/login?lang=en")).header(header::CONTENT_TYPE, "text/plain").body("token=x").send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.contains("<html lang=\"en\">") && body.contains("Invalid request") && body.contains("plain HTML form"), "{body}");
        // A field twice: 400, the parser's words as the detail.
        let res = login().form(&[("token", ADMIN_TOKEN), ("token", "x"), ("lang", "en")]).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("The form sent is malformed") && body.contains("duplicate field `token`"), "{body}");
        // Too large: 413.
        let res = login().form(&[("token", "x".repeat(300 * 1024))]).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(body.contains("taille maximale") && body.contains("256 KiB"), "{body}");
        // The login form's query: a parameter twice (the first `lang` is the page's language).
        let res = app.client.get(app.url("/admin/login?lang=en&lang=fr")).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid parameters") && body.contains("duplicate field `lang`"), "{body}");
        // Invalid percent-escapes are taken as text (as browsers do): the form is shown.
        let (s, body, _) = page(&app, "none", "/admin/login?lang=%zz%").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("Connexion opérateur"), "{body}");
        // A NUL: refused by the router's middleware, with a page here too.
        let res = app.client.get(app.url("/admin/login?lang=en&x=%00")).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("The page&#39;s address is not valid"), "{body}");
        // Nothing was done: no session, no audited login attempt.
        assert_eq!(app.snapshot().await, before);
        assert_eq!(app.count("admin_sessions").await, 0);
    }

    async fn malformed_forms_and_queries_of_a_session_are_explained_in_its_language_without_effect(app) {
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook?lang=en").await;
        let csrf = csrf_of(&body);
        let before = app.snapshot().await;
        let cookie = format!("s360_session={token}");
        let res = app.client.get(app.url("/admin/runbook?zone=dns&zone=sms")).header(header::COOKIE, &cookie).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("Invalid request") && body.contains("The page&#39;s address holds invalid parameters"), "{body}");
        assert!(body.contains("duplicate field `zone`"), "{body}");
        let res = app.client.post(app.url("/admin/procedures/send-test-sms")).header(header::COOKIE, &cookie)
            .json(&json!({ "csrf_token": csrf, "to": "+15145550123", "body": "x" })).send().await.unwrap();
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body.contains("This form must be sent encoded as a plain HTML form"), "{body}");
        let res = post_form(&app, &token, "/admin/procedures/send-test-sms",
            &[("csrf_token", &csrf), ("to", "+15145550123"), ("to", "+15145550124"), ("body", "x")]).await;
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("duplicate field `to`"), "{body}");
        let res = post_form(&app, &token, "/admin/procedures/send-test-sms", &[("csrf_token", &csrf), ("to", "+15145550123"), ("body", "a\0b")]).await;
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("NUL character"), "{body}");
        let res = post_form(&app, &token, "/admin/procedures/no-such-procedure", &[("csrf_token", &csrf)]).await;
        let (s, body) = error_page(res).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("This procedure does not exist"), "{body}");
        let res = post_form(&app, &token, "/admin/logout", &[("csrf_token", &csrf), ("csrf_token", &csrf)]).await;
        let (s, _) = error_page(res).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(app.snapshot().await, before, "a refused form has no effect");
        assert!(admin_rows(&app, "send_sms").await.is_empty() && admin_rows(&app, "logout").await.is_empty());
        assert_eq!(app.count("admin_sessions").await, 1, "still logged in");
    }

    async fn logout_ends_the_session_on_the_server(app) {
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        let res = post_form(&app, &token, "/admin/logout", &[("csrf_token", &csrf_of(&body))]).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert_eq!(res.headers()[header::LOCATION], "/admin/login");
        assert!(res.headers()[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
        assert_eq!(app.count("admin_sessions").await, 0);
        let (s, _, location) = page(&app, &token, "/admin/runbook").await;
        assert_eq!((s, location.as_deref()), (StatusCode::SEE_OTHER, Some("/admin/login")));
        assert_eq!(admin_rows(&app, "logout").await.len(), 1);
    }

    async fn an_expired_session_is_refused_by_the_server(app) {
        let (_, token) = login(&app).await;
        app.exec("UPDATE admin_sessions SET expires_at = 1").await;
        let (s, _, location) = page(&app, &token, "/admin/runbook").await;
        assert_eq!((s, location.as_deref()), (StatusCode::SEE_OTHER, Some("/admin/login")));
    }

    async fn metrics_need_the_operator_token_and_label_latency_by_matched_route(app) {
        let (s, _) = app.send(Method::GET, "/metrics", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = app.send(Method::GET, "/metrics", Some("wrong-token-wrong-token-wrong"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);

        let metrics = || async {
            let res = app.request(Method::GET, "/metrics", Some(ADMIN_TOKEN)).send().await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
            res.text().await.unwrap()
        };
        let route = "http_requests_duration_seconds_count{route=\"/api/tenants/{id}\",status=\"404\"}";
        let unmatched = "http_requests_duration_seconds_count{route=\"unmatched\",status=\"404\"}";
        let first = metrics().await;
        let (s, _) = app.operator(Method::GET, "/api/tenants/no-such-tenant-xyz", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        app.send(Method::GET, "/no/such/route-xyz", None, None).await;
        let text = metrics().await;
        assert!(sample(&text, route) >= sample(&first, route) + 1.0, "{text}");
        assert!(sample(&text, unmatched) >= sample(&first, unmatched) + 1.0);
        assert!(text.contains("http_requests_duration_seconds_bucket{route=\"/api/tenants/{id}\",status=\"404\",le=\"0.005\"}"));
        assert!(!text.contains("no-such-tenant-xyz") && !text.contains("route-xyz"), "raw paths in labels");
        assert!(text.contains("db_pool_connections{state=\"size\""));

        // The admin page's percentiles read the same observations.
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        assert!(body.contains("/api/tenants/{id}") && body.contains("id=\"latency\""));
    }
}

both_backends! {
    async fn recent_job_runs_are_listed_with_their_counts_and_errors_as_text(app) {
        app.exec("INSERT INTO job_runs (id, job, occurrence, trigger, instance, status, counts, error, started_at, lease_until, finished_at) \
                  VALUES ('run_1', 'billing_sync', 'o1', 'schedule', 'i1', 'partial', '{\"customers\":3}', '<b>boom</b>', 1000, 2000, 1500)").await;
        let (_, token) = login(&app).await;
        let (_, body, _) = page(&app, &token, "/admin/runbook").await;
        let jobs = body.split("id=\"jobs\"").nth(1).unwrap().split("</section>").next().unwrap();
        for text in ["billing_sync", "schedule", "partial", "1970-01-01T00:00:01.000Z", "1970-01-01T00:00:01.500Z",
                     "customers", "&#60;b&#62;boom&#60;/b&#62;"] {
            assert!(jobs.contains(text), "{text} missing from {jobs}");
        }
    }
}

mod configured_providers {
    use super::*;

    const STRIPE_KEY: &str = "sk_test_secretvalue123456";
    const TWILIO_TOKEN: &str = "twilio-auth-token-secret-value";

    both_backends! {
        with &[
            ("STRIPE_SECRET_KEY", STRIPE_KEY),
            ("STRIPE_WEBHOOK_SECRET", "whsec_webhooksecretvalue"),
            ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
            ("TWILIO_AUTH_TOKEN", TWILIO_TOKEN),
            ("TWILIO_PHONE_NUMBER", "+15145550100"),
        ];
        async fn configured_providers_show_presence_and_fingerprints_never_secrets(app) {
            let (_, token) = login(&app).await;
            let (_, body, _) = page(&app, &token, "/admin/runbook").await;
            for secret in [STRIPE_KEY, TWILIO_TOKEN, "whsec_webhooksecretvalue", ADMIN_TOKEN] {
                assert!(!body.contains(secret), "a secret is shown");
            }
            assert!(!body.contains("MODE SIMULÉ") && body.contains("+15145550100"));
            let stripe = body.split("id=\"stripe\"").nth(1).unwrap().split("</section>").next().unwrap();
            assert!(!stripe.contains("non configuré") && stripe.contains(">oui<"), "{stripe}");
        }
    }
}

mod https_app_url {
    use super::*;

    both_backends! {
        with &[("APP_URL", "https://c-secur360.ca")];
        async fn the_session_cookie_is_secure_when_app_url_is_https(app) {
            let (set_cookie, _) = login(&app).await;
            assert!(set_cookie.contains("; Secure"), "{set_cookie}");
        }
    }
}

/// The page in real headless Chromium: log in by typing the token, see every section, press « Envoyer un SMS de
/// test » and see the result; the screenshot is kept as `target/admin-runbook.png` (a CI artifact).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbook_works_in_headless_chromium_from_login_to_a_procedure_result() {
    crate::cdp::chromium_path();
    // APP_URL must be the address Chromium uses: the form POSTs carry it as their Origin.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (bind, origin) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let app = spawn_app_with(Backend::Sqlite, &[("BIND_ADDR", &bind), ("APP_URL", &origin)]).await;
    let browser = crate::cdp::Browser::launch().await;
    let mut page = browser.page().await;

    page.goto(&app.url("/admin/runbook")).await;
    assert_eq!(page.eval("location.pathname").await, "/admin/login", "no session: redirected to the login form");
    page.type_into("#token", ADMIN_TOKEN).await;
    page.submit("#login-submit").await;
    let text = page.eval("document.body.innerText").await;
    assert_eq!(page.eval("location.pathname").await, "/admin/runbook", "after login: {text}");

    let headings = page.eval("[...document.querySelectorAll('h2')].map(h => h.textContent).join('|')").await;
    let headings = headings.as_str().unwrap();
    for section in [
        "Domaine & DNS",
        "Variables",
        "Stripe",
        "Twilio",
        "Base de données",
        "Tâches planifiées",
        "Procédures",
        "Surveillance",
        "Journal d'audit",
    ] {
        assert!(headings.contains(section), "{section} missing from {headings}");
    }
    let simulated = page.eval("document.getElementById('twilio-simulated').textContent").await;
    assert!(simulated.as_str().unwrap().contains("SIMULÉ"));

    page.type_into("#sms-to", "+1 514 555 0123").await;
    page.type_into("#sms-body", "Test du runbook").await;
    page.submit("#send-test-sms").await;
    assert!(page.eval("location.search").await.as_str().unwrap().starts_with("?result="));
    let result = page.eval("document.getElementById('procedure-result').textContent").await;
    let result = result.as_str().expect("a visible procedure result");
    assert!(result.contains("Réussi — Envoyer un SMS de test") && result.contains("en file d'attente"), "{result}");
    assert_eq!(admin_rows(&app, "send_sms").await.len(), 1);

    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{}/target", env!("CARGO_MANIFEST_DIR")));
    let shot = std::path::Path::new(&target).join("admin-runbook.png");
    page.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot too small");
}
