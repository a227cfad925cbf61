//! Twilio status callbacks applied in batches (`sms::ingest`): a handful of set-based statements per batch of
//! callbacks instead of a handful per callback. [`set_statuses`] also serves the dispatcher (callbacks that
//! arrived before their SID was recorded); the SIDs' locks are `sms::lock_sids`.
//!
//! Multi-row statements take at most [`CHUNK`] rows (4 parameters each at most: 1,600, far under SQLite's
//! 32,766 and PostgreSQL's 65,535). `UPDATE … FROM (VALUES …)` needs SQLite ≥ 3.33 (sqlx bundles 3.46) and
//! reads the VALUES columns by the names both backends give them by default: `column1`, `column2`, …

use sqlx::QueryBuilder;

use super::{push_in_list, Backend, Tx};
use crate::domain::sms_status::MessageStatus;
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
    pub alert_id: Option<String>,
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
                "SELECT twilio_sid, id, alert_id, kind, status, EXISTS (SELECT 1 FROM sms_status_events e \
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

/// Which statuses occur among the messages of each of `alert_ids` (sorted, distinct): `(alert_id, status)` pairs,
/// what an alert's aggregate depends on (`domain::sms_status::aggregate`).
///
/// On PostgreSQL the alerts are locked first, in id order (after the message rows the caller holds): batches of
/// callbacks and the dispatcher run concurrently, and without the lock two of them moving different messages of
/// one alert each read the other's message as it was and could both store a stale aggregate (`sent` while every
/// message is `delivered`). Once the lock is held, the read below (a new statement, a new snapshot) sees what the
/// previous holder committed. SQLite has one writer.
///
/// One index probe per alert and status (`sms_messages_alert_status`), not a read of every message of the alert:
/// a batch of callbacks for a 10,000-recipient alert read its 10,000 rows each time (~4 ms on PostgreSQL).
pub async fn alert_statuses(tx: &mut Tx, alert_ids: &[&str]) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut found = Vec::new();
    // 9 statuses per alert: at most CHUNK / 9 alerts (and their rows) per statement.
    for chunk in alert_ids.chunks(CHUNK / MessageStatus::ALL.len()) {
        if tx.backend() == Backend::Postgres {
            on_tx!(tx, c => {
                let mut q = QueryBuilder::new("SELECT id FROM sms_alerts WHERE id IN ");
                push_in_list(&mut q, chunk);
                q.push(" ORDER BY id FOR UPDATE");
                q.build().fetch_all(&mut *c).await.map(|rows| rows.len())
            })?;
        }
        let rows: Vec<(String, String, bool)> = on_tx!(tx, c => {
            // The EXISTS in the select list is evaluated per pair (an index probe); in WHERE, PostgreSQL's
            // planner may turn it into a join reading the whole index.
            let mut q = QueryBuilder::new(
                "SELECT a.column1, s.column1, EXISTS (SELECT 1 FROM sms_messages m \
                 WHERE m.alert_id = a.column1 AND m.status = s.column1) FROM (",
            );
            q.push_values(chunk, |mut b, id| {
                b.push_bind(*id);
            });
            q.push(") AS a CROSS JOIN (");
            q.push_values(MessageStatus::ALL, |mut b, status| {
                b.push_bind(status.as_str());
            });
            q.push(") AS s");
            q.build_query_as().fetch_all(&mut *c).await
        })?;
        found.extend(rows.into_iter().filter(|(_, _, present)| *present).map(|(alert, status, _)| (alert, status)));
    }
    Ok(found)
}

/// Set the aggregate status of many alerts, `(id, status, at)`, sorted by id; unchanged ones are not written.
pub async fn set_alert_statuses(tx: &mut Tx, alerts: &[(&str, &str, i64)]) -> Result<(), sqlx::Error> {
    for chunk in alerts.chunks(CHUNK) {
        on_tx!(tx, c => {
            let mut q = QueryBuilder::new("UPDATE sms_alerts SET status = v.column2, updated_at = v.column3 FROM (");
            q.push_values(chunk, |mut b, (id, status, at)| {
                b.push_bind(*id).push_bind(*status).push_bind(*at);
            });
            q.push(") AS v WHERE sms_alerts.id = v.column1 AND sms_alerts.status <> v.column2");
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
