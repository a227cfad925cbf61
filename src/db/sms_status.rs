//! Twilio status callbacks applied in batches (`sms::ingest`): a handful of set-based statements per batch of
//! callbacks instead of a handful per callback. [`set_statuses`] also serves the dispatcher (callbacks that
//! arrived before their SID was recorded); the SIDs' locks are `sms::lock_sids`.
//!
//! Multi-row statements take at most [`CHUNK`] rows (4 parameters each at most: 1,600, far under SQLite's
//! 32,766 and PostgreSQL's 65,535). `UPDATE … FROM (VALUES …)` needs SQLite ≥ 3.33 (sqlx bundles 3.46) and
//! reads the VALUES columns by the names both backends give them by default: `column1`, `column2`, …

use sqlx::QueryBuilder;

use super::{push_in_list, Backend, Tx};
use crate::on_tx;

/// Rows per multi-row statement.
const CHUNK: usize = 400;

/// A verified callback as stored in `sms_status_events`.
pub struct NewEvent<'a> {
    pub sid: &'a str,
    pub status: &'a str,
    pub error_code: Option<&'a str>,
    pub at: i64,
    /// Applied as it is stored (its SID's message is known and locked); `false`: kept for the dispatcher.
    pub applied: bool,
}

/// Store callbacks in the order given (their ids grow in that order: the dispatcher applies the ones not
/// applied yet, for a SID it has not recorded yet, in id order).
pub async fn insert_events(tx: &mut Tx, events: &[NewEvent<'_>]) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(CHUNK) {
        on_tx!(tx, c => {
            let mut q = QueryBuilder::new(
                "INSERT INTO sms_status_events (twilio_sid, status, error_code, applied, received_at) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.sid).push_bind(e.status).push_bind(e.error_code).push_bind(e.applied).push_bind(e.at);
            });
            q.build().execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// A message that holds one of the SIDs of a batch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SidMessage {
    pub twilio_sid: String,
    pub id: String,
    pub kind: String,
    pub status: String,
    /// Callbacks for this SID were stored before its message was known and are not applied yet (normally
    /// none: the dispatcher applies them as it records the SID).
    pub pending: bool,
}

/// The messages holding `sids`, locked for the update that follows on PostgreSQL (in SID order), each with
/// whether callbacks wait for it (one probe of the nearly empty index of unapplied callbacks).
pub async fn messages_by_sids(tx: &mut Tx, sids: &[&str]) -> Result<Vec<SidMessage>, sqlx::Error> {
    let lock = match tx.backend() {
        Backend::Postgres => " ORDER BY twilio_sid FOR UPDATE",
        Backend::Sqlite => "",
    };
    let mut found = Vec::new();
    for chunk in sids.chunks(CHUNK) {
        let rows: Vec<SidMessage> = on_tx!(tx, c => {
            let mut q = QueryBuilder::new(
                "SELECT twilio_sid, id, kind, status, EXISTS (SELECT 1 FROM sms_status_events e \
                 WHERE e.twilio_sid = sms_messages.twilio_sid AND e.applied = FALSE) AS pending \
                 FROM sms_messages WHERE twilio_sid IN ",
            );
            push_in_list(&mut q, chunk);
            q.push(lock);
            q.build_query_as().fetch_all(&mut *c).await
        })?;
        found.extend(rows);
    }
    Ok(found)
}

/// A message's status after a batch: `error_code` replaces the stored one when given.
pub struct StatusUpdate<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub error_code: Option<&'a str>,
    pub at: i64,
}

/// Set the status of many messages (callback batches pass them sorted by id, so their rows are locked in a
/// stable order; the dispatcher already holds its rows' locks).
pub async fn set_statuses(tx: &mut Tx, updates: &[StatusUpdate<'_>]) -> Result<(), sqlx::Error> {
    for chunk in updates.chunks(CHUNK) {
        on_tx!(tx, c => {
            let mut q = QueryBuilder::new(
                "UPDATE sms_messages SET status = v.column2, error_code = COALESCE(v.column3, sms_messages.error_code), \
                 status_updated_at = v.column4 FROM (",
            );
            q.push_values(chunk, |mut b, u| {
                b.push_bind(u.id).push_bind(u.status).push_bind(u.error_code).push_bind(u.at);
            });
            q.push(") AS v WHERE sms_messages.id = v.column1");
            q.build().execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// Mark every stored callback for `sids` applied (callers pass the SIDs [`messages_by_sids`] found pending).
pub async fn mark_applied(tx: &mut Tx, sids: &[&str]) -> Result<(), sqlx::Error> {
    for chunk in sids.chunks(CHUNK) {
        on_tx!(tx, c => {
            let mut q =
                QueryBuilder::new("UPDATE sms_status_events SET applied = TRUE WHERE applied = FALSE AND twilio_sid IN ");
            push_in_list(&mut q, chunk);
            q.build().execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}
