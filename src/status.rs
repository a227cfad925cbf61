//! The live status of the runbook (SPEC §6): one entry per check, with zone, status, detail and latency.
//! External probes (Stripe, Twilio, DNS, the www redirect) are time-bounded and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::Zone;
use crate::db::Backend;
use crate::jobs::{self, Job};
use crate::on_db;
use crate::state::AppState;

/// Bound on each external probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long an external probe result is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Healthy,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub zone: Zone,
    pub status: Level,
    pub detail: String,
    pub data: Value,
    pub latency_ms: u64,
    /// True when the result came from the probe cache.
    pub cached: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub status: Level,
    pub version: &'static str,
    pub checks: Vec<Check>,
}

/// Cache of external probe results, shared by the instance's handlers.
#[derive(Clone, Default)]
pub struct ProbeCache(Arc<Mutex<HashMap<&'static str, (Instant, Check)>>>);

impl ProbeCache {
    fn get(&self, name: &str) -> Option<Check> {
        let map = self.0.lock().ok()?;
        map.get(name).filter(|(at, _)| at.elapsed() < PROBE_TTL).map(|(_, c)| Check { cached: true, ..c.clone() })
    }

    fn put(&self, c: &Check) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(c.name, (Instant::now(), c.clone()));
        }
    }
}

fn check(
    name: &'static str,
    zone: Zone,
    status: Level,
    detail: impl Into<String>,
    data: Value,
    started: Instant,
) -> Check {
    Check {
        name,
        zone,
        status,
        detail: detail.into(),
        data,
        latency_ms: started.elapsed().as_millis() as u64,
        cached: false,
    }
}

fn age(now: i64, at: Option<i64>) -> Option<i64> {
    at.map(|t| ((now - t) / 1000).max(0))
}

fn configuration(state: &AppState) -> Check {
    let t = Instant::now();
    let s = &state.settings;
    let present = json!({
        "APP_URL": true,
        "ADMIN_TOKEN": s.admin_token.is_some(),
        "CRON_SECRET": s.cron_secret.is_some(),
        "STRIPE_SECRET_KEY": s.stripe.secret_key.is_some(),
        "STRIPE_WEBHOOK_SECRET": !s.stripe.webhook_secrets.is_empty(),
        "STRIPE_PRICE_MONTHLY": s.stripe.price_monthly.is_some(),
        "STRIPE_PRICE_ANNUAL": s.stripe.price_annual.is_some(),
        "STRIPE_PRICE_ADDON_SITE_MONTHLY": s.stripe.price_addon_site_monthly.is_some(),
        "STRIPE_PRICE_ADDON_SITE_ANNUAL": s.stripe.price_addon_site_annual.is_some(),
        "TWILIO_ACCOUNT_SID": s.twilio.account_sid.is_some(),
        "TWILIO_AUTH_TOKEN": s.twilio.auth_token.is_some(),
        "TWILIO_MESSAGING_SERVICE_SID": s.twilio.messaging_service_sid.is_some(),
        "TWILIO_PHONE_NUMBER": s.twilio.phone_number.is_some(),
        "OWNER_MOBILE": s.owner_mobile.is_some(),
        "PUBLIC_CONTACT_NUMBER": s.public_contact_number.is_some(),
        "EXPECTED_APEX_A": s.expected_apex_a.is_some(),
        "EXPECTED_WWW_CNAME": s.expected_www_cname.is_some(),
    });
    let missing: Vec<&str> = present
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v == &&Value::Bool(false))
        .map(|(k, _)| k.as_str())
        .collect();
    let (status, detail) = if missing.is_empty() {
        (Level::Healthy, "every runbook variable is set".to_owned())
    } else {
        (Level::Warning, format!("unset: {}", missing.join(", ")))
    };
    check("configuration", Zone::Platform, status, detail, present, t)
}

async fn database(state: &AppState) -> Check {
    let t = Instant::now();
    let backend = state.db.backend();
    if let Err(e) = state.db.ping().await {
        return check(
            "database",
            Zone::Database,
            Level::Critical,
            format!("unreachable: {e}"),
            json!({ "backend": backend }),
            t,
        );
    }
    let versions = state.db.migration_versions().await;
    let size: Result<i64, sqlx::Error> = match &state.db {
        crate::db::Db::Sqlite(p) => {
            sqlx::query_scalar("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
                .fetch_one(p)
                .await
        }
        crate::db::Db::Postgres(p) => {
            sqlx::query_scalar("SELECT pg_database_size(current_database())").fetch_one(p).await
        }
    };
    let data = json!({
        "backend": backend,
        "migration_expected": versions.as_ref().ok().map(|v| v.0),
        "migration_applied": versions.as_ref().ok().and_then(|v| v.1),
        "size_bytes": size.as_ref().ok(),
    });
    match versions {
        Ok((known, Some(applied))) if known == applied => {
            let mb = size.map(|b| b as f64 / 1_048_576.0).unwrap_or(0.0);
            let name = if backend == Backend::Sqlite { "SQLite" } else { "PostgreSQL" };
            check(
                "database",
                Zone::Database,
                Level::Healthy,
                format!("{name} reachable, schema v{known}, {mb:.1} MB"),
                data,
                t,
            )
        }
        Ok((known, applied)) => check(
            "database",
            Zone::Database,
            Level::Critical,
            format!("schema not current (applied {applied:?}, expected {known}): run `secur360 migrate`"),
            data,
            t,
        ),
        Err(e) => check("database", Zone::Database, Level::Critical, format!("cannot read migrations: {e}"), data, t),
    }
}

/// How tenants are kept apart in this database: PostgreSQL row-level security forced on every table for a runtime
/// role that cannot bypass it; SQLite, the application-level binding only.
async fn tenant_isolation(state: &AppState) -> Check {
    let t = Instant::now();
    let crate::db::Db::Postgres(p) = &state.db else {
        return check(
            "tenant_isolation",
            Zone::Database,
            Level::Healthy,
            "SQLite: every tenant query is bound to the caller's tenant by the application (no row-level security)",
            json!({ "row_level_security": false }),
            t,
        );
    };
    let role = state.db.role().await;
    let tables: Result<(i64, Vec<String>, i64), sqlx::Error> = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(array_agg(c.relname::text ORDER BY c.relname)
                    FILTER (WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity)), '{}'),
                COUNT(*) FILTER (WHERE pg_has_role(current_user, c.relowner, 'USAGE'))
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'",
    )
    .fetch_one(p)
    .await;
    let ((role, superuser, bypass), (total, unprotected, owned)) = match (role, tables) {
        (Ok(Some(r)), Ok(tb)) => ((r.name, r.superuser, r.bypass_rls), tb),
        (Ok(None), _) => unreachable!("a PostgreSQL pool has a role"),
        (Err(e), _) | (_, Err(e)) => {
            return check(
                "tenant_isolation",
                Zone::Database,
                Level::Critical,
                format!("cannot read roles: {e}"),
                json!({}),
                t,
            )
        }
    };
    let data = json!({
        "row_level_security": true, "role": role, "tables": total, "unprotected_tables": unprotected,
        "tables_owned_by_role": owned,
    });
    let (level, detail) = if superuser || bypass {
        (Level::Critical, format!("role {role} bypasses row-level security: connect as the runtime role"))
    } else if !unprotected.is_empty() {
        (Level::Critical, format!("row-level security is not forced on: {}", unprotected.join(", ")))
    } else if owned > 0 {
        (
            Level::Warning,
            format!("role {role} owns the tables and could change their policies: run as a separate runtime role"),
        )
    } else {
        (Level::Healthy, format!("row-level security forced on {total} tables; runtime role {role}"))
    };
    check("tenant_isolation", Zone::Database, level, detail, data, t)
}

async fn probe_http(rb: reqwest::RequestBuilder) -> Result<reqwest::StatusCode, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, rb.send()).await {
        Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("unreachable ({})", e.without_url())),
        Ok(Ok(res)) => Ok(res.status()),
    }
}

/// A bounded GET whose JSON answer is needed; errors are phrased for the operator.
async fn probe_json(provider: &str, rb: reqwest::RequestBuilder) -> Result<Value, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, rb.send()).await {
        Err(_) => Err(format!("no answer from {provider} within {} s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("{provider} unreachable ({})", e.without_url())),
        Ok(Ok(r)) if !r.status().is_success() => Err(format!("{provider} answered {}", r.status())),
        Ok(Ok(r)) => r.json().await.map_err(|e| format!("unreadable answer from {provider}: {e}")),
    }
}

impl Report {
    /// The overall status is the worst of the checks.
    fn new(checks: Vec<Check>) -> Report {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Level::Healthy);
        Report { status, version: env!("CARGO_PKG_VERSION"), checks }
    }
}

async fn stripe(state: &AppState) -> Check {
    let t = Instant::now();
    let s = &state.settings.stripe;
    let Some(key) = &s.secret_key else {
        return check(
            "stripe",
            Zone::Stripe,
            Level::Warning,
            "not configured: billing endpoints answer 503",
            json!({}),
            t,
        );
    };
    let prices = [&s.price_monthly, &s.price_annual, &s.price_addon_site_monthly, &s.price_addon_site_annual];
    if s.webhook_secrets.is_empty() {
        return check(
            "stripe",
            Zone::Stripe,
            Level::Critical,
            "STRIPE_WEBHOOK_SECRET is unset: every webhook is refused",
            json!({}),
            t,
        );
    }
    if prices.iter().any(|p| p.is_none()) {
        return check(
            "stripe",
            Zone::Stripe,
            Level::Critical,
            "a STRIPE_PRICE_* variable is unset: checkout cannot be offered",
            json!({}),
            t,
        );
    }
    if let Some(c) = state.probes.get("stripe") {
        return c;
    }
    let url = format!("{}/v1/balance", s.api_base.as_str().trim_end_matches('/'));
    let c = match probe_http(state.http.get(url).bearer_auth(key.expose())).await {
        Ok(st) if st.is_success() => check("stripe", Zone::Stripe, Level::Healthy, "API key accepted", json!({}), t),
        Ok(st) if st.as_u16() == 401 || st.as_u16() == 403 => {
            check("stripe", Zone::Stripe, Level::Critical, format!("API key refused ({st})"), json!({}), t)
        }
        Ok(st) => check("stripe", Zone::Stripe, Level::Warning, format!("unexpected answer {st}"), json!({}), t),
        Err(e) => check("stripe", Zone::Stripe, Level::Warning, e, json!({}), t),
    };
    state.probes.put(&c);
    c
}

async fn twilio(state: &AppState) -> Check {
    let t = Instant::now();
    let tw = &state.settings.twilio;
    let (Some(sid), Some(token)) = (&tw.account_sid, &tw.auth_token) else {
        return check(
            "twilio",
            Zone::Twilio,
            Level::Warning,
            "SIMULATED: no Twilio credentials, SMS are stored as simulated and NOT sent",
            json!({ "simulated": true }),
            t,
        );
    };
    if let Some(c) = state.probes.get("twilio") {
        return c;
    }
    let url = format!("{}/2010-04-01/Accounts/{sid}.json", tw.api_base.as_str().trim_end_matches('/'));
    let c = match probe_http(state.http.get(url).basic_auth(sid, Some(token.expose()))).await {
        Ok(st) if st.is_success() => {
            check("twilio", Zone::Twilio, Level::Healthy, "credentials accepted", json!({}), t)
        }
        Ok(st) if st.as_u16() == 401 || st.as_u16() == 403 => {
            check("twilio", Zone::Twilio, Level::Critical, format!("credentials refused ({st})"), json!({}), t)
        }
        Ok(st) => check("twilio", Zone::Twilio, Level::Warning, format!("unexpected answer {st}"), json!({}), t),
        Err(e) => check("twilio", Zone::Twilio, Level::Warning, e, json!({}), t),
    };
    state.probes.put(&c);
    c
}

async fn scalar(state: &AppState, sql: &str, bind: i64) -> Result<Option<i64>, sqlx::Error> {
    on_db!(&state.db, p => sqlx::query_scalar::<_, Option<i64>>(sql).bind(bind).fetch_one(p).await)
}

async fn last_events(state: &AppState, now: i64) -> Vec<Check> {
    let t = Instant::now();
    let stripe = scalar(state, "SELECT MAX(received_at) FROM billing_events WHERE $1 = $1", 0).await;
    let twilio = scalar(state, "SELECT MAX(received_at) FROM sms_status_events WHERE $1 = $1", 0).await;
    let mut out = Vec::new();
    for (name, zone, r) in [("last_stripe_event", Zone::Stripe, stripe), ("last_twilio_callback", Zone::Twilio, twilio)]
    {
        out.push(match r {
            Err(e) => check(name, zone, Level::Critical, format!("cannot read: {e}"), json!({}), t),
            Ok(at) => {
                let a = age(now, at);
                let detail = a.map_or("none received yet".to_owned(), |s| format!("{s} s ago"));
                check(name, zone, Level::Healthy, detail, json!({ "age_seconds": a }), t)
            }
        });
    }
    out
}

/// Audit rows not yet sealed into the hash chain (listed, not yet tamper-evident). `serve` seals about once a
/// second, so a backlog older than [`UNSEALED_WARNING_S`] means the sealer is stopped or failing.
async fn audit_chain(state: &AppState, now: i64) -> Check {
    let t = Instant::now();
    let r: Result<(i64, Option<i64>), sqlx::Error> = on_db!(&state.db, p => sqlx::query_as(
        "SELECT COUNT(*), MIN(at) FROM system_audit_logs WHERE seq IS NULL"
    ).fetch_one(p).await);
    match r {
        Err(e) => check("audit_chain", Zone::System, Level::Critical, format!("cannot read: {e}"), json!({}), t),
        Ok((unsealed, oldest)) => {
            let a = age(now, oldest);
            let data = json!({ "unsealed": unsealed, "oldest_unsealed_age_seconds": a });
            match a {
                None => check("audit_chain", Zone::System, Level::Healthy, "every audit row is sealed", data, t),
                Some(s) if s > UNSEALED_WARNING_S => check(
                    "audit_chain",
                    Zone::System,
                    Level::Warning,
                    format!("{unsealed} audit row(s) not sealed into the chain, oldest {s} s: is the sealer running?"),
                    data,
                    t,
                ),
                Some(s) => check(
                    "audit_chain",
                    Zone::System,
                    Level::Healthy,
                    format!("{unsealed} recent audit row(s) awaiting sealing (oldest {s} s)"),
                    data,
                    t,
                ),
            }
        }
    }
}

const UNSEALED_WARNING_S: i64 = 60;

async fn job_checks(state: &AppState) -> Vec<Check> {
    let mut out = Vec::new();
    for job in Job::ALL {
        let t = Instant::now();
        let name = match job {
            Job::BillingSync => "job_billing_sync",
            Job::SmsCleanup => "job_sms_cleanup",
        };
        out.push(match jobs::last_run(&state.db, job).await {
            Err(e) => check(name, Zone::System, Level::Critical, format!("cannot read job runs: {e}"), json!({}), t),
            Ok(None) => check(name, Zone::System, Level::Healthy, "never ran", json!({}), t),
            Ok(Some(r)) => {
                let level = match r.status.as_str() {
                    "succeeded" | "running" => Level::Healthy,
                    _ => Level::Warning,
                };
                let detail =
                    format!("last run {} ({}) at {}", r.status, r.trigger, crate::time::to_rfc3339(r.started_at));
                check(name, Zone::System, level, detail, json!({ "run": r }), t)
            }
        });
    }
    out
}

async fn sms_checks(state: &AppState, now: i64) -> Vec<Check> {
    let t = Instant::now();
    let depth =
        scalar(state, "SELECT COUNT(*) FROM sms_messages WHERE status IN ('queued', 'sending') AND $1 = $1", 0).await;
    let oldest = scalar(
        state,
        "SELECT MIN(next_attempt_at) FROM sms_messages WHERE status = 'queued' AND next_attempt_at <= $1",
        now,
    )
    .await;
    // Messages put back by a provider error (5xx, 429, timeout) wait for their retry time, so they are not "due":
    // count them, or a provider outage would look like a healthy queue.
    let retrying = scalar(
        state,
        "SELECT COUNT(*) FROM sms_messages WHERE status = 'queued' AND attempts > 0 AND error_code IS NOT NULL \
         AND $1 = $1",
        0,
    )
    .await;
    let queue = match (depth, oldest, retrying) {
        (Ok(d), Ok(o), Ok(r)) => {
            let (oldest_age, retrying) = (age(now, o), r.unwrap_or(0));
            let level = match oldest_age {
                Some(a) if a > 1800 => Level::Critical,
                Some(a) if a > 300 => Level::Warning,
                _ if retrying > 0 => Level::Warning,
                _ => Level::Healthy,
            };
            let mut detail = format!(
                "{} queued, oldest due {}",
                d.unwrap_or(0),
                oldest_age.map_or("—".into(), |a| format!("{a} s ago"))
            );
            if retrying > 0 {
                detail.push_str(&format!(", {retrying} waiting to retry after a provider error"));
            }
            check(
                "sms_queue",
                Zone::Sms,
                level,
                detail,
                json!({ "depth": d.unwrap_or(0), "oldest_due_age_seconds": oldest_age, "retrying": retrying }),
                t,
            )
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            check("sms_queue", Zone::Sms, Level::Critical, format!("cannot read: {e}"), json!({}), t)
        }
    };
    let t = Instant::now();
    let since = now - 86_400_000;
    let delivered =
        scalar(state, "SELECT COUNT(*) FROM sms_messages WHERE status = 'delivered' AND created_at >= $1", since).await;
    let failed = scalar(
        state,
        "SELECT COUNT(*) FROM sms_messages WHERE status IN ('undelivered', 'failed') AND created_at >= $1",
        since,
    )
    .await;
    let rate = match (delivered, failed) {
        (Ok(d), Ok(f)) => {
            let (d, f) = (d.unwrap_or(0), f.unwrap_or(0));
            let total = d + f;
            let pct = (total > 0).then(|| d as f64 * 100.0 / total as f64);
            let level = match pct {
                Some(p) if total >= 10 && p < 80.0 => Level::Critical,
                Some(p) if total >= 10 && p < 95.0 => Level::Warning,
                _ => Level::Healthy,
            };
            let detail = pct
                .map_or("no finished message in 24 h".into(), |p| format!("{p:.1} % delivered ({d}/{total}) in 24 h"));
            check(
                "sms_delivery_rate",
                Zone::Sms,
                level,
                detail,
                json!({ "delivered": d, "failed": f, "rate_percent": pct }),
                t,
            )
        }
        (Err(e), _) | (_, Err(e)) => {
            check("sms_delivery_rate", Zone::Sms, Level::Critical, format!("cannot read: {e}"), json!({}), t)
        }
    };
    vec![queue, rate]
}

/// How long a given-up Stripe event keeps `stripe_webhook_errors` at warning (it stays counted in `data`).
pub const GIVEN_UP_WARNING_MS: i64 = 7 * 86_400_000;

/// Stripe events that failed and wait for a retry, and those given up (failing 72 h after their receipt; see
/// `billing::events::GIVE_UP_AFTER_MS`): a warning while any is failed or one was given up in the last 7 days.
async fn webhook_errors(state: &AppState, now: i64) -> Check {
    let t = Instant::now();
    // Only given-up events are `ignored` with an error (`billing::events::GIVEN_UP` begins it).
    let given_up = format!(
        "SELECT COUNT(*) FROM billing_events WHERE processing_status = 'ignored' AND last_error LIKE '{}%' \
         AND processed_at >= $1",
        crate::billing::events::GIVEN_UP
    );
    let failed =
        scalar(state, "SELECT COUNT(*) FROM billing_events WHERE processing_status = 'failed' AND $1 = $1", 0).await;
    let recent = scalar(state, &given_up, now - GIVEN_UP_WARNING_MS).await;
    let total = scalar(state, &given_up, 0).await;
    match (failed, recent, total) {
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            check("stripe_webhook_errors", Zone::Stripe, Level::Critical, format!("cannot read: {e}"), json!({}), t)
        }
        (Ok(n), Ok(recent), Ok(total)) => {
            let (n, recent, total) = (n.unwrap_or(0), recent.unwrap_or(0), total.unwrap_or(0));
            let level = if n > 0 || recent > 0 { Level::Warning } else { Level::Healthy };
            let mut parts = Vec::new();
            if n > 0 {
                parts.push(format!("{n} Stripe event(s) failed processing and wait for a retry or replay"));
            }
            if recent > 0 {
                parts.push(format!(
                    "{recent} Stripe event(s) given up in the last 7 days: still failing 72 h after receipt, no \
                     longer retried (audit log: event_given_up)"
                ));
            }
            let detail = if parts.is_empty() { "no failed Stripe event".to_owned() } else { parts.join("; ") };
            let data = json!({ "failed": n, "given_up_7d": recent, "given_up": total });
            check("stripe_webhook_errors", Zone::Stripe, level, detail, data, t)
        }
    }
}

/// The database-backed figures of the monitoring section (queue, delivery rate, webhook errors, DB size).
pub async fn monitoring(state: &AppState) -> Vec<Check> {
    let now = state.now();
    let mut checks = sms_checks(state, now).await;
    checks.push(webhook_errors(state, now).await);
    checks.push(database(state).await);
    checks
}

async fn resolve(host: &str) -> Result<Vec<std::net::IpAddr>, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host((host, 443))).await {
        Err(_) => Err(format!("no DNS answer for {host} within {} s", PROBE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(format!("{host} does not resolve ({e})")),
        Ok(Ok(addrs)) => {
            let mut v: Vec<_> = addrs.map(|a| a.ip()).collect();
            v.sort();
            v.dedup();
            Ok(v)
        }
    }
}

async fn dns(state: &AppState) -> Check {
    let t = Instant::now();
    let s = &state.settings;
    if s.expected_apex_a.is_none() && s.expected_www_cname.is_none() {
        return check("dns", Zone::Dns, Level::Healthy, "no DNS expectation configured", json!({}), t);
    }
    if let Some(c) = state.probes.get("dns") {
        return c;
    }
    let apex = s.apex_host().unwrap_or_default();
    let mut problems = Vec::new();
    let mut data = serde_json::Map::new();
    if let Some(want) = s.expected_apex_a {
        match resolve(&apex).await {
            Ok(ips) => {
                data.insert("apex".into(), json!(ips));
                if !ips.contains(&std::net::IpAddr::V4(want)) {
                    problems.push(format!("{apex} resolves to {ips:?}, expected {want}"));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if let Some(target) = &s.expected_www_cname {
        // Compared by resolved addresses: www must land where the expected CNAME target lands.
        let www = format!("www.{apex}");
        match (resolve(&www).await, resolve(target).await) {
            (Ok(a), Ok(b)) => {
                data.insert("www".into(), json!(a));
                if a != b {
                    problems.push(format!("{www} resolves to {a:?}, but {target} to {b:?}"));
                }
            }
            (Err(e), _) | (_, Err(e)) => problems.push(e),
        }
    }
    let c = if problems.is_empty() {
        check("dns", Zone::Dns, Level::Healthy, "records match the expectations", Value::Object(data), t)
    } else {
        check("dns", Zone::Dns, Level::Critical, problems.join("; "), Value::Object(data), t)
    };
    state.probes.put(&c);
    c
}

async fn redirect(state: &AppState) -> Check {
    let t = Instant::now();
    let s = &state.settings;
    let apex = s.apex_host().unwrap_or_default();
    let public = s.app_url.scheme() == "https" && apex.contains('.') && apex.parse::<std::net::IpAddr>().is_err();
    if !public {
        return check(
            "www_redirect",
            Zone::Dns,
            Level::Healthy,
            "not checked: APP_URL is not a public https domain",
            json!({}),
            t,
        );
    }
    if let Some(c) = state.probes.get("www_redirect") {
        return c;
    }
    let url = format!("https://www.{apex}/");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(PROBE_TIMEOUT).build();
    let c = match client {
        Err(e) => check("www_redirect", Zone::Dns, Level::Warning, format!("cannot build a client: {e}"), json!({}), t),
        Ok(client) => match tokio::time::timeout(PROBE_TIMEOUT, client.get(&url).send()).await {
            Ok(Ok(res)) => {
                let loc = res.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("").to_owned();
                let ok = matches!(res.status().as_u16(), 301 | 308) && loc.starts_with(&format!("https://{apex}"));
                let level = if ok { Level::Healthy } else { Level::Critical };
                check("www_redirect", Zone::Dns, level, format!("{url} → {} {loc}", res.status()), json!({}), t)
            }
            Ok(Err(e)) => check(
                "www_redirect",
                Zone::Dns,
                Level::Critical,
                format!("{url} unreachable ({})", e.without_url()),
                json!({}),
                t,
            ),
            Err(_) => check("www_redirect", Zone::Dns, Level::Critical, format!("{url}: no answer"), json!({}), t),
        },
    };
    state.probes.put(&c);
    c
}

/// Run every check (external probes concurrently, each bounded) and derive the overall status.
pub async fn report(state: &AppState) -> Report {
    let now = state.now();
    let (db, st, tw, d, r) = tokio::join!(database(state), stripe(state), twilio(state), dns(state), redirect(state));
    let mut checks = vec![configuration(state), db, st, tw];
    if checks[1].status != Level::Critical {
        checks.push(tenant_isolation(state).await);
        checks.extend(last_events(state, now).await);
        checks.push(audit_chain(state, now).await);
        checks.extend(job_checks(state).await);
        checks.extend(sms_checks(state, now).await);
        checks.push(webhook_errors(state, now).await);
    }
    checks.push(d);
    checks.push(r);
    let t = Instant::now();
    checks.push(check(
        "version",
        Zone::System,
        Level::Healthy,
        env!("CARGO_PKG_VERSION"),
        json!({ "version": env!("CARGO_PKG_VERSION") }),
        t,
    ));
    Report::new(checks)
}

async fn stripe_webhook_endpoint(state: &AppState) -> Check {
    let t = Instant::now();
    let s = &state.settings.stripe;
    let Some(key) = &s.secret_key else {
        return check(
            "stripe_webhook_endpoint",
            Zone::Stripe,
            Level::Warning,
            "not checked: Stripe is not configured",
            json!({}),
            t,
        );
    };
    let want = state.settings.absolute_url("/api/webhooks/stripe");
    let url = format!("{}/v1/webhook_endpoints?limit=100", s.api_base.as_str().trim_end_matches('/'));
    let body = probe_json("Stripe", state.http.get(url).bearer_auth(key.expose())).await;
    match body {
        Err(e) => check("stripe_webhook_endpoint", Zone::Stripe, Level::Critical, e, json!({}), t),
        Ok(v) => {
            let found = v["data"].as_array().into_iter().flatten().find(|e| e["url"].as_str() == Some(want.as_str()));
            match found {
                Some(e) if e["status"].as_str() == Some("enabled") => check(
                    "stripe_webhook_endpoint",
                    Zone::Stripe,
                    Level::Healthy,
                    format!("{want} registered and enabled"),
                    json!({}),
                    t,
                ),
                Some(_) => check(
                    "stripe_webhook_endpoint",
                    Zone::Stripe,
                    Level::Critical,
                    format!("{want} registered but disabled"),
                    json!({}),
                    t,
                ),
                None => check(
                    "stripe_webhook_endpoint",
                    Zone::Stripe,
                    Level::Critical,
                    format!("no webhook endpoint for {want}: add it in the Stripe dashboard"),
                    json!({}),
                    t,
                ),
            }
        }
    }
}

async fn twilio_number(state: &AppState) -> Check {
    let t = Instant::now();
    let tw = &state.settings.twilio;
    let (Some(sid), Some(token), Some(number)) = (&tw.account_sid, &tw.auth_token, &tw.phone_number) else {
        return check(
            "twilio_number",
            Zone::Twilio,
            Level::Warning,
            "not checked: Twilio credentials or TWILIO_PHONE_NUMBER unset",
            json!({}),
            t,
        );
    };
    let url =
        format!("{}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers.json", tw.api_base.as_str().trim_end_matches('/'));
    let rb = state.http.get(url).query(&[("PhoneNumber", number.as_str())]).basic_auth(sid, Some(token.expose()));
    let body = probe_json("Twilio", rb).await;
    let (sms_url, voice_url) =
        (state.settings.absolute_url("/api/sms/inbound"), state.settings.absolute_url("/api/voice/inbound"));
    match body {
        Err(e) => check("twilio_number", Zone::Twilio, Level::Critical, e, json!({}), t),
        Ok(v) => match v["incoming_phone_numbers"].as_array().and_then(|a| a.first()) {
            None => check(
                "twilio_number",
                Zone::Twilio,
                Level::Critical,
                format!("{number} is not a number of this account"),
                json!({}),
                t,
            ),
            Some(n) => {
                let mut wrong = Vec::new();
                if n["sms_url"].as_str() != Some(sms_url.as_str()) {
                    wrong.push(format!("SMS webhook should be {sms_url}"));
                }
                if n["voice_url"].as_str() != Some(voice_url.as_str()) {
                    wrong.push(format!("voice webhook should be {voice_url}"));
                }
                if wrong.is_empty() {
                    check(
                        "twilio_number",
                        Zone::Twilio,
                        Level::Healthy,
                        format!("{number} points at this service"),
                        json!({}),
                        t,
                    )
                } else {
                    check("twilio_number", Zone::Twilio, Level::Critical, wrong.join("; "), json!({}), t)
                }
            }
        },
    }
}

/// `secur360 check`: the runbook procedures that can be automated (variables, database, Stripe key and webhook
/// endpoint, Twilio credentials and number, DNS, redirect). Anything not healthy is a failure.
pub async fn runbook_check(state: &AppState) -> Report {
    let (db, st, swh, tw, twn, d, r) = tokio::join!(
        database(state),
        stripe(state),
        stripe_webhook_endpoint(state),
        twilio(state),
        twilio_number(state),
        dns(state),
        redirect(state)
    );
    let checks = vec![configuration(state), db, st, swh, tw, twn, d, r];
    Report::new(checks)
}

/// A plain-text table of a report (CLI).
pub fn table(report: &Report) -> String {
    let mut out = format!("overall: {:?} (secur360 {})\n", report.status, report.version).to_lowercase();
    for c in &report.checks {
        let status = format!("{:?}", c.status).to_uppercase();
        out.push_str(&format!(
            "{:<9} {:<9} {:<24} {:>6} ms  {}\n",
            status,
            c.zone.as_str(),
            c.name,
            c.latency_ms,
            c.detail
        ));
    }
    out
}
