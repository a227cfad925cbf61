use reqwest::{Method, StatusCode};
use secur360::jobs::{self, schedule, Job, RunStatus, Trigger};
use secur360::state::AppState;
use secur360::time::Clock;
use serde_json::json;

use crate::both_backends;
use crate::helpers::*;

const DAY: i64 = 86_400_000;

/// One queued-then-delivered message, created `age_days` ago.
async fn message(app: &TestApp, id: &str, age_days: i64, status: &str) {
    let at = app.state.now() - age_days * DAY;
    app.exec(&format!(
        "INSERT INTO sms_messages (id, kind, to_phone, to_phone_masked, body, encoding, segments, status, next_attempt_at, \
         created_at, status_updated_at) VALUES ('{id}', 'general_alert', '+15148732015', '+1••••••••15', 'Cadenas posé', \
         'gsm7', 1, '{status}', {at}, {at}, {at})"
    ))
    .await;
}

both_backends! {
    async fn cleanup_scrubs_old_messages_keeps_recent_ones_and_the_consent_ledger(app) {
        let key = app.tenant_with_key("acme").await;
        app.send(Method::POST, "/api/workers", Some(&key), Some(json!({"name": "J", "phone": "514 873 2015", "sms_consent": true}))).await;
        message(&app, "msg_old", 200, "delivered").await;
        message(&app, "msg_old_queued", 200, "queued").await;
        message(&app, "msg_new", 10, "delivered").await;
        app.exec("INSERT INTO admin_sessions (id, token_hash, csrf_token, created_at, last_seen_at, expires_at) VALUES ('s1', 'h1', 'c', 0, 0, 1)").await;

        let run = jobs::run(&app.state, Job::SmsCleanup, Trigger::Cli, None, "tests").await.unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        assert_eq!(run.counts["messages_scrubbed"], 1);
        assert_eq!(run.counts["sessions_deleted"], 1);
        for step in ["alert_bodies_scrubbed", "inbound_scrubbed", "calls_scrubbed", "status_callbacks_deleted", "audit_rows_purged", "verification_codes_deleted", "rate_windows_deleted"] {
            assert!(run.counts.contains_key(step), "{step} missing from {:?}", run.counts);
        }

        let rows: Vec<(String, Option<String>, String, String)> = secur360::on_db!(&app.db, p => sqlx::query_as(
            "SELECT id, body, to_phone, status FROM sms_messages ORDER BY id").fetch_all(p).await).unwrap();
        assert_eq!(rows[0], ("msg_new".into(), Some("Cadenas posé".into()), "+15148732015".into(), "delivered".into()));
        // Scrubbed, but the row (status, kind, segments) stays for the delivery metrics.
        assert_eq!(rows[1], ("msg_old".into(), None, "+1••••••••15".into(), "delivered".into()));
        // A message still in the queue is never scrubbed from under the dispatcher.
        assert_eq!(rows[2].1.as_deref(), Some("Cadenas posé"));
        assert_eq!(app.count("consent_events").await, 1);

        let (_, runs) = app.operator(Method::GET, "/api/jobs", None).await;
        assert_eq!(runs["runs"][0]["status"], "succeeded");
        let (_, audit) = app.operator(Method::GET, "/api/audit?action=cleanup", None).await;
        assert_eq!(audit["entries"][0]["details"]["counts"]["messages_scrubbed"], 1);
    }

    async fn a_second_run_finds_nothing_more_to_scrub(app) {
        message(&app, "msg_old", 200, "failed").await;
        jobs::run(&app.state, Job::SmsCleanup, Trigger::Cli, None, "tests").await.unwrap();
        let again = jobs::run(&app.state, Job::SmsCleanup, Trigger::Cli, None, "tests").await.unwrap();
        assert_eq!(again.counts["messages_scrubbed"], 0);
    }

    async fn a_scheduled_occurrence_runs_once_across_two_instances(app) {
        // A second instance: its own state (own instance id) on the same database.
        let mut vars = std::collections::BTreeMap::new();
        vars.insert("DATABASE_URL".to_owned(), "sqlite://unused".to_owned());
        vars.insert("SMS_CLEANUP_CRON".to_owned(), "0 3 * * 0".to_owned());
        vars.insert("BILLING_SYNC_CRON".to_owned(), String::new());
        let settings = secur360::config::Settings::from_vars(vars).unwrap();
        // Sunday 2026-11-29 03:00 in Toronto = 08:00 UTC.
        let sunday = chrono::DateTime::parse_from_rfc3339("2026-11-29T08:00:05Z").unwrap().timestamp_millis();
        let a = AppState::new(settings.clone(), app.db.clone(), Clock::manual(sunday)).unwrap();
        let b = AppState::new(settings, app.db.clone(), Clock::manual(sunday)).unwrap();
        let (ra, rb) = tokio::join!(schedule::tick(&a, sunday), schedule::tick(&b, sunday));
        assert_eq!(ra.len() + rb.len(), 1, "{ra:?} {rb:?}");
        // Later ticks within the same occurrence's window do nothing; the next day's window has no occurrence.
        assert!(schedule::tick(&a, sunday + 60_000).await.is_empty());
        assert!(schedule::tick(&b, sunday + DAY).await.is_empty());
        let n: i64 = secur360::on_db!(&app.db, p => sqlx::query_scalar("SELECT COUNT(*) FROM job_runs WHERE trigger = 'schedule'").fetch_one(p).await).unwrap();
        assert_eq!(n, 1);
        let run = jobs::last_run(&app.db, Job::SmsCleanup).await.unwrap().unwrap();
        assert_eq!((run.occurrence.as_str(), run.status.as_str()), ("2026-11-29T03:00:00-05:00", "succeeded"));
        assert!(run.finished_at.is_some());
    }

    async fn a_trigger_while_the_job_runs_is_a_conflict(app) {
        let lease = app.state.now() + 60_000;
        app.exec(&format!("INSERT INTO job_runs (id, job, occurrence, trigger, instance, status, started_at, lease_until) \
                           VALUES ('run_x', 'sms_cleanup', 'manual:x', 'cli', 'other', 'running', 0, {lease})")).await;
        let (s, b) = app.operator(Method::POST, "/api/sms/cleanup", None).await;
        assert_eq!((s, error_code(&b)), (StatusCode::CONFLICT, "job_running"));
        // A run whose lease lapsed (crashed instance) no longer blocks.
        app.exec("UPDATE job_runs SET lease_until = 1 WHERE id = 'run_x'").await;
        let (s, b) = app.operator(Method::POST, "/api/sms/cleanup", None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b["run"]["status"], "succeeded");
    }

    async fn cron_triggers_fail_closed_without_a_cron_secret(app) {
        let (s, b) = app.send(Method::GET, "/api/sms/cleanup", Some("some-cron-secret-value"), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(b["error"]["message"].as_str().unwrap().contains("CRON_SECRET"));
        let (s, _) = app.send(Method::GET, "/api/sms/cleanup", None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(app.count("job_runs").await, 0);
    }

    async fn update_env_records_changed_names_never_values(app) {
        let first = secur360::env_changes::record(&app.state).await.unwrap();
        assert!(first.first_run && first.added.contains(&"ADMIN_TOKEN".to_owned()));
        let again = secur360::env_changes::record(&app.state).await.unwrap();
        assert!(again.is_empty(), "{again:?}");

        let mut vars = std::collections::BTreeMap::new();
        vars.insert("ADMIN_TOKEN".to_owned(), "a-rotated-operator-token-0123456789".to_owned());
        vars.insert("CRON_SECRET".to_owned(), "cron-secret-0123456789".to_owned());
        let changed = AppState::new(secur360::config::Settings::from_vars(vars).unwrap(), app.db.clone(), Clock::system()).unwrap();
        let diff = secur360::env_changes::record(&changed).await.unwrap();
        assert!(diff.changed.contains(&"ADMIN_TOKEN".to_owned()), "{diff:?}");
        assert!(diff.added.contains(&"CRON_SECRET".to_owned()));
        let (_, audit) = app.operator(Method::GET, "/api/audit?action=update_env", None).await;
        let text = audit.to_string();
        assert!(!text.contains("a-rotated-operator-token") && !text.contains(ADMIN_TOKEN) && !text.contains("cron-secret-0123"));
        assert_eq!(audit["entries"].as_array().unwrap().len(), 2);
        assert_eq!(audit["entries"][0]["zone"], "platform");
    }
}

mod with_cron_secret {
    use super::*;

    both_backends! {
        with &[("CRON_SECRET", "the-cron-secret-0123456789")];
        async fn the_cron_secret_runs_the_cleanup(app) {
            let (s, b) = app.send(Method::GET, "/api/sms/cleanup", Some("the-cron-secret-0123456789"), None).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let (s, _) = app.send(Method::POST, "/api/sms/cleanup", Some("wrong-secret-0123456789"), None).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED);
            let (_, audit) = app.operator(Method::GET, "/api/audit?action=cleanup", None).await;
            assert_eq!(audit["entries"][0]["actor"], "cron");
        }
    }
}
