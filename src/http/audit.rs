//! Operator API: query the audit log with filters and paging (newest first).

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use chrono::DateTime;
use serde::Deserialize;
use serde_json::json;

use super::extract::ApiQuery;
use crate::audit::{self, Filter, Zone};
use crate::auth::Operator;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    zone: Option<String>,
    action: Option<String>,
    tenant_id: Option<String>,
    /// RFC 3339 lower bound (inclusive).
    from: Option<String>,
    /// RFC 3339 upper bound (exclusive).
    to: Option<String>,
    /// Paging cursor: `next_before` of the previous page.
    before: Option<i64>,
    limit: Option<i64>,
}

fn time(field: &str, v: Option<&str>) -> ApiResult<Option<i64>> {
    v.map(|s| {
        DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!("{field} must be an RFC 3339 time such as 2026-11-24T00:00:00Z"),
            )
        })
    })
    .transpose()
}

pub async fn list(
    State(state): State<AppState>,
    _: Operator,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<impl IntoResponse> {
    if let Some(z) = q.zone.as_deref() {
        if Zone::parse(z).is_none() {
            let names: Vec<&str> = Zone::ALL.iter().map(|z| z.as_str()).collect();
            return Err(ApiError::bad_request("invalid_query", format!("zone must be one of {}", names.join(", "))));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 500"));
    }
    let filter = Filter {
        zone: q.zone,
        action: q.action,
        tenant_id: q.tenant_id,
        from: time("from", q.from.as_deref())?,
        to: time("to", q.to.as_deref())?,
        before_id: q.before,
        limit,
    };
    let rows = audit::query(&state.db, &filter).await?;
    let next_before = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.id)).flatten();
    Ok(Json(json!({ "entries": rows, "next_before": next_before })))
}
