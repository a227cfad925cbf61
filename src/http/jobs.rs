//! Job triggers (`GET|POST /api/sms/cleanup`, cron-compatible) and the operator's list of recent runs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::auth::{CronCaller, Operator};
use crate::error::{ApiError, ApiResult};
use crate::jobs::{self, Job, RunStatus, StartError, Trigger};
use crate::state::AppState;

/// Run `job` now. 200 when it succeeded; 409 while it is already running; 500 with the report when it failed
/// or only partly succeeded (never reported as success).
pub async fn trigger(state: &AppState, job: Job, actor: &str, trigger: Trigger) -> ApiResult<impl IntoResponse> {
    match jobs::run(state, job, trigger, None, actor).await {
        Ok(record) => {
            let status = match record.status {
                RunStatus::Succeeded => StatusCode::OK,
                RunStatus::Partial | RunStatus::Failed => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Ok((status, Json(json!({ "run": record }))))
        }
        Err(e @ StartError::AlreadyRunning { .. }) => Err(ApiError::conflict("job_running", e.to_string())),
        Err(e @ StartError::OccurrenceTaken { .. }) => Err(ApiError::conflict("job_running", e.to_string())),
        Err(StartError::Db(e)) => Err(e.into()),
    }
}

pub async fn billing_sync(State(state): State<AppState>, caller: CronCaller) -> ApiResult<impl IntoResponse> {
    trigger(&state, Job::BillingSync, caller.actor, Trigger::Http).await
}

pub async fn sms_cleanup(State(state): State<AppState>, caller: CronCaller) -> ApiResult<impl IntoResponse> {
    trigger(&state, Job::SmsCleanup, caller.actor, Trigger::Http).await
}

/// `GET /api/system/status`: 200 when healthy or warning, 503 when critical; the body always has every check.
pub async fn system_status(State(state): State<AppState>, _: Operator) -> impl IntoResponse {
    let report = crate::status::report(&state).await;
    let code =
        if report.status == crate::status::Level::Critical { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, Json(report))
}

pub async fn list_runs(State(state): State<AppState>, _: Operator) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "runs": jobs::recent_runs(&state.db, 50).await? })))
}
