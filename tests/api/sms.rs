//! SMS alerts end to end: queuing, consent, limits, the dispatcher against a fake Twilio, status callbacks.
//! Time is a manual clock; the dispatcher is driven with `run_once(now)` (no loop, no sleeps).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secur360::db::sms as sms_db;
use secur360::domain::twilio_signature;
use secur360::on_db;
use secur360::sms::alerts::EMERGENCY_PRIORITY;
use secur360::sms::dispatcher::{run_once, run_pass, DispatchReport};
use secur360::time::Clock;
use serde_json::{json, Value};

use crate::fake_twilio::{self, FakeTwilio, Reply};
use crate::helpers::*;

/// A minute boundary, so rate windows are predictable.
pub const T0: i64 = 1_800_000_000_000;

pub async fn sms_app(backend: Backend, twilio: bool, extra: &[(&str, &str)]) -> (TestApp, FakeTwilio) {
    let fake = FakeTwilio::start().await;
    let mut vars = if twilio { fake.vars() } else { vec![] };
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (spawn_app_at(backend, &vars, Clock::manual(T0)).await, fake)
}

/// `async fn name(app, fake, twilio = bool, vars = &[..]) { … }` on both backends.
macro_rules! sms_tests {
    ($(async fn $name:ident($app:ident, $fake:ident, twilio = $tw:expr, vars = $extra:expr) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    #[allow(unused_variables)]
                    let ($app, $fake) = sms_app(Backend::Sqlite, $tw, $extra).await;
                    $body
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    #[allow(unused_variables)]
                    let ($app, $fake) = sms_app(Backend::Postgres, $tw, $extra).await;
                    $body
                }
            }
        )*
    };
}

pub async fn worker(app: &TestApp, key: &str, name: &str, phone: &str, consent: bool) -> String {
    let mut body = json!({ "name": name, "phone": phone, "language": "fr" });
    if consent {
        body["sms_consent"] = json!(true);
        body["consent_evidence"] = json!("formulaire F-12");
    }
    let (s, w) = app.send(Method::POST, "/api/workers", Some(key), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{w}");
    w["id"].as_str().unwrap().to_owned()
}

pub async fn alert(app: &TestApp, key: &str, body: Value) -> (StatusCode, Value) {
    app.send(Method::POST, "/api/sms/alerts", Some(key), Some(body)).await
}

pub async fn alert_with_key(app: &TestApp, key: &str, idem: &str, body: Value) -> (StatusCode, Value) {
    let rb = app.request(Method::POST, "/api/sms/alerts", Some(key)).header("Idempotency-Key", idem).json(&body);
    read(rb.send().await.unwrap()).await
}

async fn test_sms(app: &TestApp, to: &str, body: &str) -> Value {
    let (s, b) = app.operator(Method::POST, "/api/send-sms", Some(json!({ "to": to, "body": body }))).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b
}

pub async fn run(app: &TestApp, now: i64) -> DispatchReport {
    run_once(&app.state, now).await.expect("dispatch pass")
}

/// The pass of emergencies only that the dispatcher loop runs once a second's budget is spent.
async fn run_emergencies(app: &TestApp, now: i64) -> DispatchReport {
    run_pass(&app.state, now, 128, sms_db::Due::QueuedFromPriority(EMERGENCY_PRIORITY))
        .await
        .expect("dispatch pass of emergencies")
}

/// `n` due general messages `msg_bulk_1` … `msg_bulk_{n}`, oldest first, queued by SQL (the API's rate limit would
/// refuse them).
async fn queue_general_backlog(app: &TestApp, n: usize) {
    app.exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
         INSERT INTO sms_messages (id, kind, priority, to_phone, to_phone_masked, body, encoding, segments, status, \
           attempts, next_attempt_at, created_at, status_updated_at) \
         SELECT 'msg_bulk_' || i, 'general_alert', 0, '+15148732099', '+1••••••••99', 'general', 'gsm7', 1, 'queued', \
           0, {t} - 100000 + i, {t} - 100000 + i, {t} FROM n",
        t = T0
    ))
    .await;
}

async fn scalar_text(app: &TestApp, sql: &str, id: &str) -> Option<String> {
    on_db!(&app.db, p => sqlx::query_scalar::<_, Option<String>>(sql).bind(id).fetch_one(p).await).unwrap()
}

async fn scalar_i64(app: &TestApp, sql: &str, id: &str) -> i64 {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(p).await).unwrap()
}

async fn message_status(app: &TestApp, id: &str) -> String {
    sms_db::message_status(&app.db, id).await.unwrap().expect("message exists")
}

async fn get_alert(app: &TestApp, key: &str, id: &str) -> Value {
    let (s, b) = app.send(Method::GET, &format!("/api/sms/alerts/{id}"), Some(key), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

const STATUS_URL: &str = "https://c-secur360.example/api/sms/status";

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn post_callback(app: &TestApp, params: &[(String, String)], signature: Option<&str>) -> (StatusCode, Value) {
    let mut rb = app.client.post(app.url("/api/sms/status")).form(params);
    if let Some(sig) = signature {
        rb = rb.header("X-Twilio-Signature", sig);
    }
    read(rb.send().await.unwrap()).await
}

async fn signed_callback(app: &TestApp, sid: &str, status: &str) -> StatusCode {
    let params = form(&[("MessageSid", sid), ("MessageStatus", status), ("AccountSid", fake_twilio::ACCOUNT_SID)]);
    let sig = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
    post_callback(app, &params, Some(&sig)).await.0
}

sms_tests! {
    async fn an_alert_fans_out_to_consenting_workers_and_reports_each_skip_with_its_reason(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let jean = worker(&app, &key, "Jean", "514 873 2015", true).await;
        let paul = worker(&app, &key, "Paul", "514 873 2016", false).await;
        let marc = worker(&app, &key, "Marc", "514 873 2017", true).await;
        // Marc texted STOP: the phone-wide ledger row wins over his registration consent.
        app.exec("INSERT INTO consent_events (tenant_id, worker_id, phone, old_consent, new_consent, source, evidence, actor, created_at) \
                  VALUES (NULL, NULL, '+15148732017', TRUE, FALSE, 'keyword', 'SMstop', 'twilio', 1)").await;
        let body = "Cadenas posé sur la presse P-4 par Jean. Ne pas démarrer.";
        let (s, a) = alert(&app, &key, json!({
            "kind": "lock_applied", "body": body, "ast_id": "AST-2041",
            "recipients": { "worker_ids": [jean, paul, marc, "wrk_nobody"] }
        })).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{a}");
        assert_eq!((a["queued"].as_u64(), a["skipped"].as_u64()), (Some(1), Some(3)));
        assert_eq!((a["encoding"].as_str(), a["segments"].as_u64()), (Some("gsm7"), Some(1)));
        let outcomes: Vec<(String, String, Option<String>)> = a["recipients"].as_array().unwrap().iter().map(|r| (
            r["worker_id"].as_str().unwrap().to_owned(),
            r["outcome"].as_str().unwrap().to_owned(),
            r["reason"].as_str().map(str::to_owned),
        )).collect();
        assert_eq!(outcomes, vec![
            (jean.clone(), "queued".into(), None),
            (paul.clone(), "skipped".into(), Some("no_consent".into())),
            (marc.clone(), "skipped".into(), Some("opted_out".into())),
            ("wrk_nobody".into(), "skipped".into(), Some("not_found".into())),
        ]);
        assert_eq!(a["recipients"][0]["phone_masked"], "+1••••••••15");
        // One durable row per resolved recipient, before any provider call.
        assert_eq!(app.count("sms_messages").await, 3);
        let queued = scalar_i64(&app, "SELECT COUNT(*) FROM sms_messages WHERE status = 'queued' AND kind = $1", "lock_applied").await;
        assert_eq!(queued, 1);
        // The audit row names no body and no full phone.
        let audit = on_db!(&app.db, p => sqlx::query_scalar::<_, String>("SELECT details FROM system_audit_logs WHERE action = 'sms_alert_create'").fetch_one(p).await).unwrap();
        assert!(!audit.contains("Cadenas") && !audit.contains("8732015"), "{audit}");

        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!(view["status"], "queued");
        assert_eq!(view["recipients"].as_array().unwrap().len(), 3);
        assert!(!view.to_string().contains("+15148732015"));
    }

    async fn an_alert_to_hundreds_of_workers_stores_one_row_each_and_answers_in_the_requests_order(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        // More workers than one multi-row statement holds on SQLite (400 rows); every 7th without consent.
        app.exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 450) \
             INSERT INTO workers (id, tenant_id, name, phone, language, sms_consent, created_at, updated_at) \
             SELECT 'wrk_bulk_' || i, 'acme', 'W' || i, '+1514873' || (1000 + i), 'fr', i % 7 <> 0, {T0}, {T0} FROM n")).await;
        // Newest first, an unknown worker in the middle, one worker twice.
        let mut ids: Vec<String> = (1..=450).rev().map(|i| format!("wrk_bulk_{i}")).collect();
        ids.insert(200, "wrk_nobody".into());
        ids.push("wrk_bulk_450".into());
        let body = json!({"kind": "general_alert", "body": "Exercice", "recipients": {"worker_ids": ids}});
        let (s, a) = alert_with_key(&app, &key, "bulk-1", body.clone()).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{a}");
        let without_consent = (1..=450).filter(|i| i % 7 == 0).count();
        assert_eq!((a["queued"].as_u64(), a["skipped"].as_u64()), (Some((450 - without_consent) as u64), Some(without_consent as u64 + 1)));
        let outcomes = a["recipients"].as_array().unwrap();
        assert_eq!(outcomes.len(), 451);
        for (i, (r, id)) in outcomes.iter().zip(ids.iter()).enumerate() {
            assert_eq!(r["worker_id"].as_str(), Some(id.as_str()), "position {i}");
            let n: Option<u32> = id.strip_prefix("wrk_bulk_").map(|n| n.parse().unwrap());
            let expected = match n {
                None => ("skipped", Some("not_found")),
                Some(n) if n % 7 == 0 => ("skipped", Some("no_consent")),
                Some(_) => ("queued", None),
            };
            assert_eq!((r["outcome"].as_str().unwrap(), r["reason"].as_str()), expected, "{r}");
            assert_eq!(r["phone_masked"].is_null(), n.is_none(), "{r}");
        }
        // One row per worker found, each with its own worker, phone and outcome.
        let alert_id = a["alert_id"].as_str().unwrap();
        let rows: Vec<(String, String, String, Option<String>)> = on_db!(&app.db, p => sqlx::query_as(
            "SELECT worker_id, to_phone, status, error_code FROM sms_messages WHERE alert_id = $1 ORDER BY worker_id"
        ).bind(alert_id).fetch_all(p).await).unwrap();
        assert_eq!(rows.len(), 450);
        for (worker, phone, status, code) in &rows {
            let n: u32 = worker.strip_prefix("wrk_bulk_").unwrap().parse().unwrap();
            assert_eq!(phone, &format!("+1514873{}", 1000 + n));
            let expected = if n % 7 == 0 { ("skipped", Some("no_consent")) } else { ("queued", None) };
            assert_eq!((status.as_str(), code.as_deref()), expected, "{worker}");
        }
        // The stored answer replays as it was given, byte for byte, as JSON.
        let res = app.request(Method::POST, "/api/sms/alerts", Some(&key)).header("Idempotency-Key", "bulk-1").json(&body).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        assert_eq!(res.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        let again = res.text().await.unwrap();
        let stored = on_db!(&app.db, p => sqlx::query_scalar::<_, String>("SELECT response FROM sms_alerts WHERE id = $1").bind(alert_id).fetch_one(p).await).unwrap();
        assert_eq!(again, stored);
        assert_eq!(serde_json::from_str::<Value>(&again).unwrap(), a);
        assert_eq!(app.count("sms_messages").await, 450);
    }

    async fn recipients_can_be_a_site_or_everyone_and_the_site_must_be_the_tenants(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let other = app.tenant_with_key("other").await;
        let (_, site) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine Nord"}))).await;
        let site_id = site["id"].as_str().unwrap().to_owned();
        let (_, w) = app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "Jean", "phone": "514 873 2015", "site_id": site_id, "sms_consent": true, "consent_evidence": "F-12"}))).await;
        assert!(w["id"].is_string(), "{w}");
        worker(&app, &key, "Paul", "514 873 2016", true).await;
        worker(&app, &other, "Autre", "514 873 2018", true).await;
        let (s, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "Exercice d'evacuation a 14 h", "recipients": {"site_id": site_id}})).await;
        assert_eq!((s, a["queued"].as_u64()), (StatusCode::ACCEPTED, Some(1)), "{a}");
        let (s, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "Fermeture a 16 h", "recipients": {"all": true}})).await;
        assert_eq!((s, a["queued"].as_u64()), (StatusCode::ACCEPTED, Some(2)), "{a}");
        let (_, other_site) = app.send(Method::POST, "/api/sites", Some(&other), Some(json!({"name": "Ailleurs"}))).await;
        let before = app.snapshot().await;
        let (s, b) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"site_id": other_site["id"]}})).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
        assert!(b["error"]["message"].as_str().unwrap().starts_with("recipients.site_id"), "{b}");
        assert_eq!(app.snapshot().await, before);
    }

    async fn bad_alerts_are_refused_naming_the_field_and_nothing_is_written(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let jean = worker(&app, &key, "Jean", "514 873 2015", true).await;
        let before = app.snapshot().await;
        let cases = [
            (json!({"kind": "party", "body": "x", "recipients": {"all": true}}), "invalid_field", "kind"),
            (json!({"kind": "emergency", "body": "   ", "recipients": {"all": true}}), "invalid_field", "body"),
            (json!({"kind": "emergency", "body": "x", "recipients": {"all": false}}), "invalid_field", "recipients"),
            (json!({"kind": "emergency", "body": "x", "recipients": {"worker_ids": []}}), "invalid_field", "recipients.worker_ids"),
            (json!({"kind": "emergency", "body": "x", "recipients": {"worker_ids": [jean], "all": true}}), "invalid_field", "recipients"),
            (json!({"kind": "emergency", "body": "x", "ast_id": "", "recipients": {"all": true}}), "invalid_field", "ast_id"),
            (json!({"kind": "emergency", "body": "x", "recipients": {"all": true}, "extra": 1}), "invalid_body", "the JSON body"),
            (json!({"kind": "emergency", "body": "🔥".repeat(300), "recipients": {"all": true}}), "too_many_segments", "body"),
        ];
        for (body, code, field) in cases {
            let (s, b) = alert(&app, &key, body.clone()).await;
            assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, code), "{body}: {b}");
            assert!(b["error"]["message"].as_str().unwrap().starts_with(field), "{body}: {b}");
        }
        assert_eq!(app.snapshot().await, before);
    }

    async fn segments_and_encoding_are_reported_and_the_maximum_is_refused_with_the_count(app, fake, twilio = false, vars = &[("SMS_MAX_SEGMENTS", "2")]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (s, a) = alert(&app, &key, json!({"kind": "lock_applied", "body": "Cadenas posé 🔒 — presse P-4", "recipients": {"all": true}})).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{a}");
        assert_eq!((a["encoding"].as_str(), a["segments"].as_u64()), (Some("ucs2"), Some(1)));
        assert_eq!(a["non_gsm_chars"], json!(["🔒", "—"]));
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "a".repeat(161), "recipients": {"all": true}})).await;
        assert_eq!((a["encoding"].as_str(), a["segments"].as_u64()), (Some("gsm7"), Some(2)));
        let (s, b) = alert(&app, &key, json!({"kind": "general_alert", "body": "é".repeat(307), "recipients": {"all": true}})).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "too_many_segments"));
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains("3 SMS segments") && msg.contains("maximum of 2"), "{msg}");
        let (_, b) = alert(&app, &key, json!({"kind": "general_alert", "body": format!("{}🔒", "a".repeat(140)), "recipients": {"all": true}})).await;
        assert!(b["error"]["message"].as_str().unwrap().contains("'🔒'"), "{b}");
    }

    async fn a_repeated_idempotency_key_gives_the_same_answer_and_another_request_under_it_conflicts(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        let body = json!({"kind": "emergency", "body": "Evacuez le batiment B", "recipients": {"all": true}});
        let (s1, a1) = alert_with_key(&app, &key, "evac-2041", body.clone()).await;
        assert_eq!(s1, StatusCode::ACCEPTED, "{a1}");
        let after_first = app.snapshot().await;
        let (s2, a2) = alert_with_key(&app, &key, "evac-2041", body.clone()).await;
        assert_eq!((s2, &a2), (StatusCode::ACCEPTED, &a1));
        assert_eq!(app.snapshot().await, after_first);
        let (s3, b3) = alert_with_key(&app, &key, "evac-2041", json!({"kind": "emergency", "body": "Autre chose", "recipients": {"all": true}})).await;
        assert_eq!((s3, error_code(&b3)), (StatusCode::CONFLICT, "idempotency_key_reused"));
        assert_eq!(app.snapshot().await, after_first);
        // Another tenant may use the same key for its own alert.
        let other = app.tenant_with_key("other").await;
        let (s4, a4) = alert_with_key(&app, &other, "evac-2041", body.clone()).await;
        assert_eq!(s4, StatusCode::ACCEPTED);
        assert_ne!(a4["alert_id"], a1["alert_id"]);

        // The operator's test SMS honours the header too.
        let send = |k: &'static str, b: &'static str| {
            let rb = app.request(Method::POST, "/api/send-sms", Some(ADMIN_TOKEN)).header("Idempotency-Key", k).json(&json!({"to": "514 873 2015", "body": b}));
            async move { read(rb.send().await.unwrap()).await }
        };
        let (s, t1) = send("test-1", "Test secur360").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{t1}");
        let n = app.count("sms_messages").await;
        let (_, t2) = send("test-1", "Test secur360").await;
        assert_eq!((t2, app.count("sms_messages").await), (t1, n));
        let (s, b) = send("test-1", "Autre").await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "idempotency_key_reused"));
    }

    async fn the_tenant_rate_limit_answers_429_with_retry_after_until_the_next_minute(app, fake, twilio = false, vars = &[("SMS_RATE_PER_MINUTE", "3")]) {
        let key = app.tenant_with_key("acme").await;
        let a = worker(&app, &key, "A", "514 873 2015", true).await;
        let b = worker(&app, &key, "B", "514 873 2016", true).await;
        let (s, _) = alert(&app, &key, json!({"kind": "general_alert", "body": "un", "recipients": {"worker_ids": [a, b]}})).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        app.clock.advance_ms(15_000);
        let before = app.snapshot().await;
        let res = app.request(Method::POST, "/api/sms/alerts", Some(&key))
            .json(&json!({"kind": "general_alert", "body": "deux", "recipients": {"worker_ids": [a, b]}})).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "45");
        let (_, body) = read(res).await;
        assert_eq!(error_code(&body), "rate_limited");
        assert_eq!(app.snapshot().await, before);
        // One more still fits in this minute; then the next minute is fresh.
        let (s, _) = alert(&app, &key, json!({"kind": "general_alert", "body": "trois", "recipients": {"worker_ids": [a]}})).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        app.clock.advance_ms(45_000);
        let (s, _) = alert(&app, &key, json!({"kind": "general_alert", "body": "quatre", "recipients": {"worker_ids": [a, b]}})).await;
        assert_eq!(s, StatusCode::ACCEPTED);
        // The window is a shared row, not process memory.
        assert_eq!(scalar_i64(&app, "SELECT CAST(SUM(used) AS BIGINT) FROM rate_limits WHERE tenant_id = $1", "acme").await, 5);
    }

    async fn an_alert_above_the_recipient_cap_is_refused(app, fake, twilio = false, vars = &[("SMS_MAX_RECIPIENTS", "2")]) {
        let key = app.tenant_with_key("acme").await;
        for (n, phone) in ["514 873 2015", "514 873 2016", "514 873 2017"].iter().enumerate() {
            worker(&app, &key, &format!("W{n}"), phone, true).await;
        }
        let before = app.snapshot().await;
        let (s, b) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        assert_eq!((s, error_code(&b)), (StatusCode::UNPROCESSABLE_ENTITY, "too_many_recipients"));
        assert!(b["error"]["message"].as_str().unwrap().contains("3 recipients exceed the maximum of 2"), "{b}");
        assert_eq!(app.snapshot().await, before);
    }

    async fn an_alert_is_invisible_to_another_tenant(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let other = app.tenant_with_key("other").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (_, a) = alert(&app, &key, json!({"kind": "work_completion", "body": "Travaux termines", "recipients": {"all": true}})).await;
        let (s, b) = app.send(Method::GET, &format!("/api/sms/alerts/{}", a["alert_id"].as_str().unwrap()), Some(&other), None).await;
        assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "not_found"));
    }

    async fn the_simulated_provider_never_reports_sent_or_delivered(app, fake, twilio = false, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (_, a) = alert(&app, &key, json!({"kind": "lock_removed", "body": "Cadenas retire", "recipients": {"all": true}})).await;
        assert_eq!(a["provider"], "simulated");
        let t = test_sms(&app, "514 873 2016", "Test").await;
        assert_eq!(t["provider"], "simulated");
        let report = run(&app, T0).await;
        assert_eq!((report.claimed, report.simulated, report.accepted), (2, 2, 0));
        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!((view["status"].as_str(), view["recipients"][0]["status"].as_str()), (Some("simulated"), Some("simulated")));
        assert_eq!(message_status(&app, t["message_id"].as_str().unwrap()).await, "simulated");
        let sent = app.count("sms_messages WHERE status IN ('sent', 'delivered', 'sending') OR twilio_sid IS NOT NULL").await;
        assert_eq!(sent, 0);
        assert!(fake.requests().is_empty());
    }

    async fn a_verification_code_is_erased_from_the_queue_once_handed_to_the_provider(app, fake, twilio = true, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let id = worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (s, b) = app.send(Method::POST, &format!("/api/workers/{id}/verification"), Some(&key), None).await;
        assert!(s.is_success(), "{b}");
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "Rassemblement", "recipients": {"all": true}})).await;
        let queued = app.count("sms_messages WHERE kind = 'verification' AND body IS NOT NULL").await;
        assert_eq!(queued, 1, "the code waits in the queue until it is sent");
        let report = run(&app, T0).await;
        assert_eq!(report.accepted, 2);
        let sent = fake.requests().into_iter().find(|r| r.field("Body").is_some_and(|b| b.bytes().filter(u8::is_ascii_digit).count() >= 6));
        assert!(sent.is_some(), "the worker received the code");
        assert_eq!(app.count("sms_messages WHERE kind = 'verification' AND body IS NULL AND twilio_sid IS NOT NULL").await, 1);
        // An alert keeps its text until the retention scrub.
        let kept = app.count(&format!("sms_messages WHERE alert_id = '{}' AND body = 'Rassemblement'", a["alert_id"].as_str().unwrap())).await;
        assert_eq!(kept, 1);
    }

    async fn the_dispatcher_posts_the_exact_form_fields_with_basic_auth_and_records_the_sid(app, fake, twilio = true, vars = &[]) {
        let t = test_sms(&app, "514 873 2015", "Test secur360 : ça marche").await;
        assert_eq!((t["provider"].as_str(), t["encoding"].as_str(), t["segments"].as_u64()), (Some("twilio"), Some("ucs2"), Some(1)), "ç is not GSM-7 (only Ç is)");
        assert_eq!(fake.requests().len(), 0, "nothing is sent before the dispatcher runs");
        let report = run(&app, T0).await;
        assert_eq!((report.claimed, report.accepted), (1, 1));
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.path, format!("/2010-04-01/Accounts/{}/Messages.json", fake_twilio::ACCOUNT_SID));
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", fake_twilio::ACCOUNT_SID, fake_twilio::AUTH_TOKEN));
        assert_eq!(r.authorization.as_deref(), Some(format!("Basic {basic}").as_str()));
        let mut fields: Vec<(String, String)> = r.form.clone();
        fields.sort();
        assert_eq!(fields, form(&[
            ("Body", "Test secur360 : ça marche"),
            ("MessagingServiceSid", fake_twilio::MESSAGING_SERVICE_SID),
            ("StatusCallback", STATUS_URL),
            ("To", "+15148732015"),
        ]));
        let id = t["message_id"].as_str().unwrap();
        assert_eq!(message_status(&app, id).await, "sending");
        assert_eq!(scalar_text(&app, "SELECT twilio_sid FROM sms_messages WHERE id = $1", id).await.as_deref(), Some(format!("SM{:032x}", 1).as_str()));
        // Nothing is sent twice.
        assert_eq!(run(&app, T0 + 3_600_000).await.claimed, 0);
        assert_eq!(fake.requests().len(), 1);
        let audit = on_db!(&app.db, p => sqlx::query_scalar::<_, String>("SELECT details FROM system_audit_logs WHERE action = 'send_sms'").fetch_all(p).await).unwrap().join(" ");
        assert!(!audit.contains("8732015") && !audit.contains("marche"), "{audit}");
    }

    async fn the_sender_is_the_phone_number_when_no_messaging_service_is_set(app, fake, twilio = true, vars = &[("TWILIO_MESSAGING_SERVICE_SID", ""), ("TWILIO_PHONE_NUMBER", "+14385550100")]) {
        test_sms(&app, "514 873 2015", "Test").await;
        run(&app, T0).await;
        let r = &fake.requests()[0];
        assert_eq!((r.field("From"), r.field("MessagingServiceSid")), (Some("+14385550100"), None));
    }

    async fn transient_errors_are_retried_with_backoff_honouring_retry_after_then_given_up(app, fake, twilio = true, vars = &[("SMS_MAX_ATTEMPTS", "3")]) {
        fake.script([Reply::TooMany(120), Reply::ServerError, Reply::Delay(Duration::from_secs(3))]);
        let t = test_sms(&app, "514 873 2015", "Test").await;
        let id = t["message_id"].as_str().unwrap().to_owned();
        assert_eq!(run(&app, T0).await.retried, 1);
        assert_eq!(message_status(&app, &id).await, "queued");
        assert_eq!(scalar_i64(&app, "SELECT next_attempt_at FROM sms_messages WHERE id = $1", &id).await, T0 + 120_000);
        assert_eq!(run(&app, T0 + 119_000).await.claimed, 0, "Retry-After is honoured");
        assert_eq!(run(&app, T0 + 120_000).await.retried, 1);
        assert_eq!(scalar_text(&app, "SELECT error_code FROM sms_messages WHERE id = $1", &id).await.as_deref(), Some("20500"));
        // Third attempt times out: the limit is reached, the message fails with the last error.
        let report = run(&app, T0 + 7_200_000).await;
        assert_eq!(report.failed, 1, "{report:?}");
        assert_eq!(message_status(&app, &id).await, "failed");
        assert_eq!(scalar_text(&app, "SELECT error_code FROM sms_messages WHERE id = $1", &id).await.as_deref(), Some("timeout"));
        assert_eq!(scalar_i64(&app, "SELECT attempts FROM sms_messages WHERE id = $1", &id).await, 3);
        assert_eq!(fake.requests().len(), 3);
        assert_eq!(run(&app, T0 + 86_400_000).await.claimed, 0);
    }

    async fn a_transient_error_followed_by_success_records_the_sid(app, fake, twilio = true, vars = &[]) {
        fake.script([Reply::ServerError]);
        let t = test_sms(&app, "514 873 2015", "Test").await;
        let id = t["message_id"].as_str().unwrap().to_owned();
        run(&app, T0).await;
        let next = scalar_i64(&app, "SELECT next_attempt_at FROM sms_messages WHERE id = $1", &id).await;
        assert!((T0 + 15_000..=T0 + 30_000).contains(&next), "first backoff with jitter: {}", next - T0);
        assert_eq!(run(&app, next).await.accepted, 1);
        assert_eq!(message_status(&app, &id).await, "sending");
        assert_eq!(scalar_text(&app, "SELECT error_code FROM sms_messages WHERE id = $1", &id).await, None);
    }

    async fn twilio_21610_fails_at_once_and_withdraws_consent_in_the_ledger(app, fake, twilio = true, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let jean = worker(&app, &key, "Jean", "514 873 2015", true).await;
        fake.script([Reply::Error(21610)]);
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        let report = run(&app, T0).await;
        assert_eq!(report.failed, 1);
        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!((view["status"].as_str(), view["recipients"][0]["error_code"].as_str()), (Some("failed"), Some("21610")));
        let (_, w) = app.send(Method::GET, &format!("/api/workers/{jean}"), Some(&key), None).await;
        assert_eq!(w["sms_consent"], false);
        let (_, ledger) = app.send(Method::GET, &format!("/api/workers/{jean}/consent"), Some(&key), None).await;
        let last = ledger["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!((last["source"].as_str(), last["new_consent"].as_bool()), (Some("carrier_21610"), Some(false)));
        // Never retried; and the next alert skips Jean.
        assert_eq!(run(&app, T0 + 86_400_000).await.claimed, 0);
        let (_, a2) = alert(&app, &key, json!({"kind": "general_alert", "body": "y", "recipients": {"all": true}})).await;
        assert_eq!(a2["recipients"][0]["reason"], "opted_out");
        assert_eq!(fake.requests().len(), 1);
    }

    async fn twilio_21211_fails_at_once_without_touching_consent(app, fake, twilio = true, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        fake.script([Reply::Error(21211)]);
        alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        let consent_rows = app.count("consent_events").await;
        assert_eq!(run(&app, T0).await.failed, 1);
        assert_eq!(scalar_i64(&app, "SELECT attempts FROM sms_messages WHERE error_code = $1", "21211").await, 1);
        assert_eq!(app.count("consent_events").await, consent_rows);
        assert_eq!(run(&app, T0 + 86_400_000).await.claimed, 0);
    }

    async fn consent_withdrawn_after_queuing_cancels_the_message_before_the_call(app, fake, twilio = true, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        let jean = worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        let (s, _) = app.send(Method::PATCH, &format!("/api/workers/{jean}"), Some(&key), Some(json!({"sms_consent": false, "consent_evidence": "appel"}))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(run(&app, T0).await.canceled, 1);
        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!((view["recipients"][0]["status"].as_str(), view["recipients"][0]["error_code"].as_str()), (Some("canceled"), Some("no_consent")));
        assert!(fake.requests().is_empty());
    }

    async fn an_emergency_queued_behind_thousands_of_general_messages_is_sent_first(app, fake, twilio = true, vars = &[("SMS_DISPATCH_RATE_PER_SECOND", "1")]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        queue_general_backlog(&app, 3000).await;
        assert_eq!(app.count("sms_messages").await, 3000);
        let (_, a) = alert(&app, &key, json!({"kind": "emergency", "body": "URGENCE: evacuez", "recipients": {"all": true}})).await;
        assert_eq!(a["queued"], 1);
        let report = run(&app, T0).await;
        assert_eq!(report.accepted, 1);
        let reqs = fake.requests();
        assert_eq!((reqs.len(), reqs[0].field("Body")), (1, Some("URGENCE: evacuez")));
        // Then the oldest general one.
        run(&app, T0).await;
        assert_eq!(scalar_text(&app, "SELECT status FROM sms_messages WHERE id = $1", "msg_bulk_1").await.as_deref(), Some("sending"));
    }

    async fn a_pass_of_emergencies_only_leaves_the_general_backlog_queued(app, fake, twilio = true, vars = &[]) {
        // What the dispatcher loop runs when a second's budget is spent and a message is queued.
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        queue_general_backlog(&app, 50).await;
        assert_eq!(run_emergencies(&app, T0).await.claimed, 0, "general messages are not emergencies");
        let (_, a) = alert(&app, &key, json!({"kind": "emergency", "body": "URGENCE: evacuez", "recipients": {"all": true}})).await;
        assert_eq!(a["queued"], 1);
        let report = run_emergencies(&app, T0).await;
        assert_eq!((report.claimed, report.accepted), (1, 1));
        let reqs = fake.requests();
        assert_eq!((reqs.len(), reqs[0].field("Body")), (1, Some("URGENCE: evacuez")));
        let queued = on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sms_messages WHERE status = 'queued' AND id LIKE 'msg_bulk_%'").fetch_one(p).await).unwrap();
        assert_eq!(queued, 50);
        assert_eq!(run_emergencies(&app, T0).await.claimed, 0);
        assert_eq!(fake.requests().len(), 1);
    }

    async fn a_claim_whose_instance_died_is_resent_exactly_once_after_its_lease(app, fake, twilio = true, vars = &[]) {
        let t = test_sms(&app, "514 873 2015", "Test").await;
        let id = t["message_id"].as_str().unwrap().to_owned();
        // An instance claims it, then dies before calling Twilio.
        let claimed = sms_db::claim(&app.db, T0, T0 + 60_000, "inst_dead", 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(message_status(&app, &id).await, "sending");
        assert_eq!(run(&app, T0 + 30_000).await.claimed, 0, "the lease still holds");
        assert_eq!(run(&app, T0 + 60_001).await.accepted, 1);
        assert_eq!(run(&app, T0 + 600_000).await.claimed, 0);
        assert_eq!(run(&app, T0 + 6_000_000).await.claimed, 0);
        assert_eq!(fake.requests().len(), 1);
        assert_eq!(scalar_i64(&app, "SELECT attempts FROM sms_messages WHERE id = $1", &id).await, 2);
        // The dead instance's late outcome cannot overwrite the new claim's.
        let mut tx = app.db.begin().await.unwrap();
        let late = sms_db::Outcome::settled(&claimed[0], "failed", Some("x"), None);
        assert_eq!(sms_db::record_outcomes(&mut tx, "inst_dead", &[late], T0).await.unwrap(), [false]);
        tx.commit().await.unwrap();
        assert_eq!(message_status(&app, &id).await, "sending");
    }

    async fn concurrent_dispatchers_claim_disjoint_messages(app, fake, twilio = true, vars = &[]) {
        for i in 0..12 {
            test_sms(&app, &format!("514 873 {}", 2200 + i), "Test").await;
        }
        let (a, b, c) = tokio::join!(
            sms_db::claim(&app.db, T0, T0 + 60_000, "inst_a", 5),
            sms_db::claim(&app.db, T0, T0 + 60_000, "inst_b", 5),
            sms_db::claim(&app.db, T0, T0 + 60_000, "inst_c", 5),
        );
        // A racing claim may come back short (rows taken under it); whatever is left is claimed next.
        let rest = sms_db::claim(&app.db, T0, T0 + 60_000, "inst_d", 20).await.unwrap();
        let mut ids: Vec<String> =
            [a.unwrap(), b.unwrap(), c.unwrap(), rest].concat().into_iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), 12, "every message claimed once");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 12, "no message claimed twice");
    }

    async fn signed_status_callbacks_are_applied_and_tampered_or_unsigned_ones_refused_without_effect(app, fake, twilio = true, vars = &[]) {
        let key = app.tenant_with_key("acme").await;
        worker(&app, &key, "Jean", "514 873 2015", true).await;
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        run(&app, T0).await;
        let sid = format!("SM{:032x}", 1);
        let params = form(&[("MessageSid", &sid), ("MessageStatus", "delivered"), ("AccountSid", fake_twilio::ACCOUNT_SID)]);
        let good = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
        let events = app.count("sms_status_events").await;
        // Tampered field, wrong token, missing header: 403 and nothing stored or changed.
        let mut tampered = params.clone();
        tampered[1].1 = "failed".into();
        let wrong = twilio_signature::compute(STATUS_URL, &params, "some-other-token-0123456789");
        for (p, sig) in [(&tampered, Some(good.as_str())), (&params, Some(wrong.as_str())), (&params, None)] {
            let (s, b) = post_callback(&app, p, sig).await;
            assert_eq!((s, error_code(&b)), (StatusCode::FORBIDDEN, "invalid_signature"), "{b}");
        }
        assert_eq!(app.count("sms_status_events").await, events);
        assert_eq!(get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await["status"], "sending");
        // The secondary token is accepted during rotation.
        let sent = form(&[("MessageSid", &sid), ("MessageStatus", "sent")]);
        let sig2 = twilio_signature::compute(STATUS_URL, &sent, fake_twilio::AUTH_TOKEN_SECONDARY);
        assert_eq!(post_callback(&app, &sent, Some(&sig2)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(post_callback(&app, &params, Some(&good)).await.0, StatusCode::NO_CONTENT);
        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!((view["status"].as_str(), view["recipients"][0]["status"].as_str()), (Some("delivered"), Some("delivered")));
        // A late `sent` never overwrites `delivered`.
        assert_eq!(signed_callback(&app, &sid, "sent").await, StatusCode::NO_CONTENT);
        assert_eq!(get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await["recipients"][0]["status"], "delivered");
        assert_eq!(app.count("sms_status_events").await, events + 3);
    }

    async fn a_failed_callback_keeps_its_error_code(app, fake, twilio = true, vars = &[]) {
        let t = test_sms(&app, "514 873 2015", "Test").await;
        run(&app, T0).await;
        let sid = format!("SM{:032x}", 1);
        let params = form(&[("MessageSid", &sid), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")]);
        let sig = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
        assert_eq!(post_callback(&app, &params, Some(&sig)).await.0, StatusCode::NO_CONTENT);
        let id = t["message_id"].as_str().unwrap();
        assert_eq!(message_status(&app, id).await, "undelivered");
        assert_eq!(scalar_text(&app, "SELECT error_code FROM sms_messages WHERE id = $1", id).await.as_deref(), Some("30003"));
    }

    async fn callbacks_delivered_in_every_order_converge_on_delivered(app, fake, twilio = true, vars = &[("SMS_DISPATCH_RATE_PER_SECOND", "30")]) {
        let key = app.tenant_with_key("acme").await;
        let mut ids = Vec::new();
        for i in 0..24 {
            ids.push(worker(&app, &key, &format!("W{i}"), &format!("514 873 {}", 2100 + i), true).await);
        }
        let (_, a) = alert(&app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
        assert_eq!(run(&app, T0).await.accepted, 24);
        let sids: Vec<String> = fake.requests().iter().enumerate().map(|(i, _)| format!("SM{:032x}", i + 1)).collect();
        let path = ["queued", "sending", "sent", "delivered"];
        let mut perms: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..4 {
            perms = perms.iter().flat_map(|p| (0..4).filter(|i| !p.contains(i)).map(|i| { let mut q = p.clone(); q.push(i); q }).collect::<Vec<_>>()).collect();
        }
        assert_eq!(perms.len(), 24);
        for (sid, perm) in sids.iter().zip(&perms) {
            for i in perm {
                assert_eq!(signed_callback(&app, sid, path[*i]).await, StatusCode::NO_CONTENT);
            }
        }
        let view = get_alert(&app, &key, a["alert_id"].as_str().unwrap()).await;
        assert_eq!(view["status"], "delivered");
        assert_eq!(view["counts"], json!({"delivered": 24}));
    }

    async fn a_callback_that_arrives_before_the_sid_is_recorded_is_kept_and_applied_later(app, fake, twilio = true, vars = &[]) {
        let sid = "SMearly0000000000000000000000000000";
        fake.script([Reply::Created(sid.into())]);
        let t = test_sms(&app, "514 873 2015", "Test").await;
        assert_eq!(signed_callback(&app, sid, "delivered").await, StatusCode::NO_CONTENT);
        assert_eq!(scalar_i64(&app, "SELECT COUNT(*) FROM sms_status_events WHERE twilio_sid = $1 AND applied = FALSE", sid).await, 1);
        run(&app, T0).await;
        assert_eq!(message_status(&app, t["message_id"].as_str().unwrap()).await, "delivered");
        assert_eq!(scalar_i64(&app, "SELECT COUNT(*) FROM sms_status_events WHERE twilio_sid = $1 AND applied = FALSE", sid).await, 0);
    }

    async fn status_callbacks_are_refused_when_no_twilio_token_is_configured(app, fake, twilio = false, vars = &[("APP_URL", "https://c-secur360.example")]) {
        let params = form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]);
        let sig = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
        let (s, b) = post_callback(&app, &params, Some(&sig)).await;
        assert_eq!((s, error_code(&b)), (StatusCode::FORBIDDEN, "twilio_not_configured"));
        assert_eq!(app.count("sms_status_events").await, 0);
    }

    async fn the_signature_covers_app_url_with_its_port_and_the_query_string(app, fake, twilio = true, vars = &[("APP_URL", "https://c-secur360.example:8443")]) {
        let t = test_sms(&app, "514 873 2015", "Test").await;
        run(&app, T0).await;
        assert_eq!(fake.requests()[0].field("StatusCallback"), Some("https://c-secur360.example:8443/api/sms/status"));
        let sid = format!("SM{:032x}", 1);
        let params = form(&[("MessageSid", &sid), ("MessageStatus", "delivered"), ("Body", "Arrêt d'urgence — zone B ✅")]);
        let url = "https://c-secur360.example:8443/api/sms/status?src=twilio&n=%C3%A9";
        let sig = python_twilio_signature(url, &params, fake_twilio::AUTH_TOKEN_SECONDARY);
        // Signed for another query string: refused.
        let other = python_twilio_signature("https://c-secur360.example:8443/api/sms/status?src=other", &params, fake_twilio::AUTH_TOKEN);
        let post = |sig: String| {
            let rb = app.client.post(app.url("/api/sms/status?src=twilio&n=%C3%A9")).form(&params).header("X-Twilio-Signature", sig);
            async move { read(rb.send().await.unwrap()).await }
        };
        let (s, b) = post(other).await;
        assert_eq!((s, error_code(&b)), (StatusCode::FORBIDDEN, "invalid_signature"));
        assert_eq!(app.count("sms_status_events").await, 0);
        assert_eq!(post(sig).await.0, StatusCode::NO_CONTENT);
        assert_eq!(message_status(&app, t["message_id"].as_str().unwrap()).await, "delivered");
    }

    async fn a_callback_signed_by_the_official_python_sdk_is_accepted(app, fake, twilio = true, vars = &[]) {
        let t = test_sms(&app, "514 873 2015", "Test").await;
        run(&app, T0).await;
        let sid = format!("SM{:032x}", 1);
        let params = form(&[
            ("MessageSid", &sid), ("MessageStatus", "delivered"), ("To", "+15148732015"),
            ("Body", "Cadenas posé — Noël 🔒"), ("ApiVersion", "2010-04-01"),
        ]);
        let sig = python_twilio_signature(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
        assert_eq!(sig, twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN));
        assert_eq!(post_callback(&app, &params, Some(&sig)).await.0, StatusCode::NO_CONTENT);
        assert_eq!(message_status(&app, t["message_id"].as_str().unwrap()).await, "delivered");
    }
}

/// The signature of the official `twilio` SDK (`RequestValidator.compute_signature`) through tests/peers/sign.py.
pub fn python_twilio_signature(url: &str, params: &[(String, String)], token: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("SECUR360_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| manifest.join("target/peers-venv/bin/python"));
    assert!(python.exists(), "the official twilio SDK is needed at {} (set SECUR360_TEST_PYTHON)", python.display());
    let request = json!({ "provider": "twilio", "url": url, "params": params, "token": token });
    let mut child = Command::new(python)
        .arg(manifest.join("tests/peers/sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sign.py");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sign.py failed");
    let v: Value = serde_json::from_slice(&out.stdout).expect("sign.py answers JSON");
    v["signature"].as_str().unwrap_or_else(|| panic!("no signature: {v}")).to_owned()
}

/// The background loop that `serve` runs sends what the API queued, with no test driving it.
async fn serve_loop(backend: Backend) {
    let fake = FakeTwilio::start().await;
    let (db, db_url, _dir) = fresh_database(backend).await;
    let mut env: std::collections::BTreeMap<String, String> = fake.vars().into_iter().collect();
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    env.insert("DATABASE_URL".into(), db_url.clone());
    env.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    let settings = secur360::config::Settings::from_vars(env).unwrap();
    let runtime = secur360::db::Db::connect(&db_url, 5).await.unwrap();
    let app =
        secur360::startup::Application::build_with(settings, runtime, Clock::system()).await.unwrap().with_background();
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    let res = reqwest::Client::new()
        .post(format!("{address}/api/send-sms"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"to": "514 873 2015", "body": "Test du répartiteur"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let reqs = fake.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(reqs[0].field("To"), Some("+15148732015"));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    // The app closed its pool on the way out, after the dispatcher recorded its outcome.
    let status: String =
        on_db!(&db, p => sqlx::query_scalar("SELECT status FROM sms_messages").fetch_one(p).await).unwrap();
    assert_eq!(status, "sending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_loop_sends_queued_messages_on_sqlite() {
    serve_loop(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_loop_sends_queued_messages_on_postgres() {
    serve_loop(Backend::Postgres).await;
}
