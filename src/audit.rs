//! The append-only, hash-chained audit log (`system_audit_logs`).
//!
//! Each row stores the hash of the previous row and its own hash over `prev_hash` and its canonical JSON
//! content, so `audit verify` detects a modified row and a deleted row (a gap in `seq` or a broken link).
//! Appends are serialised (a PostgreSQL transaction-scoped advisory lock; SQLite write transactions are
//! already serial), and happen inside the caller's transaction: the audit row commits with the change.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::db::{Db, Tx};
use crate::{on_db, on_tx};

/// The hash a first row links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Arbitrary key of the PostgreSQL advisory lock that serialises appends.
const APPEND_LOCK_KEY: i64 = 0x5ec0_3600_a0d1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    Stripe,
    Twilio,
    Platform,
    Database,
    Dns,
    Admin,
    Billing,
    Sms,
    Voice,
    System,
}

impl Zone {
    pub const ALL: [Zone; 10] = [
        Zone::Stripe,
        Zone::Twilio,
        Zone::Platform,
        Zone::Database,
        Zone::Dns,
        Zone::Admin,
        Zone::Billing,
        Zone::Sms,
        Zone::Voice,
        Zone::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Stripe => "stripe",
            Zone::Twilio => "twilio",
            Zone::Platform => "platform",
            Zone::Database => "database",
            Zone::Dns => "dns",
            Zone::Admin => "admin",
            Zone::Billing => "billing",
            Zone::Sms => "sms",
            Zone::Voice => "voice",
            Zone::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Zone> {
        Zone::ALL.into_iter().find(|z| z.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Info,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Info => "info",
        }
    }
}

/// What happened. `details` must never hold secrets, message bodies or full phone numbers.
#[derive(Debug, Clone)]
pub struct Entry {
    pub zone: Zone,
    pub action: &'static str,
    pub outcome: Outcome,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub subject: Option<String>,
    pub details: Value,
    pub request_id: Option<String>,
}

impl Entry {
    pub fn new(zone: Zone, action: &'static str, actor: impl Into<String>) -> Self {
        Entry {
            zone,
            action,
            outcome: Outcome::Success,
            tenant_id: None,
            actor: actor.into(),
            subject: None,
            details: Value::Object(Default::default()),
            request_id: None,
        }
    }

    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub at: i64,
    pub zone: String,
    pub action: String,
    pub outcome: String,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub subject: Option<String>,
    #[serde(serialize_with = "details_as_json")]
    pub details: String,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// Details are stored as JSON text; the API shows them as JSON, or as the raw string if unparsable.
fn details_as_json<S: serde::Serializer>(details: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<Value>(details) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(details),
    }
}

const COLUMNS: &str = "seq, at, zone, action, outcome, tenant_id, actor, subject, details, request_id, prev_hash, hash";

/// The row hash: SHA-256 over the previous hash and the row's content as a canonical JSON array.
fn row_hash(r: &AuditRow) -> String {
    let content = serde_json::json!([
        r.seq,
        r.at,
        r.zone,
        r.action,
        r.outcome,
        r.tenant_id,
        r.actor,
        r.subject,
        r.details,
        r.request_id
    ]);
    let mut h = Sha256::new();
    h.update(r.prev_hash.as_bytes());
    h.update(b"\n");
    h.update(content.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Take the lock that serialises appenders until `tx` ends, before the transaction's other locks when it
/// writes many rows (PostgreSQL only: SQLite's BEGIN IMMEDIATE already serialises writers). [`append`] takes it
/// too; taking it again in the same transaction is free of waits.
pub async fn lock_chain(tx: &mut Tx) -> Result<(), sqlx::Error> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPEND_LOCK_KEY).execute(&mut **t).await?;
    }
    Ok(())
}

/// Append `entry` inside `tx`; it commits or rolls back with the caller's change.
pub async fn append(tx: &mut Tx, entry: &Entry, now: i64) -> Result<i64, sqlx::Error> {
    lock_chain(tx).await?;
    // The chain is platform-wide: its tail may be another tenant's row, so read it and link to it in a system
    // window (row-level security would otherwise hide it from a tenant's transaction).
    crate::db::scope::open_window(tx, "audit-chain").await?;
    let last: Option<(i64, String)> = on_tx!(tx, c => sqlx::query_as(
        "SELECT seq, hash FROM system_audit_logs ORDER BY seq DESC LIMIT 1"
    ).fetch_optional(&mut *c).await)?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let mut row = AuditRow {
        seq,
        at: now,
        zone: entry.zone.as_str().to_owned(),
        action: entry.action.to_owned(),
        outcome: entry.outcome.as_str().to_owned(),
        tenant_id: entry.tenant_id.clone(),
        actor: entry.actor.clone(),
        subject: entry.subject.clone(),
        details: entry.details.to_string(),
        request_id: entry.request_id.clone(),
        prev_hash,
        hash: String::new(),
    };
    row.hash = row_hash(&row);
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO system_audit_logs (seq, at, zone, action, outcome, tenant_id, actor, subject, details, request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    )
    .bind(row.seq).bind(row.at).bind(&row.zone).bind(&row.action).bind(&row.outcome).bind(&row.tenant_id)
    .bind(&row.actor).bind(&row.subject).bind(&row.details).bind(&row.request_id).bind(&row.prev_hash).bind(&row.hash)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    crate::db::scope::close_window(tx).await?;
    Ok(seq)
}

/// Append in a transaction of its own (for events that change nothing else).
pub async fn record(db: &Db, entry: &Entry, now: i64) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let seq = append(&mut tx, entry, now).await?;
    tx.commit().await?;
    Ok(seq)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub rows_checked: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walk the whole chain in `seq` order. The oldest remaining row anchors the chain (older rows may have been
/// purged by retention); from there every link, every hash and the `seq` continuity are checked.
pub async fn verify(db: &Db) -> Result<VerifyReport, sqlx::Error> {
    let mut report = VerifyReport::default();
    let mut prev: Option<(i64, String)> = None;
    let sql = format!("SELECT {COLUMNS} FROM system_audit_logs WHERE seq > $1 ORDER BY seq LIMIT 1000");
    loop {
        let after = prev.as_ref().map_or(0, |(s, _)| *s);
        let rows: Vec<AuditRow> = on_db!(db, p => sqlx::query_as(&sql).bind(after).fetch_all(p).await)?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            report.rows_checked += 1;
            report.first_seq.get_or_insert(r.seq);
            match &prev {
                None if r.seq == 1 && r.prev_hash != GENESIS => {
                    report.problems.push("row 1 does not start from the genesis hash".into())
                }
                None => {}
                Some((pseq, phash)) => {
                    if r.seq != pseq + 1 {
                        report.problems.push(format!("rows {} to {} are missing (deleted)", pseq + 1, r.seq - 1));
                    }
                    if &r.prev_hash != phash {
                        report.problems.push(format!("row {} does not link to row {pseq}", r.seq));
                    }
                }
            }
            if row_hash(&r) != r.hash {
                report.problems.push(format!("row {} was modified (its hash does not match its content)", r.seq));
            }
            report.last_seq = Some(r.seq);
            prev = Some((r.seq, r.hash));
        }
    }
    Ok(report)
}

/// Retention purge: delete the oldest rows, up to the first one at or after `cutoff` (a prefix of the chain,
/// so the remaining chain still verifies). The only path allowed past the append-only triggers.
pub async fn purge_before(db: &Db, cutoff: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The newest row always stays, so the chain keeps its head and numbering never restarts.
    let delete = "DELETE FROM system_audit_logs WHERE seq < COALESCE(\
        (SELECT MIN(seq) FROM system_audit_logs WHERE at >= $1), (SELECT MAX(seq) FROM system_audit_logs))";
    let deleted = match &mut tx {
        Tx::Postgres(t) => {
            sqlx::query("SET LOCAL secur360.audit_purge = 'on'").execute(&mut **t).await?;
            sqlx::query(delete).bind(cutoff).execute(&mut **t).await?.rows_affected()
        }
        Tx::Sqlite(t) => {
            sqlx::query("UPDATE audit_purge_gate SET open = 1 WHERE id = 1").execute(&mut **t).await?;
            let n = sqlx::query(delete).bind(cutoff).execute(&mut **t).await?.rows_affected();
            sqlx::query("UPDATE audit_purge_gate SET open = 0 WHERE id = 1").execute(&mut **t).await?;
            n
        }
    };
    tx.commit().await?;
    Ok(deleted)
}

/// Filters of the operator's audit query.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub zone: Option<String>,
    pub action: Option<String>,
    pub tenant_id: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Return rows with `seq` below this (paging backwards from the newest).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

pub async fn query(db: &Db, f: &Filter) -> Result<Vec<AuditRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM system_audit_logs WHERE ($1 IS NULL OR zone = $1) AND ($2 IS NULL OR action = $2) \
         AND ($3 IS NULL OR tenant_id = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) \
         AND ($6 IS NULL OR seq < $6) ORDER BY seq DESC LIMIT $7"
    );
    on_db!(db, p => sqlx::query_as(&sql)
        .bind(&f.zone).bind(&f.action).bind(&f.tenant_id).bind(f.from).bind(f.to).bind(f.before_seq).bind(f.limit)
        .fetch_all(p).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRow {
        AuditRow {
            seq: 7,
            at: 1_700_000_000_000,
            zone: "admin".into(),
            action: "login".into(),
            outcome: "success".into(),
            tenant_id: None,
            actor: "operator".into(),
            subject: Some("x".into()),
            details: "{}".into(),
            request_id: None,
            prev_hash: GENESIS.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let base = row_hash(&sample());
        let variants: [fn(&mut AuditRow); 11] = [
            |r| {
                r.seq += 1;
            },
            |r| {
                r.at += 1;
            },
            |r| {
                r.zone = "sms".into();
            },
            |r| {
                r.action = "logout".into();
            },
            |r| {
                r.outcome = "failure".into();
            },
            |r| {
                r.tenant_id = Some("acme".into());
            },
            |r| {
                r.actor = "cli".into();
            },
            |r| {
                r.subject = None;
            },
            |r| {
                r.details = "{\"a\":1}".into();
            },
            |r| {
                r.request_id = Some("r".into());
            },
            |r| {
                r.prev_hash = "1".repeat(64);
            },
        ];
        for change in variants {
            let mut r = sample();
            change(&mut r);
            assert_ne!(row_hash(&r), base);
        }
    }

    #[test]
    fn zones_round_trip_through_their_names() {
        for z in Zone::ALL {
            assert_eq!(Zone::parse(z.as_str()), Some(z));
        }
        assert_eq!(Zone::parse("nope"), None);
    }
}
