//! Billing routes: tenant-admin checkout/sites/portal/subscription, the Stripe webhook, and the sync trigger.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;

use super::extract::{ApiBytes, ApiJson, ReqId};
use crate::auth::TenantAdmin;
use crate::billing::service::{self, CheckoutRequest, SitesRequest};
use crate::billing::webhook;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tenancy::Actor;

fn actor(admin: &TenantAdmin, req: ReqId) -> Actor {
    Actor::new(admin.actor(), req.0)
}

pub async fn checkout(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    ApiJson(input): ApiJson<CheckoutRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(service::checkout(&state, &admin.tenant_id, input, &actor(&admin, req)).await?))
}

pub async fn sites(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    ApiJson(input): ApiJson<SitesRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(service::change_sites(&state, &admin.tenant_id, input, &actor(&admin, req)).await?))
}

pub async fn portal(State(state): State<AppState>, admin: TenantAdmin, req: ReqId) -> ApiResult<impl IntoResponse> {
    Ok(Json(service::portal(&state, &admin.tenant_id, &actor(&admin, req)).await?))
}

pub async fn subscription(State(state): State<AppState>, admin: TenantAdmin) -> ApiResult<impl IntoResponse> {
    Ok(Json(service::view(&state, &admin.tenant_id).await?))
}

/// `POST /api/webhooks/stripe`: the raw body, verified before it is parsed.
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<impl IntoResponse> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let result = webhook::receive(&state, signature, &body).await;
    crate::metrics::stripe_webhook(match &result {
        Ok(r) if r.duplicate => "duplicate",
        Ok(r) => r.status,
        Err(e) if e.status.is_client_error() => "refused",
        Err(_) => "failed",
    });
    Ok(Json(result?))
}
