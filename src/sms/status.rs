//! `POST /api/sms/status`: Twilio's delivery callbacks. Verified against `X-Twilio-Signature` (primary and
//! secondary token) over the URL rebuilt from `APP_URL`; stored in `sms_status_events` whatever happens next;
//! applied to the message by SID through the monotonic state machine. A callback for a SID the dispatcher has
//! not recorded yet stays unapplied and is applied when it does.
//!
//! Callbacks of concurrent requests are applied together, in one transaction per batch ([`apply_batch`]), by
//! this instance's ingest task (`sms::ingest`: group commit); each request is answered once its batch is
//! committed. A batch that fails is applied again one callback at a time ([`apply_one`]), so one bad callback
//! fails only its own request.

use std::collections::HashMap;

use axum::http::StatusCode;

use crate::db::sms_status::{NewEvent, StatusUpdate};
use crate::db::{sms, sms_status, Db, Tx};
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

/// A verified, well-formed status callback, stamped with the time it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callback {
    pub sid: String,
    /// Twilio's `MessageStatus`, lowercased.
    pub status: String,
    pub error_code: Option<String>,
    pub received_at: i64,
}

impl Callback {
    /// The callback in a verified form, or a 400 naming what is missing.
    pub fn parse(params: &[(String, String)], received_at: i64) -> ApiResult<Callback> {
        let sid = field(params, &["MessageSid", "SmsSid"])
            .filter(|s| s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| ApiError::bad_request("malformed_callback", "MessageSid is missing or not a Twilio SID"))?;
        let status = field(params, &["MessageStatus", "SmsStatus"])
            .filter(|s| s.len() <= 32)
            .ok_or_else(|| ApiError::bad_request("malformed_callback", "MessageStatus is missing"))?
            .to_ascii_lowercase();
        let error_code = field(params, &["ErrorCode"]).filter(|c| c.len() <= 16).map(str::to_owned);
        Ok(Callback { sid: sid.to_owned(), status, error_code, received_at })
    }
}

/// Store and apply one verified status callback: through this instance's ingest task, answered once stored.
pub async fn apply_callback(state: &AppState, params: &[(String, String)]) -> ApiResult<Applied> {
    let callback = Callback::parse(params, state.now())?;
    state.status_ingest.submit(callback).await
}

/// Store and apply one callback in its own transaction: a batch of one (the fallback of a failed batch).
pub async fn apply_one(db: &Db, cb: &Callback) -> ApiResult<Applied> {
    let mut applied = apply_batch(db, std::slice::from_ref(cb)).await?;
    applied.pop().ok_or_else(|| ApiError::internal(anyhow::anyhow!("a batch of one callback answered nothing")))
}

/// A message of a batch as its callbacks move it.
struct Moving<'a> {
    row: &'a sms_status::SidMessage,
    status: MessageStatus,
    /// The last error code of the callbacks that moved it (the stored one is kept when none gave one).
    error_code: Option<&'a str>,
    /// When the last callback that moved it was received; `None`: not moved.
    moved_at: Option<i64>,
}

/// Store and apply `batch` in one transaction, with a handful of statements whatever its size: the same result
/// as [`apply_one`] on each callback in turn (callbacks for one SID are applied in the order given). What became
/// of each callback, in order. An error: nothing was written. No alert row is written or locked: an alert's
/// aggregate is computed from its messages when it is read.
pub async fn apply_batch(db: &Db, batch: &[Callback]) -> Result<Vec<Applied>, sqlx::Error> {
    let tx = lock_batch(db, batch).await?;
    apply_locked(tx, batch).await
}

/// First step of [`apply_batch`]: a transaction holding the locks of the batch's SIDs (PostgreSQL), taken
/// before any row, in one order with the dispatcher (`sms::lock_sids`): a callback is either seen by the
/// dispatcher's read of the pending callbacks of a SID it records, or sees the SID recorded.
pub async fn lock_batch(db: &Db, batch: &[Callback]) -> Result<Tx, sqlx::Error> {
    let mut sids: Vec<&str> = batch.iter().map(|c| c.sid.as_str()).collect();
    sids.sort_unstable();
    sids.dedup();
    let mut tx = db.begin().await?;
    sms::lock_sids(&mut tx, &sids).await?;
    Ok(tx)
}

/// Second step of [`apply_batch`], in the transaction [`lock_batch`] opened for `batch`.
pub async fn apply_locked(mut tx: Tx, batch: &[Callback]) -> Result<Vec<Applied>, sqlx::Error> {
    let mut sids: Vec<&str> = batch.iter().map(|c| c.sid.as_str()).collect();
    sids.sort_unstable();
    sids.dedup();
    let rows = sms_status::messages_by_sids(&mut tx, &sids).await?;
    let mut messages: HashMap<&str, Moving> = rows
        .iter()
        .map(|row| {
            let status = MessageStatus::parse(&row.status).unwrap_or(MessageStatus::Sending);
            (row.twilio_sid.as_str(), Moving { row, status, error_code: None, moved_at: None })
        })
        .collect();
    // A callback whose message is known is stored already applied: marking it afterwards was an update (and,
    // `applied` being indexed, a new index entry in each index of the table) per callback.
    let events: Vec<NewEvent> = batch
        .iter()
        .map(|c| NewEvent {
            sid: &c.sid,
            status: &c.status,
            error_code: c.error_code.as_deref(),
            at: c.received_at,
            applied: messages.contains_key(c.sid.as_str()),
        })
        .collect();
    sms_status::insert_events(&mut tx, &events).await?;
    let mut applied = Vec::with_capacity(batch.len());
    let mut outcomes: Vec<(&str, MessageStatus)> = Vec::new();
    for cb in batch {
        let Some(m) = messages.get_mut(cb.sid.as_str()) else {
            applied.push(Applied::Pending);
            continue;
        };
        match MessageStatus::from_twilio(&cb.status).and_then(|s| transition(m.status, s)) {
            Some(next) => {
                m.status = next;
                m.error_code = cb.error_code.as_deref().or(m.error_code);
                m.moved_at = Some(cb.received_at);
                outcomes.push((&m.row.kind, next));
                applied.push(Applied::Moved(next));
            }
            None => applied.push(Applied::Unchanged),
        }
    }

    let mut moved: Vec<&Moving> = messages.values().filter(|m| m.moved_at.is_some()).collect();
    moved.sort_unstable_by_key(|m| m.row.id.as_str());
    let updates: Vec<StatusUpdate> = moved
        .iter()
        .filter_map(|m| {
            Some(StatusUpdate { id: &m.row.id, status: m.status.as_str(), error_code: m.error_code, at: m.moved_at? })
        })
        .collect();
    sms_status::set_statuses(&mut tx, &updates).await?;
    // Callbacks stored before their SID's message was known (normally taken by the dispatcher as it records
    // the SID, under the same lock): applied now. Usually none, so no statement.
    let mut pending: Vec<&str> = rows.iter().filter(|r| r.pending).map(|r| r.twilio_sid.as_str()).collect();
    if !pending.is_empty() {
        pending.sort_unstable();
        sms_status::mark_applied(&mut tx, &pending).await?;
    }
    tx.commit().await?;

    for (kind, status) in outcomes {
        crate::metrics::sms_outcome(kind, status.as_str());
    }
    for (cb, a) in batch.iter().zip(&applied) {
        if *a == Applied::Pending {
            tracing::info!(sid = cb.sid, status = cb.status, "status callback for a SID not recorded yet; kept");
        }
    }
    Ok(applied)
}
