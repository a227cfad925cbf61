//! Operator API: tenants and their API keys.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::extract::{ApiBytes, ApiJson, ReqId};
use crate::auth::Operator;
use crate::db::{api_keys, tenants};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::{self, Actor, NewApiKey, NewTenant, TenantChanges};

fn operator(req: ReqId) -> Actor {
    Actor::new("operator", req.0)
}

pub async fn create(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    ApiJson(input): ApiJson<NewTenant>,
) -> ApiResult<impl IntoResponse> {
    let row = tenancy::create_tenant(&state, input, &operator(req)).await?;
    Ok((StatusCode::CREATED, Json(row)))
}

pub async fn list(State(state): State<AppState>, _: Operator) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "tenants": tenants::list(&state.db).await? })))
}

pub async fn get(State(state): State<AppState>, _: Operator, Path(id): Path<String>) -> ApiResult<impl IntoResponse> {
    let tenant = tenants::get(&state.db, &id).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
    let entitlements = tenancy::entitlements(&state, &id).await?;
    Ok(Json(json!({ "tenant": tenant, "entitlements": entitlements })))
}

pub async fn update(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<TenantChanges>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(tenancy::update_tenant(&state, &id, input, &operator(req)).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    tenancy::delete_tenant(&state, &id, &operator(req)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_key(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    Path(id): Path<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<impl IntoResponse> {
    // The body is optional here: no body means the default label.
    let input: NewApiKey = if body.iter().all(u8::is_ascii_whitespace) {
        NewApiKey::default()
    } else {
        let input = serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ApiError::unprocessable("invalid_body", format!("the JSON body does not have the expected fields: {e}"))
            } else {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        })?;
        super::extract::refuse_nul(&body)?;
        input
    };
    let issued = tenancy::create_api_key(&state, &id, input, &operator(req)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

pub async fn list_keys(
    State(state): State<AppState>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    tenants::get(&state.db, &id).await?.ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(json!({ "api_keys": api_keys::list(&state.db, &id).await? })))
}

pub async fn revoke_key(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    tenancy::revoke_api_key(&state, &id, &key_id, &operator(req)).await?;
    Ok(StatusCode::NO_CONTENT)
}
