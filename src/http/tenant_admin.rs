//! Tenant-administrator API: sites, workers, entitlements. The tenant always comes from the API key.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiJson, ApiQuery, ReqId};
use crate::auth::TenantAdmin;
use crate::db::{sites, workers};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::{self, Actor, NewSite, NewWorker, SiteChanges, WorkerChanges};

fn actor(admin: &TenantAdmin, req: ReqId) -> Actor {
    Actor::new(admin.actor(), req.0)
}

pub async fn entitlements(State(state): State<AppState>, admin: TenantAdmin) -> ApiResult<impl IntoResponse> {
    Ok(Json(tenancy::entitlements(&state, &admin.tenant_id).await?))
}

pub async fn create_site(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    ApiJson(input): ApiJson<NewSite>,
) -> ApiResult<impl IntoResponse> {
    let row = tenancy::create_site(&state, &admin.tenant_id, input, &actor(&admin, req)).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

pub async fn list_sites(State(state): State<AppState>, admin: TenantAdmin) -> ApiResult<impl IntoResponse> {
    let list = sites::list(&state.db, &admin.tenant_id).await?;
    let ent = tenancy::entitlements(&state, &admin.tenant_id).await?;
    Ok(Json(json!({ "sites": list, "max_sites": ent.max_sites, "sites_used": ent.sites_used })))
}

pub async fn get_site(
    State(state): State<AppState>,
    admin: TenantAdmin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let site = sites::get(&state.db, &admin.tenant_id, &id).await?.ok_or_else(|| ApiError::not_found("site"))?;
    Ok(Json(site))
}

pub async fn update_site(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<SiteChanges>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(tenancy::update_site(&state, &admin.tenant_id, &id, input, &actor(&admin, req)).await?))
}

pub async fn delete_site(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    tenancy::delete_site(&state, &admin.tenant_id, &id, &actor(&admin, req)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerQuery {
    site_id: Option<String>,
}

pub async fn create_worker(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    ApiJson(input): ApiJson<NewWorker>,
) -> ApiResult<impl IntoResponse> {
    let row = tenancy::create_worker(&state, &admin.tenant_id, input, &actor(&admin, req)).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

pub async fn list_workers(
    State(state): State<AppState>,
    admin: TenantAdmin,
    ApiQuery(q): ApiQuery<WorkerQuery>,
) -> ApiResult<impl IntoResponse> {
    let list = workers::list(&state.db, &admin.tenant_id, q.site_id.as_deref()).await?;
    Ok(Json(json!({ "workers": list })))
}

pub async fn get_worker(
    State(state): State<AppState>,
    admin: TenantAdmin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let w = workers::get(&state.db, &admin.tenant_id, &id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    Ok(Json(w))
}

pub async fn update_worker(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<WorkerChanges>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(tenancy::update_worker(&state, &admin.tenant_id, &id, input, &actor(&admin, req)).await?))
}

pub async fn delete_worker(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    tenancy::delete_worker(&state, &admin.tenant_id, &id, &actor(&admin, req)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn worker_consent(
    State(state): State<AppState>,
    admin: TenantAdmin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    workers::get(&state.db, &admin.tenant_id, &id).await?.ok_or_else(|| ApiError::not_found("worker"))?;
    Ok(Json(json!({ "events": workers::consent_history(&state.db, &admin.tenant_id, &id).await? })))
}

pub async fn record_consent(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<tenancy::ConsentRecord>,
) -> ApiResult<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(tenancy::record_paper_consent(&state, &admin.tenant_id, &id, input, &actor(&admin, req)).await?),
    ))
}

pub async fn start_verification(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let started = crate::verification::start(&state, &admin.tenant_id, &id, &actor(&admin, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(started)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeCheck {
    code: String,
}

pub async fn check_verification(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<CodeCheck>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(crate::verification::check(&state, &admin.tenant_id, &id, &input.code, &actor(&admin, req)).await?))
}
