//! The append-only, hash-chained audit log (`system_audit_logs`).
//!
//! Writing and chaining are two steps, so the chain is not on the write path of every audited change:
//!
//! - [`append`] / [`append_many`] insert the row inside the caller's transaction, with no chain lock and no read
//!   of the chain's tail: the row commits or rolls back with the change it records (a rolled-back change leaves
//!   no audit row, a committed one always has its row). It gets its insertion identity `id` at once, and is
//!   *unsealed*: `seq`, `prev_hash` and `hash` are NULL.
//! - [`seal`] links unsealed rows into the chain: under the chain lock (a PostgreSQL transaction-scoped
//!   advisory lock that only sealers take; SQLite write transactions are serial anyway) it reads the tail and
//!   the unsealed rows in `id` order, and gives each the next `seq`, the previous row's hash and its own hash
//!   (SHA-256 over `prev_hash` and the row's canonical JSON content, `seq`, `id` and time included), one short
//!   transaction per bounded batch. The chain's order is the sealing order: a row that commits late with a
//!   lower `id` is simply sealed by a later pass. `serve` seals in the background about once a second
//!   ([`run_sealer`]); `audit verify` seals first.
//! - [`verify`] walks the sealed chain and detects a modified row and a deleted row (a gap in `seq` or a broken
//!   link); it counts unsealed rows separately. Until it is sealed a row is listed by the operator's query but
//!   is not yet tamper-evident. The database refuses every UPDATE but sealing an unsealed row, and every DELETE
//!   but the retention purge's.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::db::{Db, Tx};
use crate::{on_db, on_tx};

/// The hash a first row links to.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Arbitrary key of the PostgreSQL advisory lock that serialises sealers (only them: writers never take it).
const CHAIN_LOCK_KEY: i64 = 0x5ec0_3600_a0d1;

/// Rows sealed per transaction (bounded, so the chain lock is held briefly).
const SEAL_BATCH: usize = 1000;

/// Rows per multi-row statement: 9 values per inserted row and 4 per sealed row stay under SQLite's historic
/// 999-parameter limit.
const INSERT_CHUNK: usize = 100;
const SEAL_CHUNK: usize = 200;

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
    /// Insertion identity: assigned when the row is written, the order rows are listed and sealed in.
    pub id: i64,
    /// Position in the chain; `None` until sealed.
    pub seq: Option<i64>,
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
    /// `None` until sealed.
    pub prev_hash: Option<String>,
    /// `None` until sealed.
    pub hash: Option<String>,
}

impl AuditRow {
    pub fn sealed(&self) -> bool {
        self.seq.is_some()
    }
}

/// Details are stored as JSON text; the API shows them as JSON, or as the raw string if unparsable.
fn details_as_json<S: serde::Serializer>(details: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<Value>(details) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(details),
    }
}

const COLUMNS: &str =
    "id, seq, at, zone, action, outcome, tenant_id, actor, subject, details, request_id, prev_hash, hash";

/// The hash of row `r` at chain position `seq` after `prev_hash`: SHA-256 over the previous hash and the row's
/// content as a canonical JSON array (position, insertion identity, time and every field).
fn row_hash(r: &AuditRow, seq: i64, prev_hash: &str) -> String {
    let content = serde_json::json!([
        seq,
        r.id,
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
    digest(prev_hash, &content)
}

/// The hash of rows sealed before insertion identities existed (migration 0004): the same without `id`. Such
/// rows were given `id = seq` by the migration; [`verify`] accepts this form only for them.
fn legacy_row_hash(r: &AuditRow, seq: i64, prev_hash: &str) -> String {
    let content = serde_json::json!([
        seq,
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
    digest(prev_hash, &content)
}

fn digest(prev_hash: &str, content: &Value) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(content.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Whether a sealed row's stored hash matches its content and link.
fn hash_matches(r: &AuditRow, seq: i64, prev_hash: &str, hash: &str) -> bool {
    row_hash(r, seq, prev_hash) == hash || (r.id == seq && legacy_row_hash(r, seq, prev_hash) == hash)
}

/// Append `entry` inside `tx`; it commits or rolls back with the caller's change. Takes no chain lock and reads
/// nothing: the row is sealed into the chain later ([`seal`]). Returns the row's insertion identity (`id`).
pub async fn append(tx: &mut Tx, entry: &Entry, now: i64) -> Result<i64, sqlx::Error> {
    let window = open_window_unless_system(tx).await?;
    let id: i64 = on_tx!(tx, c => sqlx::query_scalar(
        "INSERT INTO system_audit_logs (at, zone, action, outcome, tenant_id, actor, subject, details, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"
    )
    .bind(now).bind(entry.zone.as_str()).bind(entry.action).bind(entry.outcome.as_str()).bind(&entry.tenant_id)
    .bind(&entry.actor).bind(&entry.subject).bind(entry.details.to_string()).bind(&entry.request_id)
    .fetch_one(&mut *c).await)?;
    if window {
        crate::db::scope::close_window(tx).await?;
    }
    Ok(id)
}

/// Append several entries inside `tx` with one multi-row INSERT (per chunk of [`INSERT_CHUNK`] rows), for
/// callers that record a group of events in one transaction. Same guarantees as [`append`].
pub async fn append_many(tx: &mut Tx, entries: &[Entry], now: i64) -> Result<u64, sqlx::Error> {
    if entries.is_empty() {
        return Ok(0);
    }
    let window = open_window_unless_system(tx).await?;
    let mut inserted = 0;
    for chunk in entries.chunks(INSERT_CHUNK) {
        let mut sql = String::from(
            "INSERT INTO system_audit_logs (at, zone, action, outcome, tenant_id, actor, subject, details, request_id) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 9;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9
            ));
        }
        inserted += on_tx!(tx, c => {
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q.bind(now).bind(e.zone.as_str()).bind(e.action).bind(e.outcome.as_str()).bind(&e.tenant_id)
                    .bind(&e.actor).bind(&e.subject).bind(e.details.to_string()).bind(&e.request_id);
            }
            q.execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
    }
    if window {
        crate::db::scope::close_window(tx).await?;
    }
    Ok(inserted)
}

/// Audit rows are platform-wide: one may carry another tenant (or none) while written from a tenant's
/// transaction, which row-level security would refuse. Open a system window for the insert unless the task is
/// already in a system context (PostgreSQL; a no-op on SQLite). Returns whether a window was opened.
async fn open_window_unless_system(tx: &mut Tx) -> Result<bool, sqlx::Error> {
    if tx.backend() == crate::db::Backend::Sqlite
        || matches!(crate::db::scope::current(), crate::db::scope::Scope::System(_))
    {
        return Ok(false);
    }
    crate::db::scope::open_window(tx, "audit-append").await?;
    Ok(true)
}

/// Append in a transaction of its own (for events that change nothing else). Returns the row's `id`.
pub async fn record(db: &Db, entry: &Entry, now: i64) -> Result<i64, sqlx::Error> {
    let mut tx = db.begin().await?;
    let id = append(&mut tx, entry, now).await?;
    tx.commit().await?;
    Ok(id)
}

/// What one [`seal`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SealReport {
    /// Rows linked into the chain.
    pub sealed: u64,
    /// The chain's head after sealing (`None` while the chain is empty).
    pub head_seq: Option<i64>,
}

/// Link every row unsealed when called into the chain, in batches of [`SEAL_BATCH`] rows, one short
/// transaction each under the chain lock (so concurrent sealers, in this process or another instance, never
/// interleave: each batch continues from the tail the previous one committed). Rows committed while this runs
/// are sealed by this call or the next. Runs in a system context (the chain spans every tenant).
pub async fn seal(db: &Db) -> Result<SealReport, sqlx::Error> {
    crate::db::scope::system("audit-seal", async {
        let mut report = SealReport::default();
        loop {
            let (sealed, head) = seal_batch(db).await?;
            report.sealed += sealed as u64;
            if head.is_some() {
                report.head_seq = head;
            }
            if sealed < SEAL_BATCH {
                return Ok(report);
            }
        }
    })
    .await
}

/// Seal up to [`SEAL_BATCH`] rows in one transaction; returns how many and the chain's head.
async fn seal_batch(db: &Db) -> Result<(usize, Option<i64>), sqlx::Error> {
    let mut tx = db.begin().await?;
    if let Tx::Postgres(t) = &mut tx {
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK_KEY).execute(&mut **t).await?;
    }
    // Read after the lock: the previous sealer's batch is committed and visible (READ COMMITTED takes a new
    // snapshot per statement; SQLite's BEGIN IMMEDIATE already excludes other writers).
    let tail: Option<(i64, String)> = on_tx!(&mut tx, c => sqlx::query_as(
        "SELECT seq, hash FROM system_audit_logs WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1"
    ).fetch_optional(&mut *c).await)?;
    let sql = format!("SELECT {COLUMNS} FROM system_audit_logs WHERE seq IS NULL ORDER BY id LIMIT $1");
    let rows: Vec<AuditRow> =
        on_tx!(&mut tx, c => sqlx::query_as(&sql).bind(SEAL_BATCH as i64).fetch_all(&mut *c).await)?;
    let (mut seq, mut prev_hash) = match tail {
        Some((seq, hash)) => (seq, hash),
        None => (0, GENESIS.to_owned()),
    };
    if rows.is_empty() {
        tx.commit().await?;
        return Ok((0, (seq > 0).then_some(seq)));
    }
    let mut seals = Vec::with_capacity(rows.len());
    for r in &rows {
        seq += 1;
        let hash = row_hash(r, seq, &prev_hash);
        seals.push((r.id, seq, std::mem::replace(&mut prev_hash, hash.clone()), hash));
    }
    for chunk in seals.chunks(SEAL_CHUNK) {
        let sql = seal_statement(chunk.len());
        let updated = on_tx!(&mut tx, c => {
            let mut q = sqlx::query(&sql);
            for (id, seq, prev, hash) in chunk {
                q = q.bind(*id).bind(*seq).bind(prev).bind(hash);
            }
            q.execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        if updated != chunk.len() as u64 {
            // Cannot happen under the chain lock; refuse to commit a chain with holes rather than trust it.
            return Err(sqlx::Error::Protocol(format!(
                "audit sealing updated {updated} of {} rows; rolled back",
                chunk.len()
            )));
        }
    }
    tx.commit().await?;
    Ok((rows.len(), Some(seq)))
}

/// The sealing UPDATE of `rows` rows, joined to their new values (UPDATE … FROM: PostgreSQL, SQLite ≥ 3.33);
/// binds `id, seq, prev_hash, hash` per row. The unary `+` keeps the `seq IS NULL` guard off the index: SQLite's
/// planner takes `IS NULL` on the unique `seq` for one row, drove the join from that index over every unsealed
/// row and scanned the values for each (a backlog of 130,000 rows took 250 s of CPU to seal); with the `+` the
/// rows are found by `id`.
fn seal_statement(rows: usize) -> String {
    let mut values = String::new();
    for i in 0..rows {
        let b = i * 4;
        if i == 0 {
            values.push_str(&format!(
                "SELECT ${} AS id, ${} AS seq, ${} AS prev_hash, ${} AS hash",
                b + 1,
                b + 2,
                b + 3,
                b + 4
            ));
        } else {
            values.push_str(&format!(" UNION ALL SELECT ${}, ${}, ${}, ${}", b + 1, b + 2, b + 3, b + 4));
        }
    }
    format!(
        "UPDATE system_audit_logs SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash \
         FROM ({values}) AS v WHERE system_audit_logs.id = v.id AND +system_audit_logs.seq IS NULL"
    )
}

/// The background sealer of `serve`: seals about once a second (and everything once more when stopping), until
/// `stop`. A backlog is sealed batch by batch with a short pause after each full batch: on SQLite a sealer going
/// back to back kept the single write lock from the writers waiting in SQLite's busy handler (an emergency alert
/// among them: `bench/run` saw its first provider call 0.5–1.1 s late behind tens of thousands of unsealed rows).
/// At [`SEAL_BATCH`] rows per pause it still seals several times what the dispatcher can audit per second.
pub async fn run_sealer(db: Db, mut stop: tokio::sync::watch::Receiver<bool>) {
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        } || *stop.borrow();
        if stopping {
            match seal(&db).await {
                Ok(r) => tracing::debug!(sealed = r.sealed, head = ?r.head_seq, "audit rows sealed at stop"),
                Err(e) => tracing::warn!(error = %e, "sealing the audit chain at stop failed"),
            }
            return;
        }
        loop {
            match crate::db::scope::system("audit-seal", seal_batch(&db)).await {
                Ok((sealed, head)) => {
                    if sealed > 0 {
                        tracing::debug!(sealed, head = ?head, "audit rows sealed");
                    }
                    if sealed < SEAL_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sealing the audit chain failed (retried in a second)");
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

/// Rows written but not yet sealed into the chain.
pub async fn unsealed_count(db: &Db) -> Result<i64, sqlx::Error> {
    on_db!(db, p => sqlx::query_scalar("SELECT COUNT(*) FROM system_audit_logs WHERE seq IS NULL").fetch_one(p).await)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub rows_checked: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// Rows written but not yet sealed (listed, not yet tamper-evident); not a failure.
    pub unsealed: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Walk the sealed chain in `seq` order. The oldest remaining row anchors the chain (older rows may have been
/// purged by retention); from there every link, every hash and the `seq` continuity are checked. Unsealed rows
/// are counted, not checked (call [`seal`] first to include them).
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
            // Selected on `seq > $1`, and sealing sets the three together (a CHECK constraint).
            let (Some(seq), Some(row_prev), Some(hash)) = (r.seq, r.prev_hash.as_deref(), r.hash.as_deref()) else {
                report.problems.push(format!("row id {} is partly sealed", r.id));
                continue;
            };
            report.rows_checked += 1;
            report.first_seq.get_or_insert(seq);
            match &prev {
                None if seq == 1 && row_prev != GENESIS => {
                    report.problems.push("row 1 does not start from the genesis hash".into())
                }
                None => {}
                Some((pseq, phash)) => {
                    if seq != pseq + 1 {
                        report.problems.push(format!("rows {} to {} are missing (deleted)", pseq + 1, seq - 1));
                    }
                    if row_prev != phash {
                        report.problems.push(format!("row {seq} does not link to row {pseq}"));
                    }
                }
            }
            if !hash_matches(&r, seq, row_prev, hash) {
                report.problems.push(format!("row {seq} was modified (its hash does not match its content)"));
            }
            report.last_seq = Some(seq);
            prev = Some((seq, hash.to_owned()));
        }
    }
    report.unsealed = unsealed_count(db).await?.max(0) as u64;
    Ok(report)
}

/// Retention purge: delete the oldest sealed rows, up to the first one at or after `cutoff` (a prefix of the
/// chain, so the remaining chain still verifies). Unsealed rows are never purged (they are sealed first, then
/// purged by a later run when old). The only path allowed past the append-only triggers.
pub async fn purge_before(db: &Db, cutoff: i64) -> Result<u64, sqlx::Error> {
    let mut tx = db.begin().await?;
    // The newest sealed row always stays, so the chain keeps its head and numbering never restarts. Every row
    // below the first one at or after the cutoff is older than the cutoff (that row is the first such in seq).
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

/// Filters of the operator's audit query (sealed and unsealed rows alike, newest insertion first).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub zone: Option<String>,
    pub action: Option<String>,
    pub tenant_id: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Return rows with `id` below this (paging backwards from the newest).
    pub before_id: Option<i64>,
    pub limit: i64,
}

pub async fn query(db: &Db, f: &Filter) -> Result<Vec<AuditRow>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM system_audit_logs WHERE ($1 IS NULL OR zone = $1) AND ($2 IS NULL OR action = $2) \
         AND ($3 IS NULL OR tenant_id = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR at < $5) \
         AND ($6 IS NULL OR id < $6) ORDER BY id DESC LIMIT $7"
    );
    on_db!(db, p => sqlx::query_as(&sql)
        .bind(&f.zone).bind(&f.action).bind(&f.tenant_id).bind(f.from).bind(f.to).bind(f.before_id).bind(f.limit)
        .fetch_all(p).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AuditRow {
        AuditRow {
            id: 12,
            seq: Some(7),
            at: 1_700_000_000_000,
            zone: "admin".into(),
            action: "login".into(),
            outcome: "success".into(),
            tenant_id: None,
            actor: "operator".into(),
            subject: Some("x".into()),
            details: "{}".into(),
            request_id: None,
            prev_hash: None,
            hash: None,
        }
    }

    fn hash_of(r: &AuditRow) -> String {
        row_hash(r, r.seq.unwrap(), r.prev_hash.as_deref().unwrap_or(GENESIS))
    }

    #[test]
    fn the_hash_covers_every_field_and_the_link() {
        let base = hash_of(&sample());
        let variants: [fn(&mut AuditRow); 12] = [
            |r| {
                r.seq = Some(8);
            },
            |r| {
                r.id += 1;
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
                r.prev_hash = Some("1".repeat(64));
            },
        ];
        for change in variants {
            let mut r = sample();
            change(&mut r);
            assert_ne!(hash_of(&r), base);
        }
    }

    #[test]
    fn the_legacy_hash_is_accepted_only_for_rows_sealed_before_insertion_ids() {
        let mut r = sample();
        let legacy = legacy_row_hash(&r, 7, GENESIS);
        assert!(!hash_matches(&r, 7, GENESIS, &legacy), "id 12 was given by an insert, not by the migration");
        r.id = 7;
        assert!(hash_matches(&r, 7, GENESIS, &legacy));
        r.actor = "cli".into();
        assert!(!hash_matches(&r, 7, GENESIS, &legacy), "a modified legacy row is detected");
        let current = row_hash(&sample(), 7, GENESIS);
        assert!(hash_matches(&sample(), 7, GENESIS, &current));
    }

    /// The planner's choice that made sealing quadratic in the backlog (see [`seal_statement`]), checked on the
    /// service's own SQLite build with unsealed rows present: the join must look each row up by its id.
    #[tokio::test]
    async fn the_sealing_update_finds_rows_by_id_on_sqlite() {
        let db = Db::connect("sqlite::memory:", 1).await.unwrap();
        db.migrate().await.unwrap();
        let Db::Sqlite(pool) = &db else { unreachable!() };
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
             INSERT INTO system_audit_logs (at, zone, action, outcome, actor, details) \
             SELECT i, 'system', 'test', 'info', 'tests', '{}' FROM n",
        )
        .execute(pool)
        .await
        .unwrap();
        // EXPLAIN QUERY PLAN rows are (id, parent, notused, detail).
        let plan: Vec<String> =
            sqlx::query_as::<_, (i64, i64, i64, String)>(&format!("EXPLAIN QUERY PLAN {}", seal_statement(200)))
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.3)
                .collect();
        let table: Vec<&String> = plan.iter().filter(|d| d.contains("system_audit_logs")).collect();
        assert_eq!(table.len(), 1, "{plan:#?}");
        assert!(table[0].starts_with("SEARCH system_audit_logs USING INTEGER PRIMARY KEY"), "{plan:#?}");
    }

    #[test]
    fn zones_round_trip_through_their_names() {
        for z in Zone::ALL {
            assert_eq!(Zone::parse(z.as_str()), Some(z));
        }
        assert_eq!(Zone::parse("nope"), None);
    }
}
