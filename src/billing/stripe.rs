//! A small Stripe API client: only the endpoints secur360 uses.
//!
//! Form-encoded bodies (Stripe's bracket syntax), an `Idempotency-Key` on every POST (reused across retries),
//! the pinned [`STRIPE_VERSION`] on every request, bounded retries with backoff on 429/5xx/network errors
//! (honouring `Retry-After`), timeouts, and the base URL from `STRIPE_API_BASE`. The key is never logged:
//! it lives in a [`Secret`] and errors carry only Stripe's public error code and message.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::config::{Secret, Settings};

/// The API version this code is written against (subscription period bounds on the subscription object,
/// `invoice.subscription`, `invoice.tax`).
pub const STRIPE_VERSION: &str = "2024-06-20";

/// Attempts per request (first try included).
const MAX_ATTEMPTS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size of list calls.
pub const PAGE_LIMIT: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("billing is not configured: set STRIPE_SECRET_KEY (and the STRIPE_PRICE_* variables)")]
    NotConfigured,
    /// Stripe answered with an error; `message` is Stripe's own (public) text.
    #[error("Stripe refused the request ({status}): {message}")]
    Api { status: u16, code: Option<String>, message: String },
    /// Stripe could not be reached or kept failing (after retries).
    #[error("Stripe is unavailable: {0}")]
    Unavailable(String),
    #[error("Stripe sent an unexpected response: {0}")]
    Decode(String),
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: Url,
    key: Secret,
    /// Base delay of the retry backoff (tests shorten it).
    backoff: Duration,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient").field("base", &self.base.as_str()).field("key", &self.key).finish()
    }
}

pub type Form = Vec<(String, String)>;

/// `form![("a", x), ("b[c]", y)]` builds a [`Form`] from anything `ToString`.
#[macro_export]
macro_rules! form {
    ($(($k:expr, $v:expr)),* $(,)?) => {
        vec![$(($k.to_string(), $v.to_string())),*]
    };
}

impl StripeClient {
    /// The client for these settings, or `NotConfigured` without a secret key.
    pub fn from_settings(settings: &Settings) -> Result<Self, StripeError> {
        let key = settings.stripe.secret_key.clone().ok_or(StripeError::NotConfigured)?;
        Self::new(settings.stripe.api_base.clone(), key)
    }

    pub fn new(base: Url, key: Secret) -> Result<Self, StripeError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("secur360/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(StripeClient { http, base, key, backoff: Duration::from_millis(250) })
    }

    pub fn with_backoff(mut self, base: Duration) -> Self {
        self.backoff = base;
        self
    }

    fn url(&self, path: &str) -> Result<Url, StripeError> {
        self.base.join(path.trim_start_matches('/')).map_err(|e| StripeError::Decode(format!("bad path {path}: {e}")))
    }

    pub async fn get(&self, path: &str, query: &[(String, String)]) -> Result<Value, StripeError> {
        self.send(reqwest::Method::GET, path, query, None).await
    }

    /// POST `form` with `idempotency_key` (the same key on every retry, so a retry cannot act twice).
    pub async fn post(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        self.send(reqwest::Method::POST, path, form, Some(idempotency_key)).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        params: &[(String, String)],
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let url = self.url(path)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut rb = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(self.key.expose())
                .header("Stripe-Version", STRIPE_VERSION);
            rb = if method == reqwest::Method::GET { rb.query(params) } else { rb.form(params) };
            if let Some(k) = idempotency_key {
                rb = rb.header("Idempotency-Key", k);
            }
            let outcome = rb.send().await;
            let (retryable, err, retry_after) = match outcome {
                Err(e) => {
                    // reqwest errors carry the URL, never headers: safe to show without the key.
                    (true, StripeError::Unavailable(e.without_url().to_string()), None)
                }
                Ok(res) => {
                    let status = res.status();
                    let retry_after = res
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let should_retry =
                        res.headers().get("Stripe-Should-Retry").and_then(|v| v.to_str().ok()).map(|v| v == "true");
                    let text = res.text().await.map_err(|e| StripeError::Unavailable(e.without_url().to_string()));
                    let text = match text {
                        Ok(t) => t,
                        Err(e) => {
                            if attempt < MAX_ATTEMPTS {
                                self.pause(attempt, None).await;
                                continue;
                            }
                            return Err(e);
                        }
                    };
                    if status.is_success() {
                        return serde_json::from_str(&text).map_err(|e| StripeError::Decode(e.to_string()));
                    }
                    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let err = StripeError::Api {
                        status: status.as_u16(),
                        code: body["error"]["code"].as_str().map(str::to_owned),
                        message: body["error"]["message"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("HTTP {status}")),
                    };
                    let retry = should_retry
                        .unwrap_or(status.as_u16() == 429 || status.is_server_error() || status.as_u16() == 409);
                    (retry, err, retry_after)
                }
            };
            if !retryable || attempt >= MAX_ATTEMPTS {
                if let StripeError::Api { status, .. } = &err {
                    if *status == 429 || *status >= 500 {
                        return Err(StripeError::Unavailable(err.to_string()));
                    }
                }
                return Err(err);
            }
            tracing::warn!(path, attempt, error = %err, "Stripe request failed; retrying");
            self.pause(attempt, retry_after).await;
        }
    }

    async fn pause(&self, attempt: u32, retry_after: Option<u64>) {
        let exp = self.backoff * 2u32.pow(attempt - 1);
        let jitter = Duration::from_millis(rand::random::<u64>() % (self.backoff.as_millis() as u64 + 1));
        let wait = retry_after.map(Duration::from_secs).unwrap_or(exp + jitter).min(Duration::from_secs(5));
        tokio::time::sleep(wait).await;
    }

    /// Every object of a list endpoint, paging with `starting_after`.
    pub async fn list_all(&self, path: &str, params: &[(String, String)]) -> Result<Vec<Value>, StripeError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Form = params.to_vec();
            q.push(("limit".into(), PAGE_LIMIT.to_string()));
            if let Some(a) = &after {
                q.push(("starting_after".into(), a.clone()));
            }
            let page = self.get(path, &q).await?;
            let data = page["data"].as_array().ok_or_else(|| StripeError::Decode(format!("{path}: no data")))?;
            out.extend(data.iter().cloned());
            let last = data.last().and_then(|o| o["id"].as_str()).map(str::to_owned);
            if page["has_more"].as_bool() != Some(true) || last.is_none() {
                return Ok(out);
            }
            after = last;
        }
    }

    /// Objects of a newest-first list endpoint created at or after `since` (unix seconds): pages until a page
    /// ends with an older object, so a window of recent invoices costs a few pages, not the whole history.
    pub async fn list_since(&self, path: &str, since: i64) -> Result<Vec<Value>, StripeError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut q: Form = vec![("limit".into(), PAGE_LIMIT.to_string())];
            if let Some(a) = &after {
                q.push(("starting_after".into(), a.clone()));
            }
            let page = self.get(path, &q).await?;
            let data = page["data"].as_array().ok_or_else(|| StripeError::Decode(format!("{path}: no data")))?;
            out.extend(data.iter().filter(|o| o["created"].as_i64().is_some_and(|c| c >= since)).cloned());
            let last = data.last();
            let older = last.and_then(|o| o["created"].as_i64()).is_some_and(|c| c < since);
            let last_id = last.and_then(|o| o["id"].as_str()).map(str::to_owned);
            if older || page["has_more"].as_bool() != Some(true) || last_id.is_none() {
                return Ok(out);
            }
            after = last_id;
        }
    }

    // --- the endpoints we use -------------------------------------------------------------------------

    pub async fn create_customer(&self, form: &[(String, String)], key: &str) -> Result<Value, StripeError> {
        self.post("/v1/customers", form, key).await
    }

    pub async fn retrieve_customer(&self, id: &str) -> Result<Value, StripeError> {
        self.get(&format!("/v1/customers/{id}"), &[]).await
    }

    pub async fn create_checkout_session(&self, form: &[(String, String)], key: &str) -> Result<Value, StripeError> {
        self.post("/v1/checkout/sessions", form, key).await
    }

    /// The customer's Checkout Sessions that can still be completed, every page.
    pub async fn open_checkout_sessions(&self, customer: &str) -> Result<Vec<Value>, StripeError> {
        let params = [("customer".to_owned(), customer.to_owned()), ("status".to_owned(), "open".to_owned())];
        self.list_all("/v1/checkout/sessions", &params).await
    }

    /// Expire an open Checkout Session (it can no longer be completed). The key is derived from the session: a
    /// retry, or another instance expiring the same one, cannot act twice.
    pub async fn expire_checkout_session(&self, id: &str) -> Result<Value, StripeError> {
        self.post(&format!("/v1/checkout/sessions/{id}/expire"), &[], &format!("secur360-expire-{id}")).await
    }

    pub async fn create_portal_session(&self, form: &[(String, String)], key: &str) -> Result<Value, StripeError> {
        self.post("/v1/billing_portal/sessions", form, key).await
    }

    pub async fn retrieve_subscription(&self, id: &str) -> Result<Value, StripeError> {
        self.get(&format!("/v1/subscriptions/{id}"), &[]).await
    }

    pub async fn update_subscription(
        &self,
        id: &str,
        form: &[(String, String)],
        key: &str,
    ) -> Result<Value, StripeError> {
        self.post(&format!("/v1/subscriptions/{id}"), form, key).await
    }

    pub async fn retrieve_invoice(&self, id: &str) -> Result<Value, StripeError> {
        self.get(&format!("/v1/invoices/{id}"), &[]).await
    }
}
