//! Tenant-administrator billing operations: checkout, site count, portal, and the subscription view.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::events::{self, subscription_row};
use super::stripe::{Form, StripeClient, StripeError};
use crate::audit::{self, Entry, Zone};
use crate::db::billing::{self as store, InvoiceRow};
use crate::db::{sites, tenants};
use crate::domain::billing::Access;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::{self, Actor};

/// Largest add-on quantity accepted in one request (a typo guard, not a business limit).
pub const MAX_ADDITIONAL_SITES: i64 = 500;

pub fn not_configured(what: &str) -> ApiError {
    ApiError::unavailable(
        "billing_not_configured",
        format!("billing is not configured on this server ({what} missing); the operator must set it"),
    )
}

impl From<StripeError> for ApiError {
    fn from(e: StripeError) -> Self {
        match e {
            StripeError::NotConfigured => not_configured("STRIPE_SECRET_KEY"),
            StripeError::Api { status, message, .. } if (400..500).contains(&status) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "stripe_error", format!("Stripe refused the request: {message}"))
            }
            StripeError::Api { .. } | StripeError::Unavailable(_) => {
                let mut err = ApiError::unavailable("stripe_unavailable", "Stripe is unavailable; retry shortly")
                    .with_retry_after(30);
                err.source = Some(e.into());
                err
            }
            StripeError::Decode(_) => {
                let mut err = ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "stripe_error",
                    "Stripe sent an unexpected response; nothing was changed here",
                );
                err.source = Some(e.into());
                err
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Monthly,
    Annual,
}

impl Plan {
    pub fn parse(s: &str) -> Option<Plan> {
        match s {
            "monthly" => Some(Plan::Monthly),
            "annual" => Some(Plan::Annual),
            _ => None,
        }
    }

    pub fn from_interval(i: &str) -> Option<Plan> {
        match i {
            "month" => Some(Plan::Monthly),
            "year" => Some(Plan::Annual),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Monthly => "monthly",
            Plan::Annual => "annual",
        }
    }
}

/// The configured prices of a plan: base and add-on of the same interval, or 503.
fn prices(state: &AppState, plan: Plan) -> ApiResult<(String, String)> {
    let s = &state.settings.stripe;
    let (base, addon, names) = match plan {
        Plan::Monthly => {
            (&s.price_monthly, &s.price_addon_site_monthly, "STRIPE_PRICE_MONTHLY / STRIPE_PRICE_ADDON_SITE_MONTHLY")
        }
        Plan::Annual => {
            (&s.price_annual, &s.price_addon_site_annual, "STRIPE_PRICE_ANNUAL / STRIPE_PRICE_ADDON_SITE_ANNUAL")
        }
    };
    match (base, addon) {
        (Some(b), Some(a)) => Ok((b.clone(), a.clone())),
        _ => Err(not_configured(names)),
    }
}

fn client(state: &AppState) -> ApiResult<StripeClient> {
    Ok(StripeClient::from_settings(&state.settings)?)
}

fn app_url(state: &AppState, path: &str) -> String {
    let mut u = state.settings.app_url.clone();
    u.set_path(path);
    u.set_query(None);
    u.to_string()
}

fn parse_sites(n: Option<i64>) -> ApiResult<i64> {
    let n = n.ok_or_else(|| ApiError::unprocessable("invalid_field", "additional_sites: required (0 or more)"))?;
    if !(0..=MAX_ADDITIONAL_SITES).contains(&n) {
        return Err(ApiError::unprocessable(
            "invalid_field",
            format!("additional_sites: must be between 0 and {MAX_ADDITIONAL_SITES}"),
        ));
    }
    Ok(n)
}

fn new_key(what: &str) -> String {
    format!("secur360-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The tenant's Stripe customer: from the mirror, else created with an idempotency key derived from the tenant
/// (so repeated or concurrent requests get the same customer from Stripe) and recorded through the UNIQUE
/// `customers.tenant_id` (so concurrent requests store one row and all use it).
pub async fn ensure_customer(state: &AppState, client: &StripeClient, tenant_id: &str) -> ApiResult<String> {
    if let Some(c) = store::customer_for_tenant(&state.db, tenant_id).await? {
        if c.deleted {
            return Err(ApiError::conflict(
                "stripe_customer_deleted",
                "this tenant's Stripe customer was deleted in Stripe; the operator must restore or re-link it",
            ));
        }
        return Ok(c.stripe_customer_id);
    }
    let tenant = crate::db::tenants::get(&state.db, tenant_id).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
    let form: Form = crate::form![
        ("name", &tenant.name),
        ("metadata[tenant_id]", tenant_id),
        ("preferred_locales[0]", if tenant.language == "en" { "en-CA" } else { "fr-CA" }),
        ("address[country]", &state.settings.stripe.account_country),
        ("address[state]", &tenant.province),
    ];
    let customer = client.create_customer(&form, &format!("secur360-customer-{tenant_id}")).await?;
    let id = customer["id"].as_str().ok_or_else(|| ApiError::from(StripeError::Decode("customer id".into())))?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let inserted = events::link_customer(&mut tx, tenant_id, id, None, Some(tenant.name.clone()), now).await;
    let stored = match inserted {
        Ok(true) => {
            let entry = Entry::new(Zone::Billing, "customer_create", "secur360")
                .tenant(tenant_id)
                .subject(id)
                .details(json!({ "stripe_customer_id": id }));
            audit::append(&mut tx, &entry, now).await?;
            id.to_owned()
        }
        // Someone else stored it first (the same customer, thanks to the idempotency key) — or a different one.
        _ => store::customer_for_tenant_in(&mut tx, tenant_id)
            .await?
            .map(|c| c.stripe_customer_id)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("customer {id} could not be recorded")))?,
    };
    tx.commit().await?;
    Ok(stored)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub plan: Option<String>,
    pub additional_sites: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct UrlResponse {
    pub url: String,
}

pub async fn checkout(
    state: &AppState,
    tenant_id: &str,
    input: CheckoutRequest,
    actor: &Actor,
) -> ApiResult<UrlResponse> {
    let plan = match input.plan.as_deref() {
        Some(p) => Plan::parse(p)
            .ok_or_else(|| ApiError::unprocessable("invalid_field", "plan: must be \"monthly\" or \"annual\""))?,
        None => return Err(ApiError::unprocessable("invalid_field", "plan: required (\"monthly\" or \"annual\")")),
    };
    let n = parse_sites(Some(input.additional_sites.unwrap_or(0)))?;
    let (base, addon) = prices(state, plan)?;
    let client = client(state)?;
    if let Some(sub) = store::current_subscription(&state.db, tenant_id).await? {
        match sub.status.as_str() {
            "active" | "trialing" | "past_due" => {
                return Err(ApiError::conflict(
                    "already_subscribed",
                    "this tenant already has a live subscription; change sites with PUT /api/billing/sites or use \
                     the portal",
                ))
            }
            // A second subscription would be billed beside the first, which still exists.
            status @ ("unpaid" | "incomplete" | "paused") => {
                return Err(ApiError::conflict(
                    "already_subscribed",
                    format!(
                        "this tenant's subscription is {status}: pay or resume it in the billing portal \
                         (POST /api/billing/portal) rather than starting a second one"
                    ),
                ))
            }
            _ => {}
        }
    }
    let customer = ensure_customer(state, &client, tenant_id).await?;
    // One checkout of this tenant at a time in this instance: a double submit (which reaches the same instance)
    // then finds the first one's session below instead of racing it.
    let _turn = state.checkouts.turn(tenant_id).await;
    if let Some(url) = reusable_session(state, &client, &customer, plan, n, tenant_id, actor).await? {
        return Ok(UrlResponse { url });
    }
    let mut form: Form = crate::form![
        ("mode", "subscription"),
        ("customer", &customer),
        ("client_reference_id", tenant_id),
        ("metadata[tenant_id]", tenant_id),
        ("metadata[plan]", plan.as_str()),
        ("metadata[additional_sites]", n),
        ("subscription_data[metadata][tenant_id]", tenant_id),
        ("line_items[0][price]", &base),
        ("line_items[0][quantity]", 1),
        ("automatic_tax[enabled]", "true"),
        ("customer_update[address]", "auto"),
        ("success_url", app_url(state, "/billing/success")),
        ("cancel_url", app_url(state, "/billing/cancel")),
    ];
    if n > 0 {
        form.extend(crate::form![("line_items[1][price]", &addon), ("line_items[1][quantity]", n)]);
    }
    if let Some(days) = state.settings.stripe.trial_days.filter(|d| *d > 0) {
        form.push(("subscription_data[trial_period_days]".into(), days.to_string()));
    }
    let session = client.create_checkout_session(&form, &new_key("checkout")).await?;
    let url = session["url"].as_str().ok_or_else(|| ApiError::from(StripeError::Decode("session url".into())))?;
    let expired = expire_older_sessions(&client, &customer, &session).await;
    let entry = actor
        .entry(Zone::Billing, "checkout_create")
        .tenant(tenant_id)
        .subject(session["id"].as_str().unwrap_or_default())
        .details(json!({ "plan": plan.as_str(), "additional_sites": n, "expired_sessions": expired }));
    audit::record(&state.db, &entry, state.now()).await?;
    Ok(UrlResponse { url: url.to_owned() })
}

/// Per-tenant turns for [`checkout`] in this instance.
#[derive(Default)]
pub struct CheckoutTurns(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl CheckoutTurns {
    async fn turn(&self, tenant_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(tenant_id.to_owned()).or_default().clone();
        lock.lock_owned().await
    }
}

/// A session stays reusable while it has at least this long left (Stripe's default lifetime is 24 h).
const REUSE_MARGIN_SECS: i64 = 30 * 60;

/// The URL of the customer's newest open session made for the same plan and add-on count, if it has time left:
/// the same request again (a double submit, a reload) continues that checkout instead of opening a second one.
/// A failure to list is logged and treated as none (a new session is then made, and older ones expired).
async fn reusable_session(
    state: &AppState,
    client: &StripeClient,
    customer: &str,
    plan: Plan,
    n: i64,
    tenant_id: &str,
    actor: &Actor,
) -> ApiResult<Option<String>> {
    let open = match client.open_checkout_sessions(customer).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the customer's open Checkout Sessions");
            return Ok(None);
        }
    };
    let now_secs = state.now().div_euclid(1000);
    let same = open
        .iter()
        .filter(|s| {
            s["metadata"]["plan"].as_str() == Some(plan.as_str())
                && s["metadata"]["additional_sites"].as_str() == Some(n.to_string().as_str())
                && s["expires_at"].as_i64().is_some_and(|at| at - now_secs > REUSE_MARGIN_SECS)
                && s["url"].is_string()
        })
        .max_by_key(|s| session_order(s));
    let Some(session) = same else { return Ok(None) };
    let entry = actor
        .entry(Zone::Billing, "checkout_reuse")
        .tenant(tenant_id)
        .subject(session["id"].as_str().unwrap_or_default())
        .details(json!({ "plan": plan.as_str(), "additional_sites": n }));
    audit::record(&state.db, &entry, state.now()).await?;
    Ok(session["url"].as_str().map(str::to_owned))
}

/// The order every request gives sessions: `created` (seconds), then id.
fn session_order(s: &Value) -> (i64, String) {
    (s["created"].as_i64().unwrap_or(0), s["id"].as_str().unwrap_or_default().to_owned())
}

/// A tenant has one Checkout Session open at a time: a double submit, or a try abandoned in another tab, would
/// otherwise leave two sessions that can both be paid, i.e. two subscriptions billed. After creating `newest`,
/// the customer's open sessions that come before it (by `created`, then id: every request orders them the same
/// way, so of two concurrent ones the later survives) are expired. Returns the ids expired. A failure here is
/// logged and leaves the older session open (the new one is valid and is returned): the webhook of a completed
/// second session still records its subscription, so nothing is lost, only the guard.
async fn expire_older_sessions(client: &StripeClient, customer: &str, newest: &Value) -> Vec<String> {
    let newest_key = session_order(newest);
    let open = match client.open_checkout_sessions(customer).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the customer's open Checkout Sessions; older ones stay open");
            return Vec::new();
        }
    };
    let mut expired = Vec::new();
    for older in open.iter().filter(|s| session_order(s) < newest_key) {
        let id = older["id"].as_str().unwrap_or_default();
        match client.expire_checkout_session(id).await {
            Ok(_) => expired.push(id.to_owned()),
            // Completed or expired meanwhile: nothing left to guard against for that one.
            Err(e) => tracing::warn!(session = id, error = %e, "could not expire an older Checkout Session"),
        }
    }
    expired
}

pub async fn portal(state: &AppState, tenant_id: &str, actor: &Actor) -> ApiResult<UrlResponse> {
    let client = client(state)?;
    let customer = ensure_customer(state, &client, tenant_id).await?;
    let form: Form = crate::form![("customer", &customer), ("return_url", app_url(state, "/billing"))];
    let session = client.create_portal_session(&form, &new_key("portal")).await?;
    let url = session["url"].as_str().ok_or_else(|| ApiError::from(StripeError::Decode("portal url".into())))?;
    let entry = actor.entry(Zone::Billing, "portal_session").tenant(tenant_id).subject(&customer);
    audit::record(&state.db, &entry, state.now()).await?;
    Ok(UrlResponse { url: url.to_owned() })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitesRequest {
    pub additional_sites: Option<i64>,
}

/// Set the add-on quantity of the tenant's live subscription (prorated): update the item, add it if absent,
/// delete it at 0. The mirror is updated from Stripe's answer.
///
/// Lowering is reserved first: under the tenant lock that site creation takes, the sites in use are checked and
/// the mirror's quantity lowered before Stripe is called (no lock is held during the call), so no site can be
/// created against the old count meanwhile; a lowering that read the subscription before another request changed
/// it finds the count changed (409; one that reads it after goes on from the new count). If Stripe refuses the
/// change, the old quantity is put back unless a Stripe event has updated the row since; if Stripe's answer is
/// unknown (unreachable, failing), the lower count stays: never more sites than may be paid for.
pub async fn change_sites(state: &AppState, tenant_id: &str, input: SitesRequest, actor: &Actor) -> ApiResult<Value> {
    let n = parse_sites(input.additional_sites)?;
    let client = client(state)?;
    let sub = store::current_subscription(&state.db, tenant_id)
        .await?
        .filter(|s| matches!(s.status.as_str(), "active" | "trialing" | "past_due"))
        .ok_or_else(|| {
            ApiError::conflict(
                "no_subscription",
                "this tenant has no live subscription; start one with POST /api/billing/checkout",
            )
        })?;
    let lowering = n < sub.addon_quantity;
    let mut tx = state.db.begin().await?;
    if !tenants::lock(&mut tx, tenant_id).await? {
        return Err(ApiError::not_found("tenant"));
    }
    let used = sites::count(&mut tx, tenant_id).await?;
    if 1 + n < used {
        return Err(ApiError::conflict(
            "sites_in_use",
            format!("{used} sites are in use; delete sites before lowering additional_sites below {}", used - 1),
        ));
    }
    let id = &sub.stripe_subscription_id;
    if lowering && !store::set_addon_quantity_if(&mut tx, id, sub.addon_quantity, n, sub.stripe_updated_at).await? {
        return Err(ApiError::conflict(
            "sites_changing",
            "the subscription changed while this request was read (another change of the site count?); retry",
        ));
    }
    tx.commit().await?;

    let changed = send_sites_change(state, &client, tenant_id, &sub, n).await;
    let row = match changed {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(json!({ "additional_sites": 0, "changed": false })),
        Err(Failed { error, maybe_applied }) => {
            // Put the count back only when Stripe certainly did not change it; otherwise the mirror keeps the lower
            // count (never more than is paid for) until Stripe's event, the daily sync or a retry of this request.
            if lowering && !maybe_applied {
                if let Err(restore) = restore_addon_quantity(state, &sub, n).await {
                    tracing::error!(tenant = tenant_id, error = %restore, "could not put the add-on quantity back");
                }
            } else if lowering {
                tracing::warn!(tenant = tenant_id, "Stripe's answer to a lowering is unknown; the lower count is kept");
            }
            return Err(error);
        }
    };
    let now = state.now();
    let mut tx = state.db.begin().await?;
    store::upsert_subscription(&mut tx, &row).await?;
    let entry = actor
        .entry(Zone::Billing, "sites_change")
        .tenant(tenant_id)
        .subject(&row.stripe_subscription_id)
        .details(json!({ "from": sub.addon_quantity, "to": row.addon_quantity }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    Ok(json!({ "additional_sites": row.addon_quantity, "changed": true }))
}

async fn restore_addon_quantity(
    state: &AppState,
    sub: &store::SubscriptionRow,
    reserved: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let id = &sub.stripe_subscription_id;
    store::set_addon_quantity_if(&mut tx, id, reserved, sub.addon_quantity, sub.stripe_updated_at).await?;
    tx.commit().await?;
    Ok(())
}

/// Why [`send_sites_change`] failed, and whether Stripe may have applied the change all the same (the update
/// was sent and not refused: Stripe unreachable or failing, or its answer unreadable).
struct Failed {
    error: ApiError,
    maybe_applied: bool,
}

impl<E: Into<ApiError>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed { error: e.into(), maybe_applied: false }
    }
}

/// Stripe's side of [`change_sites`]: the subscription as Stripe has it after the change, or `None` when there is
/// nothing to change (no add-on item, and 0 asked).
async fn send_sites_change(
    state: &AppState,
    client: &StripeClient,
    tenant_id: &str,
    sub: &store::SubscriptionRow,
    n: i64,
) -> Result<Option<store::SubscriptionRow>, Failed> {
    // Current items from Stripe, not the mirror: the item ids and prices must be exact.
    let live = client.retrieve_subscription(&sub.stripe_subscription_id).await?;
    let now = state.now();
    let current = subscription_row(&state.settings.stripe, &live, tenant_id, now, now)?;
    let plan = current.plan_interval.as_deref().and_then(Plan::from_interval).ok_or_else(|| {
        ApiError::conflict("unknown_plan", "the subscription's plan is not one of the configured prices")
    })?;
    let (_, addon_price) = prices(state, plan)?;
    let mut form: Form = crate::form![("proration_behavior", "create_prorations")];
    match (&current.addon_item_id, n) {
        (Some(item), 0) => form.extend(crate::form![("items[0][id]", item), ("items[0][deleted]", "true")]),
        (Some(item), n) => form.extend(crate::form![("items[0][id]", item), ("items[0][quantity]", n)]),
        (None, 0) => return Ok(None),
        (None, n) => form.extend(crate::form![("items[0][price]", &addon_price), ("items[0][quantity]", n)]),
    }
    let updated = match client.update_subscription(&sub.stripe_subscription_id, &form, &new_key("sites")).await {
        Ok(updated) => updated,
        Err(e) => {
            let refused = matches!(&e, StripeError::Api { status, .. } if (400..500).contains(status));
            return Err(Failed { error: e.into(), maybe_applied: !refused });
        }
    };
    let now = state.now();
    let row = subscription_row(&state.settings.stripe, &updated, tenant_id, now, now)
        .map_err(|e| Failed { error: e.into(), maybe_applied: true })?;
    Ok(Some(row))
}

#[derive(Debug, Serialize)]
pub struct InvoiceView {
    pub id: String,
    pub status: String,
    pub currency: String,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub tax: i64,
    pub total: i64,
    pub hosted_invoice_url: Option<String>,
    pub invoice_pdf: Option<String>,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created: i64,
}

impl From<InvoiceRow> for InvoiceView {
    fn from(r: InvoiceRow) -> Self {
        InvoiceView {
            id: r.stripe_invoice_id,
            status: r.status,
            currency: r.currency,
            amount_due: r.amount_due,
            amount_paid: r.amount_paid,
            tax: r.tax,
            total: r.total,
            hosted_invoice_url: r.hosted_invoice_url,
            invoice_pdf: r.invoice_pdf,
            created: r.stripe_created,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SubscriptionView {
    pub plan: Option<&'static str>,
    pub status: Option<String>,
    pub access: Access,
    pub max_sites: i64,
    pub sites_used: i64,
    pub additional_sites: i64,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub current_period_end: Option<i64>,
    pub cancel_at_period_end: bool,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub trial_end: Option<i64>,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub past_due_since: Option<i64>,
    /// While access is `grace`: when it becomes suspended.
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub grace_ends_at: Option<i64>,
    pub invoices: Vec<InvoiceView>,
}

/// The tenant's subscription and entitlements as the mirror has them (works without Stripe configured).
pub async fn view(state: &AppState, tenant_id: &str) -> ApiResult<SubscriptionView> {
    let ent = tenancy::entitlements(state, tenant_id).await?;
    let sub = store::current_subscription(&state.db, tenant_id).await?;
    let invoices = store::latest_invoices(&state.db, tenant_id, 10).await?;
    Ok(SubscriptionView {
        plan: sub.as_ref().and_then(|s| s.plan_interval.as_deref()).and_then(Plan::from_interval).map(Plan::as_str),
        status: sub.as_ref().map(|s| s.status.clone()),
        access: ent.access,
        max_sites: ent.max_sites,
        sites_used: ent.sites_used,
        additional_sites: sub.as_ref().map_or(0, |s| s.addon_quantity),
        current_period_end: sub.as_ref().and_then(|s| s.current_period_end),
        cancel_at_period_end: sub.as_ref().is_some_and(|s| s.cancel_at_period_end),
        trial_end: sub.as_ref().and_then(|s| s.trial_end),
        past_due_since: sub.as_ref().and_then(|s| s.past_due_since),
        grace_ends_at: ent.grace_ends_at,
        invoices: invoices.into_iter().map(InvoiceView::from).collect(),
    })
}
