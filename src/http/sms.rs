//! SMS endpoints: tenant alerts, the operator's test SMS, Twilio's status callbacks.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::extract::{ApiJson, ReqId};
use super::twilio_webhook::TwilioForm;
use crate::auth::{Operator, TenantAdmin};
use crate::db::sms;
use crate::domain::sms_status::{aggregate, MessageStatus};
use crate::error::{ApiError, ApiResult};
use crate::sms::{alerts, status};
use crate::state::AppState;
use crate::tenancy::Actor;

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be visible ASCII characters")
        }),
    }
}

pub async fn create_alert(
    State(state): State<AppState>,
    admin: TenantAdmin,
    req: ReqId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<impl IntoResponse> {
    let actor = Actor::new(admin.actor(), req.0);
    alerts::create_alert(&state, &admin.tenant_id, body, idempotency_key(&headers)?, &actor).await
}

pub async fn get_alert(
    State(state): State<AppState>,
    admin: TenantAdmin,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let alert = sms::get_alert(&state.db, &admin.tenant_id, &id).await?.ok_or_else(|| ApiError::not_found("alert"))?;
    let messages = sms::alert_messages(&state.db, &admin.tenant_id, &alert.id).await?;
    let mut counts = serde_json::Map::new();
    let mut statuses = Vec::new();
    for m in &messages {
        let n = counts.entry(m.status.clone()).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
        match MessageStatus::parse(&m.status) {
            Some(status) if !statuses.contains(&status) => statuses.push(status),
            _ => {}
        }
    }
    // The aggregate and the last change, from the messages as read (one snapshot): never stale.
    let updated_at = messages.iter().map(|m| m.status_updated_at).fold(alert.updated_at, i64::max);
    Ok(Json(json!({
        "alert_id": alert.id,
        "kind": alert.kind,
        "ast_id": alert.ast_id,
        "status": aggregate(&statuses),
        "encoding": alert.encoding,
        "segments": alert.segments,
        "created_by": alert.created_by,
        "created_at": crate::time::to_rfc3339(alert.created_at),
        "updated_at": crate::time::to_rfc3339(updated_at),
        "counts": counts,
        "recipients": messages,
    })))
}

pub async fn send_sms(
    State(state): State<AppState>,
    _: Operator,
    req: ReqId,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<impl IntoResponse> {
    let actor = Actor::new("operator", req.0);
    let answer = alerts::send_test(&state, body, idempotency_key(&headers)?, &actor).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Twilio's delivery-status callback. 403 without effect unless correctly signed.
pub async fn status_callback(State(state): State<AppState>, form: TwilioForm) -> ApiResult<impl IntoResponse> {
    status::apply_callback(&state, &form.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
