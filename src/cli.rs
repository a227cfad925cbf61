//! The `secur360` command line: one binary, one subcommand per runbook task.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Settings;
use crate::db::{tenants, workers, Db};
use crate::error::ApiError;
use crate::startup::{Application, Migrations};
use crate::state::AppState;
use crate::tenancy::{self, Actor, NewApiKey, NewTenant, NewWorker};
use crate::time::Clock;
use crate::{audit, telemetry};

#[derive(Debug, Parser)]
#[command(name = "secur360", version, about = "Operations backbone of C-Secur360: billing, SMS alerts, voice, audit")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations on SQLite; on PostgreSQL only with --migrate).
    Serve {
        /// Apply pending migrations before serving, also on PostgreSQL.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Show the configuration as the service reads it (secrets as presence and fingerprint only).
    PrintConfig {
        #[arg(long)]
        json: bool,
    },
    /// Live status of every runbook check; exits 1 when something is critical.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run the runbook procedures that can be automated; exits 1 unless every check is healthy.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage workers of a tenant.
    #[command(subcommand)]
    Worker(WorkerCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// SMS tasks.
    #[command(subcommand)]
    Sms(SmsCommand),
    /// Billing (Stripe) tools.
    #[command(subcommand)]
    Billing(BillingCommand),
}

#[derive(Debug, Subcommand)]
enum BillingCommand {
    /// Reconcile the local mirror with Stripe (customers, subscriptions, recent invoices, undelivered events);
    /// exits non-zero unless everything succeeded.
    Sync {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SmsCommand {
    /// Send a test SMS (the runbook's procedure): queue it, then run one dispatch pass.
    Send {
        /// Recipient; national numbers are read as Canadian.
        #[arg(long)]
        to: String,
        #[arg(long)]
        body: String,
        /// Repeat-safe key: the same key and message answer as the first time without sending again.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Only queue it (a running `serve` sends it).
        #[arg(long)]
        queue_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the retention cleanup now (the weekly job); exits non-zero unless every step succeeded.
    Cleanup {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Slug id, e.g. `cerdia`.
        id: String,
        #[arg(long)]
        name: String,
        /// Province code (default QC).
        #[arg(long)]
        province: Option<String>,
        /// fr (default) or en.
        #[arg(long)]
        language: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Tenant API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Issue a key for a tenant; the key is printed once and never stored.
    Create {
        tenant: String,
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (`key_…`).
    Revoke { tenant: String, key_id: String },
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Add a worker to a tenant.
    Add(WorkerAdd),
    /// List a tenant's workers.
    List {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct WorkerAdd {
    tenant: String,
    #[arg(long)]
    name: String,
    /// Phone number; national numbers are read as Canadian.
    #[arg(long)]
    phone: String,
    #[arg(long)]
    language: Option<String>,
    #[arg(long)]
    site: Option<String>,
    /// The worker consented to SMS alerts (give the evidence with --consent-evidence).
    #[arg(long)]
    sms_consent: bool,
    #[arg(long)]
    consent_evidence: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; exits non-zero when a row was modified or deleted.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("secur360: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("secur360: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::db::scope::system("cli", run(cli.command, settings))) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("secur360: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn open_state(settings: Settings) -> anyhow::Result<AppState> {
    let db = Db::connect(settings.database_url.expose(), 2).await?;
    if db.backend() == crate::db::Backend::Sqlite {
        db.migrate().await?;
    }
    AppState::new(settings, db, Clock::system())
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        println!("{}", text());
    }
}

/// Run a job now from the CLI (recorded in job_runs, refused while it already runs); exit 1 unless it succeeded.
async fn run_job(state: &AppState, job: crate::jobs::Job, json: bool) -> anyhow::Result<ExitCode> {
    let record = crate::jobs::run(state, job, crate::jobs::Trigger::Cli, None, "cli").await?;
    print(json, &record, || {
        let counts: Vec<String> = record.counts.iter().map(|(k, v)| format!("  {k:<28} {v}")).collect();
        let errors: Vec<String> = record.errors.iter().map(|e| format!("  FAILED {e}")).collect();
        format!(
            "{} {:?} ({} ms)\n{}\n{}",
            job.as_str(),
            record.status,
            record.duration_ms,
            counts.join("\n"),
            errors.join("\n")
        )
        .trim_end()
        .to_owned()
    });
    Ok(if record.status == crate::jobs::RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn api(e: ApiError) -> anyhow::Error {
    match e.source {
        Some(source) if e.status.is_server_error() => source.context(e.message),
        _ => anyhow::anyhow!("{} ({})", e.message, e.code),
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    let cli_actor = Actor::new("cli", None);
    match command {
        Command::Serve { migrate } => {
            let mode = if migrate { Migrations::Apply } else { Migrations::ApplyOnSqlite };
            let app = Application::build(settings, mode).await?;
            app.run_until(crate::startup::shutdown_signal()).await?;
        }
        Command::Migrate => {
            let db = Db::connect(settings.database_url.expose(), 2).await?;
            crate::startup::migrate(&settings, &db).await?;
            let (known, _) = db.migration_versions().await.context("reading the migration table")?;
            println!("database schema is at version {known} ({:?})", db.backend());
        }
        Command::PrintConfig { json } => {
            let rows = settings.display_rows();
            if json {
                let map: serde_json::Map<String, serde_json::Value> =
                    rows.into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else {
                for (name, value) in rows {
                    println!("{name:<32} {value}");
                }
            }
        }
        Command::Status { json } => {
            let state = open_state(settings).await?;
            let report = crate::status::report(&state).await;
            print(json, &report, || crate::status::table(&report));
            if report.status == crate::status::Level::Critical {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Check { json } => {
            let state = open_state(settings).await?;
            let report = crate::status::runbook_check(&state).await;
            print(json, &report, || crate::status::table(&report));
            if report.status != crate::status::Level::Healthy {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Tenant(TenantCommand::Create { id, name, province, language, json }) => {
            let state = open_state(settings).await?;
            let input = NewTenant { id, name, province, language };
            let row = tenancy::create_tenant(&state, input, &cli_actor).await.map_err(api)?;
            print(json, &row, || format!("created tenant {} ({})", row.id, row.name));
        }
        Command::Tenant(TenantCommand::List { json }) => {
            let state = open_state(settings).await?;
            let rows = tenants::list(&state.db).await?;
            print(json, &rows, || {
                rows.iter()
                    .map(|t| format!("{:<24} {:<4} {:<3} {}", t.id, t.province, t.language, t.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Tenant(TenantCommand::ApiKey(ApiKeyCommand::Create { tenant, label, json })) => {
            let state = open_state(settings).await?;
            let issued =
                tenancy::create_api_key(&state, &tenant, NewApiKey { label }, &cli_actor).await.map_err(api)?;
            print(json, &issued, || {
                format!("API key {} for tenant {tenant} (shown once, store it now):\n{}", issued.row.id, issued.key)
            });
        }
        Command::Tenant(TenantCommand::ApiKey(ApiKeyCommand::Revoke { tenant, key_id })) => {
            let state = open_state(settings).await?;
            tenancy::revoke_api_key(&state, &tenant, &key_id, &cli_actor).await.map_err(api)?;
            println!("revoked {key_id}");
        }
        Command::Worker(WorkerCommand::Add(w)) => {
            let state = open_state(settings).await?;
            let input = NewWorker {
                name: w.name,
                phone: w.phone,
                language: w.language,
                site_id: w.site,
                sms_consent: w.sms_consent,
                consent_evidence: w.consent_evidence,
            };
            let row = tenancy::create_worker(&state, &w.tenant, input, &cli_actor).await.map_err(api)?;
            print(w.json, &row, || format!("added worker {} ({})", row.id, row.name));
        }
        Command::Worker(WorkerCommand::List { tenant, json }) => {
            let state = open_state(settings).await?;
            if tenants::get(&state.db, &tenant).await?.is_none() {
                anyhow::bail!("no tenant {tenant:?}");
            }
            let rows = workers::list(&state.db, &tenant, None).await?;
            print(json, &rows, || {
                rows.iter()
                    .map(|w| format!("{:<26} {:<16} consent={:<5} {}", w.id, w.phone, w.sms_consent, w.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Command::Billing(BillingCommand::Sync { json }) => {
            let state = open_state(settings).await?;
            return run_job(&state, crate::jobs::Job::BillingSync, json).await;
        }
        Command::Sms(SmsCommand::Cleanup { json }) => {
            let state = open_state(settings).await?;
            return run_job(&state, crate::jobs::Job::SmsCleanup, json).await;
        }
        Command::Sms(SmsCommand::Send { to, body, idempotency_key, queue_only, json }) => {
            let state = open_state(settings).await?;
            let request = serde_json::json!({ "to": to, "body": body });
            let mut answer = crate::sms::alerts::send_test(&state, request, idempotency_key.as_deref(), &cli_actor)
                .await
                .map_err(api)?;
            if !queue_only && answer["status"] == "queued" {
                let report = crate::sms::dispatcher::run_once(&state, state.now()).await?;
                let id = answer["message_id"].as_str().unwrap_or_default().to_owned();
                let status = crate::db::sms::message_status(&state.db, &id).await?;
                answer["dispatch"] = serde_json::json!({ "report": report, "message_status": status });
            }
            print(json, &answer, || {
                let mut line = format!(
                    "SMS {} to {}: {} ({} segment(s), {}) via the {} provider",
                    answer["message_id"].as_str().unwrap_or("-"),
                    answer["to_masked"].as_str().unwrap_or("-"),
                    answer["dispatch"]["message_status"].as_str().or(answer["status"].as_str()).unwrap_or("-"),
                    answer["segments"],
                    answer["encoding"].as_str().unwrap_or("-"),
                    answer["provider"].as_str().unwrap_or("-"),
                );
                if answer["provider"] == "simulated" {
                    line.push_str("\nSIMULATED: Twilio is not configured, nothing was sent to a phone");
                }
                line
            });
        }
        Command::Audit(AuditCommand::Verify { json }) => {
            let state = open_state(settings).await?;
            // Link rows written since the last background pass first, so they are checked too.
            audit::seal(&state.db).await?;
            let report = audit::verify(&state.db).await?;
            print(json, &report, || {
                // Rows committed after the seal above (a serve running meanwhile) are reported, not failed.
                let unsealed = match report.unsealed {
                    0 => String::new(),
                    n => format!(", {n} newer row(s) not yet sealed"),
                };
                if report.ok() {
                    format!("audit chain intact: {} row(s) checked{unsealed}", report.rows_checked)
                } else {
                    format!(
                        "AUDIT CHAIN BROKEN ({} row(s) checked{unsealed}):\n  {}",
                        report.rows_checked,
                        report.problems.join("\n  ")
                    )
                }
            });
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
