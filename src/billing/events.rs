//! Applying Stripe events and objects to the local mirror.
//!
//! A new webhook event is applied, stored as processed and audited in one commit shared with the other new events
//! of its batch ([`apply_batch`]). Otherwise (a
//! redelivery, a failure, the daily sync) an event is first stored (`billing_events`, once by id), then claimed
//! with a short lease by exactly one processor, applied in one transaction together with its audit row and its
//! `processed` mark, or marked `failed` with the error and a next attempt time. [`retry_failed`] re-applies failed, pending and stuck events.
//! An event that still fails more than [`GIVE_UP_AFTER_MS`] (72 h) after it was first received is given up: stored
//! `ignored` with its last error (prefixed [`GIVEN_UP`]), audited, never retried again.
//! Any network read (re-fetching the subscription of a completed checkout) happens before the transaction.

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::stripe::StripeClient;
use crate::audit::{self, Entry, Outcome, Zone};
use crate::config::StripeSettings;
use crate::db::billing::{self as store, CustomerRow, EventRow, InvoiceRow, SubscriptionRow};
use crate::db::{Db, Tx};
use crate::on_tx;
use crate::state::AppState;

/// How long a processor owns an event before another may take it over.
pub const LEASE_MS: i64 = 60_000;

/// How long after its receipt (`billing_events.received_at`) a failing event is retried. The retries exist because
/// an event may arrive before the one that links its customer to a tenant; Stripe redelivers a webhook for up to
/// three days, so past that nothing is left that could make the event applicable. An attempt that fails later
/// gives the event up.
pub const GIVE_UP_AFTER_MS: i64 = 72 * 3_600_000;

/// How the `last_error` of a given-up event begins. Its status is `ignored`, and only given-up events are
/// `ignored` with an error (an event ignored for its type has none), which is how the status page counts them.
pub const GIVEN_UP: &str = "given up";

pub const SUBSCRIPTION_STATUSES: [&str; 8] =
    ["incomplete", "incomplete_expired", "trialing", "active", "past_due", "canceled", "unpaid", "paused"];
const INVOICE_STATUSES: [&str; 6] = ["draft", "open", "paid", "uncollectible", "void", "deleted"];

/// The event types of SPEC §3 that change the mirror or are recorded; anything else is stored as `ignored`.
pub const HANDLED: [&str; 20] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "invoice.upcoming",
    "customer.updated",
    "customer.deleted",
    "customer.created",
];

/// An event parsed from its JSON: only what routing needs; the object stays JSON (unknown fields tolerated).
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    /// Seconds since the epoch, as Stripe sends it.
    pub created: i64,
    pub livemode: bool,
    pub object: Value,
}

impl Event {
    /// Parse an event; a payload without `id`, `type`, `created` or `data.object` is malformed.
    pub fn parse(v: &Value) -> Result<Event, String> {
        let id = v["id"].as_str().filter(|s| !s.is_empty()).ok_or("the event has no \"id\"")?;
        let event_type = v["type"].as_str().filter(|s| !s.is_empty()).ok_or("the event has no \"type\"")?;
        let created = v["created"].as_i64().ok_or("the event has no integer \"created\"")?;
        let object = v["data"]["object"].clone();
        if !object.is_object() {
            return Err("the event has no \"data.object\"".into());
        }
        Ok(Event {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            created,
            livemode: v["livemode"].as_bool().unwrap_or(false),
            object,
        })
    }

    /// The event's watermark, in ms.
    pub fn watermark(&self) -> i64 {
        self.created.saturating_mul(1000)
    }

    pub fn is_handled(&self) -> bool {
        HANDLED.contains(&self.event_type.as_str())
    }

    pub fn object_id(&self) -> Option<String> {
        self.object["id"].as_str().map(str::to_owned)
    }

    /// The row stored for this event before it is applied.
    pub fn row(&self, payload: &str, source: &str, now: i64) -> EventRow {
        EventRow {
            stripe_event_id: self.id.clone(),
            event_type: self.event_type.clone(),
            object_id: self.object_id(),
            tenant_id: None,
            stripe_created: self.created,
            livemode: self.livemode,
            payload: payload.to_owned(),
            source: source.to_owned(),
            processing_status: "pending".into(),
            attempts: 0,
            last_error: None,
            lease_until: None,
            next_attempt_at: None,
            received_at: now,
            processed_at: None,
        }
    }
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// An expandable field: an id string or an object with an id.
fn id_of(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned).or_else(|| v["id"].as_str().map(str::to_owned))
}

fn ms(v: &Value) -> Option<i64> {
    v.as_i64().map(|s| s.saturating_mul(1000))
}

// ---------------------------------------------------------------------------------------------------------
// Objects → rows

/// Which configured price an item carries.
fn is_addon(prices: &StripeSettings, price: &str) -> bool {
    prices.price_addon_site_monthly.as_deref() == Some(price)
        || prices.price_addon_site_annual.as_deref() == Some(price)
}

fn interval_of_price(prices: &StripeSettings, price: &str) -> Option<&'static str> {
    if prices.price_monthly.as_deref() == Some(price) || prices.price_addon_site_monthly.as_deref() == Some(price) {
        Some("month")
    } else if prices.price_annual.as_deref() == Some(price) || prices.price_addon_site_annual.as_deref() == Some(price)
    {
        Some("year")
    } else {
        None
    }
}

/// A subscription object (API version 2024-06-20) as a mirror row, for `tenant_id`, at `watermark` ms.
pub fn subscription_row(
    prices: &StripeSettings,
    obj: &Value,
    tenant_id: &str,
    watermark: i64,
    now: i64,
) -> anyhow::Result<SubscriptionRow> {
    let id = str_of(&obj["id"]).context("subscription without id")?;
    let customer = id_of(&obj["customer"]).context("subscription without customer")?;
    let status = str_of(&obj["status"]).context("subscription without status")?;
    if !SUBSCRIPTION_STATUSES.contains(&status.as_str()) {
        bail!("unknown subscription status {status:?}");
    }
    let mut base: Option<(String, String, Option<String>)> = None;
    let mut addon: Option<(String, String, i64)> = None;
    for item in obj["items"]["data"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let item_id = str_of(&item["id"]).context("subscription item without id")?;
        let price = id_of(&item["price"]).or_else(|| id_of(&item["plan"])).context("item without price")?;
        let quantity = item["quantity"].as_i64().unwrap_or(1).max(0);
        if is_addon(prices, &price) {
            let q = addon.as_ref().map_or(0, |a| a.2) + quantity;
            addon = Some((item_id, price, q));
        } else if base.is_none() {
            let interval = str_of(&item["price"]["recurring"]["interval"])
                .or_else(|| str_of(&item["plan"]["interval"]))
                .or_else(|| interval_of_price(prices, &price).map(str::to_owned));
            base = Some((item_id, price, interval));
        }
    }
    let interval = base
        .as_ref()
        .and_then(|b| b.2.clone())
        .or_else(|| addon.as_ref().and_then(|a| interval_of_price(prices, &a.1)).map(str::to_owned))
        .filter(|i| i == "month" || i == "year");
    Ok(SubscriptionRow {
        stripe_subscription_id: id,
        tenant_id: tenant_id.to_owned(),
        stripe_customer_id: customer,
        past_due_since: (status == "past_due").then_some(watermark),
        status,
        plan_interval: interval,
        base_price_id: base.as_ref().map(|b| b.1.clone()),
        base_item_id: base.as_ref().map(|b| b.0.clone()),
        addon_price_id: addon.as_ref().map(|a| a.1.clone()),
        addon_item_id: addon.as_ref().map(|a| a.0.clone()),
        addon_quantity: addon.as_ref().map_or(0, |a| a.2),
        current_period_start: ms(&obj["current_period_start"]),
        current_period_end: ms(&obj["current_period_end"]),
        cancel_at_period_end: obj["cancel_at_period_end"].as_bool().unwrap_or(false),
        canceled_at: ms(&obj["canceled_at"]),
        trial_end: ms(&obj["trial_end"]),
        stripe_created: ms(&obj["created"]).unwrap_or(watermark),
        stripe_updated_at: watermark,
        created_at: now,
        updated_at: now,
    })
}

pub fn invoice_row(obj: &Value, tenant_id: &str, watermark: i64, now: i64) -> anyhow::Result<InvoiceRow> {
    let id = str_of(&obj["id"]).context("invoice without id")?;
    let status = str_of(&obj["status"]).unwrap_or_else(|| "draft".into());
    if !INVOICE_STATUSES.contains(&status.as_str()) {
        bail!("unknown invoice status {status:?}");
    }
    let int = |k: &str| obj[k].as_i64().unwrap_or(0);
    Ok(InvoiceRow {
        stripe_invoice_id: id,
        tenant_id: tenant_id.to_owned(),
        stripe_customer_id: id_of(&obj["customer"]).context("invoice without customer")?,
        stripe_subscription_id: id_of(&obj["subscription"]),
        status,
        currency: str_of(&obj["currency"]).unwrap_or_else(|| "cad".into()),
        amount_due: int("amount_due"),
        amount_paid: int("amount_paid"),
        amount_remaining: int("amount_remaining"),
        subtotal: int("subtotal"),
        tax: int("tax"),
        total: int("total"),
        hosted_invoice_url: str_of(&obj["hosted_invoice_url"]),
        invoice_pdf: str_of(&obj["invoice_pdf"]),
        attempt_count: int("attempt_count"),
        period_start: ms(&obj["period_start"]),
        period_end: ms(&obj["period_end"]),
        stripe_created: ms(&obj["created"]).unwrap_or(watermark),
        stripe_updated_at: watermark,
        created_at: now,
        updated_at: now,
    })
}

/// The tenant of a Stripe customer: from the mirror, else from `metadata.tenant_id` of the object (linking the
/// customer to that tenant if it has none yet). `None` when neither knows it.
pub async fn resolve_tenant(
    tx: &mut Tx,
    customer_id: &str,
    metadata_tenant: Option<&str>,
    now: i64,
) -> anyhow::Result<Option<String>> {
    if let Some(c) = store::customer_in(tx, customer_id).await? {
        return Ok(Some(c.tenant_id));
    }
    let Some(tenant) = metadata_tenant.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if !store::tenant_exists(tx, tenant).await? {
        bail!("metadata.tenant_id {tenant:?} of customer {customer_id} is not a known tenant");
    }
    link_customer(tx, tenant, customer_id, None, None, now).await?;
    Ok(Some(tenant.to_owned()))
}

/// Record `customer_id` as the tenant's customer; an error if the tenant already has another one.
pub async fn link_customer(
    tx: &mut Tx,
    tenant: &str,
    customer_id: &str,
    email: Option<String>,
    name: Option<String>,
    now: i64,
) -> anyhow::Result<bool> {
    let row = CustomerRow {
        stripe_customer_id: customer_id.to_owned(),
        tenant_id: tenant.to_owned(),
        email,
        name,
        deleted: false,
        stripe_updated_at: 0,
        created_at: now,
        updated_at: now,
    };
    let inserted = store::insert_customer(tx, &row).await?;
    if !inserted {
        let existing = store::customer_for_tenant_in(tx, tenant).await?;
        match existing {
            Some(c) if c.stripe_customer_id == customer_id => {}
            Some(c) => bail!("tenant {tenant} already has Stripe customer {}, not {customer_id}", c.stripe_customer_id),
            None => bail!("Stripe customer {customer_id} belongs to another tenant"),
        }
    }
    Ok(inserted)
}

fn metadata_tenant(obj: &Value) -> Option<&str> {
    obj["metadata"]["tenant_id"].as_str()
}

async fn tenant_of(tx: &mut Tx, obj: &Value, customer_field: &str, now: i64) -> anyhow::Result<(String, String)> {
    let customer = id_of(&obj[customer_field]).with_context(|| format!("the object has no {customer_field}"))?;
    let tenant = resolve_tenant(tx, &customer, metadata_tenant(obj), now)
        .await?
        .ok_or_else(|| anyhow!("Stripe customer {customer} is not linked to a tenant yet"))?;
    Ok((tenant, customer))
}

// ---------------------------------------------------------------------------------------------------------
// Applying one event

/// What applying did, for the audit row and the event's status.
struct Applied {
    tenant_id: Option<String>,
    /// `false`: the object was older than the mirror (or unchanged) and nothing was written.
    changed: bool,
    ignored: bool,
    outcome: Outcome,
}

impl Applied {
    /// The event's final processing status.
    fn status(&self) -> &'static str {
        if self.ignored {
            "ignored"
        } else {
            "processed"
        }
    }
}

/// Network reads an event needs, done before its transaction.
#[derive(Default)]
pub struct Prefetched {
    subscription: Option<Value>,
}

pub async fn prefetch(state: &AppState, ev: &Event) -> anyhow::Result<Prefetched> {
    let mut out = Prefetched::default();
    if matches!(ev.event_type.as_str(), "checkout.session.completed" | "checkout.session.async_payment_succeeded") {
        if let (Some(sub), Ok(client)) =
            (id_of(&ev.object["subscription"]), StripeClient::from_settings(&state.settings))
        {
            out.subscription =
                Some(client.retrieve_subscription(&sub).await.context("re-fetching the checkout's subscription")?);
        }
    }
    Ok(out)
}

async fn apply_in(
    prices: &StripeSettings,
    tx: &mut Tx,
    ev: &Event,
    pre: Prefetched,
    now: i64,
) -> anyhow::Result<Applied> {
    let obj = &ev.object;
    let w = ev.watermark();
    let done = |tenant: Option<String>, changed: bool| Applied {
        tenant_id: tenant,
        changed,
        ignored: false,
        outcome: Outcome::Success,
    };
    let t = ev.event_type.as_str();
    match t {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let tenant = obj["client_reference_id"]
                .as_str()
                .or_else(|| metadata_tenant(obj))
                .context("the checkout session carries no tenant (client_reference_id / metadata.tenant_id)")?
                .to_owned();
            if !store::tenant_exists(tx, &tenant).await? {
                bail!("the checkout session names an unknown tenant {tenant:?}");
            }
            let customer = id_of(&obj["customer"]).context("the checkout session has no customer")?;
            let mut changed = link_customer(
                tx,
                &tenant,
                &customer,
                str_of(&obj["customer_details"]["email"]),
                str_of(&obj["customer_details"]["name"]),
                now,
            )
            .await?;
            if let Some(sub) = pre.subscription {
                // The re-fetched object is current as of now: newer than any event created before it.
                let row = subscription_row(prices, &sub, &tenant, w.max(now), now)?;
                changed |= store::upsert_subscription(tx, &row).await?;
            }
            Ok(done(Some(tenant), changed))
        }
        "checkout.session.async_payment_failed" => {
            let tenant = obj["client_reference_id"].as_str().or_else(|| metadata_tenant(obj)).map(str::to_owned);
            Ok(Applied { tenant_id: tenant, changed: false, ignored: false, outcome: Outcome::Failure })
        }
        _ if t.starts_with("customer.subscription.") => {
            let (tenant, _) = tenant_of(tx, obj, "customer", now).await?;
            let row = subscription_row(prices, obj, &tenant, w, now)?;
            let changed = store::upsert_subscription(tx, &row).await?;
            Ok(done(Some(tenant), changed))
        }
        "invoice.upcoming" => {
            // A preview without an id: nothing to mirror.
            let customer = id_of(&obj["customer"]);
            let tenant = match customer {
                Some(c) => store::customer_in(tx, &c).await?.map(|c| c.tenant_id),
                None => None,
            };
            Ok(done(tenant, false))
        }
        _ if t.starts_with("invoice.") => {
            let (tenant, _) = tenant_of(tx, obj, "customer", now).await?;
            let row = invoice_row(obj, &tenant, w, now)?;
            let changed = store::upsert_invoice(tx, &row).await?;
            Ok(done(Some(tenant), changed))
        }
        "customer.created" | "customer.updated" | "customer.deleted" => {
            let id = str_of(&obj["id"]).context("customer without id")?;
            let Some(tenant) = resolve_tenant(tx, &id, metadata_tenant(obj), now).await? else {
                // A customer that is not one of ours (created by hand in the dashboard): nothing to mirror.
                return Ok(done(None, false));
            };
            let deleted = t == "customer.deleted" || obj["deleted"].as_bool() == Some(true);
            let changed =
                store::update_customer(tx, &id, obj["email"].as_str(), obj["name"].as_str(), deleted, w, now).await?;
            Ok(done(Some(tenant), changed))
        }
        _ => Ok(Applied { tenant_id: None, changed: false, ignored: true, outcome: Outcome::Info }),
    }
}

/// Outcome of [`process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Applied now (or stored as ignored).
    Done,
    /// Another processor holds it, or it was already processed: nothing done here.
    NotMine,
    /// Applying it failed again more than [`GIVE_UP_AFTER_MS`] after its receipt: stored `ignored` with its last
    /// error, audited (outcome failure), never retried.
    GivenUp,
}

/// Claim, apply and finish the stored event `id`. On failure the event is marked `failed` with the error and a
/// next attempt time, and the error is returned; unless it was first received more than [`GIVE_UP_AFTER_MS`]
/// ago: then it is given up ([`Processed::GivenUp`]).
pub async fn process(state: &AppState, id: &str, now: i64) -> anyhow::Result<Processed> {
    if !store::claim_event(&state.db, id, now, now + LEASE_MS).await? {
        return Ok(Processed::NotMine);
    }
    let result = process_claimed(state, id, now).await;
    match result {
        Ok(()) => Ok(Processed::Done),
        Err(e) => {
            let row = store::event(&state.db, id).await.ok().flatten();
            let attempts = row.as_ref().map_or(1, |r| r.attempts);
            let msg = truncate(&format!("{e:#}"), 1000);
            if let Some(row) = row.as_ref().filter(|r| now - r.received_at > GIVE_UP_AFTER_MS) {
                // Boxed: a rare path, kept out of the state of every future that awaits `process` (webhooks,
                // retries, the sync inside the scheduler's job future).
                if Box::pin(give_up(&state.db, row, &msg, now)).await? {
                    tracing::warn!(event_id = id, attempts, error = %msg,
                        "Stripe event given up: still failing 72 h after its receipt; no longer retried");
                    return Ok(Processed::GivenUp);
                }
            }
            let next = now + backoff_ms(attempts);
            tracing::warn!(event_id = id, attempts, error = %msg, "Stripe event processing failed; will retry");
            store::fail_event(&state.db, id, &msg, next).await?;
            Err(e)
        }
    }
}

/// Give up the claimed event `row` whose latest attempt failed with `error`: its status, its `last_error` (the
/// error, prefixed [`GIVEN_UP`]) and its audit row (zone stripe, or billing for an event recovered by the sync;
/// outcome failure) in one transaction. `false`: the lease was lost, nothing done.
async fn give_up(db: &Db, row: &EventRow, error: &str, now: i64) -> anyhow::Result<bool> {
    let hours = GIVE_UP_AFTER_MS / 3_600_000;
    let last_error = format!(
        "{GIVEN_UP}: still failing {hours} h after its receipt, past Stripe's redelivery window (not retried); \
         last error: {error}"
    );
    let mut tx = db.begin().await?;
    if !store::give_up_event(&mut tx, &row.stripe_event_id, &last_error, now).await? {
        return Ok(false); // rolled back when dropped
    }
    let zone = if row.source == "sync" { Zone::Billing } else { Zone::Stripe };
    let mut entry = Entry::new(zone, "event_given_up", "stripe_retry")
        .subject(&row.stripe_event_id)
        .outcome(Outcome::Failure)
        .details(json!({
            "type": row.event_type,
            "object_id": row.object_id,
            "source": row.source,
            "attempts": row.attempts,
            "received_at": row.received_at,
            "last_error": error,
        }));
    if let Some(t) = &row.tenant_id {
        entry = entry.tenant(t);
    }
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(true)
}

async fn process_claimed(state: &AppState, id: &str, now: i64) -> anyhow::Result<()> {
    let row = store::event(&state.db, id).await?.context("the claimed event disappeared")?;
    let payload: Value = serde_json::from_str(&row.payload).context("stored event payload is not JSON")?;
    let ev = Event::parse(&payload).map_err(|e| anyhow!(e))?;
    let pre = prefetch(state, &ev).await?;
    let mut tx = state.db.begin().await?;
    let applied = apply_in(&state.settings.stripe, &mut tx, &ev, pre, now).await?;
    if !store::finish_event(&mut tx, id, applied.status(), applied.tenant_id.as_deref(), now).await? {
        bail!("lost the processing lease of event {id}");
    }
    audit_applied(&mut tx, &ev, &row.source, &applied, now).await?;
    tx.commit().await?;
    Ok(())
}

/// The audit row of an applied event (none for an ignored one), in the transaction that applied it.
async fn audit_applied(tx: &mut Tx, ev: &Event, source: &str, applied: &Applied, now: i64) -> anyhow::Result<()> {
    if let Some(entry) = audit_entry(ev, source, applied) {
        audit::append(tx, &entry, now).await?;
    }
    Ok(())
}

fn audit_entry(ev: &Event, source: &str, applied: &Applied) -> Option<Entry> {
    if applied.ignored {
        return None;
    }
    let (zone, action) = if source == "sync" { (Zone::Billing, "sync") } else { (Zone::Stripe, "webhook_event") };
    let mut entry = Entry::new(zone, action, "stripe").subject(&ev.id).outcome(applied.outcome).details(json!({
        "type": ev.event_type,
        "object_id": ev.object_id(),
        "source": source,
        "applied": applied.changed,
    }));
    if let Some(t) = &applied.tenant_id {
        entry = entry.tenant(t);
    }
    Some(entry)
}

/// A new event, ready to be applied with others in one transaction ([`apply_batch`]): parsed, its row, its
/// network reads done, and the time it was received.
pub struct NewEvent {
    pub ev: Event,
    pub row: EventRow,
    pub pre: Prefetched,
    pub now: i64,
}

/// New events in one transaction (group commit, [`super::ingest`]): each one applied, stored as `processed` (or
/// `ignored`) and audited inside a savepoint of its own, one commit for all. One answer per event, in order:
/// `Some(status)` once committed; `None` when that event was not applied here (already stored — a redelivery,
/// the same event earlier in this batch, or a concurrent delivery that committed first — or applying it
/// failed, or the whole transaction failed): nothing of it remains, and its request takes the stored path
/// ([`process`]), which claims the stored event or stores it and records a failure for the retries. Either way
/// nothing is answered before a commit. A lone event needs no savepoint: the transaction is its savepoint.
pub async fn apply_batch(db: &Db, prices: &StripeSettings, batch: Vec<NewEvent>) -> Vec<Option<&'static str>> {
    let n = batch.len();
    match try_apply_batch(db, prices, batch).await {
        Ok(answers) => answers,
        Err(e) => {
            tracing::warn!(events = n, error = %e, "Stripe event batch failed; its events take the stored path");
            vec![None; n]
        }
    }
}

async fn try_apply_batch(
    db: &Db,
    prices: &StripeSettings,
    batch: Vec<NewEvent>,
) -> Result<Vec<Option<&'static str>>, sqlx::Error> {
    let savepoints = batch.len() > 1;
    let mut answers = Vec::with_capacity(batch.len());
    let mut audits = Vec::with_capacity(batch.len());
    let mut at = i64::MIN;
    let mut tx = db.begin().await?;
    for (i, item) in batch.into_iter().enumerate() {
        if savepoints {
            // One round trip: the previous event's savepoint (applied or rolled back) is released, this one's set.
            let sql = if i == 0 {
                "SAVEPOINT stripe_event"
            } else {
                "RELEASE SAVEPOINT stripe_event; SAVEPOINT stripe_event"
            };
            execute(&mut tx, sql).await?;
        }
        let received = item.now;
        match apply_stored(prices, &mut tx, item).await {
            Ok(Some((status, entry))) => {
                answers.push(Some(status));
                audits.extend(entry);
                at = at.max(received);
            }
            outcome => {
                if let Err(e) = outcome {
                    tracing::debug!(error = %format!("{e:#}"), "one-commit apply failed; taking the stored path");
                }
                if !savepoints {
                    return Ok(vec![None]); // the transaction is rolled back when dropped
                }
                execute(&mut tx, "ROLLBACK TO SAVEPOINT stripe_event").await?;
                answers.push(None);
            }
        }
    }
    // The audit rows of the applied events in one statement (timed at the batch's latest receipt), then one commit
    // (which releases the last savepoint). Should either fail, no event of the batch remains.
    audit::append_many(&mut tx, &audits, at).await?;
    tx.commit().await?;
    Ok(answers)
}

/// Apply `item` and store it as applied, in `tx`: its status and its audit row (to be appended in the same
/// transaction). `Ok(None)`: it was already stored (this attempt's writes must be rolled back by the caller).
async fn apply_stored(
    prices: &StripeSettings,
    tx: &mut Tx,
    item: NewEvent,
) -> anyhow::Result<Option<(&'static str, Option<Entry>)>> {
    let NewEvent { ev, row, pre, now } = item;
    let applied = apply_in(prices, tx, &ev, pre, now).await?;
    let mut stored = row;
    stored.processing_status = applied.status().to_owned();
    stored.tenant_id = applied.tenant_id.clone();
    stored.attempts = 1;
    stored.processed_at = Some(now);
    // A unique id: a concurrent delivery of the same event waits here for the other's commit, then finds it.
    if !store::insert_event_in(tx, &stored).await? {
        return Ok(None);
    }
    Ok(Some((applied.status(), audit_entry(&ev, &stored.source, &applied))))
}

async fn execute(tx: &mut Tx, sql: &'static str) -> Result<(), sqlx::Error> {
    // A `&str` without arguments: PostgreSQL's simple protocol, which takes several statements at once.
    use sqlx::Executor;
    on_tx!(tx, c => c.execute(sql).await.map(|r| r.rows_affected())).map(|_| ())
}

/// Exponential backoff with jitter: 30 s, 1 min, 2 min … capped at one hour.
pub fn backoff_ms(attempts: i64) -> i64 {
    let exp = 30_000i64.saturating_mul(1i64 << attempts.clamp(1, 8).saturating_sub(1)).min(3_600_000);
    exp + (rand::random::<u64>() % 5_000) as i64
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    pub attempted: u64,
    pub succeeded: u64,
    /// Failed again; retried later.
    pub failed: u64,
    /// Failed again past [`GIVE_UP_AFTER_MS`]: given up, never retried.
    pub given_up: u64,
}

/// Re-apply events that are pending, failed and due, or stuck past their lease (serve's loop and the sync); give
/// up those that fail again more than [`GIVE_UP_AFTER_MS`] after their receipt.
pub async fn retry_failed(state: &AppState, now: i64) -> anyhow::Result<RetryReport> {
    crate::db::scope::system("stripe-retry", retry_failed_now(state, now)).await
}

async fn retry_failed_now(state: &AppState, now: i64) -> anyhow::Result<RetryReport> {
    let mut report = RetryReport::default();
    for id in store::due_events(&state.db, now, 500).await? {
        match process(state, &id, now).await {
            Ok(Processed::Done) => {
                report.attempted += 1;
                report.succeeded += 1;
            }
            Ok(Processed::NotMine) => {}
            Ok(Processed::GivenUp) => {
                report.attempted += 1;
                report.given_up += 1;
            }
            Err(_) => {
                report.attempted += 1;
                report.failed += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    fn prices() -> StripeSettings {
        StripeSettings {
            secret_key: None,
            webhook_secrets: vec![],
            price_monthly: Some("p_m".into()),
            price_annual: Some("p_y".into()),
            price_addon_site_monthly: Some("a_m".into()),
            price_addon_site_annual: Some("a_y".into()),
            account_country: "CA".into(),
            trial_days: None,
            api_base: Url::parse("https://api.stripe.com").unwrap(),
        }
    }

    fn sub(status: &str, items: Value) -> Value {
        json!({"id": "sub_1", "customer": "cus_1", "status": status, "items": {"data": items},
               "current_period_end": 1_700_000_000, "cancel_at_period_end": true, "created": 1_600_000_000})
    }

    #[test]
    fn the_plan_and_the_add_on_quantity_come_from_the_configured_prices() {
        let cases = [
            // (items, interval, addon quantity, addon item)
            (
                json!([{"id": "si_b", "price": {"id": "p_m", "recurring": {"interval": "month"}}, "quantity": 1},
                    {"id": "si_a", "price": {"id": "a_m"}, "quantity": 4}]),
                Some("month"),
                4,
                Some("si_a"),
            ),
            (
                json!([{"id": "si_b", "price": {"id": "p_y", "recurring": {"interval": "year"}}, "quantity": 1}]),
                Some("year"),
                0,
                None,
            ),
            // API versions with plans only (localstripe): the plan's interval.
            (
                json!([{"id": "si_a", "plan": {"id": "a_m", "interval": "month"}, "quantity": 2}]),
                Some("month"),
                2,
                Some("si_a"),
            ),
            // An unknown price with a weekly interval: no plan interval, no add-on.
            (json!([{"id": "si_x", "price": {"id": "other", "recurring": {"interval": "week"}}}]), None, 0, None),
        ];
        for (items, interval, qty, addon_item) in cases {
            let row = subscription_row(&prices(), &sub("active", items.clone()), "acme", 5, 9).unwrap();
            assert_eq!(row.plan_interval.as_deref(), interval, "{items}");
            assert_eq!(row.addon_quantity, qty, "{items}");
            assert_eq!(row.addon_item_id.as_deref(), addon_item, "{items}");
            assert_eq!(
                (row.current_period_end, row.cancel_at_period_end, row.stripe_updated_at),
                (Some(1_700_000_000_000), true, 5)
            );
        }
    }

    #[test]
    fn past_due_starts_its_grace_at_the_watermark_and_unknown_statuses_are_errors() {
        let row = subscription_row(&prices(), &sub("past_due", json!([])), "acme", 77, 99).unwrap();
        assert_eq!(row.past_due_since, Some(77));
        assert!(subscription_row(&prices(), &sub("exploded", json!([])), "acme", 1, 1).is_err());
        assert!(subscription_row(&prices(), &json!({"id": "sub_1", "status": "active"}), "acme", 1, 1).is_err());
    }

    #[test]
    fn events_without_id_type_created_or_object_are_malformed() {
        let ok = json!({"id": "evt_1", "type": "invoice.paid", "created": 5, "data": {"object": {"id": "in_1"}}});
        let ev = Event::parse(&ok).unwrap();
        assert_eq!((ev.watermark(), ev.object_id().as_deref(), ev.is_handled()), (5_000, Some("in_1"), true));
        for field in ["id", "type", "created", "data"] {
            let mut bad = ok.clone();
            bad.as_object_mut().unwrap().remove(field);
            assert!(Event::parse(&bad).is_err(), "{field}");
        }
    }
}
