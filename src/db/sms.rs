//! SMS alerts, the message queue, status callbacks, per-tenant rate windows. Tenant reads are tenant-bound.

use serde::Serialize;

use super::{Backend, Db, Tx};
use crate::{on_db, on_tx};

// ---------------------------------------------------------------------------------------------------------
// Alerts

pub struct NewAlert<'a> {
    pub id: &'a str,
    pub tenant_id: Option<&'a str>,
    pub kind: &'a str,
    pub body: &'a str,
    pub ast_id: Option<&'a str>,
    pub recipients_spec: &'a str,
    pub encoding: &'a str,
    pub segments: i64,
    /// The aggregate when the alert is made (`queued` or `skipped`), kept in `sms_alerts.status`. The aggregate
    /// shown afterwards is computed from the messages when the alert is read ([`AlertRow`]): no write to the alert
    /// on the callback and dispatch paths, so nothing to keep in step (the column is no longer read).
    pub status: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
    pub response: &'a str,
    pub created_by: &'a str,
    pub at: i64,
}

pub async fn insert_alert(tx: &mut Tx, a: &NewAlert<'_>) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sms_alerts (id, tenant_id, kind, body, ast_id, recipients_spec, encoding, segments, status, \
         idempotency_key, request_hash, response, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)"
    )
    .bind(a.id).bind(a.tenant_id).bind(a.kind).bind(a.body).bind(a.ast_id).bind(a.recipients_spec)
    .bind(a.encoding).bind(a.segments).bind(a.status).bind(a.idempotency_key).bind(a.request_hash)
    .bind(a.response).bind(a.created_by).bind(a.at)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// A previous request with the same `Idempotency-Key` (per tenant; operator keys have no tenant).
#[derive(Debug, sqlx::FromRow)]
pub struct IdempotentAlert {
    pub id: String,
    pub request_hash: Option<String>,
    pub response: Option<String>,
}

pub async fn find_by_idempotency_key(
    db: &Db,
    tenant_id: Option<&str>,
    key: &str,
) -> Result<Option<IdempotentAlert>, sqlx::Error> {
    match tenant_id {
        Some(t) => on_db!(db, p => sqlx::query_as(
            "SELECT id, request_hash, response FROM sms_alerts WHERE tenant_id = $1 AND idempotency_key = $2"
        ).bind(t).bind(key).fetch_optional(p).await),
        None => on_db!(db, p => sqlx::query_as(
            "SELECT id, request_hash, response FROM sms_alerts WHERE tenant_id IS NULL AND idempotency_key = $1"
        ).bind(key).fetch_optional(p).await),
    }
}

/// An alert as stored. Its aggregate status is not here: it follows from its messages' statuses
/// (`domain::sms_status::aggregate`), computed when it is read (`http::sms::get_alert` reads every message anyway).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AlertRow {
    pub id: String,
    pub kind: String,
    pub ast_id: Option<String>,
    pub encoding: String,
    pub segments: i64,
    pub created_by: String,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub created_at: i64,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub updated_at: i64,
}

pub async fn get_alert(db: &Db, tenant_id: &str, id: &str) -> Result<Option<AlertRow>, sqlx::Error> {
    on_db!(db, p => sqlx::query_as(
        "SELECT id, kind, ast_id, encoding, segments, created_by, created_at, updated_at FROM sms_alerts \
         WHERE tenant_id = $1 AND id = $2"
    ).bind(tenant_id).bind(id).fetch_optional(p).await)
}

/// One recipient's message as shown to the tenant admin (no body, masked phone).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MessageView {
    pub message_id: String,
    pub worker_id: Option<String>,
    pub phone_masked: String,
    pub status: String,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub twilio_sid: Option<String>,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub status_updated_at: i64,
}

pub async fn alert_messages(db: &Db, tenant_id: &str, alert_id: &str) -> Result<Vec<MessageView>, sqlx::Error> {
    on_db!(db, p => sqlx::query_as(
        "SELECT id AS message_id, worker_id, to_phone_masked AS phone_masked, status, attempts, error_code, \
         twilio_sid, status_updated_at FROM sms_messages WHERE tenant_id = $1 AND alert_id = $2 ORDER BY created_at, id"
    ).bind(tenant_id).bind(alert_id).fetch_all(p).await)
}

// ---------------------------------------------------------------------------------------------------------
// Recipients and consent

/// A worker of the tenant with what decides whether it may receive SMS.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    pub id: String,
    pub site_id: Option<String>,
    pub phone: String,
    pub sms_consent: bool,
    /// The latest consent-ledger decision that applies to this phone in this tenant: the tenant's own rows, and
    /// the phone-wide ones (STOP keywords, carrier 21610). `Some(false)` = opted out.
    pub ledger_consent: Option<bool>,
}

/// The ledger rows that bind a phone for a tenant: its own, and the phone-wide opt-outs/opt-ins.
/// The phone owner's latest own decision (STOP/START keyword, or the carrier's 21610): it overrides the
/// tenant's consent flag until the owner says otherwise. Administrative changes live in the flag.
const LEDGER_LATEST: &str = "(SELECT c.new_consent FROM consent_events c WHERE c.phone = w.phone \
    AND c.source IN ('keyword', 'carrier_21610') ORDER BY c.id DESC LIMIT 1)";

pub async fn candidates(tx: &mut Tx, tenant_id: &str) -> Result<Vec<Candidate>, sqlx::Error> {
    let sql = format!(
        "SELECT w.id, w.site_id, w.phone, w.sms_consent, {LEDGER_LATEST} AS ledger_consent FROM workers w \
         WHERE w.tenant_id = $1 ORDER BY w.created_at, w.id"
    );
    // The owner's decisions are phone-wide (recorded under whichever tenants held the number): read them in a
    // system window; the workers themselves stay bound to `tenant_id` by the filter.
    super::scope::open_window(tx, "consent-ledger").await?;
    let rows = on_tx!(tx, c => sqlx::query_as(&sql).bind(tenant_id).fetch_all(&mut *c).await)?;
    super::scope::close_window(tx).await?;
    Ok(rows)
}

pub async fn site_exists(tx: &mut Tx, tenant_id: &str, site_id: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = on_tx!(tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM sites WHERE tenant_id = $1 AND id = $2")
        .bind(tenant_id).bind(site_id).fetch_one(&mut *c).await)?;
    Ok(n > 0)
}

/// Safety-alert kinds need the worker's consent; the others (test, forward, verification, missed_call) are
/// transactional messages that only an opt-out (STOP, carrier 21610) blocks.
pub const ALERT_KINDS: [&str; 5] = ["lock_applied", "lock_removed", "general_alert", "emergency", "work_completion"];

/// Consent of one message's recipient right now: for alerts, the worker's flag and the latest applicable ledger
/// decision for the phone; for transactional messages, the ledger only. `Ok(None)` = may send;
/// `Ok(Some(reason))` = must not.
pub async fn consent_block(
    db: &Db,
    kind: &str,
    tenant_id: Option<&str>,
    worker_id: Option<&str>,
    phone: &str,
) -> Result<Option<&'static str>, sqlx::Error> {
    // Phone-wide owner decisions (see `candidates`): a system read that answers only "may send or not".
    super::scope::system("consent-ledger", consent_block_inner(db, kind, tenant_id, worker_id, phone)).await
}

async fn consent_block_inner(
    db: &Db,
    kind: &str,
    tenant_id: Option<&str>,
    worker_id: Option<&str>,
    phone: &str,
) -> Result<Option<&'static str>, sqlx::Error> {
    let alert = ALERT_KINDS.contains(&kind);
    if let (true, Some(t), Some(w)) = (alert, tenant_id, worker_id) {
        let sql = format!("SELECT w.sms_consent, {LEDGER_LATEST} FROM workers w WHERE w.tenant_id = $1 AND w.id = $2");
        let row: Option<(bool, Option<bool>)> =
            on_db!(db, p => sqlx::query_as(&sql).bind(t).bind(w).fetch_optional(p).await)?;
        return Ok(match row {
            None => Some("worker_removed"),
            Some((_, Some(false))) => Some("opted_out"),
            Some((false, _)) => Some("no_consent"),
            Some(_) => None,
        });
    }
    if alert && tenant_id.is_some() {
        // A tenant alert whose worker was deleted since it was queued.
        return Ok(Some("worker_removed"));
    }
    let latest: Option<bool> = on_db!(db, p => sqlx::query_scalar(
        "SELECT new_consent FROM consent_events WHERE phone = $1 AND source IN ('keyword', 'carrier_21610') \
         ORDER BY id DESC LIMIT 1"
    ).bind(phone).fetch_optional(p).await)?;
    Ok((latest == Some(false)).then_some("opted_out"))
}

/// [`consent_block`] of many messages in one query (the dispatcher reads those of a pass at once): per message,
/// in order, `None` = may send, `Some(reason)` = must not. Same rules, same reasons.
pub async fn consent_blocks(db: &Db, messages: &[Claimed]) -> Result<Vec<Option<&'static str>>, sqlx::Error> {
    super::scope::system("consent-ledger", consent_blocks_inner(db, messages)).await
}

/// Rows per statement of [`consent_blocks`] (4 parameters each).
const CONSENT_CHUNK: usize = 250;

async fn consent_blocks_inner(db: &Db, messages: &[Claimed]) -> Result<Vec<Option<&'static str>>, sqlx::Error> {
    // Per message: alert kinds with a worker are decided by the worker's flag and the ledger of the worker's
    // phone; a tenant alert without a worker was deleted since it was queued; the others by the ledger of the
    // recipient's phone (no worker bound: the join finds nothing and the phone is the message's).
    let mut blocks: Vec<Option<&'static str>> = vec![None; messages.len()];
    let mut asked: Vec<(i64, Option<&str>, Option<&str>, &str)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let alert = ALERT_KINDS.contains(&m.kind.as_str());
        match (alert, m.tenant_id.as_deref(), m.worker_id.as_deref()) {
            (true, Some(t), Some(w)) => asked.push((i as i64, Some(t), Some(w), &m.to_phone)),
            (true, Some(_), None) => blocks[i] = Some("worker_removed"),
            _ => asked.push((i as i64, None, None, &m.to_phone)),
        }
    }
    for chunk in asked.chunks(CONSENT_CHUNK) {
        let rows: Vec<(i64, Option<bool>, Option<bool>)> = on_db!(db, p => {
            let mut q = sqlx::QueryBuilder::new("WITH m (m_i, m_tenant, m_worker, m_phone) AS (VALUES ");
            for (k, (i, t, w, phone)) in chunk.iter().enumerate() {
                q.push(if k == 0 { "(" } else { ", (" });
                q.push_bind(*i).push(", ").push_bind(*t).push(", ").push_bind(*w).push(", ").push_bind(*phone)
                    .push(")");
            }
            q.push(
                ") SELECT m_i, w.sms_consent, (SELECT c.new_consent FROM consent_events c \
                 WHERE c.phone = COALESCE(w.phone, m_phone) AND c.source IN ('keyword', 'carrier_21610') \
                 ORDER BY c.id DESC LIMIT 1) FROM m LEFT JOIN workers w ON w.tenant_id = m_tenant AND w.id = m_worker",
            );
            q.build_query_as().fetch_all(p).await
        })?;
        for (i, consent, ledger) in rows {
            let i = i as usize;
            let m = &messages[i];
            let worker_bound = ALERT_KINDS.contains(&m.kind.as_str()) && m.tenant_id.is_some() && m.worker_id.is_some();
            blocks[i] = if worker_bound {
                match (consent, ledger) {
                    (None, _) => Some("worker_removed"),
                    (_, Some(false)) => Some("opted_out"),
                    (Some(false), _) => Some("no_consent"),
                    _ => None,
                }
            } else {
                (ledger == Some(false)).then_some("opted_out")
            };
        }
    }
    Ok(blocks)
}

/// Workers holding `phone` in any tenant (carrier 21610 withdraws consent for the number everywhere).
pub async fn workers_with_phone(tx: &mut Tx, phone: &str) -> Result<Vec<(String, String, bool)>, sqlx::Error> {
    on_tx!(tx, c => sqlx::query_as(
        "SELECT tenant_id, id, sms_consent FROM workers WHERE phone = $1 ORDER BY tenant_id, id"
    ).bind(phone).fetch_all(&mut *c).await)
}

pub async fn withdraw_consent(
    tx: &mut Tx,
    tenant_id: &str,
    worker_id: &str,
    source: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "UPDATE workers SET sms_consent = FALSE, sms_consent_at = $3, sms_consent_source = $4, updated_at = $3 \
         WHERE tenant_id = $1 AND id = $2"
    ).bind(tenant_id).bind(worker_id).bind(now).bind(source).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Rate limit

/// Take `n` messages from the tenant's window starting at `window_start`, if that keeps it within `limit`.
/// Returns false (and changes nothing) when it would not. The row is shared by every instance.
pub async fn take_rate(
    tx: &mut Tx,
    tenant_id: &str,
    window_start: i64,
    n: i64,
    limit: i64,
) -> Result<bool, sqlx::Error> {
    if n > limit {
        return Ok(false);
    }
    let used: Option<i64> = on_tx!(tx, c => sqlx::query_scalar(
        "INSERT INTO rate_limits (tenant_id, window_start, used) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id, window_start) DO UPDATE SET used = rate_limits.used + excluded.used \
         WHERE rate_limits.used + excluded.used <= $4 RETURNING used"
    ).bind(tenant_id).bind(window_start).bind(n).bind(limit).fetch_optional(&mut *c).await)?;
    Ok(used.is_some())
}

// ---------------------------------------------------------------------------------------------------------
// Messages and the queue

pub struct NewMessage<'a> {
    pub id: &'a str,
    pub alert_id: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub worker_id: Option<&'a str>,
    pub kind: &'a str,
    pub priority: i64,
    pub to_phone: &'a str,
    pub to_phone_masked: &'a str,
    pub body: &'a str,
    pub encoding: &'a str,
    pub segments: i64,
    pub status: &'a str,
    pub error_code: Option<&'a str>,
    pub at: i64,
}

pub async fn insert_message(tx: &mut Tx, m: &NewMessage<'_>) -> Result<(), sqlx::Error> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO sms_messages (id, alert_id, tenant_id, worker_id, kind, priority, to_phone, to_phone_masked, \
         body, encoding, segments, status, attempts, next_attempt_at, error_code, created_at, status_updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $14, $13, $13)"
    )
    .bind(m.id).bind(m.alert_id).bind(m.tenant_id).bind(m.worker_id).bind(m.kind).bind(m.priority)
    .bind(m.to_phone).bind(m.to_phone_masked).bind(m.body).bind(m.encoding).bind(m.segments).bind(m.status)
    .bind(m.at).bind(m.error_code)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Insert many messages (an alert to thousands of workers). PostgreSQL: one statement whatever the count, each
/// column bound as one array and expanded by `unnest`, so its plan does not depend on the row count (10,000 rows:
/// 196 ms, against 249 ms for 25 `VALUES` statements of 400 rows and 6,800 parameters each; BENCHMARKS.md).
/// SQLite: multi-row statements of [`INSERT_CHUNK`] rows.
pub async fn insert_messages(tx: &mut Tx, rows: &[NewMessage<'_>]) -> Result<(), sqlx::Error> {
    if let Tx::Postgres(t) = tx {
        if rows.is_empty() {
            return Ok(());
        }
        fn column<'r, T>(rows: &'r [NewMessage<'r>], f: impl Fn(&'r NewMessage<'r>) -> T) -> Vec<T> {
            rows.iter().map(f).collect()
        }
        sqlx::query(
            "INSERT INTO sms_messages (id, alert_id, tenant_id, worker_id, kind, priority, to_phone, \
             to_phone_masked, body, encoding, segments, status, attempts, next_attempt_at, error_code, created_at, \
             status_updated_at) \
             SELECT id, alert_id, tenant_id, worker_id, kind, priority, to_phone, to_phone_masked, body, encoding, \
             segments, status, 0, at, error_code, at, at \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[], \
             $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], $13::bigint[], $14::text[]) \
             AS m (id, alert_id, tenant_id, worker_id, kind, priority, to_phone, to_phone_masked, body, encoding, \
             segments, status, at, error_code)",
        )
        .bind(column(rows, |m| m.id))
        .bind(column(rows, |m| m.alert_id))
        .bind(column(rows, |m| m.tenant_id))
        .bind(column(rows, |m| m.worker_id))
        .bind(column(rows, |m| m.kind))
        .bind(column(rows, |m| m.priority))
        .bind(column(rows, |m| m.to_phone))
        .bind(column(rows, |m| m.to_phone_masked))
        .bind(column(rows, |m| m.body))
        .bind(column(rows, |m| m.encoding))
        .bind(column(rows, |m| m.segments))
        .bind(column(rows, |m| m.status))
        .bind(column(rows, |m| m.at))
        .bind(column(rows, |m| m.error_code))
        .execute(&mut **t)
        .await?;
        return Ok(());
    }
    for chunk in rows.chunks(INSERT_CHUNK) {
        on_tx!(tx, c => {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT INTO sms_messages (id, alert_id, tenant_id, worker_id, kind, priority, to_phone, \
                 to_phone_masked, body, encoding, segments, status, attempts, next_attempt_at, error_code, created_at, \
                 status_updated_at) ",
            );
            q.push_values(chunk, |mut b, m| {
                b.push_bind(m.id).push_bind(m.alert_id).push_bind(m.tenant_id).push_bind(m.worker_id)
                    .push_bind(m.kind).push_bind(m.priority).push_bind(m.to_phone).push_bind(m.to_phone_masked)
                    .push_bind(m.body).push_bind(m.encoding).push_bind(m.segments).push_bind(m.status)
                    .push_bind(0i64).push_bind(m.at).push_bind(m.error_code).push_bind(m.at).push_bind(m.at);
            });
            q.build().execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(())
}

/// Rows per statement of [`insert_messages`] on SQLite: 17 parameters each, 6,800 in all, well under SQLite's
/// 32,766.
const INSERT_CHUNK: usize = 400;

/// A message claimed by a dispatcher: everything the provider call needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub alert_id: Option<String>,
    pub tenant_id: Option<String>,
    pub worker_id: Option<String>,
    pub kind: String,
    pub priority: i64,
    pub to_phone: String,
    pub to_phone_masked: String,
    pub body: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
}

/// Queue states: `queued` (waiting for `next_attempt_at`) → `sending` with a lease and no SID (claimed, provider
/// call in progress) → `sending` with a SID (Twilio has it; callbacks take over) or back to `queued` / a final
/// state. Due: queued and past its next attempt; or claimed without a SID whose lease expired (its instance
/// died between the claim and recording the outcome).
const DUE: &str = "((status = 'queued' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)) \
    OR (status = 'sending' AND twilio_sid IS NULL AND lease_until < $1))";

/// Queued and due only: what [`claim_due`] takes between two looks at expired leases.
const QUEUED_DUE: &str = "status = 'queued' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1)";

/// Claim up to `limit` due messages (emergency first, then oldest) for `owner` until `lease_until`, and
/// commit: the provider is called afterwards with no transaction open.
pub async fn claim(db: &Db, now: i64, lease_until: i64, owner: &str, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
    claim_due(db, now, lease_until, owner, limit, Due::WithExpiredLeases).await
}

/// Which due messages [`claim_due`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Queued and due, and claims whose lease expired (their instance died): [`DUE`].
    WithExpiredLeases,
    /// Queued and due only: [`QUEUED_DUE`].
    Queued,
    /// Queued and due with at least this priority: the emergencies the dispatcher sends when a second's budget is
    /// already spent.
    QueuedFromPriority(i64),
}

/// [`claim`], or only queued messages ([`Due`]). The query with expired leases cannot be served
/// in order by the `sms_messages_due` index (its `OR`, and the `created_at` tie-break among messages queued in
/// the same millisecond), so it sorts every due row: 60 ms with 100,000 queued on SQLite, holding the write
/// lock. The queued-only query reads the index in order and stops at `limit` (well under a millisecond); the
/// dispatcher loop uses it between its once-a-second full claims.
pub async fn claim_due(
    db: &Db,
    now: i64,
    lease_until: i64,
    owner: &str,
    limit: i64,
    which: Due,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let from_priority;
    let (due, order) = match which {
        Due::WithExpiredLeases => (DUE, "priority DESC, next_attempt_at, created_at"),
        Due::Queued => (QUEUED_DUE, "priority DESC, next_attempt_at"),
        Due::QueuedFromPriority(min) => {
            from_priority = format!("{QUEUED_DUE} AND priority >= {min}");
            (from_priority.as_str(), "priority DESC, next_attempt_at")
        }
    };
    // One statement in its own implicit transaction (no BEGIN/COMMIT round trips), committed when it returns: the
    // provider is called afterwards with no transaction open.
    // PostgreSQL: SKIP LOCKED lets concurrent instances claim disjoint rows without waiting on each other.
    // SQLite: a write statement takes the write lock when it starts (no read-to-write upgrade), which already
    // serialises writers; no row locks exist.
    let lock = match db.backend() {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "UPDATE sms_messages SET status = 'sending', lease_until = $2, lease_owner = $3, attempts = attempts + 1, \
         status_updated_at = $1 \
         WHERE id IN (SELECT id FROM sms_messages WHERE {due} ORDER BY {order} LIMIT $4{lock}) \
         RETURNING id, alert_id, tenant_id, worker_id, kind, priority, to_phone, to_phone_masked, body, attempts, \
           next_attempt_at, created_at"
    );
    let mut rows: Vec<Claimed> = on_db!(db, p => sqlx::query_as(&sql)
        .bind(now).bind(lease_until).bind(owner).bind(limit).fetch_all(p).await)?;
    rows.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.next_attempt_at.cmp(&b.next_attempt_at))
            .then(a.created_at.cmp(&b.created_at))
    });
    Ok(rows)
}

/// What the dispatcher records for one claimed message (see [`record_outcomes`]).
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub message: &'a Claimed,
    /// `sending` (the provider accepted it: `sid` is set), `queued` (a retry at `next_attempt_at`), or a final
    /// status decided here (simulated, canceled, failed).
    pub status: &'a str,
    pub sid: Option<&'a str>,
    pub next_attempt_at: Option<i64>,
    pub error_code: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

impl<'a> Outcome<'a> {
    /// The provider accepted the message: record the SID and hand it to the status callbacks.
    pub fn accepted(message: &'a Claimed, sid: &'a str) -> Self {
        Outcome {
            message,
            status: "sending",
            sid: Some(sid),
            next_attempt_at: None,
            error_code: None,
            error_message: None,
        }
    }

    /// A final outcome decided here (simulated, canceled, failed).
    pub fn settled(
        message: &'a Claimed,
        status: &'a str,
        error_code: Option<&'a str>,
        error_message: Option<&'a str>,
    ) -> Self {
        Outcome { message, status, sid: None, next_attempt_at: None, error_code, error_message }
    }

    /// A transient failure: back to the queue for `next_attempt_at`.
    pub fn retry(message: &'a Claimed, next_attempt_at: i64, error_code: &'a str, error_message: &'a str) -> Self {
        Outcome {
            message,
            status: "queued",
            sid: None,
            next_attempt_at: Some(next_attempt_at),
            error_code: Some(error_code),
            error_message: Some(error_message),
        }
    }
}

/// Rows per statement of [`record_outcomes`] (8 parameters each).
const RECORD_CHUNK: usize = 250;

/// Record the outcomes of claimed messages with one `UPDATE … FROM (VALUES …)` per [`RECORD_CHUNK`] messages,
/// whatever their kinds. Each row is written only if it is still ours: still `sending`, leased by `owner` for
/// the same attempt (a newer claim after an expired lease wins). Per outcome, in order: whether it was recorded.
///
/// Accepted: the SID, `sent_at`, errors cleared, the lease ended (the owner stays, for the record). Retry: back to
/// `queued` at `next_attempt_at`, lease and owner cleared. Final: the status and error. A verification code is
/// erased from the queue as soon as the message leaves it (accepted or final): only its hash is kept
/// (phone_verifications); other bodies wait for the retention scrub.
pub async fn record_outcomes(
    tx: &mut Tx,
    owner: &str,
    outcomes: &[Outcome<'_>],
    now: i64,
) -> Result<Vec<bool>, sqlx::Error> {
    let mut recorded = std::collections::HashSet::new();
    for chunk in outcomes.chunks(RECORD_CHUNK) {
        let ids: Vec<String> = on_tx!(tx, c => {
            let mut q = sqlx::QueryBuilder::new(
                "WITH v (v_id, v_attempts, v_status, v_sid, v_next, v_code, v_message) AS (VALUES ",
            );
            for (i, o) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                q.push_bind(o.message.id.as_str()).push(", ").push_bind(o.message.attempts).push(", ")
                    .push_bind(o.status).push(", ").push_bind(o.sid).push(", ").push_bind(o.next_attempt_at)
                    .push(", ").push_bind(o.error_code).push(", ").push_bind(o.error_message).push(")");
            }
            q.push(") UPDATE sms_messages SET status = v_status, twilio_sid = COALESCE(v_sid, twilio_sid), \
                    sent_at = CASE WHEN v_sid IS NULL THEN sent_at ELSE ").push_bind(now)
                .push(" END, next_attempt_at = COALESCE(v_next, next_attempt_at), lease_until = NULL, \
                    lease_owner = CASE WHEN v_status = 'queued' THEN NULL ELSE lease_owner END, \
                    error_code = v_code, error_message = v_message, status_updated_at = ").push_bind(now)
                .push(", body = CASE WHEN kind = 'verification' AND v_status <> 'queued' THEN NULL ELSE body END \
                    FROM v WHERE id = v_id AND status = 'sending' AND lease_owner = ").push_bind(owner)
                .push(" AND attempts = v_attempts RETURNING id");
            q.build_query_scalar().fetch_all(&mut *c).await
        })?;
        recorded.extend(ids);
    }
    Ok(outcomes.iter().map(|o| recorded.contains(&o.message.id)).collect())
}

/// Serialise the two writers of a SID on PostgreSQL — the dispatcher recording it, a status callback for it —
/// so that a callback is either seen by the dispatcher's read of the pending callbacks or sees the SID itself
/// (SQLite write transactions are already serial, `BEGIN IMMEDIATE`). The advisory locks of `sids` are taken in
/// one statement, ordered by lock key, so that two takers of several (dispatcher groups, status-callback
/// batches, other instances) never wait on each other in a cycle, even when two SIDs share a key.
pub async fn lock_sids(tx: &mut Tx, sids: &[&str]) -> Result<(), sqlx::Error> {
    let Tx::Postgres(t) = tx else { return Ok(()) };
    if sids.is_empty() {
        return Ok(());
    }
    // The sorted, distinct sub-select is not flattened into the outer one: the locks are taken in its order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k) FROM \
         (SELECT DISTINCT hashtext(s) AS k FROM unnest($1::text[]) AS u(s) ORDER BY k) AS sorted",
    )
    .bind(sids)
    .execute(&mut **t)
    .await?;
    Ok(())
}

/// A status callback stored before its SID was recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub twilio_sid: String,
    pub status: String,
    pub error_code: Option<String>,
}

/// Mark applied, and return, the callbacks of `sids` not applied yet, oldest first (the caller holds the SIDs'
/// locks: [`lock_sids`]). One statement for all.
pub async fn take_pending_events(tx: &mut Tx, sids: &[&str]) -> Result<Vec<PendingEvent>, sqlx::Error> {
    let mut events = Vec::new();
    for chunk in sids.chunks(RECORD_CHUNK) {
        let rows: Vec<PendingEvent> = on_tx!(tx, c => {
            let mut q = sqlx::QueryBuilder::new(
                "UPDATE sms_status_events SET applied = TRUE WHERE applied = FALSE AND twilio_sid IN ",
            );
            super::push_in_list(&mut q, chunk);
            q.push(" RETURNING id, twilio_sid, status, error_code");
            q.build_query_as().fetch_all(&mut *c).await
        })?;
        events.extend(rows);
    }
    events.sort_by_key(|e| e.id);
    Ok(events)
}

// ---------------------------------------------------------------------------------------------------------
// Status callbacks

// (Status callbacks are stored and applied in batches: `db::sms_status`.)

/// The stored status of one message (CLI and tests).
pub async fn message_status(db: &Db, id: &str) -> Result<Option<String>, sqlx::Error> {
    on_db!(db, p => sqlx::query_scalar("SELECT status FROM sms_messages WHERE id = $1").bind(id).fetch_optional(p).await)
}
