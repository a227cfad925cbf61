//! Scheduled jobs: billing sync and SMS cleanup, run once per occurrence across instances.
//!
//! Every run is a `job_runs` row. A scheduled occurrence has the key `<RFC 3339 time in CRON_TZ>`, unique per
//! job, so when several instances tick at once exactly one inserts the row and runs it. Manual runs (HTTP, CLI,
//! admin page) get a unique key; any run is refused while another run of the same job holds a live lease.

pub mod cleanup;
pub mod schedule;

use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use crate::audit::{self, Entry, Outcome, Zone};
use crate::db::{self, Tx};
use crate::domain::ids::new_id;
use crate::state::AppState;
use crate::{on_db, on_tx};

/// A run may take this long before its lease lapses and another run is allowed.
pub const LEASE_MS: i64 = 30 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    BillingSync,
    SmsCleanup,
}

impl Job {
    pub const ALL: [Job; 2] = [Job::BillingSync, Job::SmsCleanup];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::BillingSync => "billing_sync",
            Job::SmsCleanup => "sms_cleanup",
        }
    }

    /// The system database context the job runs in (row-level security; see `db::scope`).
    fn system_scope(self) -> &'static str {
        match self {
            Job::BillingSync => "job:billing_sync",
            Job::SmsCleanup => "job:sms_cleanup",
        }
    }

    /// The audit action of this job (SPEC §6 vocabulary).
    fn action(self) -> &'static str {
        match self {
            Job::BillingSync => "sync",
            Job::SmsCleanup => "cleanup",
        }
    }

    fn zone(self) -> Zone {
        match self {
            Job::BillingSync => Zone::Billing,
            Job::SmsCleanup => Zone::Sms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Http,
    Cli,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Http => "http",
            Trigger::Cli => "cli",
            Trigger::Admin => "admin",
        }
    }
}

/// What a job function reports: per-step counts, and the steps that failed (if any).
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobReport {
    pub counts: serde_json::Map<String, Value>,
    pub errors: Vec<String>,
    /// Some of the work was done (with errors, the run is `partial` rather than `failed`).
    pub progressed: bool,
}

impl JobReport {
    /// A step that completed, with how many rows/objects it handled.
    pub fn count(&mut self, name: &str, n: u64) {
        self.counts.insert(name.to_owned(), json!(n));
        self.progressed = true;
    }

    pub fn error(&mut self, step: &str, e: impl std::fmt::Display) {
        self.errors.push(format!("{step}: {e}"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    /// Some steps failed, others succeeded: reported as such, never as success.
    Partial,
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job: Job,
    pub trigger: Trigger,
    pub occurrence: String,
    pub status: RunStatus,
    pub counts: serde_json::Map<String, Value>,
    pub errors: Vec<String>,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{job} is already running (run {run_id}); wait for it to finish")]
    AlreadyRunning { job: &'static str, run_id: String },
    #[error("this occurrence of {job} was already taken by another instance")]
    OccurrenceTaken { job: &'static str },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Start (record), run and finish one run of `job`. `occurrence` is the schedule key, `None` for manual runs.
pub async fn run(
    state: &AppState,
    job: Job,
    trigger: Trigger,
    occurrence: Option<String>,
    actor: &str,
) -> Result<RunRecord, StartError> {
    crate::db::scope::system(job.system_scope(), run_now(state, job, trigger, occurrence, actor)).await
}

async fn run_now(
    state: &AppState,
    job: Job,
    trigger: Trigger,
    occurrence: Option<String>,
    actor: &str,
) -> Result<RunRecord, StartError> {
    let started_at = state.now();
    let run_id = new_id("run");
    let occurrence = occurrence.unwrap_or_else(|| format!("manual:{run_id}"));
    start(state, job, trigger, &run_id, &occurrence, started_at).await?;

    let clock = Instant::now();
    let report = match job {
        Job::SmsCleanup => cleanup::run(state, started_at).await,
        Job::BillingSync => {
            // Boxed: the sync's future (Stripe paging, event retries) is large, and every future that awaits a
            // job (the scheduler's tick, tests joining two ticks) would carry it inline; debug builds came within
            // a few KiB of a 2 MiB thread stack.
            let s = Box::pin(crate::billing::sync::run(state, started_at)).await;
            let mut counts = serde_json::Map::new();
            for (name, n) in [
                ("customers_seen", s.customers_seen),
                ("subscriptions_seen", s.subscriptions_seen),
                ("invoices_seen", s.invoices_seen),
                ("corrected", s.corrected),
                ("events_recovered", s.events_recovered),
                ("events_retried", s.events_retried),
                ("events_failed", s.events_failed),
                ("events_given_up", s.events_given_up),
            ] {
                counts.insert(name.to_owned(), json!(n));
            }
            let mut errors = s.errors;
            if !s.ok && errors.is_empty() {
                errors.push("billing sync did not complete".to_owned());
            }
            JobReport { counts, errors, progressed: s.customers_seen + s.subscriptions_seen > 0 }
        }
    };
    let status = if report.errors.is_empty() {
        RunStatus::Succeeded
    } else if report.progressed {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    };
    let record = RunRecord {
        run_id,
        job,
        trigger,
        occurrence,
        status,
        counts: report.counts,
        errors: report.errors,
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    crate::metrics::job_run(job.as_str(), record.status.as_str(), record.duration_ms as f64 / 1000.0);
    finish(state, &record, actor).await?;
    Ok(record)
}

async fn start(
    state: &AppState,
    job: Job,
    trigger: Trigger,
    run_id: &str,
    occurrence: &str,
    now: i64,
) -> Result<(), StartError> {
    let mut tx = state.db.begin().await?;
    if let Tx::Postgres(t) = &mut tx {
        // PostgreSQL only: serialise starts of one job (SQLite's BEGIN IMMEDIATE already does).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("secur360.job.{}", job.as_str()))
            .execute(&mut **t)
            .await?;
    }
    let running: Option<String> = on_tx!(&mut tx, c => sqlx::query_scalar(
        "SELECT id FROM job_runs WHERE job = $1 AND status = 'running' AND lease_until > $2 LIMIT 1"
    ).bind(job.as_str()).bind(now).fetch_optional(&mut *c).await)?;
    if let Some(run_id) = running {
        return Err(StartError::AlreadyRunning { job: job.as_str(), run_id });
    }
    let inserted = on_tx!(&mut tx, c => sqlx::query(
        "INSERT INTO job_runs (id, job, occurrence, trigger, instance, status, started_at, lease_until) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7) ON CONFLICT (job, occurrence) DO NOTHING"
    )
    .bind(run_id).bind(job.as_str()).bind(occurrence).bind(trigger.as_str()).bind(&*state.instance_id)
    .bind(now).bind(now + LEASE_MS)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    if inserted == 0 {
        return Err(StartError::OccurrenceTaken { job: job.as_str() });
    }
    tx.commit().await?;
    Ok(())
}

async fn finish(state: &AppState, r: &RunRecord, actor: &str) -> Result<(), sqlx::Error> {
    let now = state.now();
    let counts = Value::Object(r.counts.clone()).to_string();
    let error = (!r.errors.is_empty()).then(|| r.errors.join("; "));
    let mut tx = state.db.begin().await?;
    on_tx!(&mut tx, c => sqlx::query(
        "UPDATE job_runs SET status = $2, counts = $3, error = $4, finished_at = $5 WHERE id = $1"
    ).bind(&r.run_id).bind(r.status.as_str()).bind(&counts).bind(&error).bind(now)
    .execute(&mut *c).await.map(|r| r.rows_affected()))?;
    let outcome = if r.status == RunStatus::Succeeded { Outcome::Success } else { Outcome::Failure };
    let entry = Entry::new(r.job.zone(), r.job.action(), actor).subject(&r.run_id).outcome(outcome).details(json!({
        "job": r.job.as_str(), "trigger": r.trigger.as_str(), "status": r.status.as_str(),
        "counts": r.counts, "errors": r.errors,
    }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    if r.status != RunStatus::Succeeded {
        tracing::warn!(job = r.job.as_str(), run_id = %r.run_id, status = r.status.as_str(), errors = ?r.errors, "job did not fully succeed");
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRunRow {
    pub id: String,
    pub job: String,
    pub occurrence: String,
    pub trigger: String,
    pub instance: String,
    pub status: String,
    pub counts: Option<String>,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::time::ser_ts")]
    pub started_at: i64,
    #[serde(serialize_with = "crate::time::ser_opt_ts")]
    pub finished_at: Option<i64>,
}

pub async fn recent_runs(db: &db::Db, limit: i64) -> Result<Vec<JobRunRow>, sqlx::Error> {
    on_db!(db, p => sqlx::query_as(
        "SELECT id, job, occurrence, trigger, instance, status, counts, error, started_at, finished_at \
         FROM job_runs ORDER BY started_at DESC, id LIMIT $1"
    ).bind(limit).fetch_all(p).await)
}

pub async fn last_run(db: &db::Db, job: Job) -> Result<Option<JobRunRow>, sqlx::Error> {
    on_db!(db, p => sqlx::query_as(
        "SELECT id, job, occurrence, trigger, instance, status, counts, error, started_at, finished_at \
         FROM job_runs WHERE job = $1 ORDER BY started_at DESC, id LIMIT 1"
    ).bind(job.as_str()).fetch_optional(p).await)
}
