//! `/admin/*`: the operator's runbook page (server-rendered with askama, auto-escaped, no JavaScript), its
//! login/logout, and the procedure buttons (CSRF-protected POST forms that redirect back with the result).
//!
//! A request the pages cannot read (a form that is not form-encoded, too large or not of the form's shape; a query
//! not of the page's shape; a path or query the router refuses) is answered with an error page in the operator's
//! language ([`PageForm`], [`PageQuery`]), never with axum's plain-text rejections or the API's JSON.
//!
//! A procedure's result travels as `?result=<audit row id>`: the page reads that audit row (zone `admin`, written
//! by the procedure handler) and shows its outcome and message. Nothing from the request is reflected, it works
//! across instances, and the operator's view is exactly what the audit log recorded.

use askama::Template;
use axum::extract::rejection::RawFormRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, RawForm, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::ReqId;
use crate::admin::i18n::{texts, Texts};
use crate::admin::{self, procedures};
use crate::audit::{self, Entry, Filter, Outcome, Zone};
use crate::auth::is_operator_token;
use crate::db::admin::{self as store, SessionRow};
use crate::domain::phone::Phone;
use crate::error::ApiError;
use crate::state::AppState;
use crate::time::to_rfc3339;

const AUDIT_PAGE: i64 = 25;

/// A rendered page. Its referrer policy is `same-origin` instead of the global `no-referrer`: under
/// `no-referrer` browsers send `Origin: null` with the page's form POSTs, which the Origin check must refuse.
fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => (status, [(header::REFERRER_POLICY, "same-origin")], Html(body)).into_response(),
        Err(e) => ApiError::internal(anyhow::Error::new(e).context("rendering an admin page")).into_response(),
    }
}

fn to_login() -> Response {
    Redirect::to("/admin/login").into_response()
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    t: &'static Texts,
    error: Option<&'static str>,
    disabled: bool,
}

/// A refused request: what is wrong and what to do, and the parser's own words when they help.
#[derive(Template)]
#[template(path = "admin/error.html")]
struct ErrorPage<'a> {
    t: &'static Texts,
    title: &'static str,
    message: &'static str,
    detail: Option<&'a str>,
}

fn forbidden(lang: &str) -> Response {
    let t = texts(lang);
    html(StatusCode::FORBIDDEN, &ErrorPage { t, title: t.forbidden_title, message: t.forbidden_body, detail: None })
}

fn invalid(status: StatusCode, t: &'static Texts, message: &'static str, detail: Option<&str>) -> Response {
    html(status, &ErrorPage { t, title: t.invalid_request_title, message, detail })
}

/// A form or query of the pages that cannot be read: answered with an error page ([`Malformed::page`]) instead of
/// axum's plain-text rejection.
struct Malformed {
    status: StatusCode,
    message: fn(&'static Texts) -> &'static str,
    detail: Option<String>,
}

impl Malformed {
    /// The page, in the language the request asks for (a `lang` in its query, or in its form when that can be
    /// read as pairs), else the operator's session language, else French.
    async fn page(self, state: &AppState, headers: &HeaderMap, query: Option<&str>, form: Option<&[u8]>) -> Response {
        let t = match lang_given(query, form) {
            Some(lang) => texts(&lang),
            None => match admin::current_session(&state.db, headers, state.now()).await {
                Ok(Some(session)) => texts(&session.language),
                _ => texts("fr"),
            },
        };
        invalid(self.status, t, (self.message)(t), self.detail.as_deref())
    }
}

/// The first `lang` of the query, else of the form (pairs read leniently, whatever else is wrong with them).
fn lang_given(query: Option<&str>, form: Option<&[u8]>) -> Option<String> {
    let find =
        |pairs: &[u8]| url::form_urlencoded::parse(pairs).find(|(k, _)| k == "lang").map(|(_, v)| v.into_owned());
    query.map(str::as_bytes).and_then(find).or_else(|| form.and_then(find))
}

/// `Form<T>` for the pages' POST forms: a body that is not form-encoded (415), too large (413) or not of the
/// form's shape (400: a field twice, a value of the wrong type) is answered with an HTML error page.
pub struct PageForm<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for PageForm<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let query = req.uri().query().map(str::to_owned);
        let (refused, form) = match RawForm::from_request(req, state).await {
            Ok(RawForm(bytes)) => match serde_urlencoded::from_bytes::<T>(&bytes) {
                Ok(form) => return Ok(PageForm(form)),
                Err(e) => (
                    Malformed {
                        status: StatusCode::BAD_REQUEST,
                        message: |t| t.form_malformed,
                        detail: Some(e.to_string()),
                    },
                    Some(bytes),
                ),
            },
            Err(RawFormRejection::InvalidFormContentType(_)) => {
                let received =
                    headers.get(header::CONTENT_TYPE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let detail = format!("Content-Type: {}", received.as_deref().unwrap_or("—"));
                (
                    Malformed {
                        status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        message: |t| t.form_content_type,
                        detail: Some(detail),
                    },
                    None,
                )
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                let detail = format!("{} KiB max", super::MAX_BODY_BYTES / 1024);
                (
                    Malformed {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        message: |t| t.form_too_large,
                        detail: Some(detail),
                    },
                    None,
                )
            }
            Err(e) => (
                Malformed {
                    status: StatusCode::BAD_REQUEST,
                    message: |t| t.form_malformed,
                    detail: Some(e.body_text()),
                },
                None,
            ),
        };
        Err(refused.page(state, &headers, query.as_deref(), form.as_deref()).await)
    }
}

/// `Query<T>` for the pages: a query not of the page's shape (a parameter twice, a value of the wrong type) is
/// answered 400 with an HTML error page.
pub struct PageQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for PageQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let detail = match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => return Ok(PageQuery(q)),
            Err(e) => e.body_text(),
        };
        let m = Malformed { status: StatusCode::BAD_REQUEST, message: |t| t.query_malformed, detail: Some(detail) };
        Err(m.page(state, &parts.headers, parts.uri.query(), None).await)
    }
}

/// The pages' answer to a target the router middleware refuses ([`super::unreadable_target`]: a path that is not
/// UTF-8 once percent-decoded, a NUL in the path or query): the same status, as an error page in the language the
/// query asks for, else French.
pub fn unreadable_target(refused: &ApiError, query: Option<&str>) -> Response {
    let t = texts(lang_given(query, None).as_deref().unwrap_or("fr"));
    invalid(refused.status, t, t.target_malformed, Some(&refused.message))
}

/// The live session, or the response to send instead (303 to the login form, or an error).
/// The session of a state-changing POST: logged in, same origin, and the session's CSRF token.
async fn session_for_post(
    state: &AppState,
    headers: &HeaderMap,
    csrf_token: Option<&str>,
) -> Result<SessionRow, Response> {
    let session = session_or_login(state, headers).await?;
    if !admin::origin_allowed(&state.settings, headers) || !admin::csrf_valid(&session, csrf_token) {
        return Err(forbidden(&session.language));
    }
    Ok(session)
}

async fn session_or_login(state: &AppState, headers: &HeaderMap) -> Result<SessionRow, Response> {
    match admin::current_session(&state.db, headers, state.now()).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(to_login()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct LangQuery {
    lang: Option<String>,
}

pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(q): PageQuery<LangQuery>,
) -> Response {
    if let Ok(Some(_)) = admin::current_session(&state.db, &headers, state.now()).await {
        return Redirect::to("/admin/runbook").into_response();
    }
    let t = texts(q.lang.as_deref().unwrap_or("fr"));
    html(StatusCode::OK, &LoginPage { t, error: None, disabled: state.settings.admin_token.is_none() })
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    lang: String,
}

pub async fn login(
    State(state): State<AppState>,
    ReqId(request_id): ReqId,
    headers: HeaderMap,
    PageForm(form): PageForm<LoginForm>,
) -> Response {
    let t = texts(&form.lang);
    if !admin::origin_allowed(&state.settings, &headers) {
        return forbidden(t.lang);
    }
    let now = state.now();
    if !is_operator_token(&state, form.token.trim()) {
        let reason = if state.settings.admin_token.is_none() { "admin_token_unset" } else { "wrong_token" };
        let entry = Entry::new(Zone::Admin, "login", "anonymous")
            .outcome(Outcome::Failure)
            .details(json!({ "reason": reason }))
            .request_id(request_id);
        if let Err(e) = audit::record(&state.db, &entry, now).await {
            return ApiError::from(e).into_response();
        }
        let page = LoginPage {
            t,
            error: Some(if state.settings.admin_token.is_none() { t.login_disabled } else { t.login_error }),
            disabled: state.settings.admin_token.is_none(),
        };
        return html(StatusCode::UNAUTHORIZED, &page);
    }
    let (token, session) = admin::new_session(t.lang, now);
    let entry = Entry::new(Zone::Admin, "login", "operator").subject(session.id.clone()).request_id(request_id);
    let stored = async {
        // Expired rows are useless; the weekly cleanup removes them too.
        store::delete_expired_sessions(&state.db, now).await?;
        store::insert_session(&state.db, &session).await?;
        audit::record(&state.db, &entry, now).await
    };
    if let Err(e) = stored.await {
        return ApiError::from(e).into_response();
    }
    let mut res = Redirect::to("/admin/runbook").into_response();
    if let Ok(v) = HeaderValue::from_str(&admin::set_cookie(&state.settings, &token)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    csrf_token: Option<String>,
}

pub async fn logout(
    State(state): State<AppState>,
    ReqId(request_id): ReqId,
    headers: HeaderMap,
    PageForm(form): PageForm<CsrfForm>,
) -> Response {
    let session = match session_for_post(&state, &headers, form.csrf_token.as_deref()).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    let entry = Entry::new(Zone::Admin, "logout", actor(&session)).subject(session.id.clone()).request_id(request_id);
    let done = async {
        store::delete_session(&state.db, &session.id).await?;
        audit::record(&state.db, &entry, state.now()).await
    };
    if let Err(e) = done.await {
        return ApiError::from(e).into_response();
    }
    let mut res = Redirect::to("/admin/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&admin::clear_cookie(&state.settings)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

fn actor(session: &SessionRow) -> String {
    format!("admin_session:{}", session.id)
}

#[derive(Debug, Default, Deserialize)]
pub struct ProcedureForm {
    csrf_token: Option<String>,
    to: Option<String>,
    body: Option<String>,
    tenant_id: Option<String>,
    event_id: Option<String>,
}

fn field(v: &Option<String>) -> &str {
    v.as_deref().map(str::trim).unwrap_or("")
}

pub async fn procedure(
    State(state): State<AppState>,
    ReqId(request_id): ReqId,
    Path(name): Path<String>,
    headers: HeaderMap,
    PageForm(form): PageForm<ProcedureForm>,
) -> Response {
    let session = match session_for_post(&state, &headers, form.csrf_token.as_deref()).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    // PostgreSQL `text` cannot store U+0000 (the audit row of a hostile tenant or event id failed with a 500).
    if [&form.to, &form.body, &form.tenant_id, &form.event_id].into_iter().flatten().any(|v| v.contains('\0')) {
        let t = texts(&session.language);
        return invalid(StatusCode::BAD_REQUEST, t, t.form_nul, None);
    }
    let mut details = serde_json::Map::new();
    let mut subject = None;
    let (action, result): (&'static str, procedures::ProcedureResult) = match name.as_str() {
        "send-test-sms" => {
            let body = field(&form.body);
            let result = match Phone::parse(field(&form.to)) {
                Err(e) => Err(format!("numéro invalide / invalid number: {e}")),
                Ok(_) if body.is_empty() => Err("le message est vide / the message is empty".to_owned()),
                Ok(_) if body.chars().count() > 1600 => {
                    Err("le message dépasse 1600 caractères / the message is over 1600 characters".to_owned())
                }
                Ok(to) => {
                    // Never the full number nor the body in the audit log.
                    details.insert("to".into(), Value::String(to.masked()));
                    details.insert("body_chars".into(), json!(body.chars().count()));
                    procedures::send_test_sms(&state, &to, body).await
                }
            };
            ("send_sms", result)
        }
        "billing-sync" => ("sync", procedures::run_billing_sync(&state).await),
        "sms-cleanup" => ("cleanup", procedures::run_sms_cleanup(&state).await),
        "resync-tenant" => {
            let tenant_id = field(&form.tenant_id);
            let result = if tenant_id.is_empty() || tenant_id.len() > 64 {
                Err("identifiant de client manquant ou trop long / tenant id missing or too long".to_owned())
            } else {
                subject = Some(tenant_id.to_owned());
                procedures::resync_tenant(&state, tenant_id).await
            };
            ("tenant_resync", result)
        }
        "replay-stripe-event" => {
            let event_id = field(&form.event_id);
            let result = if !event_id.starts_with("evt_") || event_id.len() > 255 {
                Err("identifiant d'événement invalide (evt_…) / invalid event id (evt_…)".to_owned())
            } else {
                subject = Some(event_id.to_owned());
                procedures::replay_stripe_event(&state, event_id).await
            };
            ("event_replay", result)
        }
        _ => {
            let t = texts(&session.language);
            return invalid(StatusCode::NOT_FOUND, t, t.unknown_procedure, None);
        }
    };
    let (outcome, message) = match result {
        Ok(m) => (Outcome::Success, m),
        Err(m) => (Outcome::Failure, m),
    };
    details.insert("procedure".into(), Value::String(name.clone()));
    details.insert("message".into(), Value::String(message));
    let mut entry = Entry::new(Zone::Admin, action, actor(&session))
        .outcome(outcome)
        .details(Value::Object(details))
        .request_id(request_id);
    if let Some(s) = subject {
        entry = entry.subject(s);
    }
    match audit::record(&state.db, &entry, state.now()).await {
        Ok(id) => Redirect::to(&format!("/admin/runbook?result={id}#procedures")).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RunbookQuery {
    lang: Option<String>,
    result: Option<String>,
    zone: Option<String>,
    action: Option<String>,
    tenant: Option<String>,
    before: Option<String>,
}

struct ResultView {
    ok: bool,
    procedure: String,
    message: String,
    at: String,
}

struct JobView {
    job: String,
    trigger: String,
    status: String,
    started: String,
    finished: String,
    detail: String,
}

struct LatencyView {
    route: String,
    count: u64,
    p50: String,
    p95: String,
    p99: String,
}

struct AuditView {
    /// The row's insertion id (the listing's order; sealed or not yet).
    id: i64,
    at: String,
    zone: String,
    action: String,
    outcome: String,
    tenant: String,
    actor: String,
    subject: String,
    details: String,
}

struct ZoneOption {
    name: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "admin/runbook.html")]
struct RunbookPage {
    t: &'static Texts,
    csrf: String,
    result: Option<ResultView>,
    app_url: String,
    apex: String,
    expected_apex_a: String,
    expected_www_cname: String,
    vars: Vec<(&'static str, String)>,
    stripe_configured: bool,
    stripe_webhook_secret: bool,
    twilio_configured: bool,
    twilio_sender: String,
    db_backend: String,
    db_reachable: bool,
    migration_applied: String,
    migration_known: i64,
    migration_current: bool,
    jobs: Vec<JobView>,
    /// Queue, delivery rate, webhook errors, database: the status checks' details.
    monitoring: Vec<(String, String)>,
    latency: Vec<LatencyView>,
    zones: Vec<ZoneOption>,
    filter_action: String,
    filter_tenant: String,
    audit: Vec<AuditView>,
    older_link: Option<String>,
    newest_link: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The procedure result named by `?result=<id>`: an admin-zone audit row written by a procedure handler.
async fn procedure_result(
    state: &AppState,
    t: &'static Texts,
    id: Option<&str>,
) -> Result<Option<ResultView>, sqlx::Error> {
    let Some(id) = id.and_then(|s| s.parse::<i64>().ok()).filter(|s| *s > 0) else { return Ok(None) };
    let filter = Filter {
        zone: Some(Zone::Admin.as_str().into()),
        before_id: Some(id.saturating_add(1)),
        limit: 1,
        ..Filter::default()
    };
    let row = audit::query(&state.db, &filter).await?.into_iter().next().filter(|r| r.id == id);
    Ok(row.and_then(|r| {
        let details: Value = serde_json::from_str(&r.details).ok()?;
        let procedure = procedure_label(t, details.get("procedure")?.as_str()?).to_owned();
        let message = details.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
        Some(ResultView { ok: r.outcome == "success", procedure, message, at: to_rfc3339(r.at) })
    }))
}

fn procedure_label<'a>(t: &'static Texts, name: &'a str) -> &'a str {
    match name {
        "send-test-sms" => t.proc_send_sms,
        "billing-sync" => t.proc_billing_sync,
        "sms-cleanup" => t.proc_sms_cleanup,
        "resync-tenant" => t.proc_resync_tenant,
        "replay-stripe-event" => t.proc_replay_event,
        other => other,
    }
}

fn audit_link(zone: &Option<String>, action: &Option<String>, tenant: &Option<String>, before: Option<i64>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [("zone", zone), ("action", action), ("tenant", tenant)] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    if let Some(b) = before {
        q.append_pair("before", &b.to_string());
    }
    format!("/admin/runbook?{}#audit", q.finish())
}

pub async fn runbook(
    State(state): State<AppState>,
    headers: HeaderMap,
    PageQuery(q): PageQuery<RunbookQuery>,
) -> Response {
    let mut session = match session_or_login(&state, &headers).await {
        Ok(s) => s,
        Err(res) => return res,
    };
    if let Some(lang) = q.lang.as_deref().filter(|l| *l == "fr" || *l == "en") {
        if lang != session.language {
            if let Err(e) = store::set_session_language(&state.db, &session.id, lang).await {
                return ApiError::from(e).into_response();
            }
            session.language = lang.to_owned();
        }
    }
    match render_runbook(&state, &session, q).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn render_runbook(state: &AppState, session: &SessionRow, q: RunbookQuery) -> Result<RunbookPage, sqlx::Error> {
    let s = &state.settings;
    let t = texts(&session.language);
    let show = |v: Option<String>| v.unwrap_or_else(|| t.not_set.to_owned());

    let db_reachable = state.db.ping().await.is_ok();
    let (migration_known, migration_applied) = match state.db.migration_versions().await {
        Ok((known, applied)) => (known, applied),
        Err(_) => (0, None),
    };
    let jobs = if db_reachable { crate::jobs::recent_runs(&state.db, 10).await? } else { Vec::new() };
    let monitoring = if db_reachable {
        crate::status::monitoring(state).await.into_iter().map(|c| (c.name.to_owned(), c.detail)).collect()
    } else {
        Vec::new()
    };
    let jobs = jobs
        .into_iter()
        .map(|j| JobView {
            job: j.job,
            trigger: j.trigger,
            status: j.status,
            started: to_rfc3339(j.started_at),
            finished: j.finished_at.map(to_rfc3339).unwrap_or_else(|| "—".into()),
            detail: [j.counts, j.error].into_iter().flatten().collect::<Vec<_>>().join(" · "),
        })
        .collect();

    let latency = crate::metrics::route_percentiles()
        .into_iter()
        .map(|r| LatencyView {
            route: r.route,
            count: r.count,
            p50: format!("{:.1}", r.p50_ms),
            p95: format!("{:.1}", r.p95_ms),
            p99: format!("{:.1}", r.p99_ms),
        })
        .collect();

    let zone = non_empty(q.zone).filter(|z| Zone::parse(z).is_some());
    let action = non_empty(q.action);
    let tenant = non_empty(q.tenant);
    let before = q.before.and_then(|b| b.trim().parse::<i64>().ok()).filter(|b| *b > 0);
    let filter = Filter {
        zone: zone.clone(),
        action: action.clone(),
        tenant_id: tenant.clone(),
        before_id: before,
        limit: AUDIT_PAGE,
        ..Filter::default()
    };
    let rows = audit::query(&state.db, &filter).await?;
    let older = (rows.len() as i64 == AUDIT_PAGE).then(|| rows.last().map(|r| r.id)).flatten();
    let audit = rows
        .into_iter()
        .map(|r| AuditView {
            id: r.id,
            at: to_rfc3339(r.at),
            zone: r.zone,
            action: r.action,
            outcome: r.outcome,
            tenant: r.tenant_id.unwrap_or_default(),
            actor: r.actor,
            subject: r.subject.unwrap_or_default(),
            details: r.details,
        })
        .collect();

    Ok(RunbookPage {
        t,
        csrf: session.csrf_token.clone(),
        result: procedure_result(state, t, q.result.as_deref()).await?,
        app_url: s.app_url.as_str().trim_end_matches('/').to_owned(),
        apex: show(s.apex_host()),
        expected_apex_a: show(s.expected_apex_a.map(|a| a.to_string())),
        expected_www_cname: show(s.expected_www_cname.clone()),
        vars: s.display_rows(),
        stripe_configured: s.stripe_configured(),
        stripe_webhook_secret: !s.stripe.webhook_secrets.is_empty(),
        twilio_configured: s.twilio_configured(),
        twilio_sender: show(
            s.twilio
                .messaging_service_sid
                .clone()
                .or_else(|| s.twilio.phone_number.as_ref().map(|p| p.as_str().to_owned())),
        ),
        db_backend: format!("{:?}", state.db.backend()).to_lowercase(),
        db_reachable,
        migration_applied: migration_applied.map_or_else(|| t.na.to_owned(), |v| v.to_string()),
        migration_known,
        migration_current: migration_applied == Some(migration_known),
        jobs,
        monitoring,
        latency,
        zones: Zone::ALL
            .iter()
            .map(|z| ZoneOption { name: z.as_str(), selected: zone.as_deref() == Some(z.as_str()) })
            .collect(),
        filter_action: action.clone().unwrap_or_default(),
        filter_tenant: tenant.clone().unwrap_or_default(),
        audit,
        older_link: older.map(|b| audit_link(&zone, &action, &tenant, Some(b))),
        newest_link: before.map(|_| audit_link(&zone, &action, &tenant, None)),
    })
}
