//! The daily reconciliation (`billing sync`): page through all customers, subscriptions and recent invoices,
//! repair drift in the mirror, recover events whose delivery failed, re-apply failed events.
//! Each correction is recorded as a `billing_events` row (source `sync`) and an audit row, with its change.

use serde::Serialize;
use serde_json::{json, Value};

use super::events::{self, invoice_row, resolve_tenant, subscription_row, Event};
use super::stripe::StripeClient;
use crate::audit::{self, Entry, Outcome, Zone};
use crate::db::billing::{self as store, EventRow};
use crate::db::Tx;
use crate::state::AppState;

/// How far back invoices are reconciled.
pub const INVOICE_WINDOW_DAYS: i64 = 35;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub ok: bool,
    pub customers_seen: u64,
    pub subscriptions_seen: u64,
    pub invoices_seen: u64,
    pub corrected: u64,
    pub events_recovered: u64,
    pub events_retried: u64,
    pub events_failed: u64,
    /// Events that failed again more than 72 h after their receipt: given up (audited), not retried.
    pub events_given_up: u64,
    pub errors: Vec<String>,
}

impl SyncReport {
    /// Some work was done but not all of it.
    pub fn partial(&self) -> bool {
        !self.errors.is_empty()
    }
}

async fn record_correction(
    tx: &mut Tx,
    kind: &str,
    object_id: &str,
    tenant_id: &str,
    object: &Value,
    now: i64,
) -> anyhow::Result<()> {
    let ev = EventRow {
        stripe_event_id: format!("sync_{object_id}_{now}"),
        event_type: format!("sync.{kind}_corrected"),
        object_id: Some(object_id.to_owned()),
        tenant_id: Some(tenant_id.to_owned()),
        stripe_created: now.div_euclid(1000),
        livemode: object["livemode"].as_bool().unwrap_or(false),
        payload: json!({ "object": object }).to_string(),
        source: "sync".into(),
        processing_status: "processed".into(),
        attempts: 1,
        last_error: None,
        lease_until: None,
        next_attempt_at: None,
        received_at: now,
        processed_at: Some(now),
    };
    store::insert_event_in(tx, &ev).await?;
    let entry = Entry::new(Zone::Billing, "sync", "billing_sync")
        .tenant(tenant_id)
        .subject(object_id)
        .details(json!({ "correction": kind, "object_id": object_id }));
    audit::append(tx, &entry, now).await?;
    Ok(())
}

async fn sync_customer(state: &AppState, obj: &Value, now: i64) -> anyhow::Result<bool> {
    let Some(id) = obj["id"].as_str() else { anyhow::bail!("customer without id") };
    let mut tx = state.db.begin().await?;
    let known = store::customer_in(&mut tx, id).await?;
    let metadata_tenant = obj["metadata"]["tenant_id"].as_str();
    let mut changed = false;
    let tenant = match known {
        Some(c) => Some(c.tenant_id),
        None => {
            let t = resolve_tenant(&mut tx, id, metadata_tenant, now).await?;
            changed = t.is_some();
            t
        }
    };
    let Some(tenant) = tenant else {
        // Not one of ours (no tenant in its metadata): nothing to mirror.
        return Ok(false);
    };
    let deleted = obj["deleted"].as_bool() == Some(true);
    changed |=
        store::update_customer(&mut tx, id, obj["email"].as_str(), obj["name"].as_str(), deleted, now, now).await?;
    if changed {
        record_correction(&mut tx, "customer", id, &tenant, obj, now).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

async fn sync_subscription(state: &AppState, obj: &Value, now: i64) -> anyhow::Result<bool> {
    let customer = obj["customer"].as_str().or_else(|| obj["customer"]["id"].as_str()).unwrap_or_default();
    let mut tx = state.db.begin().await?;
    let Some(tenant) = resolve_tenant(&mut tx, customer, obj["metadata"]["tenant_id"].as_str(), now).await? else {
        // The customers pass linked every customer that names a tenant: this one is not ours (made by hand in
        // the dashboard), so there is nothing to mirror.
        tracing::info!(subscription = %obj["id"], customer, "billing sync: subscription of a foreign customer skipped");
        return Ok(false);
    };
    let row = subscription_row(&state.settings.stripe, obj, &tenant, now, now)?;
    let existing = store::subscription_in(&mut tx, &row.stripe_subscription_id).await?;
    if existing.as_ref().is_some_and(|e| e.same_content(&row)) {
        return Ok(false);
    }
    let written = store::upsert_subscription(&mut tx, &row).await?;
    if written {
        record_correction(&mut tx, "subscription", &row.stripe_subscription_id, &tenant, obj, now).await?;
    }
    tx.commit().await?;
    Ok(written)
}

async fn sync_invoice(state: &AppState, obj: &Value, now: i64) -> anyhow::Result<bool> {
    let customer = obj["customer"].as_str().or_else(|| obj["customer"]["id"].as_str()).unwrap_or_default();
    let mut tx = state.db.begin().await?;
    let Some(tenant) = resolve_tenant(&mut tx, customer, None, now).await? else {
        // Invoices of customers that are not ours are not mirrored.
        return Ok(false);
    };
    let row = invoice_row(obj, &tenant, now, now)?;
    let existing = store::invoice_in(&mut tx, &row.stripe_invoice_id).await?;
    if existing.as_ref().is_some_and(|e| e.same_content(&row)) {
        return Ok(false);
    }
    let written = store::upsert_invoice(&mut tx, &row).await?;
    if written {
        record_correction(&mut tx, "invoice", &row.stripe_invoice_id, &tenant, obj, now).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// One pass of objects: count, repair, collect errors.
async fn pass<'a, F, Fut>(report: &mut SyncReport, what: &str, objects: &'a [Value], mut one: F) -> u64
where
    F: FnMut(&'a Value) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let mut corrected = 0;
    for obj in objects {
        match one(obj).await {
            Ok(true) => corrected += 1,
            Ok(false) => {}
            Err(e) => report.errors.push(format!("{what} {}: {e:#}", obj["id"].as_str().unwrap_or("?"))),
        }
    }
    corrected
}

/// Run the sync at `now` (ms). Never fails as a whole: problems are in `errors` and `ok` is false.
pub async fn run(state: &AppState, now: i64) -> SyncReport {
    crate::db::scope::system("billing-sync", run_now(state, now)).await
}

async fn run_now(state: &AppState, now: i64) -> SyncReport {
    let mut report = SyncReport::default();
    match StripeClient::from_settings(&state.settings) {
        Err(e) => report.errors.push(e.to_string()),
        Ok(client) => reconcile(state, &client, now, &mut report).await,
    }
    match events::retry_failed(state, now).await {
        Ok(r) => {
            report.events_retried += r.succeeded;
            report.events_failed += r.failed;
            report.events_given_up += r.given_up;
            if r.failed > 0 {
                report.errors.push(format!("{} event(s) still fail; see billing_events.last_error", r.failed));
            }
        }
        Err(e) => report.errors.push(format!("retrying failed events: {e:#}")),
    }
    report.ok = report.errors.is_empty();
    let entry = Entry::new(Zone::Billing, "sync", "billing_sync")
        .outcome(if report.ok { Outcome::Success } else { Outcome::Failure })
        .details(json!({
            "customers_seen": report.customers_seen,
            "subscriptions_seen": report.subscriptions_seen,
            "invoices_seen": report.invoices_seen,
            "corrected": report.corrected,
            "events_recovered": report.events_recovered,
            "events_retried": report.events_retried,
            "events_given_up": report.events_given_up,
            "errors": report.errors.len(),
        }));
    if let Err(e) = audit::record(&state.db, &entry, now).await {
        report.errors.push(format!("recording the sync in the audit log: {e}"));
        report.ok = false;
    }
    report
}

async fn reconcile(state: &AppState, client: &StripeClient, now: i64, report: &mut SyncReport) {
    // Events first: recovered events carry their own (older) watermarks, the objects below are current.
    match client.list_all("/v1/events", &[("delivery_success".to_owned(), "false".to_owned())]).await {
        Err(e) => report.errors.push(format!("listing undelivered events: {e}")),
        Ok(list) => {
            for v in list {
                let Ok(ev) = Event::parse(&v) else {
                    report.errors.push(format!("event {} is malformed", v["id"]));
                    continue;
                };
                let mut row = ev.row(&v.to_string(), "sync", now);
                if !ev.is_handled() {
                    row.processing_status = "ignored".into();
                    row.processed_at = Some(now);
                }
                match store::insert_event(&state.db, &row).await {
                    Ok(true) => report.events_recovered += 1,
                    Ok(false) => {}
                    Err(e) => report.errors.push(format!("storing event {}: {e}", ev.id)),
                }
            }
        }
    }
    match events::retry_failed(state, now).await {
        Ok(r) => {
            report.events_retried += r.succeeded;
            report.events_failed += r.failed;
            report.events_given_up += r.given_up;
            if r.failed > 0 {
                report
                    .errors
                    .push(format!("{} recovered event(s) failed to apply; see billing_events.last_error", r.failed));
            }
        }
        Err(e) => report.errors.push(format!("applying recovered events: {e:#}")),
    }

    match client.list_all("/v1/customers", &[]).await {
        Err(e) => report.errors.push(format!("listing customers: {e}")),
        Ok(list) => {
            report.customers_seen = list.len() as u64;
            report.corrected += pass(report, "customer", &list, |o| sync_customer(state, o, now)).await;
        }
    }
    match client.list_all("/v1/subscriptions", &[("status".to_owned(), "all".to_owned())]).await {
        Err(e) => report.errors.push(format!("listing subscriptions: {e}")),
        Ok(list) => {
            report.subscriptions_seen = list.len() as u64;
            report.corrected += pass(report, "subscription", &list, |o| sync_subscription(state, o, now)).await;
        }
    }
    let since = now.div_euclid(1000) - INVOICE_WINDOW_DAYS * 86_400;
    match client.list_since("/v1/invoices", since).await {
        Err(e) => report.errors.push(format!("listing invoices: {e}")),
        Ok(list) => {
            report.invoices_seen = list.len() as u64;
            report.corrected += pass(report, "invoice", &list, |o| sync_invoice(state, o, now)).await;
        }
    }
}

/// Resync one tenant (the admin page's « Resynchroniser un client »): re-fetch its customer, all its
/// subscriptions and its invoices from Stripe and repair the mirror. Recorded like the full sync.
pub async fn resync_tenant(state: &AppState, tenant_id: &str, now: i64) -> SyncReport {
    let mut report = SyncReport::default();
    let customer = match store::customer_for_tenant(&state.db, tenant_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            report.errors.push(format!("tenant {tenant_id} has no Stripe customer yet; nothing to resync"));
            return report;
        }
        Err(e) => {
            report.errors.push(format!("reading the tenant's customer: {e}"));
            return report;
        }
    };
    let client = match StripeClient::from_settings(&state.settings) {
        Ok(c) => c,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let id = customer.stripe_customer_id;
    match client.retrieve_customer(&id).await {
        Err(e) => report.errors.push(format!("retrieving customer {id}: {e}")),
        Ok(obj) => {
            report.customers_seen = 1;
            report.corrected +=
                pass(&mut report, "customer", std::slice::from_ref(&obj), |o| sync_customer(state, o, now)).await;
        }
    }
    let by_customer = [("customer".to_owned(), id.clone())];
    let subs = [by_customer[0].clone(), ("status".to_owned(), "all".to_owned())];
    match client.list_all("/v1/subscriptions", &subs).await {
        Err(e) => report.errors.push(format!("listing subscriptions of {id}: {e}")),
        Ok(list) => {
            report.subscriptions_seen = list.len() as u64;
            report.corrected += pass(&mut report, "subscription", &list, |o| sync_subscription(state, o, now)).await;
        }
    }
    match client.list_all("/v1/invoices", &by_customer).await {
        Err(e) => report.errors.push(format!("listing invoices of {id}: {e}")),
        Ok(list) => {
            report.invoices_seen = list.len() as u64;
            report.corrected += pass(&mut report, "invoice", &list, |o| sync_invoice(state, o, now)).await;
        }
    }
    report.ok = report.errors.is_empty();
    let entry = Entry::new(Zone::Billing, "sync", "admin")
        .tenant(tenant_id)
        .subject(&id)
        .outcome(if report.ok { Outcome::Success } else { Outcome::Failure })
        .details(json!({
            "scope": "tenant",
            "subscriptions_seen": report.subscriptions_seen,
            "invoices_seen": report.invoices_seen,
            "corrected": report.corrected,
            "errors": report.errors.len(),
        }));
    if let Err(e) = audit::record(&state.db, &entry, now).await {
        report.errors.push(format!("recording the resync in the audit log: {e}"));
        report.ok = false;
    }
    report
}
