//! A small fake Stripe for what localstripe lacks (Prices, Checkout Sessions, billing portal, automatic_tax,
//! two-item subscriptions): an axum server on 127.0.0.1:0 that records every request and answers the
//! documented shapes of API version 2024-06-20. Idempotency keys are honoured on customer creation.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub authorization: Option<String>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct Inner {
    pub requests: Vec<Recorded>,
    /// Statuses to answer the next requests with, before serving them normally.
    pub fail_next: VecDeque<u16>,
    pub customers: BTreeMap<String, Value>,
    pub customer_by_key: HashMap<String, String>,
    pub subscriptions: BTreeMap<String, Value>,
    pub invoices: BTreeMap<String, Value>,
    pub events: Vec<Value>,
    /// Checkout Sessions created, by id (`status` open until expired).
    pub sessions: BTreeMap<String, Value>,
    pub next_id: u64,
    /// Set by [`FakeStripe::hold_subscription_update`]: the next subscription update waits on it.
    pub hold: Option<Gate>,
    /// Set by [`FakeStripe::fail_subscription_updates`]: statuses the next subscription updates answer.
    pub update_failures: VecDeque<u16>,
}

/// A request held by the fake: `arrived` is notified when it reaches the fake, which answers it once `release`
/// is notified (so a test can act while the service waits on Stripe).
#[derive(Clone, Default)]
pub struct Gate {
    pub arrived: Arc<tokio::sync::Notify>,
    pub release: Arc<tokio::sync::Notify>,
}

#[derive(Clone, Default)]
pub struct FakeStripe {
    pub inner: Arc<Mutex<Inner>>,
    pub base: String,
}

pub const KEY: &str = "sk_test_fake_0123456789";
pub const PRICE_MONTHLY: &str = "price_base_month";
pub const PRICE_ANNUAL: &str = "price_base_year";
pub const PRICE_ADDON_MONTHLY: &str = "price_addon_month";
pub const PRICE_ADDON_ANNUAL: &str = "price_addon_year";

impl FakeStripe {
    pub async fn start() -> FakeStripe {
        let mut fake = FakeStripe::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        fake.base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/v1/customers", post(create_customer).get(list_customers))
            .route("/v1/checkout/sessions", post(create_session).get(list_sessions))
            .route("/v1/checkout/sessions/{id}/expire", post(expire_session))
            .route("/v1/billing_portal/sessions", post(create_portal))
            .route("/v1/subscriptions", get(list_subscriptions))
            .route("/v1/subscriptions/{id}", get(get_subscription).post(update_subscription))
            .route("/v1/invoices", get(list_invoices))
            .route("/v1/events", get(list_events))
            .fallback(any(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": {"message": "no such route"}}))) }))
            .layer(axum::middleware::from_fn_with_state(fake.clone(), record))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// Environment for `spawn_app_with`: Stripe fully configured against this fake.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRIPE_SECRET_KEY", KEY.into()),
            ("STRIPE_API_BASE", self.base.clone()),
            ("STRIPE_WEBHOOK_SECRET", crate::billing_webhooks::SECRET.into()),
            ("STRIPE_PRICE_MONTHLY", PRICE_MONTHLY.into()),
            ("STRIPE_PRICE_ANNUAL", PRICE_ANNUAL.into()),
            ("STRIPE_PRICE_ADDON_SITE_MONTHLY", PRICE_ADDON_MONTHLY.into()),
            ("STRIPE_PRICE_ADDON_SITE_ANNUAL", PRICE_ADDON_ANNUAL.into()),
            ("APP_URL", "https://c-secur360.ca".into()),
        ]
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn requests_to(&self, method: Method, path: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.method == method && r.path == path).collect()
    }

    /// Hold the next `POST /v1/subscriptions/{id}` until the returned gate's `release` is notified.
    pub fn hold_subscription_update(&self) -> Gate {
        let gate = Gate::default();
        self.inner.lock().unwrap().hold = Some(gate.clone());
        gate
    }

    /// Answer the next subscription updates (`POST /v1/subscriptions/{id}`) with these statuses, changing nothing
    /// (other requests are served normally).
    pub fn fail_subscription_updates(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().update_failures.extend(statuses);
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        self.inner.lock().unwrap().fail_next.extend(statuses);
    }

    /// Store a subscription (two items when `addon > 0`) as Stripe would return it.
    pub fn put_subscription(&self, id: &str, customer: &str, status: &str, interval: &str, addon: i64) -> Value {
        let (base, addon_price) =
            if interval == "month" { (PRICE_MONTHLY, PRICE_ADDON_MONTHLY) } else { (PRICE_ANNUAL, PRICE_ADDON_ANNUAL) };
        let mut items = vec![item(&format!("si_base_{id}"), base, interval, 1)];
        if addon > 0 {
            items.push(item(&format!("si_addon_{id}"), addon_price, interval, addon));
        }
        let sub = subscription(id, customer, status, items);
        self.inner.lock().unwrap().subscriptions.insert(id.into(), sub.clone());
        sub
    }

    pub fn put_customer(&self, id: &str, tenant: &str) {
        let c = json!({"id": id, "object": "customer", "email": format!("billing@{tenant}.test"), "name": tenant,
                       "metadata": {"tenant_id": tenant}, "livemode": false});
        self.inner.lock().unwrap().customers.insert(id.into(), c);
    }

    pub fn put_invoice(&self, v: Value) {
        let id = v["id"].as_str().unwrap().to_owned();
        self.inner.lock().unwrap().invoices.insert(id, v);
    }

    pub fn put_event(&self, v: Value) {
        self.inner.lock().unwrap().events.push(v);
    }
}

pub fn item(id: &str, price: &str, interval: &str, quantity: i64) -> Value {
    json!({"id": id, "object": "subscription_item", "quantity": quantity,
           "price": {"id": price, "object": "price", "recurring": {"interval": interval, "interval_count": 1}}})
}

pub fn subscription(id: &str, customer: &str, status: &str, items: Vec<Value>) -> Value {
    json!({"id": id, "object": "subscription", "customer": customer, "status": status,
           "items": {"object": "list", "data": items, "has_more": false},
           "current_period_start": 1_764_000_000, "current_period_end": 1_766_592_000,
           "cancel_at_period_end": false, "canceled_at": null, "trial_end": null, "created": 1_764_000_000,
           "metadata": {}, "livemode": false})
}

pub fn invoice(id: &str, customer: &str, sub: &str, status: &str, total: i64) -> Value {
    json!({"id": id, "object": "invoice", "customer": customer, "subscription": sub, "status": status,
           "currency": "cad", "amount_due": total, "amount_paid": if status == "paid" { total } else { 0 },
           "amount_remaining": if status == "paid" { 0 } else { total }, "subtotal": total * 100 / 115,
           "tax": total - total * 100 / 115, "total": total, "hosted_invoice_url": format!("https://invoice.stripe.test/{id}"),
           "invoice_pdf": format!("https://invoice.stripe.test/{id}.pdf"), "attempt_count": 1,
           "period_start": 1_764_000_000, "period_end": 1_766_592_000, "created": recent(), "livemode": false})
}

/// A creation time inside the sync's invoice window.
fn recent() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 3_600
}

fn parse_pairs(s: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

async fn record(State(fake): State<FakeStripe>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let h = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let rec = Recorded {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parse_pairs(parts.uri.query().unwrap_or("")),
        form: parse_pairs(&String::from_utf8_lossy(&bytes)),
        idempotency_key: h("idempotency-key"),
        stripe_version: h("stripe-version"),
        authorization: h("authorization"),
    };
    let fail = {
        let mut inner = fake.inner.lock().unwrap();
        inner.requests.push(rec);
        inner.fail_next.pop_front()
    };
    if let Some(status) = fail {
        let status = StatusCode::from_u16(status).unwrap();
        return (status, Json(json!({"error": {"type": "api_error", "message": "injected failure"}}))).into_response();
    }
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    next.run(req).await
}

fn form_of(body: &Bytes) -> Vec<(String, String)> {
    parse_pairs(&String::from_utf8_lossy(body))
}

fn get_field<'a>(form: &'a [(String, String)], k: &str) -> Option<&'a str> {
    form.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str())
}

async fn create_customer(State(fake): State<FakeStripe>, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let form = form_of(&body);
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut inner = fake.inner.lock().unwrap();
    if let Some(id) = inner.customer_by_key.get(&key).cloned() {
        return Json(inner.customers[&id].clone());
    }
    inner.next_id += 1;
    let id = format!("cus_fake{}", inner.next_id);
    let c = json!({"id": id, "object": "customer", "name": get_field(&form, "name"),
                   "metadata": {"tenant_id": get_field(&form, "metadata[tenant_id]")}, "livemode": false});
    inner.customers.insert(id.clone(), c.clone());
    inner.customer_by_key.insert(key, id);
    Json(c)
}

fn list(data: Vec<Value>, query: &[(String, String)]) -> Json<Value> {
    let limit: usize = get_field(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    let start = match get_field(query, "starting_after") {
        Some(after) => data.iter().position(|o| o["id"] == after).map_or(data.len(), |i| i + 1),
        None => 0,
    };
    let page: Vec<Value> = data.iter().skip(start).take(limit).cloned().collect();
    let has_more = start + page.len() < data.len();
    Json(json!({"object": "list", "data": page, "has_more": has_more}))
}

async fn list_customers(State(fake): State<FakeStripe>, uri: Uri) -> Json<Value> {
    let data = fake.inner.lock().unwrap().customers.values().cloned().collect();
    list(data, &parse_pairs(uri.query().unwrap_or("")))
}

async fn list_subscriptions(State(fake): State<FakeStripe>, uri: Uri) -> Json<Value> {
    let data = fake.inner.lock().unwrap().subscriptions.values().cloned().collect();
    list(data, &parse_pairs(uri.query().unwrap_or("")))
}

async fn list_invoices(State(fake): State<FakeStripe>, uri: Uri) -> Json<Value> {
    let data = fake.inner.lock().unwrap().invoices.values().cloned().collect();
    list(data, &parse_pairs(uri.query().unwrap_or("")))
}

async fn list_events(State(fake): State<FakeStripe>, uri: Uri) -> Json<Value> {
    let data = fake.inner.lock().unwrap().events.clone();
    list(data, &parse_pairs(uri.query().unwrap_or("")))
}

/// Sessions get increasing `created` times (seconds, from now), as Stripe's would one after the other, Stripe's
/// default 24 h lifetime, and the `metadata[…]` sent.
async fn create_session(State(fake): State<FakeStripe>, body: Bytes) -> Json<Value> {
    let form = form_of(&body);
    let metadata: serde_json::Map<String, Value> = form
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata[")?.strip_suffix(']')?.to_owned(), json!(v))))
        .collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut inner = fake.inner.lock().unwrap();
    inner.next_id += 1;
    let id = format!("cs_test_{}", inner.next_id);
    let created = now + inner.next_id;
    let session = json!({"id": id, "object": "checkout.session", "status": "open", "mode": "subscription",
                         "customer": get_field(&form, "customer"), "created": created,
                         "expires_at": created + 86_400, "metadata": metadata,
                         "url": format!("https://checkout.stripe.test/c/pay/{id}")});
    inner.sessions.insert(id, session.clone());
    Json(session)
}

/// `customer` and `status` filters, as Stripe's list.
async fn list_sessions(State(fake): State<FakeStripe>, uri: Uri) -> Json<Value> {
    let query = parse_pairs(uri.query().unwrap_or(""));
    let keep = |s: &Value, field: &str| get_field(&query, field).is_none_or(|want| s[field] == want);
    let data = fake
        .inner
        .lock()
        .unwrap()
        .sessions
        .values()
        .filter(|s| keep(s, "customer") && keep(s, "status"))
        .cloned()
        .collect();
    list(data, &query)
}

/// Only an open session can be expired; anything else is Stripe's 400.
async fn expire_session(State(fake): State<FakeStripe>, Path(id): Path<String>) -> Response {
    let mut inner = fake.inner.lock().unwrap();
    match inner.sessions.get_mut(&id) {
        Some(s) if s["status"] == "open" => {
            s["status"] = json!("expired");
            Json(s.clone()).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"type": "invalid_request_error",
                 "message": format!("Only Checkout Sessions with a status in [\"open\"] can be expired: {id}")}})),
        )
            .into_response(),
    }
}

impl FakeStripe {
    /// Every Checkout Session created so far, `(id, customer, status)`, oldest first.
    pub fn sessions(&self) -> Vec<(String, String, String)> {
        let inner = self.inner.lock().unwrap();
        let mut all: Vec<&Value> = inner.sessions.values().collect();
        all.sort_by_key(|s| s["created"].as_i64());
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        all.into_iter().map(|s| (text(&s["id"]), text(&s["customer"]), text(&s["status"]))).collect()
    }
}

async fn create_portal() -> Json<Value> {
    Json(
        json!({"id": "bps_1", "object": "billing_portal.session", "url": "https://billing.stripe.test/p/session/bps_1"}),
    )
}

async fn get_subscription(State(fake): State<FakeStripe>, Path(id): Path<String>) -> Response {
    match fake.inner.lock().unwrap().subscriptions.get(&id) {
        Some(s) => Json(s.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": {"message": format!("No such subscription: '{id}'")}})))
            .into_response(),
    }
}

/// `items[0][id|price|quantity|deleted]`: update, add or delete one item, as Stripe does.
async fn update_subscription(State(fake): State<FakeStripe>, Path(id): Path<String>, body: Bytes) -> Response {
    let held = fake.inner.lock().unwrap().hold.take();
    if let Some(gate) = held {
        gate.arrived.notify_one();
        gate.release.notified().await;
    }
    let form = form_of(&body);
    let mut inner = fake.inner.lock().unwrap();
    if let Some(status) = inner.update_failures.pop_front() {
        let kind = if status < 500 { "invalid_request_error" } else { "api_error" };
        let body = json!({"error": {"type": kind, "message": "injected failure of the update"}});
        return (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
    }
    let Some(sub) = inner.subscriptions.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": {"message": "No such subscription"}}))).into_response();
    };
    let interval = sub["items"]["data"][0]["price"]["recurring"]["interval"].as_str().unwrap_or("month").to_owned();
    let items = sub["items"]["data"].as_array_mut().unwrap();
    let qty = get_field(&form, "items[0][quantity]").map(|q| q.parse::<i64>().unwrap());
    match (get_field(&form, "items[0][id]"), get_field(&form, "items[0][price]")) {
        (Some(item_id), _) if get_field(&form, "items[0][deleted]") == Some("true") => {
            items.retain(|i| i["id"] != item_id);
        }
        (Some(item_id), _) => {
            for i in items.iter_mut().filter(|i| i["id"] == item_id) {
                i["quantity"] = json!(qty.unwrap());
            }
        }
        (None, Some(price)) => items.push(item(&format!("si_new_{id}"), price, &interval, qty.unwrap_or(1))),
        _ => {}
    }
    Json(sub.clone()).into_response()
}
