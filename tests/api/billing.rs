//! Tenant-admin billing against the fake Stripe (tests/api/fake_stripe.rs): the exact requests we send,
//! retries, the one-customer-per-tenant rule, site-count changes, the portal, and the sync.

use reqwest::{Method, StatusCode};
use secur360::billing::stripe::STRIPE_VERSION;
use secur360::on_db;
use serde_json::{json, Value};

use crate::both_backends;
use crate::fake_stripe::*;
use crate::helpers::*;

/// Tests that need a fake Stripe: `with_fake_stripe! { async fn name(app, fake) { … } }`, on both backends.
macro_rules! with_fake_stripe {
    (extra $extra:expr; $(async fn $name:ident($app:ident, $fake:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                async fn run(backend: Backend) {
                    let $fake = FakeStripe::start().await;
                    let mut vars: Vec<(&str, String)> = $fake.vars();
                    let extra: &[(&str, &str)] = &$extra;
                    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
                    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    let $app = spawn_app_with(backend, &vars).await;
                    $body
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run(Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run(Backend::Postgres).await
                }
            }
        )*
    };
    ($(async fn $name:ident($app:ident, $fake:ident) $body:block)*) => {
        with_fake_stripe! { extra []; $(async fn $name($app, $fake) $body)* }
    };
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await).unwrap()
}

fn assert_headers(r: &Recorded) {
    assert_eq!(r.stripe_version.as_deref(), Some(STRIPE_VERSION), "{} {}", r.method, r.path);
    assert_eq!(r.authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    if r.method == Method::POST {
        assert!(r.idempotency_key.as_deref().is_some_and(|k| !k.is_empty()), "POST {} without Idempotency-Key", r.path);
    }
}

/// A live monthly subscription in both Stripe (the fake) and the mirror.
async fn live_subscription(app: &TestApp, fake: &FakeStripe, tenant: &str, addon: i64) {
    fake.put_customer(&format!("cus_{tenant}"), tenant);
    fake.put_subscription(&format!("sub_{tenant}"), &format!("cus_{tenant}"), "active", "month", addon);
    crate::billing_webhooks::link_customer(app, tenant, &format!("cus_{tenant}")).await;
    subscribe(&app.db, tenant, "active", addon).await;
}

with_fake_stripe! {
    async fn checkout_sends_the_base_price_and_the_same_interval_add_on_with_tax_and_fixed_urls(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "monthly", "additional_sites": 2}))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b["url"].as_str().unwrap().starts_with("https://checkout.stripe.test/c/pay/cs_test_"));

        let customers = fake.requests_to(Method::POST, "/v1/customers");
        assert_eq!(customers.len(), 1);
        assert_eq!(customers[0].idempotency_key.as_deref(), Some("secur360-customer-acme"));
        assert_eq!(customers[0].field("metadata[tenant_id]"), Some("acme"));
        let sessions = fake.requests_to(Method::POST, "/v1/checkout/sessions");
        assert_eq!(sessions.len(), 1);
        let mut form = sessions[0].form.clone();
        form.sort();
        let customer = scalar_text(&app, "SELECT stripe_customer_id FROM customers WHERE tenant_id = 'acme'").await;
        let mut want: Vec<(String, String)> = [
            ("automatic_tax[enabled]", "true"),
            ("cancel_url", "https://c-secur360.ca/billing/cancel"),
            ("client_reference_id", "acme"),
            ("customer", customer.as_str()),
            ("customer_update[address]", "auto"),
            ("line_items[0][price]", PRICE_MONTHLY),
            ("line_items[0][quantity]", "1"),
            ("line_items[1][price]", PRICE_ADDON_MONTHLY),
            ("line_items[1][quantity]", "2"),
            ("metadata[additional_sites]", "2"),
            ("metadata[plan]", "monthly"),
            ("metadata[tenant_id]", "acme"),
            ("mode", "subscription"),
            ("subscription_data[metadata][tenant_id]", "acme"),
            ("success_url", "https://c-secur360.ca/billing/success"),
        ].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        want.sort();
        assert_eq!(form, want);
        for r in fake.requests() {
            assert_headers(&r);
        }
        assert_eq!(app.count("customers").await, 1);

        // Annual, no add-on: the annual base price only, and the same customer.
        let (s, _) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "annual", "additional_sites": 0}))).await;
        assert_eq!(s, StatusCode::OK);
        let sessions = fake.requests_to(Method::POST, "/v1/checkout/sessions");
        let annual = &sessions[1];
        assert_eq!(annual.field("line_items[0][price]"), Some(PRICE_ANNUAL));
        assert_eq!(annual.field("line_items[1][price]"), None);
        assert_eq!(annual.field("subscription_data[trial_period_days]"), None);
        assert_ne!(annual.idempotency_key, sessions[0].idempotency_key);
        assert_eq!(fake.requests_to(Method::POST, "/v1/customers").len(), 1, "the customer is reused");
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'checkout_create'").await, 2);
    }

    async fn bad_checkout_input_is_refused_with_the_field_and_nothing_is_sent(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        for (body, field) in [
            (json!({"plan": "weekly", "additional_sites": 1}), "plan"),
            (json!({"additional_sites": 1}), "plan"),
            (json!({"plan": "annual", "additional_sites": -1}), "additional_sites"),
            (json!({"plan": "annual", "additional_sites": 100000}), "additional_sites"),
            (json!({"plan": "annual", "trial_period_days": 90}), "trial_period_days"),
        ] {
            let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(body.clone())).await;
            assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
            assert!(b["error"]["message"].as_str().unwrap().contains(field), "{body}: {b}");
        }
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({}))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("additional_sites"));
        assert!(fake.requests().is_empty());
        assert_eq!(app.count("customers").await, 0);
    }

    async fn concurrent_checkouts_create_one_stripe_customer_and_one_row(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        let results = futures::future::join_all((0..10).map(|_| {
            app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "monthly", "additional_sites": 0})))
        })).await;
        for (s, b) in &results {
            assert_eq!(*s, StatusCode::OK, "{b}");
        }
        assert_eq!(app.count("customers").await, 1);
        assert_eq!(fake.inner.lock().unwrap().customers.len(), 1, "Stripe saw one customer");
        let keys: std::collections::BTreeSet<_> = fake.requests_to(Method::POST, "/v1/customers").into_iter().map(|r| r.idempotency_key).collect();
        assert_eq!(keys.len(), 1, "every create used the tenant's idempotency key");
        let stored = scalar_text(&app, "SELECT stripe_customer_id FROM customers WHERE tenant_id = 'acme'").await;
        for r in fake.requests_to(Method::POST, "/v1/checkout/sessions") {
            assert_eq!(r.field("customer"), Some(stored.as_str()));
        }
    }

    async fn stripe_errors_429_and_500_are_retried_with_the_same_idempotency_key(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        fake.fail_next(&[429, 500]);
        let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "monthly", "additional_sites": 1}))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let creates = fake.requests_to(Method::POST, "/v1/customers");
        assert_eq!(creates.len(), 3);
        assert!(creates.iter().all(|r| r.idempotency_key.as_deref() == Some("secur360-customer-acme")));
        assert_eq!(app.count("customers").await, 1);
    }

    async fn a_stripe_outage_is_503_and_records_nothing(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        fake.fail_next(&[500, 503, 502]);
        let before = app.count("system_audit_logs").await;
        let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "monthly", "additional_sites": 1}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::SERVICE_UNAVAILABLE, "stripe_unavailable"), "{b}");
        assert!(!b.to_string().contains(KEY));
        assert_eq!((app.count("customers").await, app.count("system_audit_logs").await), (0, before));
        assert_eq!(fake.requests().len(), 3, "bounded retries");
    }

    async fn the_portal_opens_for_the_tenants_own_customer_with_a_fixed_return_url(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        let other = app.tenant_without_subscription("other").await;
        crate::billing_webhooks::link_customer(&app, "acme", "cus_acme").await;
        crate::billing_webhooks::link_customer(&app, "other", "cus_other").await;
        let (s, b) = app.send(Method::POST, "/api/billing/portal", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(b["url"].as_str().unwrap().starts_with("https://billing.stripe.test/"));
        app.send(Method::POST, "/api/billing/portal", Some(&other), None).await;
        let portals = fake.requests_to(Method::POST, "/v1/billing_portal/sessions");
        assert_eq!(portals[0].field("customer"), Some("cus_acme"));
        assert_eq!(portals[1].field("customer"), Some("cus_other"));
        assert_eq!(portals[0].field("return_url"), Some("https://c-secur360.ca/billing"));
        assert_eq!(portals[0].form.len(), 2);
        for r in fake.requests() {
            assert_headers(&r);
        }
    }

    async fn changing_the_site_count_adds_updates_and_removes_the_add_on_item_with_proration(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        live_subscription(&app, &fake, "acme", 0).await;

        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 3}))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let updates = fake.requests_to(Method::POST, "/v1/subscriptions/sub_acme");
        assert_eq!(updates[0].field("items[0][price]"), Some(PRICE_ADDON_MONTHLY));
        assert_eq!(updates[0].field("items[0][quantity]"), Some("3"));
        assert_eq!(updates[0].field("proration_behavior"), Some("create_prorations"));
        let e = app.entitlements(&key).await;
        assert_eq!(e["max_sites"].as_i64(), Some(4));

        let (s, _) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 5}))).await;
        assert_eq!(s, StatusCode::OK);
        let updates = fake.requests_to(Method::POST, "/v1/subscriptions/sub_acme");
        assert_eq!(updates[1].field("items[0][id]"), Some("si_new_sub_acme"));
        assert_eq!(updates[1].field("items[0][quantity]"), Some("5"));
        assert_eq!(updates[1].field("items[0][price]"), None);

        let (s, _) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 0}))).await;
        assert_eq!(s, StatusCode::OK);
        let updates = fake.requests_to(Method::POST, "/v1/subscriptions/sub_acme");
        assert_eq!(updates[2].field("items[0][id]"), Some("si_new_sub_acme"));
        assert_eq!(updates[2].field("items[0][deleted]"), Some("true"));
        let e = app.entitlements(&key).await;
        assert_eq!(e["max_sites"].as_i64(), Some(1));
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'sites_change'").await, 3);
        for r in fake.requests() {
            assert_headers(&r);
        }
    }

    async fn the_site_count_cannot_drop_below_the_sites_in_use_or_change_without_a_subscription(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 1}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "no_subscription"));
        live_subscription(&app, &fake, "acme", 2).await;
        for name in ["A", "B", "C"] {
            app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": name}))).await;
        }
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 1}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "sites_in_use"), "{b}");
        assert!(fake.requests_to(Method::POST, "/v1/subscriptions/sub_acme").is_empty());
    }

    async fn a_tenant_has_one_payable_checkout_session_at_a_time(app, fake) {
        let acme = app.tenant_without_subscription("acme").await;
        let beta = app.tenant_without_subscription("beta").await;
        let checkout = |key: &str, plan: &'static str| {
            let key = key.to_owned();
            let app = &app;
            async move {
                let body = json!({"plan": plan, "additional_sites": 1});
                let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(body)).await;
                assert_eq!(s, StatusCode::OK, "{b}");
                b["url"].as_str().unwrap().to_owned()
            }
        };
        checkout(&beta, "monthly").await;
        let first = checkout(&acme, "monthly").await;
        // The same request again (a double submit, a reload): the same session, not a second one.
        assert_eq!(checkout(&acme, "monthly").await, first);
        let (twice, _) = tokio::join!(checkout(&acme, "monthly"), checkout(&acme, "monthly"));
        assert_eq!(twice, first);
        assert_eq!(fake.requests_to(Method::POST, "/v1/checkout/sessions").len(), 2, "beta's and acme's");
        assert_eq!(app.count("system_audit_logs WHERE action = 'checkout_reuse'").await, 3);

        // Another plan: a new session, and the first can no longer be paid; another customer's is left alone.
        let annual = checkout(&acme, "annual").await;
        assert_ne!(annual, first);
        let cus_acme = scalar_text(&app, "SELECT stripe_customer_id FROM customers WHERE tenant_id = 'acme'").await;
        let cus_beta = scalar_text(&app, "SELECT stripe_customer_id FROM customers WHERE tenant_id = 'beta'").await;
        let sessions = fake.sessions();
        let summary: Vec<(&str, &str)> = sessions.iter().map(|(_, c, s)| (c.as_str(), s.as_str())).collect();
        assert_eq!(summary, vec![(cus_beta.as_str(), "open"), (cus_acme.as_str(), "expired"), (cus_acme.as_str(), "open")]);
        assert!(annual.ends_with(&sessions[2].0) && first.ends_with(&sessions[1].0));
        let sql = format!("SELECT details FROM system_audit_logs WHERE action = 'checkout_create' AND subject = '{}'", sessions[2].0);
        let details = scalar_text(&app, &sql).await;
        assert!(details.contains(&sessions[1].0), "the audit row names the session expired: {details}");
        let form = &fake.requests_to(Method::POST, "/v1/checkout/sessions")[2];
        assert_eq!((form.field("metadata[plan]"), form.field("metadata[additional_sites]")), (Some("annual"), Some("1")));
    }

    async fn no_site_is_created_against_the_old_count_while_stripe_lowers_it(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        live_subscription(&app, &fake, "acme", 2).await;
        for name in ["A", "B"] {
            let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": name}))).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        // While Stripe is lowering the add-on from 2 to 1, a third site is asked for: it must not fit.
        let gate = fake.hold_subscription_update();
        let lower = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 1})));
        let meanwhile = async {
            gate.arrived.notified().await;
            let created = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "C"}))).await;
            gate.release.notify_one();
            created
        };
        let ((s, b), (cs, cb)) = tokio::join!(lower, meanwhile);
        assert_eq!((s, b["additional_sites"].as_i64()), (StatusCode::OK, Some(1)), "{b}");
        assert_eq!((cs, error_code(&cb)), (StatusCode::PAYMENT_REQUIRED, "site_limit_reached"), "{cb}");
        let e = app.entitlements(&key).await;
        assert_eq!((e["max_sites"].as_i64(), e["sites_used"].as_i64()), (Some(2), Some(2)), "{e}");
    }

    async fn billing_stays_open_to_a_suspended_tenant_and_says_how_to_restore_it(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        live_subscription(&app, &fake, "acme", 2).await;
        // Past due for far longer than the grace period: read-only, and told to pay in the portal.
        app.exec("UPDATE subscriptions SET status = 'past_due', past_due_since = 1 WHERE tenant_id = 'acme'").await;
        let (s, b) = app.send(Method::POST, "/api/sites", Some(&key), Some(json!({"name": "Usine"}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::PAYMENT_REQUIRED, "tenant_suspended"), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("billing portal (POST /api/billing/portal)"), "{b}");
        // The ways out stay open: the portal, and the add-on count.
        let (s, b) = app.send(Method::POST, "/api/billing/portal", Some(&key), None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 1}))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        // An unpaid subscription is paid in the portal, not doubled by a second one through Checkout.
        app.exec("UPDATE subscriptions SET status = 'unpaid' WHERE tenant_id = 'acme'").await;
        let body = json!({"plan": "monthly", "additional_sites": 0});
        let (s, b) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(body)).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "already_subscribed"), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("unpaid"), "{b}");
        assert!(fake.requests_to(Method::POST, "/v1/checkout/sessions").is_empty());
    }

    async fn a_lowering_stripe_refuses_gives_the_sites_back(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        live_subscription(&app, &fake, "acme", 2).await;
        let max_sites = || async {
            let e = app.entitlements(&key).await;
            e["max_sites"].as_i64().unwrap()
        };
        fake.fail_subscription_updates(&[400]);
        let gate = fake.hold_subscription_update();
        let lower = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 0})));
        let during = async {
            gate.arrived.notified().await;
            let during = max_sites().await;
            gate.release.notify_one();
            during
        };
        let ((s, b), during) = tokio::join!(lower, during);
        assert_eq!(during, 1, "lowered while Stripe was asked");
        assert_eq!((s, error_code(&b)), (StatusCode::BAD_GATEWAY, "stripe_error"), "{b}");
        assert_eq!(max_sites().await, 3, "Stripe refused: the mirror keeps what Stripe has");
        assert_eq!(app.count("system_audit_logs WHERE action = 'sites_change'").await, 0);
    }

    async fn a_lowering_whose_outcome_is_unknown_keeps_the_lower_count_until_stripe_says(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        live_subscription(&app, &fake, "acme", 2).await;
        // Stripe keeps failing (the client's three attempts): it may or may not have applied the change.
        fake.fail_subscription_updates(&[500, 500, 500]);
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 0}))).await;
        assert_eq!((s, error_code(&b)), (StatusCode::SERVICE_UNAVAILABLE, "stripe_unavailable"), "{b}");
        let e = app.entitlements(&key).await;
        assert_eq!(e["max_sites"].as_i64(), Some(1), "never more sites than may be paid for: {e}");
        // The retry the 503 asks for goes through.
        let (s, b) = app.send(Method::PUT, "/api/billing/sites", Some(&key), Some(json!({"additional_sites": 0}))).await;
        assert_eq!((s, b["additional_sites"].as_i64()), (StatusCode::OK, Some(0)), "{b}");
    }

    async fn the_sync_repairs_drift_recovers_undelivered_events_and_records_each_correction(app, fake) {
        app.tenant_without_subscription("acme").await;
        app.tenant_without_subscription("beta").await;
        // Stripe's truth.
        fake.put_customer("cus_acme", "acme");
        fake.put_customer("cus_beta", "beta");
        fake.put_customer("cus_stranger", "");
        fake.put_subscription("sub_acme", "cus_acme", "active", "month", 2);
        fake.put_subscription("sub_beta", "cus_beta", "past_due", "year", 1);
        fake.put_invoice(invoice("in_acme_1", "cus_acme", "sub_acme", "paid", 11_498));
        let ev_sub = fake.put_subscription("sub_acme", "cus_acme", "active", "month", 2);
        fake.put_event(json!({"id": "evt_missed", "object": "event", "type": "customer.subscription.updated",
                              "created": 1_764_000_000, "livemode": false, "data": {"object": ev_sub}}));
        // The mirror drifted: acme's row says canceled with no add-on; beta's customer is not linked at all.
        crate::billing_webhooks::link_customer(&app, "acme", "cus_acme").await;
        subscribe(&app.db, "acme", "canceled", 0).await;

        // Many pages: the client must follow starting_after.
        for i in 0..150 {
            fake.put_customer(&format!("cus_z{i:03}"), "");
        }

        let now = app.state.now();
        let report = secur360::billing::sync::run(&app.state, now).await;
        assert!(report.ok, "{report:?}");
        assert_eq!((report.customers_seen, report.subscriptions_seen, report.invoices_seen), (153, 2, 1));
        assert_eq!(report.events_recovered, 1);
        // beta's customer linked, acme's and beta's subscriptions, acme's invoice.
        assert_eq!(report.corrected, 4, "{report:?}");
        let state: (String, i64) = on_db!(&app.db, p => sqlx::query_as(
            "SELECT status, addon_quantity FROM subscriptions WHERE stripe_subscription_id = 'sub_acme'").fetch_one(p).await).unwrap();
        assert_eq!(state, ("active".into(), 2));
        assert_eq!(scalar_text(&app, "SELECT tenant_id FROM customers WHERE stripe_customer_id = 'cus_beta'").await, "beta");
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM billing_events WHERE source = 'sync' AND event_type LIKE 'sync.%'").await, 4);
        assert_eq!(scalar_text(&app, "SELECT processing_status FROM billing_events WHERE stripe_event_id = 'evt_missed'").await, "processed");
        // Four corrections, the recovered event, and the run itself.
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE zone = 'billing' AND action = 'sync'").await, 4 + 1 + 1);
        let pages = fake.requests_to(Method::GET, "/v1/customers");
        assert_eq!(pages.len(), 2);
        assert!(pages[1].query.iter().any(|(k, _)| k == "starting_after"));
        assert!(fake.requests_to(Method::GET, "/v1/subscriptions")[0].query.contains(&("status".into(), "all".into())));
        assert!(fake.requests_to(Method::GET, "/v1/events")[0].query.contains(&("delivery_success".into(), "false".into())));
        for r in fake.requests() {
            assert_headers(&r);
        }

        // Nothing drifted since: a second run corrects nothing.
        let again = secur360::billing::sync::run(&app.state, now + 1_000).await;
        assert!(again.ok, "{again:?}");
        assert_eq!((again.corrected, again.events_recovered), (0, 0));
    }

    async fn a_partial_sync_failure_is_reported_as_such(app, fake) {
        app.tenant_without_subscription("acme").await;
        fake.put_customer("cus_acme", "acme");
        fake.put_subscription("sub_acme", "cus_acme", "active", "month", 1);
        // The event listing fails three times (all its attempts); the rest goes on.
        fake.fail_next(&[500, 500, 500]);
        let report = secur360::billing::sync::run(&app.state, app.state.now()).await;
        assert!(!report.ok && report.partial());
        assert!(report.errors.iter().any(|e| e.contains("undelivered events")), "{report:?}");
        assert_eq!((report.customers_seen, report.subscriptions_seen), (1, 1));
        assert_eq!(scalar(&app, "SELECT addon_quantity FROM subscriptions WHERE stripe_subscription_id = 'sub_acme'").await, 1);
        assert_eq!(scalar(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'sync' AND outcome = 'failure' AND subject IS NULL").await, 1);
    }
}

with_fake_stripe! {
    extra [("STRIPE_TRIAL_DAYS", "14"), ("CRON_SECRET", "cron-secret-0123456789abcdef")];

    async fn the_trial_comes_from_the_server_configuration(app, fake) {
        let key = app.tenant_without_subscription("acme").await;
        let (s, _) = app.send(Method::POST, "/api/billing/checkout", Some(&key), Some(json!({"plan": "annual", "additional_sites": 1}))).await;
        assert_eq!(s, StatusCode::OK);
        let session = &fake.requests_to(Method::POST, "/v1/checkout/sessions")[0];
        assert_eq!(session.field("subscription_data[trial_period_days]"), Some("14"));
        assert_eq!(session.field("line_items[1][price]"), Some(PRICE_ADDON_ANNUAL));
    }

    async fn the_sync_trigger_accepts_the_cron_secret_or_the_operator_token_only(app, fake) {
        fake.put_customer("cus_x", "");
        for (token, want) in [
            (None, StatusCode::UNAUTHORIZED),
            (Some("wrong"), StatusCode::UNAUTHORIZED),
            (Some("cron-secret-0123456789abcdef"), StatusCode::OK),
            (Some(ADMIN_TOKEN), StatusCode::OK),
        ] {
            for method in [Method::GET, Method::POST] {
                let (s, b) = app.send(method.clone(), "/api/billing/sync", token, None).await;
                assert_eq!(s, want, "{method} {token:?}: {b}");
                if s == StatusCode::OK {
                    assert_eq!((b["run"]["status"].as_str(), b["run"]["counts"]["customers_seen"].as_i64()), (Some("succeeded"), Some(1)));
                }
            }
        }
    }
}

both_backends! {
    async fn without_stripe_the_billing_endpoints_answer_503_billing_not_configured(app) {
        let key = app.tenant_without_subscription("acme").await;
        for (method, path, body) in [
            (Method::POST, "/api/billing/checkout", Some(json!({"plan": "monthly", "additional_sites": 0}))),
            (Method::POST, "/api/billing/portal", None),
            (Method::PUT, "/api/billing/sites", Some(json!({"additional_sites": 1}))),
        ] {
            let (s, b) = app.send(method.clone(), path, Some(&key), body).await;
            assert_eq!((s, error_code(&b)), (StatusCode::SERVICE_UNAVAILABLE, "billing_not_configured"), "{method} {path}");
            assert!(b["error"]["message"].as_str().unwrap().contains("not configured"));
        }
        // The mirror view still works, and says there is no subscription.
        let (s, b) = app.send(Method::GET, "/api/billing/subscription", Some(&key), None).await;
        assert_eq!((s, b["status"].clone(), b["access"].as_str()), (StatusCode::OK, Value::Null, Some("suspended")));
        // With no CRON_SECRET, only the operator can trigger the sync; it reports that Stripe is not configured.
        let (s, _) = app.send(Method::POST, "/api/billing/sync", Some("anything"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, b) = app.operator(Method::POST, "/api/billing/sync", None).await;
        assert_eq!((s, b["run"]["status"].as_str()), (StatusCode::INTERNAL_SERVER_ERROR, Some("failed")));
        assert!(b["run"]["errors"][0].as_str().unwrap().contains("not configured"), "{b}");
        assert_eq!(app.count("customers").await, 0);
    }
}

async fn scalar_text(app: &TestApp, sql: &str) -> String {
    on_db!(&app.db, p => sqlx::query_scalar::<_, String>(sql).fetch_one(p).await).unwrap()
}

async fn cli_sync(db_url: &str, vars: &[(&str, String)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_secur360"));
    cmd.args(["billing", "sync", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run secur360")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_sync_command_prints_its_report_and_fails_when_stripe_is_unreachable_or_unconfigured() {
    let fake = FakeStripe::start().await;
    fake.put_customer("cus_x", "");
    let (_db, url, _dir) = fresh_database(Backend::Sqlite).await;
    let out = cli_sync(&url, &fake.vars()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["status"].as_str(), report["counts"]["customers_seen"].as_i64()), (Some("succeeded"), Some(1)));

    let out = cli_sync(&url, &[]).await;
    assert!(!out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(report["errors"][0].as_str().unwrap().contains("not configured"), "{report}");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(KEY));
}
