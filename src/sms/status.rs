//! `POST /api/sms/status`: Twilio's delivery callbacks. Verified against `X-Twilio-Signature` (primary and
//! secondary token) over the URL rebuilt from `APP_URL`; stored in `sms_status_events` whatever happens next;
//! applied to the message by SID through the monotonic state machine. A callback for a SID the dispatcher has
//! not recorded yet stays unapplied and is applied when it does.

use axum::http::StatusCode;

use crate::db::sms;
use crate::domain::sms_status::{transition, MessageStatus};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// What became of a verified callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The message moved to this status.
    Moved(MessageStatus),
    /// Stale or repeated report: the message keeps its status.
    Unchanged,
    /// No message holds this SID yet: kept for later.
    Pending,
}

pub fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", message)
}

fn field<'a>(params: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| params.iter().find(|(k, _)| k == n)).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
}

/// Store and apply one verified status callback.
pub async fn apply_callback(state: &AppState, params: &[(String, String)]) -> ApiResult<Applied> {
    let sid = field(params, &["MessageSid", "SmsSid"])
        .filter(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| ApiError::bad_request("malformed_callback", "MessageSid is missing or not a Twilio SID"))?;
    let raw_status = field(params, &["MessageStatus", "SmsStatus"])
        .filter(|s| s.len() <= 32)
        .ok_or_else(|| ApiError::bad_request("malformed_callback", "MessageStatus is missing"))?
        .to_ascii_lowercase();
    let error_code = field(params, &["ErrorCode"]).filter(|c| c.len() <= 16);
    let now = state.now();
    let mut tx = state.db.begin().await?;
    sms::lock_sid(&mut tx, sid).await?;
    sms::insert_status_event(&mut tx, sid, &raw_status, error_code, now).await?;
    let Some(message) = sms::message_by_sid(&mut tx, sid).await? else {
        tx.commit().await?;
        tracing::info!(sid, status = raw_status, "status callback for a SID not recorded yet; kept");
        return Ok(Applied::Pending);
    };
    let current = MessageStatus::parse(&message.status).unwrap_or(MessageStatus::Sending);
    let next = MessageStatus::from_twilio(&raw_status).and_then(|s| transition(current, s));
    if let Some(next) = next {
        sms::set_status(&mut tx, &message.id, next.as_str(), error_code, now).await?;
        if let Some(alert) = &message.alert_id {
            sms::refresh_alert_status(&mut tx, alert, now).await?;
        }
    }
    sms::mark_events_applied(&mut tx, sid).await?;
    tx.commit().await?;
    if let Some(next) = next {
        crate::metrics::sms_outcome(&message.kind, next.as_str());
    }
    Ok(next.map_or(Applied::Unchanged, Applied::Moved))
}
