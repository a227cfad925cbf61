//! Billing routes: tenant-admin checkout/sites/portal/subscription, the Stripe webhook, and the sync trigger.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::extract::{ApiJson, ReqId};
use crate::auth::{self, TenantAdmin};
use crate::billing::service::{self, CheckoutRequest, SitesRequest};
use crate::billing::{sync, webhook};
use crate::error::{ApiError, ApiResult};
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
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    Ok(Json(webhook::receive(&state, signature, &body).await?))
}

/// A caller of the job triggers: `Authorization: Bearer $CRON_SECRET` or the operator token. With neither
/// configured everything is refused.
pub struct JobCaller(pub &'static str);

impl FromRequestParts<AppState> for JobCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(token) = auth::bearer(parts) else {
            return Err(ApiError::unauthorized("send `Authorization: Bearer <CRON_SECRET>` or the operator token"));
        };
        if state.settings.cron_secret.as_ref().is_some_and(|s| auth::secret_eq(s.expose(), token)) {
            return Ok(JobCaller("cron"));
        }
        if auth::is_operator_token(state, token) {
            return Ok(JobCaller("operator"));
        }
        Err(ApiError::unauthorized("the token is not valid for job triggers"))
    }
}

/// `GET|POST /api/billing/sync`: run the sync now; 200 with the report, 500 when it was partial.
pub async fn run_sync(State(state): State<AppState>, caller: JobCaller) -> impl IntoResponse {
    tracing::info!(caller = caller.0, "billing sync triggered over HTTP");
    let report = sync::run(&state, state.now()).await;
    let status = if report.ok { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    (status, Json(report))
}
