//! The HTTP surface: one router per area, and the middleware every response goes through.

pub mod admin;
pub mod audit;
pub mod billing;
pub mod extract;
pub mod health;
pub mod jobs;
pub mod sms;
pub mod tenant_admin;
pub mod tenants;
pub mod twilio;
pub mod twilio_webhook;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::auth::Operator;
use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (webhooks included).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/tenants", get(tenants::list).post(tenants::create))
        .route("/api/tenants/{id}", get(tenants::get).patch(tenants::update).delete(tenants::delete))
        .route("/api/tenants/{id}/api-keys", get(tenants::list_keys).post(tenants::create_key))
        .route("/api/tenants/{id}/api-keys/{key_id}", axum::routing::delete(tenants::revoke_key))
        .route("/api/audit", get(audit::list))
        .route("/api/jobs", get(jobs::list_runs))
        .route("/api/system/status", get(jobs::system_status))
        .route("/api/sms/cleanup", get(jobs::sms_cleanup).post(jobs::sms_cleanup))
        .route("/api/entitlements", get(tenant_admin::entitlements))
        .route("/api/sites", get(tenant_admin::list_sites).post(tenant_admin::create_site))
        .route(
            "/api/sites/{id}",
            get(tenant_admin::get_site).patch(tenant_admin::update_site).delete(tenant_admin::delete_site),
        )
        .route("/api/workers", get(tenant_admin::list_workers).post(tenant_admin::create_worker))
        .route(
            "/api/workers/{id}",
            get(tenant_admin::get_worker).patch(tenant_admin::update_worker).delete(tenant_admin::delete_worker),
        )
        .route("/api/workers/{id}/consent", get(tenant_admin::worker_consent).post(tenant_admin::record_consent))
        .route("/api/workers/{id}/verification", axum::routing::post(tenant_admin::start_verification))
        .route("/api/workers/{id}/verification/check", axum::routing::post(tenant_admin::check_verification))
        .route("/api/sms/inbound", axum::routing::post(twilio::sms_inbound))
        .route("/api/voice/inbound", axum::routing::post(twilio::voice_inbound))
        .route("/api/voice/dial-status", axum::routing::post(twilio::voice_dial_status))
        .route("/api/billing/checkout", post(billing::checkout))
        .route("/api/billing/sites", put(billing::sites))
        .route("/api/billing/portal", post(billing::portal))
        .route("/api/billing/subscription", get(billing::subscription))
        .route("/api/billing/sync", get(jobs::billing_sync).post(jobs::billing_sync))
        .route("/api/webhooks/stripe", post(billing::stripe_webhook))
        .route("/api/sms/alerts", axum::routing::post(sms::create_alert))
        .route("/api/sms/alerts/{id}", get(sms::get_alert))
        .route("/api/send-sms", axum::routing::post(sms::send_sms))
        .route("/api/sms/status", axum::routing::post(sms::status_callback));

    let cors = CorsLayer::new()
        // Only the app's own origin, echoed back when it is the caller's (never `*`).
        .allow_origin(AllowOrigin::list(
            HeaderValue::from_str(state.settings.app_url.origin().ascii_serialization().as_str()).ok(),
        ))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("idempotency-key")])
        .max_age(Duration::from_secs(600));

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics_text))
        .merge(admin_pages())
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(per_route))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RequestIds::new()))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<Body>| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The path only: query strings may carry user data.
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(CatchPanicLayer::custom(|_| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error").into_response()
                })),
        )
        .with_state(state)
}

/// Request ids: a random prefix drawn once per router (so ids of two instances or two starts do not collide)
/// and a counter. A UUID per request cost a `getrandom` system call each (1% of the voice endpoint's samples);
/// a request id needs to be unique, not unpredictable.
#[derive(Clone)]
struct RequestIds {
    prefix: std::sync::Arc<str>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        RequestIds { prefix: prefix.into(), next: Default::default() }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix)).ok().map(RequestId::new)
    }
}

/// `GET /metrics` (operator token): Prometheus text, pool gauges refreshed at scrape time.
async fn metrics_text(State(state): State<AppState>, _: Operator) -> Response {
    // Scrape-time gauge from the shared queue (all instances), when the database answers.
    let depth: Result<i64, sqlx::Error> = crate::on_db!(&state.db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM sms_messages WHERE status IN ('queued', 'sending')"
    ).fetch_one(p).await);
    if let Ok(n) = depth {
        crate::metrics::queue_depth(n.max(0) as u64);
    }
    let since = state.now() - 86_400_000;
    let finished: Result<(i64, i64), sqlx::Error> = crate::on_db!(&state.db, p => sqlx::query_as(
        "SELECT COUNT(CASE WHEN status = 'delivered' THEN 1 END), COUNT(*) FROM sms_messages \
         WHERE status IN ('delivered', 'undelivered', 'failed') AND created_at >= $1"
    ).bind(since).fetch_one(p).await);
    if let Ok((delivered, total)) = finished {
        crate::metrics::delivery_rate(delivered, total);
    }
    let body = crate::metrics::render(&state.db);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body)
        .into_response()
}

/// The operator's pages: sessions live in a platform table and the procedures act across tenants, so they work
/// in the admin system context (each handler still requires a valid session or the login form).
fn admin_pages() -> Router<AppState> {
    Router::new()
        .route("/admin", get(|| async { axum::response::Redirect::to("/admin/runbook") }))
        .route("/admin/login", get(admin::login_form).post(admin::login))
        .route("/admin/logout", post(admin::logout))
        .route("/admin/runbook", get(admin::runbook))
        .route("/admin/procedures/{name}", post(admin::procedure))
        .route_layer(middleware::from_fn(|req: Request, next: Next| async move {
            crate::db::scope::enter(crate::db::scope::Scope::System("admin-page"));
            next.run(req).await
        }))
}

/// The middleware of every matched route (one layer: each layer costs a boxed future and a service clone per
/// request), in this order:
/// - the request's latency, labelled by the matched route (`unmatched` for the fallback), never the raw path
///   (`Router::layer` wraps each route after routing, so `MatchedPath` is already in the request here);
/// - a target that cannot be read refused ([`unreadable_target`]; on the admin pages with an HTML page);
/// - every request starts with no database scope (on PostgreSQL it sees no row); the authentication extractors
///   narrow it to the caller's tenant or a named system context once the credential is verified (`db::scope`).
async fn per_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or(crate::metrics::UNMATCHED, |m| m.as_str()).to_owned();
    let started = Instant::now();
    let res = match unreadable_target(&req) {
        // The operator's pages answer with a page.
        Some(refused) if route.starts_with("/admin") => admin::unreadable_target(&refused, req.uri().query()),
        Some(refused) => refused.into_response(),
        None => crate::db::scope::run(crate::db::scope::Scope::None, next.run(req)).await,
    };
    crate::metrics::http_request(&route, res.status().as_u16(), started.elapsed().as_secs_f64());
    res
}

/// Percent-decoded bytes of a path or query (`+` left as is: only NUL and UTF-8 are checked).
fn percent_decoded(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// 400 for a path that does not decode to UTF-8 (axum answered in plain text) or decodes to a NUL, and for a
/// query that decodes to a NUL: PostgreSQL `text` cannot hold U+0000, so such ids failed with a 500.
fn unreadable_target(req: &Request) -> Option<ApiError> {
    let path = percent_decoded(req.uri().path());
    if std::str::from_utf8(&path).is_err() || path.contains(&0) {
        return Some(ApiError::bad_request(
            "invalid_path",
            "the path is not valid: once percent-decoded it must be UTF-8 without NUL characters",
        ));
    }
    if req.uri().query().is_some_and(|q| percent_decoded(q).contains(&0)) {
        return Some(ApiError::bad_request("invalid_query", "the query string must not contain NUL characters (%00)"));
    }
    None
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
}

/// The outer middleware of every request (one layer): `www.<apex>` → 308 to the apex ([`canonical_redirect`]),
/// and the security headers on every answer, redirects and CORS answers included.
async fn edge(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = match canonical_redirect(&state, &req) {
        Some(redirect) => redirect,
        None => next.run(req).await,
    };
    security_headers(&state, res.headers_mut());
    res
}

/// `www.<apex>` → 308 to the same path and query on the apex of `APP_URL`.
fn canonical_redirect(state: &AppState, req: &Request) -> Option<Response> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(h, _)| h))
        .map(str::to_ascii_lowercase);
    let (host, apex) = (host?, state.settings.apex_host()?);
    if host.strip_prefix("www.") != Some(apex.as_str()) {
        return None;
    }
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let mut target = state.settings.app_url.clone();
    let _ = target.set_host(Some(&apex));
    let location = format!("{}{}", target.origin().ascii_serialization(), pq);
    let location = HeaderValue::from_str(&location).ok()?;
    Some((StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response())
}

fn security_headers(state: &AppState, h: &mut axum::http::HeaderMap) {
    let set = |h: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    };
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'none'; \
         frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    );
    set(h, HeaderName::from_static("permissions-policy"), "camera=(), microphone=(), geolocation=()");
    set(h, HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    if state.settings.app_url.scheme() == "https" {
        set(h, header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains");
    }
}
