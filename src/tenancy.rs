//! Tenants, API keys, sites and workers: the service functions behind the JSON API and the CLI.
//! Each change and its audit row commit in one transaction; bad input is refused before anything is written.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use crate::audit::{self, Entry, Zone};
use crate::db::{self, api_keys, sites, subscriptions, tenants, workers, Tx};
use crate::domain::billing::{self, Access};
use crate::domain::ids::new_id;
use crate::domain::phone::Phone;
use crate::domain::tenant::{parse_name, parse_province, Language, TenantId};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Who is acting, for audit rows and the consent ledger.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn new(name: impl Into<String>, request_id: Option<String>) -> Self {
        Actor { name: name.into(), request_id }
    }

    /// An audit entry of this actor (name and request id).
    pub(crate) fn entry(&self, zone: Zone, action: &'static str) -> Entry {
        Entry::new(zone, action, self.name.clone()).request_id(self.request_id.clone())
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH bodies.
pub fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_field", format!("{field}: {message}"))
}

fn language(field: &str, s: Option<&str>) -> ApiResult<Option<Language>> {
    s.map(|s| {
        Language::parse(s).ok_or_else(|| invalid(field, format!("{s:?} is not a language; use \"fr\" or \"en\"")))
    })
    .transpose()
}

fn phone(field: &str, s: &str) -> ApiResult<Phone> {
    Phone::parse(s).map_err(|e| ApiError::unprocessable("invalid_phone", format!("{field}: {e}")))
}

// ---------------------------------------------------------------------------------------------------------
// Tenants and keys (operator)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub id: String,
    pub name: String,
    pub province: Option<String>,
    pub language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub province: Option<String>,
    pub language: Option<String>,
}

pub async fn create_tenant(state: &AppState, input: NewTenant, actor: &Actor) -> ApiResult<tenants::TenantRow> {
    let id = TenantId::parse(input.id.trim()).map_err(|e| invalid("id", e))?;
    let name = parse_name("name", &input.name).map_err(|e| invalid("name", e))?;
    let province = parse_province(input.province.as_deref().unwrap_or("QC")).map_err(|e| invalid("province", e))?;
    let language = language("language", input.language.as_deref())?.unwrap_or_default();
    let now = state.now();
    let row = tenants::TenantRow {
        id: id.as_str().to_owned(),
        name,
        province,
        language: language.as_str().to_owned(),
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    if let Err(e) = tenants::insert(&mut tx, &row).await {
        return Err(if db::is_unique_violation(&e) {
            ApiError::conflict(
                "tenant_exists",
                format!("a tenant with id {:?} already exists; choose another id", row.id),
            )
        } else {
            e.into()
        });
    }
    let entry = actor.entry(Zone::Admin, "tenant_create").tenant(&row.id).subject(&row.id);
    audit::append(&mut tx, &entry.details(json!({ "name": row.name, "province": row.province })), now).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn update_tenant(
    state: &AppState,
    id: &str,
    input: TenantChanges,
    actor: &Actor,
) -> ApiResult<tenants::TenantRow> {
    let name = input.name.as_deref().map(|n| parse_name("name", n)).transpose().map_err(|e| invalid("name", e))?;
    let province = input.province.as_deref().map(parse_province).transpose().map_err(|e| invalid("province", e))?;
    let language = language("language", input.language.as_deref())?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    let row = tenants::update(&mut tx, id, name.as_deref(), province.as_deref(), language.map(Language::as_str), now)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let changed: Vec<&str> =
        [("name", name.is_some()), ("province", province.is_some()), ("language", language.is_some())]
            .into_iter()
            .filter_map(|(f, c)| c.then_some(f))
            .collect();
    audit::append(
        &mut tx,
        &actor.entry(Zone::Admin, "tenant_update").tenant(id).subject(id).details(json!({ "changed": changed })),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn delete_tenant(state: &AppState, id: &str, actor: &Actor) -> ApiResult<()> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !tenants::lock(&mut tx, id).await? {
        return Err(ApiError::not_found("tenant"));
    }
    if tenants::has_billing(&mut tx, id).await? {
        return Err(ApiError::conflict(
            "tenant_has_billing",
            "this tenant has a Stripe customer or subscription; cancel and settle billing before deleting it",
        ));
    }
    tenants::delete(&mut tx, id).await?;
    audit::append(&mut tx, &actor.entry(Zone::Admin, "tenant_delete").tenant(id).subject(id), now).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub label: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct IssuedKey {
    #[serde(flatten)]
    pub row: api_keys::ApiKeyRow,
    /// The key itself: shown once, never stored.
    pub key: String,
}

pub async fn create_api_key(
    state: &AppState,
    tenant_id: &str,
    input: NewApiKey,
    actor: &Actor,
) -> ApiResult<IssuedKey> {
    let label = match input.label.as_deref() {
        Some(l) => parse_name("label", l).map_err(|e| invalid("label", e))?,
        None => "default".to_owned(),
    };
    let now = state.now();
    let issued = crate::auth::issue_key();
    let row = api_keys::ApiKeyRow {
        id: issued.id,
        tenant_id: tenant_id.to_owned(),
        label,
        secret_hash: issued.secret_hash,
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    let mut tx = state.db.begin().await?;
    if !tenants::lock(&mut tx, tenant_id).await? {
        return Err(ApiError::not_found("tenant"));
    }
    api_keys::insert(&mut tx, &row).await?;
    let entry = actor.entry(Zone::Admin, "api_key_create").tenant(tenant_id).subject(&row.id);
    audit::append(&mut tx, &entry.details(json!({ "label": row.label })), now).await?;
    tx.commit().await?;
    Ok(IssuedKey { row, key: issued.key })
}

pub async fn revoke_api_key(state: &AppState, tenant_id: &str, key_id: &str, actor: &Actor) -> ApiResult<()> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !api_keys::revoke(&mut tx, tenant_id, key_id, now).await? {
        return Err(ApiError::not_found("active API key"));
    }
    audit::append(&mut tx, &actor.entry(Zone::Admin, "api_key_revoke").tenant(tenant_id).subject(key_id), now).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Entitlements

#[derive(Debug, Clone, Serialize)]
pub struct Entitlements {
    pub access: Access,
    pub subscription_status: Option<String>,
    /// While access is `grace` (past due): when it becomes suspended, for the tenant's banner.
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub grace_ends_at: Option<i64>,
    pub max_sites: i64,
    pub sites_used: i64,
}

fn grace_ms(state: &AppState) -> i64 {
    i64::from(state.settings.past_due_grace_days) * 86_400_000
}

/// The tenant's access now (SPEC §2), from the subscription mirror, and the subscription it was derived from.
async fn access_in(
    state: &AppState,
    tx: &mut Tx,
    tenant_id: &str,
) -> ApiResult<(Access, Option<subscriptions::CurrentSubscription>)> {
    let sub = subscriptions::current(tx, tenant_id).await?;
    let access = billing::access(
        sub.as_ref().map(|s| s.status.as_str()),
        sub.as_ref().and_then(|s| s.past_due_since),
        state.now(),
        grace_ms(state),
    );
    Ok((access, sub))
}

/// SPEC §2: a suspended tenant (no subscription, or one that is `unpaid`, `canceled`, `incomplete…`, `paused`,
/// or past due beyond the grace period) is read-only: nothing is created, changed or sent for it until billing
/// is restored. Refused with 402 naming the subscription's state and the way out. Billing (checkout, portal, the
/// add-on count), reads, deleting sites and workers and withdrawing a worker's consent stay open: what is there
/// can always be removed (the add-on can be lowered to the sites kept), and a person's data and choice honoured.
pub async fn ensure_writable(state: &AppState, tx: &mut Tx, tenant_id: &str) -> ApiResult<()> {
    match access_in(state, tx, tenant_id).await? {
        (Access::Suspended, sub) => Err(suspended(sub.as_ref().map(|s| s.status.as_str()))),
        _ => Ok(()),
    }
}

/// [`ensure_writable`] in a transaction of its own, for a change that checks other things before it writes.
pub async fn ensure_writable_now(state: &AppState, tenant_id: &str) -> ApiResult<()> {
    let mut tx = state.db.begin().await?;
    ensure_writable(state, &mut tx, tenant_id).await?;
    tx.commit().await?;
    Ok(())
}

fn suspended(status: Option<&str>) -> ApiError {
    let checkout = "start a subscription with POST /api/billing/checkout";
    let portal = "POST /api/billing/portal";
    let pay = format!("pay the open invoice or update the payment method in the billing portal ({portal})");
    let (why, way_out) = match status {
        None => ("has no subscription".to_owned(), checkout.to_owned()),
        Some("past_due") => ("has a subscription past due beyond its grace period".to_owned(), pay),
        Some("unpaid") => ("has an unpaid subscription".to_owned(), pay),
        Some("incomplete") => (
            "has a subscription whose first payment is not complete".to_owned(),
            format!("complete the payment in the billing portal ({portal}), or once it expires {checkout}"),
        ),
        Some("paused") => {
            ("has a paused subscription".to_owned(), format!("resume it in the billing portal ({portal})"))
        }
        Some(s) => (format!("has a subscription that is {s}"), checkout.to_owned()),
    };
    ApiError::new(
        axum::http::StatusCode::PAYMENT_REQUIRED,
        "tenant_suspended",
        format!(
            "this tenant {why}, so it is read-only: nothing can be created, changed or sent until billing is \
             restored; {way_out}. Reading, deleting sites and workers and withdrawing consent stay allowed"
        ),
    )
}

pub async fn entitlements_in(state: &AppState, tx: &mut Tx, tenant_id: &str) -> ApiResult<Entitlements> {
    let (access, sub) = access_in(state, tx, tenant_id).await?;
    let grace_ends_at = match access {
        Access::Grace => sub.as_ref().and_then(|s| s.past_due_since).map(|since| since + grace_ms(state)),
        _ => None,
    };
    Ok(Entitlements {
        grace_ends_at,
        access,
        max_sites: billing::max_sites(access, sub.as_ref().map_or(0, |s| s.addon_quantity)),
        subscription_status: sub.map(|s| s.status),
        sites_used: sites::count(tx, tenant_id).await?,
    })
}

pub async fn entitlements(state: &AppState, tenant_id: &str) -> ApiResult<Entitlements> {
    // A read, but through a transaction so the subscription and the site count are consistent.
    let mut tx = state.db.begin().await?;
    let e = entitlements_in(state, &mut tx, tenant_id).await?;
    tx.commit().await?;
    Ok(e)
}

// ---------------------------------------------------------------------------------------------------------
// Sites (tenant admin)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    pub name: String,
    pub address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteChanges {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub address: Option<Option<String>>,
}

fn parse_address(a: Option<&str>) -> ApiResult<Option<String>> {
    match a.map(str::trim).filter(|a| !a.is_empty()) {
        None => Ok(None),
        Some(a) if a.chars().count() > 500 => Err(invalid("address", "must be at most 500 characters")),
        Some(a) => Ok(Some(a.to_owned())),
    }
}

fn site_name_taken(name: &str) -> ApiError {
    ApiError::conflict(
        "site_exists",
        format!("a site named {name:?} already exists in this tenant; choose another name"),
    )
}

pub async fn create_site(
    state: &AppState,
    tenant_id: &str,
    input: NewSite,
    actor: &Actor,
) -> ApiResult<sites::SiteRow> {
    let name = parse_name("name", &input.name).map_err(|e| invalid("name", e))?;
    let address = parse_address(input.address.as_deref())?;
    let now = state.now();
    let row = sites::SiteRow {
        id: new_id("site"),
        tenant_id: tenant_id.to_owned(),
        name,
        address,
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    // The tenant lock makes the count-then-insert below safe against concurrent creations.
    if !tenants::lock(&mut tx, tenant_id).await? {
        return Err(ApiError::not_found("tenant"));
    }
    let ent = entitlements_in(state, &mut tx, tenant_id).await?;
    if ent.access == Access::Suspended {
        return Err(suspended(ent.subscription_status.as_deref()));
    }
    if ent.sites_used >= ent.max_sites {
        return Err(ApiError::new(
            axum::http::StatusCode::PAYMENT_REQUIRED,
            "site_limit_reached",
            format!(
                "your subscription allows {} site(s) and {} are in use; add additional-site add-ons to your \
                 subscription (one per extra site) or delete a site first",
                ent.max_sites, ent.sites_used
            ),
        ));
    }
    if let Err(e) = sites::insert(&mut tx, &row).await {
        return Err(if db::is_unique_violation(&e) { site_name_taken(&row.name) } else { e.into() });
    }
    let entry = actor.entry(Zone::Platform, "site_create").tenant(tenant_id).subject(&row.id);
    audit::append(&mut tx, &entry.details(json!({ "name": row.name })), now).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn update_site(
    state: &AppState,
    tenant_id: &str,
    id: &str,
    input: SiteChanges,
    actor: &Actor,
) -> ApiResult<sites::SiteRow> {
    let name = input.name.as_deref().map(|n| parse_name("name", n)).transpose().map_err(|e| invalid("name", e))?;
    let address = match &input.address {
        None => None,
        Some(a) => Some(parse_address(a.as_deref())?),
    };
    let now = state.now();
    let mut tx = state.db.begin().await?;
    ensure_writable(state, &mut tx, tenant_id).await?;
    let updated =
        sites::update(&mut tx, tenant_id, id, name.as_deref(), address.as_ref().map(|a| a.as_deref()), now).await;
    let row = match updated {
        Err(e) if db::is_unique_violation(&e) => return Err(site_name_taken(name.as_deref().unwrap_or_default())),
        other => other?.ok_or_else(|| ApiError::not_found("site"))?,
    };
    let changed: Vec<&str> = [("name", name.is_some()), ("address", address.is_some())]
        .into_iter()
        .filter_map(|(f, c)| c.then_some(f))
        .collect();
    let entry = actor.entry(Zone::Platform, "site_update").tenant(tenant_id).subject(id);
    audit::append(&mut tx, &entry.details(json!({ "changed": changed })), now).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn delete_site(state: &AppState, tenant_id: &str, id: &str, actor: &Actor) -> ApiResult<()> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !sites::delete(&mut tx, tenant_id, id).await? {
        return Err(ApiError::not_found("site"));
    }
    audit::append(&mut tx, &actor.entry(Zone::Platform, "site_delete").tenant(tenant_id).subject(id), now).await?;
    tx.commit().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Workers (tenant admin)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWorker {
    pub name: String,
    pub phone: String,
    pub language: Option<String>,
    pub site_id: Option<String>,
    /// Consent to receive SMS safety alerts, as given at registration.
    #[serde(default)]
    pub sms_consent: bool,
    /// How consent was obtained (form number, date…); recorded in the consent ledger.
    pub consent_evidence: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerChanges {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub language: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub site_id: Option<Option<String>>,
    pub sms_consent: Option<bool>,
    pub consent_evidence: Option<String>,
}

fn parse_evidence(e: Option<&str>, default: impl FnOnce() -> String) -> ApiResult<String> {
    match e.map(str::trim).filter(|e| !e.is_empty()) {
        None => Ok(default()),
        Some(e) if e.chars().count() > 1000 => Err(invalid("consent_evidence", "must be at most 1000 characters")),
        Some(e) => Ok(e.to_owned()),
    }
}

fn phone_taken() -> ApiError {
    ApiError::conflict("phone_exists", "another worker of this tenant already has this phone number")
}

async fn check_site(tx: &mut Tx, tenant_id: &str, site_id: Option<&str>) -> ApiResult<()> {
    match site_id {
        Some(s) if !sites::exists(tx, tenant_id, s).await? => {
            Err(invalid("site_id", format!("no site {s:?} in this tenant; list sites with GET /api/sites")))
        }
        _ => Ok(()),
    }
}

pub async fn create_worker(
    state: &AppState,
    tenant_id: &str,
    input: NewWorker,
    actor: &Actor,
) -> ApiResult<workers::WorkerRow> {
    let name = parse_name("name", &input.name).map_err(|e| invalid("name", e))?;
    let phone = phone("phone", &input.phone)?;
    let language = language("language", input.language.as_deref())?.unwrap_or_default();
    let evidence = parse_evidence(input.consent_evidence.as_deref(), || format!("registered by {}", actor.name))?;
    let now = state.now();
    let row = workers::WorkerRow {
        id: new_id("wrk"),
        tenant_id: tenant_id.to_owned(),
        site_id: input.site_id.map(|s| s.trim().to_owned()),
        name,
        phone: phone.as_str().to_owned(),
        language: language.as_str().to_owned(),
        phone_verified: false,
        phone_verified_at: None,
        sms_consent: input.sms_consent,
        sms_consent_at: input.sms_consent.then_some(now),
        sms_consent_source: input.sms_consent.then(|| "worker_registration".to_owned()),
        created_at: now,
        updated_at: now,
    };
    let mut tx = state.db.begin().await?;
    ensure_writable(state, &mut tx, tenant_id).await?;
    check_site(&mut tx, tenant_id, row.site_id.as_deref()).await?;
    if let Err(e) = workers::insert(&mut tx, &row).await {
        return Err(if db::is_unique_violation(&e) { phone_taken() } else { e.into() });
    }
    if input.sms_consent {
        let ev = workers::ConsentEvent {
            tenant_id: Some(tenant_id),
            worker_id: Some(&row.id),
            phone: &row.phone,
            old_consent: None,
            new_consent: true,
            source: "worker_registration",
            evidence: &evidence,
            actor: &actor.name,
            at: now,
        };
        workers::insert_consent_event(&mut tx, &ev).await?;
    }
    let entry = actor.entry(Zone::Platform, "worker_create").tenant(tenant_id).subject(&row.id);
    let details = json!({ "phone": phone.masked(), "sms_consent": row.sms_consent, "site_id": row.site_id });
    audit::append(&mut tx, &entry.details(details), now).await?;
    tx.commit().await?;
    Ok(row)
}

pub async fn update_worker(
    state: &AppState,
    tenant_id: &str,
    id: &str,
    input: WorkerChanges,
    actor: &Actor,
) -> ApiResult<workers::WorkerRow> {
    let name = input.name.as_deref().map(|n| parse_name("name", n)).transpose().map_err(|e| invalid("name", e))?;
    let phone = input.phone.as_deref().map(|p| phone("phone", p)).transpose()?;
    let language = language("language", input.language.as_deref())?;
    let evidence = parse_evidence(input.consent_evidence.as_deref(), || format!("changed by {}", actor.name))?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    // Withdrawing consent (and nothing else) stays allowed for a suspended tenant.
    let only_withdrawal = input.sms_consent == Some(false)
        && name.is_none()
        && phone.is_none()
        && language.is_none()
        && input.site_id.is_none();
    if !only_withdrawal {
        ensure_writable(state, &mut tx, tenant_id).await?;
    }
    let mut w = workers::get_in_tx(&mut tx, tenant_id, id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    let mut changed = Vec::new();
    if let Some(name) = name {
        w.name = name;
        changed.push("name");
    }
    let mut phone_changed = false;
    if let Some(p) = &phone {
        if p.as_str() != w.phone {
            // A new number has not been verified.
            w.phone = p.as_str().to_owned();
            w.phone_verified = false;
            w.phone_verified_at = None;
            changed.push("phone");
            phone_changed = true;
        }
    }
    if let Some(l) = language {
        w.language = l.as_str().to_owned();
        changed.push("language");
    }
    if let Some(site) = &input.site_id {
        let site = site.as_deref().map(str::trim);
        check_site(&mut tx, tenant_id, site).await?;
        w.site_id = site.map(str::to_owned);
        changed.push("site_id");
    }
    // Consent was given for the old number: a new number needs its own, unless this request gives it.
    let evidence = if phone_changed && input.sms_consent.is_none() {
        "phone number changed: consent must be given again for the new number".to_owned()
    } else {
        evidence
    };
    let consent_change =
        input.sms_consent.or((phone_changed && w.sms_consent).then_some(false)).filter(|c| *c != w.sms_consent);
    if let Some(c) = consent_change {
        let ev = workers::ConsentEvent {
            tenant_id: Some(tenant_id),
            worker_id: Some(id),
            phone: &w.phone,
            old_consent: Some(w.sms_consent),
            new_consent: c,
            source: "admin_api",
            evidence: &evidence,
            actor: &actor.name,
            at: now,
        };
        workers::insert_consent_event(&mut tx, &ev).await?;
        w.sms_consent = c;
        w.sms_consent_at = Some(now);
        w.sms_consent_source = Some("admin_api".to_owned());
        changed.push("sms_consent");
    }
    w.updated_at = now;
    if let Err(e) = workers::save(&mut tx, &w).await {
        return Err(if db::is_unique_violation(&e) { phone_taken() } else { e.into() });
    }
    let entry = actor.entry(Zone::Platform, "worker_update").tenant(tenant_id).subject(id);
    audit::append(&mut tx, &entry.details(json!({ "changed": changed })), now).await?;
    if let Some(c) = consent_change {
        let entry = actor.entry(Zone::Sms, "consent_change").tenant(tenant_id).subject(id);
        let details = json!({ "new_consent": c, "source": "admin_api", "phone": Phone::mask_stored(&w.phone) });
        audit::append(&mut tx, &entry.details(details), now).await?;
    }
    tx.commit().await?;
    Ok(w)
}

pub async fn delete_worker(state: &AppState, tenant_id: &str, id: &str, actor: &Actor) -> ApiResult<()> {
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if !workers::delete(&mut tx, tenant_id, id).await? {
        return Err(ApiError::not_found("worker"));
    }
    audit::append(&mut tx, &actor.entry(Zone::Platform, "worker_delete").tenant(tenant_id).subject(id), now).await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    pub consent: bool,
    /// What proves it (e.g. "formulaire papier signé le 2026-11-20, classeur RH"); required.
    pub evidence: String,
}

/// Record consent given or withdrawn outside the app (on paper): ledger row with source `paper`.
pub async fn record_paper_consent(
    state: &AppState,
    tenant_id: &str,
    id: &str,
    input: ConsentRecord,
    actor: &Actor,
) -> ApiResult<workers::WorkerRow> {
    let evidence = input.evidence.trim();
    if evidence.is_empty() {
        return Err(invalid("evidence", "describe the paper evidence (form, date, where it is filed)"));
    }
    let evidence = parse_evidence(Some(evidence), String::new)?;
    let now = state.now();
    let mut tx = state.db.begin().await?;
    if input.consent {
        // Withdrawing consent stays allowed for a suspended tenant; granting it is a change.
        ensure_writable(state, &mut tx, tenant_id).await?;
    }
    let mut w = workers::get_in_tx(&mut tx, tenant_id, id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    let ev = workers::ConsentEvent {
        tenant_id: Some(tenant_id),
        worker_id: Some(id),
        phone: &w.phone,
        old_consent: Some(w.sms_consent),
        new_consent: input.consent,
        source: "paper",
        evidence: &evidence,
        actor: &actor.name,
        at: now,
    };
    workers::insert_consent_event(&mut tx, &ev).await?;
    w.sms_consent = input.consent;
    w.sms_consent_at = Some(now);
    w.sms_consent_source = Some("paper".to_owned());
    w.updated_at = now;
    workers::save(&mut tx, &w).await?;
    let entry = actor.entry(Zone::Sms, "consent_change").tenant(tenant_id).subject(id);
    let details = json!({ "new_consent": input.consent, "source": "paper", "phone": Phone::mask_stored(&w.phone) });
    audit::append(&mut tx, &entry.details(details), now).await?;
    tx.commit().await?;
    Ok(w)
}
