//! Against localstripe (PyPI, in the peer venv): a customer, a subscription, a quantity change and invoices reach
//! the mirror through real signed webhooks sent by localstripe, and through `billing sync`.
//!
//! localstripe's limits, covered by the fake Stripe instead (tests/api/billing.rs): no Prices (Plans only, used
//! here with the add-on price id), one item per subscription, no Checkout Sessions or billing portal, no
//! `customer.subscription.updated` event on a quantity change (the sync repairs it — which this test shows), and
//! no `delivery_success` filter on the event list (the sync reports that part as failed).
//! Webhooks are sent by localstripe on its own schedule (about one second after the change), so the test waits
//! for them with a bounded poll of the database.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

use secur360::on_db;
use serde_json::Value;

use crate::billing_webhooks::SECRET;
use crate::helpers::*;
use crate::peer::{self, Peer};

const ADDON: &str = "price_addon_month";

struct LocalStripe {
    peer: Peer,
}

impl LocalStripe {
    /// Start localstripe bound to 127.0.0.1 on a free port (from scratch: nothing loaded from disk).
    async fn start() -> LocalStripe {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var_os("SECUR360_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("target/peers-venv/bin/python"));
        assert!(python.exists(), "localstripe is needed in the peer venv at {} (run scripts/test)", python.display());
        let command = |port: u16| {
            let script = format!(
                "from aiohttp import web\nfrom localstripe.resources import store\nfrom localstripe.server import app\n\
                 store.dump_to_disk = lambda: None  # parallel instances must not share /tmp/localstripe.pickle\n\
                 web.run_app(app, host='127.0.0.1', port={port}, print=None)"
            );
            let mut c = Command::new(&python);
            c.args(["-c", &script]);
            c
        };
        // localstripe (aiohttp) refuses a request without an API key with Stripe's error shape.
        let is_localstripe = |headers: &HeaderMap, body: &str| {
            let server = headers.get("server").and_then(|v| v.to_str().ok()).unwrap_or_default();
            server.contains("aiohttp") && body.contains("invalid_request_error")
        };
        LocalStripe { peer: peer::start("localstripe", command, is_localstripe, Duration::from_secs(30)).await }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.peer.base))
            .basic_auth("sk_test_localstripe", Some(""))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert!(status.is_success(), "localstripe {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

async fn optional_text(app: &TestApp, sql: &str) -> Option<String> {
    on_db!(&app.db, p => sqlx::query_scalar::<_, String>(sql).fetch_optional(p).await).unwrap()
}

/// Wait (bounded) until `sql` returns `want`: localstripe delivers webhooks asynchronously.
async fn eventually(app: &TestApp, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = optional_text(app, sql).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: still {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(backend: Backend) {
    let ls = LocalStripe::start().await;
    let vars = [
        ("STRIPE_SECRET_KEY", "sk_test_localstripe"),
        ("STRIPE_API_BASE", ls.peer.base.as_str()),
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("STRIPE_PRICE_MONTHLY", "price_base_month"),
        ("STRIPE_PRICE_ADDON_SITE_MONTHLY", ADDON),
    ];
    let app = spawn_app_with(backend, &vars).await;
    let key = app.tenant_with_key("acme").await;
    let hook = app.url("/api/webhooks/stripe");
    ls.post("/_config/webhooks/secur360", &[("url", hook.as_str()), ("secret", SECRET)]).await;

    ls.post("/v1/products", &[("id", "prod_site"), ("name", "Site additionnel")]).await;
    let plan =
        [("id", ADDON), ("product", "prod_site"), ("amount", "5000"), ("currency", "cad"), ("interval", "month")];
    ls.post("/v1/plans", &plan).await;
    let card = [
        ("card[number]", "4242424242424242"),
        ("card[exp_month]", "12"),
        ("card[exp_year]", "2034"),
        ("card[cvc]", "123"),
    ];
    let token = ls.post("/v1/tokens", &card).await["id"].as_str().unwrap().to_owned();

    // A customer created in Stripe for the tenant: customer.created links it.
    let customer = ls
        .post(
            "/v1/customers",
            &[("name", "Acme"), ("email", "billing@acme.test"), ("metadata[tenant_id]", "acme"), ("source", &token)],
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(&app, &format!("SELECT tenant_id FROM customers WHERE stripe_customer_id = '{customer}'"), "acme").await;
    eventually(
        &app,
        &format!("SELECT email FROM customers WHERE stripe_customer_id = '{customer}'"),
        "billing@acme.test",
    )
    .await;

    // A subscription of two additional sites: customer.subscription.created, then its paid invoice.
    let sub = ls
        .post("/v1/subscriptions", &[("customer", &customer), ("items[0][plan]", ADDON), ("items[0][quantity]", "2")])
        .await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let sub_row =
        format!("SELECT status || '|' || addon_quantity FROM subscriptions WHERE stripe_subscription_id = '{sub_id}'");
    eventually(&app, &sub_row, "active|2").await;
    let invoice_row = format!("SELECT status || '|' || total FROM invoices WHERE stripe_subscription_id = '{sub_id}'");
    eventually(&app, &invoice_row, "paid|10000").await;
    let e = app.entitlements(&key).await;
    assert_eq!((e["access"].as_str(), e["max_sites"].as_i64()), (Some("full"), Some(3)), "{e}");
    let webhook_types: Vec<String> = on_db!(&app.db, p => sqlx::query_scalar(
        "SELECT event_type FROM billing_events WHERE source = 'webhook' AND processing_status = 'processed' ORDER BY event_type"
    ).fetch_all(p).await).unwrap();
    for t in ["customer.created", "customer.subscription.created", "invoice.payment_succeeded"] {
        assert!(webhook_types.iter().any(|w| w == t), "{t} not delivered: {webhook_types:?}");
    }

    // Five sites: localstripe sends no event for a quantity change, so the mirror is stale until the sync.
    ls.post(&format!("/v1/subscriptions/{sub_id}"), &[("items[0][plan]", ADDON), ("items[0][quantity]", "5")]).await;
    assert_eq!(optional_text(&app, &sub_row).await.as_deref(), Some("active|2"));
    let report = secur360::billing::sync::run(&app.state, app.state.now()).await;
    assert_eq!((report.customers_seen, report.subscriptions_seen), (1, 1), "{report:?}");
    assert!(report.invoices_seen >= 1, "{report:?}");
    assert!(report.corrected >= 1, "{report:?}");
    // localstripe does not know `delivery_success`: that part, and only that part, is reported as failed.
    assert!(!report.ok);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert!(report.errors[0].contains("undelivered events"), "{report:?}");
    assert_eq!(optional_text(&app, &sub_row).await.as_deref(), Some("active|5"));
    let e = app.entitlements(&key).await;
    assert_eq!(e["max_sites"].as_i64(), Some(6), "{e}");
    let corrections: i64 = on_db!(&app.db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM billing_events WHERE source = 'sync' AND event_type = 'sync.subscription_corrected'"
    ).fetch_one(p).await)
    .unwrap();
    assert_eq!(corrections, 1);
}

mod localstripe_customers_subscriptions_quantity_changes_and_invoices_reach_the_mirror_by_webhook_and_by_sync {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        scenario(Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        scenario(Backend::Postgres).await
    }
}
