//! A fake Twilio `Messages.json` on 127.0.0.1:0: records every request (path, Authorization, form fields)
//! and answers from a script (then 201 with a fresh SID once the script is empty).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-auth-token-primary-0123456789";
pub const AUTH_TOKEN_SECONDARY: &str = "twilio-auth-token-secondary-0123456";
pub const MESSAGING_SERVICE_SID: &str = "MG0123456789abcdef0123456789abcdef";
pub const APP_URL: &str = "https://c-secur360.example";

#[derive(Debug, Clone)]
pub enum Reply {
    /// 201 with this SID.
    Created(String),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// 500.
    ServerError,
    /// Answer 201 only after this long (past the client's timeout).
    Delay(Duration),
    /// 400 with a Twilio error code.
    Error(u32),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub authorization: Option<String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    requests: Vec<Recorded>,
    next_sid: u64,
    /// While set, every request (messages and account probes) gets this reply (a provider outage); the script waits.
    outage: Option<Reply>,
    /// `Messages.json` requests answered 201, per `To`.
    accepted_per_to: HashMap<String, u32>,
    /// `Messages.json` requests answered 201.
    accepted: usize,
}

#[derive(Clone)]
pub struct FakeTwilio {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl FakeTwilio {
    pub async fn start() -> FakeTwilio {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let app = Router::new().fallback(handle).with_state((inner.clone(), arrived.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Twilio");
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeTwilio { base, inner, arrived }
    }

    /// Resolve once `n` requests have arrived (woken by each arrival, bounded by `within`).
    pub async fn wait_for_requests(&self, n: usize, within: Duration) -> Vec<Recorded> {
        tokio::time::timeout(within, async {
            loop {
                let notified = self.arrived.notified();
                if self.requests().len() >= n {
                    return self.requests();
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the fake Twilio did not get {n} request(s) within {within:?}"))
    }

    /// Resolve once `n` distinct recipients (`To`) have had a message accepted (201), bounded by `within`.
    /// Counting is O(1) per arrival, so this suits alerts of thousands of messages.
    pub async fn wait_for_distinct_recipients(&self, n: usize, within: Duration) {
        let reached = tokio::time::timeout(within, async {
            loop {
                let notified = self.arrived.notified();
                if self.inner.lock().unwrap().accepted_per_to.len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
        let (distinct, total) = self.accepted_counts();
        assert!(reached.is_ok(), "the fake Twilio accepted messages for {distinct} recipient(s) ({total} in all), not {n}, within {within:?}");
    }

    /// (distinct recipients, accepted requests) so far.
    pub fn accepted_counts(&self) -> (usize, usize) {
        let g = self.inner.lock().unwrap();
        (g.accepted_per_to.len(), g.accepted)
    }

    /// Accepted (201) messages per recipient.
    pub fn accepted_per_to(&self) -> HashMap<String, u32> {
        self.inner.lock().unwrap().accepted_per_to.clone()
    }

    /// Answer every request with `reply` until [`FakeTwilio::end_outage`].
    pub fn start_outage(&self, reply: Reply) {
        self.inner.lock().unwrap().outage = Some(reply);
    }

    pub fn end_outage(&self) {
        self.inner.lock().unwrap().outage = None;
    }

    /// Replies for the next requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().script.extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The variables that point the app at this fake with a messaging service and both tokens.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("APP_URL", APP_URL),
            ("TWILIO_API_BASE", self.base.as_str()),
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("TWILIO_AUTH_TOKEN_SECONDARY", AUTH_TOKEN_SECONDARY),
            ("TWILIO_MESSAGING_SERVICE_SID", MESSAGING_SERVICE_SID),
            ("SMS_PROVIDER_TIMEOUT_MS", "500"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

async fn handle(
    State((inner, arrived)): State<(Arc<Mutex<Inner>>, Arc<tokio::sync::Notify>)>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_owned();
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let reply = {
        let mut g = inner.lock().unwrap();
        let message = path.ends_with("/Messages.json");
        g.requests.push(Recorded { path, authorization, form: form.clone() });
        g.next_sid += 1;
        let sid = format!("SM{:032x}", g.next_sid);
        let reply = match &g.outage {
            Some(outage) => outage.clone(),
            None => g.script.pop_front().unwrap_or(Reply::Created(sid)),
        };
        if message && matches!(reply, Reply::Created(_) | Reply::Delay(_)) {
            // A delayed reply is still a message Twilio took (the caller may have timed out).
            let to = form.iter().find(|(k, _)| k == "To").map(|(_, v)| v.clone()).unwrap_or_default();
            *g.accepted_per_to.entry(to).or_default() += 1;
            g.accepted += 1;
        }
        reply
    };
    arrived.notify_waiters();
    let created = |sid: String| {
        let to = form.iter().find(|(k, _)| k == "To").map(|(_, v)| v.clone());
        (StatusCode::CREATED, axum::Json(json!({ "sid": sid, "status": "accepted", "to": to }))).into_response()
    };
    match reply {
        Reply::Created(sid) => created(sid),
        Reply::TooMany(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            axum::Json(json!({ "code": 20429, "message": "Too Many Requests", "status": 429 })),
        )
            .into_response(),
        Reply::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({ "code": 20500, "message": "Internal Server Error", "status": 500 })),
        )
            .into_response(),
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            created("SMdelayed".into())
        }
        Reply::Error(code) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "code": code, "message": format!("error {code}"), "status": 400 })),
        )
            .into_response(),
    }
}
