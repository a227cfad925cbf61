//! `POST /api/webhooks/stripe`: signatures (vectors from the official Python SDK), storing once, order safety,
//! concurrent redelivery, failure and retry, and entitlements following the mirror.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use secur360::domain::stripe_signature;
use secur360::on_db;
use serde_json::{json, Value};

use crate::both_backends;
use crate::fake_stripe::{item, subscription, PRICE_ADDON_MONTHLY, PRICE_MONTHLY};
use crate::helpers::*;

pub const SECRET: &str = "whsec_test_billing_secret_0123456789";

pub fn webhook_vars() -> &'static [(&'static str, &'static str)] {
    &[
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("STRIPE_PRICE_MONTHLY", PRICE_MONTHLY),
        ("STRIPE_PRICE_ADDON_SITE_MONTHLY", PRICE_ADDON_MONTHLY),
        ("STRIPE_PRICE_ANNUAL", "price_base_year"),
        ("STRIPE_PRICE_ADDON_SITE_ANNUAL", "price_addon_year"),
    ]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({"id": id, "object": "event", "api_version": "2024-06-20", "type": kind, "created": created,
           "livemode": false, "data": {"object": object}})
    .to_string()
}

pub async fn deliver_with(app: &TestApp, body: &str, header: Option<&str>) -> (StatusCode, Value) {
    let mut rb = app.request(Method::POST, "/api/webhooks/stripe", None).header("content-type", "application/json");
    if let Some(h) = header {
        rb = rb.header("Stripe-Signature", h);
    }
    read(rb.body(body.to_owned()).send().await.unwrap()).await
}

/// Deliver `body` signed with the test secret at the current time.
pub async fn deliver(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let header = stripe_signature::sign(body.as_bytes(), SECRET, now_secs());
    deliver_with(app, body, Some(&header)).await
}

/// `{"header": …}` from `stripe.WebhookSignature.generate_signature_header` (tests/peers/sign.py).
fn sdk_header(payload: &str, secret: &str, timestamp: i64) -> String {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("SECUR360_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target/peers-venv/bin/python"));
    assert!(python.exists(), "the official stripe SDK is needed at {} (run scripts/test)", python.display());
    let mut child = Command::new(python)
        .arg(manifest.join("tests/peers/sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sign.py");
    let req = json!({"provider": "stripe", "payload": payload, "secret": secret, "timestamp": timestamp});
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["header"].as_str().unwrap_or_else(|| panic!("sign.py: {v}")).to_owned()
}

pub async fn link_customer(app: &TestApp, tenant: &str, customer: &str) {
    app.exec(&format!(
        "INSERT INTO customers (stripe_customer_id, tenant_id, created_at, updated_at) VALUES ('{customer}', '{tenant}', 1, 1)"
    ))
    .await;
}

pub fn sub_object(id: &str, customer: &str, status: &str, addon: i64) -> Value {
    let mut items = vec![item(&format!("si_b_{id}"), PRICE_MONTHLY, "month", 1)];
    if addon > 0 {
        items.push(item(&format!("si_a_{id}"), PRICE_ADDON_MONTHLY, "month", addon));
    }
    subscription(id, customer, status, items)
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await).unwrap()
}

async fn text(app: &TestApp, sql: &str) -> Option<String> {
    on_db!(&app.db, p => sqlx::query_scalar::<_, Option<String>>(sql).fetch_one(p).await).unwrap()
}

/// The Stripe-derived content of a subscription row, as text (bookkeeping columns excluded).
async fn sub_state(app: &TestApp, id: &str) -> String {
    let sql = format!(
        "SELECT status || '|' || COALESCE(plan_interval, '-') || '|' || addon_quantity || '|' || \
         COALESCE(addon_item_id, '-') || '|' || COALESCE(CAST(past_due_since AS TEXT), '-') || '|' || \
         CAST(stripe_updated_at AS TEXT) FROM subscriptions WHERE stripe_subscription_id = '{id}'"
    );
    text(app, &sql).await.unwrap_or_default()
}

async fn event_status(app: &TestApp, id: &str) -> Option<String> {
    text(app, &format!("SELECT processing_status FROM billing_events WHERE stripe_event_id = '{id}'")).await
}

/// `(attempted, succeeded, failed, given_up)` of a retry pass at `now`.
async fn retry_at(app: &TestApp, now: i64) -> (u64, u64, u64, u64) {
    let r = secur360::billing::retry_failed(&app.state, now).await.unwrap();
    (r.attempted, r.succeeded, r.failed, r.given_up)
}

/// The `stripe_webhook_errors` check of the status page.
async fn webhook_errors_check(app: &TestApp) -> Value {
    let (s, r) = app.operator(Method::GET, "/api/system/status", None).await;
    assert!(s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE, "{s} {r}");
    let checks = r["checks"].as_array().unwrap_or_else(|| panic!("no checks in {r}"));
    checks.iter().find(|c| c["name"] == "stripe_webhook_errors").cloned().unwrap_or_else(|| panic!("{r}"))
}

const HOUR_MS: i64 = 3_600_000;

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

both_backends! {
    with webhook_vars();

    async fn events_signed_by_the_official_sdk_are_accepted_and_bad_signatures_change_nothing(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let body = event("evt_sdk_1", "customer.subscription.created", now_secs(), sub_object("sub_sdk", "cus_acme", "active", 1));
        let before = (app.count("billing_events").await, app.count("system_audit_logs").await, app.count("subscriptions").await);

        let now = now_secs();
        let refused = [
            ("tampered body", body.replace("\"active\"", "\"trialing\""), Some(sdk_header(&body, SECRET, now)), "invalid_signature"),
            ("wrong secret", body.clone(), Some(sdk_header(&body, "whsec_someone_else", now)), "invalid_signature"),
            ("expired timestamp", body.clone(), Some(sdk_header(&body, SECRET, now - 301)), "invalid_signature"),
            ("missing header", body.clone(), None, "missing_signature"),
            ("malformed header", body.clone(), Some("t=abc;v1".to_owned()), "invalid_signature"),
            ("empty header", body.clone(), Some(String::new()), "missing_signature"),
        ];
        for (what, b, h, code) in refused {
            let (s, res) = deliver_with(&app, &b, h.as_deref()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{what}: {res}");
            assert_eq!(error_code(&res), code, "{what}");
        }
        let after = (app.count("billing_events").await, app.count("system_audit_logs").await, app.count("subscriptions").await);
        assert_eq!(before, after, "a refused webhook stored nothing");

        let (s, res) = deliver_with(&app, &body, Some(&sdk_header(&body, SECRET, now))).await;
        assert_eq!(s, StatusCode::OK, "{res}");
        assert_eq!((res["received"].as_bool(), res["status"].as_str()), (Some(true), Some("processed")));
        assert_eq!(sub_state(&app, "sub_sdk").await.split('|').take(3).collect::<Vec<_>>(), ["active", "month", "1"]);
    }

    async fn a_correctly_signed_but_malformed_event_is_refused_and_not_stored(app) {
        for body in ["not json", "{\"id\": \"evt_x\"}", "{\"id\": \"evt_y\", \"type\": \"invoice.paid\", \"created\": 1}"] {
            let (s, res) = deliver(&app, body).await;
            assert_eq!((s, error_code(&res)), (StatusCode::BAD_REQUEST, "malformed_event"), "{body}");
        }
        assert_eq!(app.count("billing_events").await, 0);
    }

    async fn unknown_event_types_are_stored_as_ignored_and_acknowledged(app) {
        let body = event("evt_unknown", "radar.early_fraud_warning.created", now_secs(), json!({"id": "issfr_1"}));
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, res["status"].as_str()), (StatusCode::OK, Some("ignored")), "{res}");
        assert_eq!(text(&app, "SELECT processing_status FROM billing_events WHERE stripe_event_id = 'evt_unknown'").await.as_deref(), Some("ignored"));
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, res["duplicate"].as_bool()), (StatusCode::OK, Some(true)));
        assert_eq!(app.count("billing_events").await, 1);
    }

    async fn every_order_of_a_subscriptions_history_converges_to_the_same_row(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let t0 = now_secs() - 3_600;
        let history = |sub: &str| vec![
            ("customer.subscription.created", t0, sub_object(sub, "cus_acme", "trialing", 1)),
            ("customer.subscription.updated", t0 + 10, sub_object(sub, "cus_acme", "active", 2)),
            ("customer.subscription.updated", t0 + 20, sub_object(sub, "cus_acme", "past_due", 3)),
            ("customer.subscription.updated", t0 + 20, sub_object(sub, "cus_acme", "active", 3)),
            ("customer.subscription.deleted", t0 + 30, sub_object(sub, "cus_acme", "canceled", 3)),
        ];
        let mut finals = std::collections::BTreeSet::new();
        for (k, order) in permutations(5).into_iter().enumerate() {
            let sub = format!("sub_perm{k}");
            let events = history(&sub);
            for i in order {
                let (kind, created, obj) = &events[i];
                let (s, res) = deliver(&app, &event(&format!("evt_p{k}_{i}"), kind, *created, obj.clone())).await;
                assert_eq!(s, StatusCode::OK, "{res}");
            }
            finals.insert(sub_state(&app, &sub).await.replace(&sub, "SUB"));
        }
        assert_eq!(finals.len(), 1, "all 120 orders end in the same state: {finals:?}");
        assert_eq!(finals.into_iter().next().unwrap(), format!("canceled|month|3|si_a_SUB|-|{}", (t0 + 30) * 1000));
    }

    async fn an_older_event_never_overwrites_newer_state_and_ties_go_to_the_later_status(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let t = now_secs() - 100;
        deliver(&app, &event("evt_new", "customer.subscription.updated", t + 50, sub_object("sub_o", "cus_acme", "past_due", 2))).await;
        deliver(&app, &event("evt_old", "customer.subscription.updated", t, sub_object("sub_o", "cus_acme", "active", 5))).await;
        assert!(sub_state(&app, "sub_o").await.starts_with(&format!("past_due|month|2|si_a_sub_o|{}", (t + 50) * 1000)));
        // Same second: canceled wins whichever arrives first.
        deliver(&app, &event("evt_c", "customer.subscription.deleted", t + 60, sub_object("sub_o", "cus_acme", "canceled", 2))).await;
        deliver(&app, &event("evt_a", "customer.subscription.updated", t + 60, sub_object("sub_o", "cus_acme", "active", 2))).await;
        assert!(sub_state(&app, "sub_o").await.starts_with("canceled|"));
        let (audit_rows, applied_false) = (
            scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'webhook_event'").await,
            scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'webhook_event' AND details LIKE '%\"applied\":false%'").await,
        );
        assert_eq!((audit_rows, applied_false), (4, 2), "every event is audited, stale ones as not applied");
    }

    async fn twenty_concurrent_deliveries_of_one_event_have_one_effect(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let body = event("evt_once", "customer.subscription.created", now_secs(), sub_object("sub_once", "cus_acme", "active", 2));
        let results = futures::future::join_all((0..20).map(|_| deliver(&app, &body))).await;
        for (s, res) in &results {
            assert_eq!(*s, StatusCode::OK, "{res}");
        }
        assert_eq!(results.iter().filter(|(_, r)| r["duplicate"] == false).count(), 1, "{results:?}");
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM billing_events WHERE stripe_event_id = 'evt_once'").await, 1);
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_once'").await, 1);
        assert_eq!(scalar(&app, "SELECT attempts FROM billing_events WHERE stripe_event_id = 'evt_once'").await, 1);
        assert_eq!(app.count("subscriptions").await, 1);
    }

    async fn a_failed_event_is_recorded_answered_500_and_applied_by_the_retry_pass(app) {
        app.tenant_without_subscription("acme").await;
        // The customer is not linked yet (and the object carries no tenant): applying fails.
        let body = event("evt_fail", "customer.subscription.created", now_secs(), sub_object("sub_f", "cus_later", "active", 1));
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, error_code(&res)), (StatusCode::INTERNAL_SERVER_ERROR, "event_processing_failed"), "{res}");
        let status = text(&app, "SELECT processing_status FROM billing_events WHERE stripe_event_id = 'evt_fail'").await;
        let error = text(&app, "SELECT last_error FROM billing_events WHERE stripe_event_id = 'evt_fail'").await.unwrap();
        assert_eq!(status.as_deref(), Some("failed"));
        assert!(error.contains("cus_later"), "{error}");
        // The one-commit attempt left nothing behind: one stored row, one recorded attempt, no audit row yet.
        assert_eq!(scalar(&app, "SELECT attempts FROM billing_events WHERE stripe_event_id = 'evt_fail'").await, 1);
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_fail'").await, 0);
        let next = scalar(&app, "SELECT next_attempt_at FROM billing_events WHERE stripe_event_id = 'evt_fail'").await;
        assert!(next > app.state.now());
        assert_eq!(app.count("subscriptions").await, 0);

        // Not due yet: the pass leaves it alone.
        let r = secur360::billing::retry_failed(&app.state, app.state.now()).await.unwrap();
        assert_eq!(r.attempted, 0);

        link_customer(&app, "acme", "cus_later").await;
        let r = secur360::billing::retry_failed(&app.state, next + 1).await.unwrap();
        assert_eq!((r.attempted, r.succeeded), (1, 1));
        assert_eq!(text(&app, "SELECT processing_status FROM billing_events WHERE stripe_event_id = 'evt_fail'").await.as_deref(), Some("processed"));
        assert!(sub_state(&app, "sub_f").await.starts_with("active|month|1|"));
        // Stripe's own retry now finds it done: acknowledged, no second effect.
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, res["duplicate"].as_bool(), res["status"].as_str()), (StatusCode::OK, Some(true), Some("processed")));
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_fail'").await, 1);
    }

    async fn an_event_still_failing_72_hours_after_its_receipt_is_given_up_once_and_never_retried(app) {
        app.tenant_without_subscription("acme").await;
        // A subscription of a customer that is not one of ours: nothing will ever link it to a tenant.
        let body = event("evt_foreign", "customer.subscription.created", now_secs(), sub_object("sub_x", "cus_foreign", "active", 0));
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, error_code(&res)), (StatusCode::INTERNAL_SERVER_ERROR, "event_processing_failed"), "{res}");
        let received = scalar(&app, "SELECT received_at FROM billing_events WHERE stripe_event_id = 'evt_foreign'").await;
        let error = "SELECT last_error FROM billing_events WHERE stripe_event_id = 'evt_foreign'";
        let audit = "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_foreign'";

        // Within Stripe's redelivery window (up to exactly 72 h) it stays failed and retryable.
        for hours in [1, 71, 72] {
            assert_eq!(retry_at(&app, received + hours * HOUR_MS).await, (1, 0, 1, 0), "+{hours} h");
            assert_eq!(event_status(&app, "evt_foreign").await.as_deref(), Some("failed"), "+{hours} h");
            let e = text(&app, error).await.unwrap();
            assert!(e.contains("cus_foreign") && !e.starts_with("given up"), "{e}");
        }
        assert_eq!(scalar(&app, audit).await, 0);
        let c = webhook_errors_check(&app).await;
        assert_eq!((c["status"].as_str(), c["data"]["failed"].as_i64(), c["data"]["given_up"].as_i64()), (Some("warning"), Some(1), Some(0)), "{c}");

        // Past 72 h the next attempt fails once more and gives it up: ignored, the error kept, one audit row.
        assert_eq!(retry_at(&app, received + 73 * HOUR_MS).await, (1, 0, 0, 1));
        assert_eq!(event_status(&app, "evt_foreign").await.as_deref(), Some("ignored"));
        let e = text(&app, error).await.unwrap();
        assert!(e.starts_with("given up: ") && e.contains("72 h") && e.contains("cus_foreign"), "{e}");
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM billing_events WHERE stripe_event_id = 'evt_foreign' \
            AND next_attempt_at IS NULL AND lease_until IS NULL AND processed_at IS NOT NULL").await, 1);
        assert_eq!(scalar(&app, audit).await, 1);
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_foreign' AND zone = 'stripe' \
            AND action = 'event_given_up' AND outcome = 'failure' AND details LIKE '%cus_foreign%'").await, 1);
        let attempts = scalar(&app, "SELECT attempts FROM billing_events WHERE stripe_event_id = 'evt_foreign'").await;
        assert_eq!(attempts, 5);

        // Never retried again, whatever the time.
        for hours in [74, 200, 24 * 365] {
            assert_eq!(retry_at(&app, received + hours * HOUR_MS).await, (0, 0, 0, 0), "+{hours} h");
        }
        assert_eq!(event_status(&app, "evt_foreign").await.as_deref(), Some("ignored"));
        assert_eq!(scalar(&app, "SELECT attempts FROM billing_events WHERE stripe_event_id = 'evt_foreign'").await, attempts);
        assert_eq!(scalar(&app, audit).await, 1);
        assert_eq!(app.count("subscriptions").await, 0);

        // The status page shows it as a warning, with a count.
        let c = webhook_errors_check(&app).await;
        assert_eq!(c["status"], "warning", "{c}");
        assert_eq!((c["data"]["failed"].as_i64(), c["data"]["given_up_7d"].as_i64(), c["data"]["given_up"].as_i64()), (Some(0), Some(1), Some(1)), "{c}");
        assert!(c["detail"].as_str().unwrap().contains("1 Stripe event(s) given up"), "{c}");
    }

    async fn an_event_whose_customer_is_linked_within_72_hours_is_applied_by_a_retry(app) {
        app.tenant_without_subscription("acme").await;
        let body = event("evt_early", "customer.subscription.created", now_secs(), sub_object("sub_e", "cus_late", "active", 2));
        let (s, _) = deliver(&app, &body).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let received = scalar(&app, "SELECT received_at FROM billing_events WHERE stripe_event_id = 'evt_early'").await;
        assert_eq!(retry_at(&app, received + HOUR_MS).await, (1, 0, 1, 0));
        // The checkout that links the customer arrives late.
        let session = json!({"id": "cs_late", "object": "checkout.session", "customer": "cus_late",
                             "client_reference_id": "acme", "payment_status": "paid"});
        let (s, res) = deliver(&app, &event("evt_link", "checkout.session.completed", now_secs(), session)).await;
        assert_eq!(s, StatusCode::OK, "{res}");
        assert_eq!(retry_at(&app, received + 71 * HOUR_MS).await, (1, 1, 0, 0));
        assert_eq!(event_status(&app, "evt_early").await.as_deref(), Some("processed"));
        assert!(text(&app, "SELECT last_error FROM billing_events WHERE stripe_event_id = 'evt_early'").await.is_none());
        assert_eq!(text(&app, "SELECT tenant_id FROM subscriptions WHERE stripe_subscription_id = 'sub_e'").await.as_deref(), Some("acme"));
        assert!(sub_state(&app, "sub_e").await.starts_with("active|month|2|"));
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_early' AND outcome = 'success' AND action = 'webhook_event'").await, 1);
        // Past the window nothing happens to it: it is done.
        assert_eq!(retry_at(&app, received + 73 * HOUR_MS).await, (0, 0, 0, 0));
        assert_eq!(event_status(&app, "evt_early").await.as_deref(), Some("processed"));
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_early'").await, 1);
        let c = webhook_errors_check(&app).await;
        assert_eq!((c["status"].as_str(), c["data"]["failed"].as_i64(), c["data"]["given_up"].as_i64()), (Some("healthy"), Some(0), Some(0)), "{c}");
    }

    async fn a_redelivery_of_a_given_up_event_is_acknowledged_and_has_no_effect(app) {
        app.tenant_without_subscription("acme").await;
        let body = event("evt_gone", "customer.subscription.created", now_secs(), sub_object("sub_g", "cus_gone", "active", 0));
        let (s, _) = deliver(&app, &body).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        let received = scalar(&app, "SELECT received_at FROM billing_events WHERE stripe_event_id = 'evt_gone'").await;
        assert_eq!(retry_at(&app, received + 73 * HOUR_MS).await, (1, 0, 0, 1));
        assert_eq!(event_status(&app, "evt_gone").await.as_deref(), Some("ignored"));
        // Even once its customer is known (applying it would now succeed), the same event id has no second effect.
        link_customer(&app, "acme", "cus_gone").await;
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, res["duplicate"].as_bool(), res["status"].as_str()), (StatusCode::OK, Some(true), Some("ignored")), "{res}");
        assert_eq!(event_status(&app, "evt_gone").await.as_deref(), Some("ignored"));
        assert_eq!(scalar(&app, "SELECT attempts FROM billing_events WHERE stripe_event_id = 'evt_gone'").await, 2);
        assert!(text(&app, "SELECT last_error FROM billing_events WHERE stripe_event_id = 'evt_gone'").await.unwrap().starts_with("given up: "));
        assert_eq!(app.count("subscriptions").await, 0);
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE subject = 'evt_gone'").await, 1);
        assert_eq!(retry_at(&app, received + 80 * HOUR_MS).await, (0, 0, 0, 0));
    }

    async fn entitlements_and_the_subscription_view_follow_the_mirror(app) {
        let key = app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let t = now_secs() - 100;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("suspended"), Some(1)));

        deliver(&app, &event("evt_e1", "customer.subscription.created", t, sub_object("sub_e", "cus_acme", "active", 2))).await;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("full"), Some(3)));
        for name in ["A", "B", "C"] {
            let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": name}))).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "D"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::PAYMENT_REQUIRED, "site_limit_reached"));

        deliver(&app, &event("evt_e2", "customer.subscription.updated", t + 10, sub_object("sub_e", "cus_acme", "past_due", 2))).await;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("grace"), Some(3)));
        assert_eq!(scalar(&app, "SELECT past_due_since FROM subscriptions WHERE stripe_subscription_id = 'sub_e'").await, (t + 10) * 1000);

        let inv = crate::fake_stripe::invoice("in_1", "cus_acme", "sub_e", "paid", 11_498);
        let (s, res) = deliver(&app, &event("evt_e3", "invoice.paid", t + 11, inv)).await;
        assert_eq!(s, StatusCode::OK, "{res}");
        let (s, view) = app.send(Method::GET, "/api/billing/subscription", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK, "{view}");
        assert_eq!((view["plan"].as_str(), view["status"].as_str(), view["access"].as_str()), (Some("monthly"), Some("past_due"), Some("grace")));
        assert_eq!((view["max_sites"].as_i64(), view["additional_sites"].as_i64(), view["cancel_at_period_end"].as_bool()), (Some(3), Some(2), Some(false)));
        assert_eq!(view["current_period_end"].as_str(), Some("2025-12-24T16:00:00.000Z"));
        assert_eq!(view["invoices"][0]["total"].as_i64(), Some(11_498));
        assert_eq!(view["invoices"][0]["amount_paid"].as_i64(), Some(11_498));
        assert_eq!(view["invoices"][0]["tax"].as_i64(), Some(11_498 - 11_498 * 100 / 115));

        deliver(&app, &event("evt_e4", "customer.subscription.deleted", t + 20, sub_object("sub_e", "cus_acme", "canceled", 2))).await;
        let e = app.entitlements(&key).await;
        assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("suspended"), Some(1)));
    }

    async fn invoice_and_customer_events_are_order_safe_too(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let t = now_secs() - 100;
        let inv = |status: &str| crate::fake_stripe::invoice("in_o", "cus_acme", "sub_x", status, 5_750);
        // Paid arrives first; the older draft/open states arriving later do not reopen it.
        for (id, kind, created, status) in [
            ("evt_i3", "invoice.paid", t + 20, "paid"),
            ("evt_i1", "invoice.created", t, "draft"),
            ("evt_i2", "invoice.finalized", t + 10, "open"),
            ("evt_i4", "invoice.payment_succeeded", t + 20, "paid"),
        ] {
            let (s, res) = deliver(&app, &event(id, kind, created, inv(status))).await;
            assert_eq!(s, StatusCode::OK, "{res}");
        }
        assert_eq!(text(&app, "SELECT status FROM invoices WHERE stripe_invoice_id = 'in_o'").await.as_deref(), Some("paid"));
        assert_eq!(scalar(&app, "SELECT amount_paid FROM invoices WHERE stripe_invoice_id = 'in_o'").await, 5_750);

        let cust = |email: &str| json!({"id": "cus_acme", "object": "customer", "email": email, "name": "Acme", "metadata": {"tenant_id": "acme"}});
        deliver(&app, &event("evt_c2", "customer.updated", t + 20, cust("new@acme.test"))).await;
        deliver(&app, &event("evt_c1", "customer.updated", t + 10, cust("old@acme.test"))).await;
        assert_eq!(text(&app, "SELECT email FROM customers WHERE stripe_customer_id = 'cus_acme'").await.as_deref(), Some("new@acme.test"));
        let mut gone = cust("new@acme.test");
        gone["deleted"] = json!(true);
        deliver(&app, &event("evt_c3", "customer.deleted", t + 30, gone)).await;
        assert_eq!(scalar(&app, "SELECT CAST(CASE WHEN deleted THEN 1 ELSE 0 END AS BIGINT) FROM customers WHERE stripe_customer_id = 'cus_acme'").await, 1);
        // invoice.upcoming has no id: acknowledged, nothing mirrored.
        let (s, _) = deliver(&app, &event("evt_up", "invoice.upcoming", t + 40, json!({"object": "invoice", "customer": "cus_acme", "total": 1}))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(app.count("invoices").await, 1);
    }

    async fn checkout_completion_links_the_customer_named_by_the_session(app) {
        app.tenant_without_subscription("acme").await;
        let session = json!({"id": "cs_1", "object": "checkout.session", "customer": "cus_new", "subscription": "sub_new",
                             "client_reference_id": "acme", "metadata": {"tenant_id": "acme"}, "payment_status": "paid",
                             "customer_details": {"email": "a@acme.test", "name": "Acme"}});
        let (s, res) = deliver(&app, &event("evt_cs", "checkout.session.completed", now_secs(), session)).await;
        assert_eq!(s, StatusCode::OK, "{res}");
        assert_eq!(text(&app, "SELECT tenant_id FROM customers WHERE stripe_customer_id = 'cus_new'").await.as_deref(), Some("acme"));
        // Subscription events for that customer now find their tenant.
        let (s, _) = deliver(&app, &event("evt_cs2", "customer.subscription.created", now_secs(), sub_object("sub_new", "cus_new", "active", 0))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(text(&app, "SELECT tenant_id FROM subscriptions WHERE stripe_subscription_id = 'sub_new'").await.as_deref(), Some("acme"));
    }
}

both_backends! {
    async fn with_no_webhook_secret_every_delivery_is_refused(app) {
        let body = event("evt_nosecret", "invoice.paid", now_secs(), json!({"id": "in_1"}));
        let (s, res) = deliver(&app, &body).await;
        assert_eq!((s, error_code(&res)), (StatusCode::SERVICE_UNAVAILABLE, "webhook_not_configured"));
        assert_eq!(app.count("billing_events").await, 0);
    }
}
