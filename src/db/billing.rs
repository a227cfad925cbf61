//! The billing mirror: customers, subscriptions, invoices, and the Stripe event log.
//!
//! Upserts of Stripe objects carry a watermark (`stripe_updated_at`, ms: the `created` time of the event that
//! carried the object, or the sync time for objects read from the API). An upsert only wins over a stored row
//! with an older watermark, or with the same watermark and a lower status rank — so events applied in any order
//! converge, and a redelivered old event never overwrites newer state. The comparison runs inside the upsert
//! statement itself, so concurrent writers cannot interleave between a read and a write.

use serde::Serialize;

use super::{Db, Tx};
use crate::{on_db, on_tx};

// ---------------------------------------------------------------------------------------------------------
// Customers

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CustomerRow {
    pub stripe_customer_id: String,
    pub tenant_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub deleted: bool,
    pub stripe_updated_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const CUSTOMER_COLUMNS: &str =
    "stripe_customer_id, tenant_id, email, name, deleted, stripe_updated_at, created_at, updated_at";

pub async fn customer_for_tenant(db: &Db, tenant_id: &str) -> Result<Option<CustomerRow>, sqlx::Error> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE tenant_id = $1");
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).fetch_optional(p).await)
}

pub async fn customer_in(tx: &mut Tx, stripe_customer_id: &str) -> Result<Option<CustomerRow>, sqlx::Error> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE stripe_customer_id = $1");
    on_tx!(tx, c => sqlx::query_as(&sql).bind(stripe_customer_id).fetch_optional(&mut *c).await)
}

pub async fn customer_for_tenant_in(tx: &mut Tx, tenant_id: &str) -> Result<Option<CustomerRow>, sqlx::Error> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customers WHERE tenant_id = $1");
    on_tx!(tx, c => sqlx::query_as(&sql).bind(tenant_id).fetch_optional(&mut *c).await)
}

/// Insert the tenant's customer unless the tenant (or the customer id) already has one; returns whether the
/// row was inserted. The UNIQUE `tenant_id` makes this the single decision point under concurrency.
pub async fn insert_customer(tx: &mut Tx, row: &CustomerRow) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, c => sqlx::query(
        "INSERT INTO customers (stripe_customer_id, tenant_id, email, name, deleted, stripe_updated_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
    )
    .bind(&row.stripe_customer_id).bind(&row.tenant_id).bind(&row.email).bind(&row.name).bind(row.deleted)
    .bind(row.stripe_updated_at).bind(row.created_at).bind(row.updated_at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Apply a customer object if it is not older than the stored one; returns whether the row changed.
pub async fn update_customer(
    tx: &mut Tx,
    stripe_customer_id: &str,
    email: Option<&str>,
    name: Option<&str>,
    deleted: bool,
    watermark: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE customers SET email = $2, name = $3, deleted = (deleted OR $4), stripe_updated_at = $5, updated_at = $6 \
         WHERE stripe_customer_id = $1 AND stripe_updated_at <= $5 \
         AND (email IS DISTINCT FROM $2 OR name IS DISTINCT FROM $3 OR deleted <> (deleted OR $4))"
    )
    .bind(stripe_customer_id).bind(email).bind(name).bind(deleted).bind(watermark).bind(now)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

// ---------------------------------------------------------------------------------------------------------
// Subscriptions

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub stripe_subscription_id: String,
    pub tenant_id: String,
    pub stripe_customer_id: String,
    pub status: String,
    pub plan_interval: Option<String>,
    pub base_price_id: Option<String>,
    pub base_item_id: Option<String>,
    pub addon_price_id: Option<String>,
    pub addon_item_id: Option<String>,
    pub addon_quantity: i64,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<i64>,
    pub trial_end: Option<i64>,
    pub past_due_since: Option<i64>,
    pub stripe_created: i64,
    pub stripe_updated_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl SubscriptionRow {
    /// Whether the Stripe-derived content of two rows is the same (bookkeeping columns aside).
    pub fn same_content(&self, other: &SubscriptionRow) -> bool {
        let key = |r: &SubscriptionRow| {
            (
                r.tenant_id.clone(),
                r.stripe_customer_id.clone(),
                r.status.clone(),
                r.plan_interval.clone(),
                r.base_price_id.clone(),
                r.base_item_id.clone(),
                r.addon_price_id.clone(),
                r.addon_item_id.clone(),
                r.addon_quantity,
                (r.current_period_start, r.current_period_end, r.cancel_at_period_end, r.canceled_at, r.trial_end),
            )
        };
        key(self) == key(other)
    }
}

const SUBSCRIPTION_COLUMNS: &str = "stripe_subscription_id, tenant_id, stripe_customer_id, status, plan_interval, \
    base_price_id, base_item_id, addon_price_id, addon_item_id, addon_quantity, current_period_start, \
    current_period_end, cancel_at_period_end, canceled_at, trial_end, past_due_since, stripe_created, \
    stripe_updated_at, created_at, updated_at";

/// Ties on the watermark go to the later status in a subscription's life (`canceled` is final).
fn status_rank(col: &str) -> String {
    format!(
        "(CASE {col} WHEN 'incomplete' THEN 0 WHEN 'trialing' THEN 1 WHEN 'active' THEN 2 WHEN 'past_due' THEN 3 \
         WHEN 'paused' THEN 4 WHEN 'unpaid' THEN 5 WHEN 'incomplete_expired' THEN 6 WHEN 'canceled' THEN 7 ELSE 0 END)"
    )
}

/// Upsert if newer (see the module doc); returns whether the row was written. `past_due_since` is kept while
/// the subscription stays past due, set to the row's value when it becomes past due, and cleared otherwise.
pub async fn upsert_subscription(tx: &mut Tx, r: &SubscriptionRow) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO subscriptions ({SUBSCRIPTION_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET tenant_id = excluded.tenant_id, \
         stripe_customer_id = excluded.stripe_customer_id, status = excluded.status, \
         plan_interval = excluded.plan_interval, base_price_id = excluded.base_price_id, \
         base_item_id = excluded.base_item_id, addon_price_id = excluded.addon_price_id, \
         addon_item_id = excluded.addon_item_id, addon_quantity = excluded.addon_quantity, \
         current_period_start = excluded.current_period_start, current_period_end = excluded.current_period_end, \
         cancel_at_period_end = excluded.cancel_at_period_end, canceled_at = excluded.canceled_at, \
         trial_end = excluded.trial_end, \
         past_due_since = CASE WHEN excluded.status <> 'past_due' THEN NULL \
           WHEN subscriptions.status = 'past_due' THEN COALESCE(subscriptions.past_due_since, excluded.past_due_since) \
           ELSE excluded.past_due_since END, \
         stripe_created = excluded.stripe_created, stripe_updated_at = excluded.stripe_updated_at, \
         updated_at = excluded.updated_at \
         WHERE excluded.stripe_updated_at > subscriptions.stripe_updated_at \
         OR (excluded.stripe_updated_at = subscriptions.stripe_updated_at AND {} > {})",
        status_rank("excluded.status"),
        status_rank("subscriptions.status"),
    );
    let n = on_tx!(tx, c => sqlx::query(&sql)
        .bind(&r.stripe_subscription_id).bind(&r.tenant_id).bind(&r.stripe_customer_id).bind(&r.status)
        .bind(&r.plan_interval).bind(&r.base_price_id).bind(&r.base_item_id).bind(&r.addon_price_id)
        .bind(&r.addon_item_id).bind(r.addon_quantity).bind(r.current_period_start).bind(r.current_period_end)
        .bind(r.cancel_at_period_end).bind(r.canceled_at).bind(r.trial_end).bind(r.past_due_since)
        .bind(r.stripe_created).bind(r.stripe_updated_at).bind(r.created_at).bind(r.updated_at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Set the add-on quantity of subscription `id` from `from` to `to`, only if the row still holds `from` and the
/// watermark `at` (no Stripe event was applied since it was read); returns whether it was written. Used to lower
/// the entitlement ahead of a change sent to Stripe, and to put it back if Stripe refuses the change; the
/// watermark is left alone, so Stripe's own answer or event always wins afterwards.
pub async fn set_addon_quantity_if(tx: &mut Tx, id: &str, from: i64, to: i64, at: i64) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE subscriptions SET addon_quantity = $3 \
         WHERE stripe_subscription_id = $1 AND addon_quantity = $2 AND stripe_updated_at = $4"
    ).bind(id).bind(from).bind(to).bind(at).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn subscription_in(tx: &mut Tx, id: &str) -> Result<Option<SubscriptionRow>, sqlx::Error> {
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE stripe_subscription_id = $1");
    on_tx!(tx, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)
}

pub async fn subscription(db: &Db, id: &str) -> Result<Option<SubscriptionRow>, sqlx::Error> {
    let sql = format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE stripe_subscription_id = $1");
    on_db!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await)
}

/// The tenant's subscription that decides access (same choice as `subscriptions::current`).
pub async fn current_subscription(db: &Db, tenant_id: &str) -> Result<Option<SubscriptionRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE tenant_id = $1 \
         ORDER BY CASE WHEN status IN ('active', 'trialing', 'past_due') THEN 0 ELSE 1 END, stripe_created DESC LIMIT 1"
    );
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).fetch_optional(p).await)
}

// ---------------------------------------------------------------------------------------------------------
// Invoices

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct InvoiceRow {
    pub stripe_invoice_id: String,
    pub tenant_id: String,
    pub stripe_customer_id: String,
    pub stripe_subscription_id: Option<String>,
    pub status: String,
    pub currency: String,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub hosted_invoice_url: Option<String>,
    pub invoice_pdf: Option<String>,
    pub attempt_count: i64,
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
    pub stripe_created: i64,
    pub stripe_updated_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

impl InvoiceRow {
    pub fn same_content(&self, o: &InvoiceRow) -> bool {
        let k = |r: &InvoiceRow| {
            (
                r.status.clone(),
                (r.amount_due, r.amount_paid, r.amount_remaining, r.subtotal, r.tax, r.total, r.attempt_count),
                r.hosted_invoice_url.clone(),
                r.invoice_pdf.clone(),
                r.stripe_subscription_id.clone(),
            )
        };
        k(self) == k(o)
    }
}

const INVOICE_COLUMNS: &str = "stripe_invoice_id, tenant_id, stripe_customer_id, stripe_subscription_id, status, \
    currency, amount_due, amount_paid, amount_remaining, subtotal, tax, total, hosted_invoice_url, invoice_pdf, \
    attempt_count, period_start, period_end, stripe_created, stripe_updated_at, created_at, updated_at";

fn invoice_rank(col: &str) -> String {
    format!(
        "(CASE {col} WHEN 'draft' THEN 0 WHEN 'open' THEN 1 WHEN 'uncollectible' THEN 2 WHEN 'paid' THEN 3 \
         WHEN 'void' THEN 3 WHEN 'deleted' THEN 4 ELSE 0 END)"
    )
}

pub async fn upsert_invoice(tx: &mut Tx, r: &InvoiceRow) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO invoices ({INVOICE_COLUMNS}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
         ON CONFLICT (stripe_invoice_id) DO UPDATE SET stripe_subscription_id = excluded.stripe_subscription_id, \
         status = excluded.status, currency = excluded.currency, amount_due = excluded.amount_due, \
         amount_paid = excluded.amount_paid, amount_remaining = excluded.amount_remaining, \
         subtotal = excluded.subtotal, tax = excluded.tax, total = excluded.total, \
         hosted_invoice_url = excluded.hosted_invoice_url, invoice_pdf = excluded.invoice_pdf, \
         attempt_count = excluded.attempt_count, period_start = excluded.period_start, \
         period_end = excluded.period_end, stripe_updated_at = excluded.stripe_updated_at, \
         updated_at = excluded.updated_at \
         WHERE excluded.stripe_updated_at > invoices.stripe_updated_at \
         OR (excluded.stripe_updated_at = invoices.stripe_updated_at AND {} > {})",
        invoice_rank("excluded.status"),
        invoice_rank("invoices.status"),
    );
    let n = on_tx!(tx, c => sqlx::query(&sql)
        .bind(&r.stripe_invoice_id).bind(&r.tenant_id).bind(&r.stripe_customer_id).bind(&r.stripe_subscription_id)
        .bind(&r.status).bind(&r.currency).bind(r.amount_due).bind(r.amount_paid).bind(r.amount_remaining)
        .bind(r.subtotal).bind(r.tax).bind(r.total).bind(&r.hosted_invoice_url).bind(&r.invoice_pdf)
        .bind(r.attempt_count).bind(r.period_start).bind(r.period_end).bind(r.stripe_created)
        .bind(r.stripe_updated_at).bind(r.created_at).bind(r.updated_at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn invoice_in(tx: &mut Tx, id: &str) -> Result<Option<InvoiceRow>, sqlx::Error> {
    let sql = format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE stripe_invoice_id = $1");
    on_tx!(tx, c => sqlx::query_as(&sql).bind(id).fetch_optional(&mut *c).await)
}

pub async fn latest_invoices(db: &Db, tenant_id: &str, limit: i64) -> Result<Vec<InvoiceRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE tenant_id = $1 ORDER BY stripe_created DESC, stripe_invoice_id LIMIT $2"
    );
    on_db!(db, p => sqlx::query_as(&sql).bind(tenant_id).bind(limit).fetch_all(p).await)
}

// ---------------------------------------------------------------------------------------------------------
// Events

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub stripe_event_id: String,
    pub event_type: String,
    pub object_id: Option<String>,
    pub tenant_id: Option<String>,
    pub stripe_created: i64,
    pub livemode: bool,
    pub payload: String,
    pub source: String,
    pub processing_status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub lease_until: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
}

const EVENT_COLUMNS: &str = "stripe_event_id, event_type, object_id, tenant_id, stripe_created, livemode, payload, \
    source, processing_status, attempts, last_error, lease_until, next_attempt_at, received_at, processed_at";

/// Store an event once by its id; returns whether this call stored it (false: already known).
pub async fn insert_event(db: &Db, e: &EventRow) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO billing_events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (stripe_event_id) DO NOTHING"
    );
    let n = on_db!(db, p => sqlx::query(&sql)
        .bind(&e.stripe_event_id).bind(&e.event_type).bind(&e.object_id).bind(&e.tenant_id).bind(e.stripe_created)
        .bind(e.livemode).bind(&e.payload).bind(&e.source).bind(&e.processing_status).bind(e.attempts)
        .bind(&e.last_error).bind(e.lease_until).bind(e.next_attempt_at).bind(e.received_at).bind(e.processed_at)
        .execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Same as [`insert_event`] inside a transaction (sync corrections, recorded with their change).
pub async fn insert_event_in(tx: &mut Tx, e: &EventRow) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO billing_events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
         ON CONFLICT (stripe_event_id) DO NOTHING"
    );
    let n = on_tx!(tx, c => sqlx::query(&sql)
        .bind(&e.stripe_event_id).bind(&e.event_type).bind(&e.object_id).bind(&e.tenant_id).bind(e.stripe_created)
        .bind(e.livemode).bind(&e.payload).bind(&e.source).bind(&e.processing_status).bind(e.attempts)
        .bind(&e.last_error).bind(e.lease_until).bind(e.next_attempt_at).bind(e.received_at).bind(e.processed_at)
        .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn event(db: &Db, id: &str) -> Result<Option<EventRow>, sqlx::Error> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM billing_events WHERE stripe_event_id = $1");
    on_db!(db, p => sqlx::query_as(&sql).bind(id).fetch_optional(p).await)
}

/// Take the processing lease of an event that is pending, failed, or whose previous lease expired. Exactly one
/// of several concurrent callers gets `true`.
pub async fn claim_event(db: &Db, id: &str, now: i64, lease_until: i64) -> Result<bool, sqlx::Error> {
    let n = on_db!(db, p => sqlx::query(
        "UPDATE billing_events SET processing_status = 'processing', lease_until = $3, attempts = attempts + 1 \
         WHERE stripe_event_id = $1 AND (processing_status IN ('pending', 'failed') \
         OR (processing_status = 'processing' AND lease_until < $2))"
    ).bind(id).bind(now).bind(lease_until).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Finish an event inside the transaction that applied it (`processed` or `ignored`).
pub async fn finish_event(
    tx: &mut Tx,
    id: &str,
    status: &str,
    tenant_id: Option<&str>,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE billing_events SET processing_status = $2, tenant_id = COALESCE($3, tenant_id), processed_at = $4, \
         lease_until = NULL, next_attempt_at = NULL, last_error = NULL \
         WHERE stripe_event_id = $1 AND processing_status = 'processing'"
    ).bind(id).bind(status).bind(tenant_id).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

pub async fn fail_event(db: &Db, id: &str, error: &str, next_attempt_at: i64) -> Result<(), sqlx::Error> {
    on_db!(db, p => sqlx::query(
        "UPDATE billing_events SET processing_status = 'failed', last_error = $2, next_attempt_at = $3, lease_until = NULL \
         WHERE stripe_event_id = $1 AND processing_status = 'processing'"
    ).bind(id).bind(error).bind(next_attempt_at).execute(p).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Give up an event whose processing lease the caller holds: stored `ignored` for good (never claimed again, so
/// never retried; a redelivery finds it settled), with `error` as its `last_error`. Returns whether this call
/// gave it up (false: the lease was lost).
pub async fn give_up_event(tx: &mut Tx, id: &str, error: &str, now: i64) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, c => sqlx::query(
        "UPDATE billing_events SET processing_status = 'ignored', last_error = $2, processed_at = $3, \
         lease_until = NULL, next_attempt_at = NULL \
         WHERE stripe_event_id = $1 AND processing_status = 'processing'"
    ).bind(id).bind(error).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Events due for (re)processing: pending or failed and due, or stuck past their lease.
pub async fn due_events(db: &Db, now: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    on_db!(db, p => sqlx::query_scalar(
        "SELECT stripe_event_id FROM billing_events WHERE \
         (processing_status IN ('pending', 'failed') AND (next_attempt_at IS NULL OR next_attempt_at <= $1)) \
         OR (processing_status = 'processing' AND lease_until < $1) \
         ORDER BY stripe_created, stripe_event_id LIMIT $2"
    ).bind(now).bind(limit).fetch_all(p).await)
}

pub async fn tenant_exists(tx: &mut Tx, tenant_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE id = $1")
        .bind(tenant_id).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}
