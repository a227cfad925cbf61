//! Scale-out (issue 7): two real `secur360 serve` processes on one PostgreSQL database. A 5,000-message alert
//! goes out exactly once (each recipient once, whichever instance claimed it), and a scheduled job occurrence
//! that both schedulers find due is recorded once in `job_runs`.

use std::time::{Duration, Instant};

use chrono::{Datelike, DurationRound, Timelike, Utc};
use reqwest::Method;

use crate::fake_twilio::FakeTwilio;
use crate::faults::{alert_everyone, insert_consenting_workers, scalar, sms_serve_vars, timed_out_calls};
use crate::helpers::*;
use crate::process::{poll_until, ServeProcess};

const MESSAGES: usize = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_two_serve_processes_on_one_postgres_send_each_message_once_and_run_an_occurrence_once() {
    let fake = FakeTwilio::start().await;
    let (db, url, _dir) = fresh_database(Backend::Postgres).await;

    // A cleanup occurrence two minutes ago (UTC), once a year: due for both schedulers as soon as they start
    // (an occurrence stays due for the catch-up hour), so both race for the same one.
    let occurrence = (Utc::now() - chrono::Duration::minutes(2)).duration_trunc(chrono::Duration::minutes(1)).unwrap();
    let cron = format!("{} {} {} {} *", occurrence.minute(), occurrence.hour(), occurrence.day(), occurrence.month());
    let mut vars = sms_serve_vars(&fake, &url, MESSAGES, 250, 32);
    vars.retain(|(k, _)| k != "SMS_CLEANUP_CRON");
    vars.push(("SMS_CLEANUP_CRON".into(), cron.clone()));
    vars.push(("CRON_TZ".into(), "UTC".into()));

    let (a, b) = tokio::join!(ServeProcess::start("scale-a", &vars), ServeProcess::start("scale-b", &vars));
    let key = a.tenant_with_key(&db, "scale").await;
    insert_consenting_workers(&db, "scale", MESSAGES).await;

    let started = Instant::now();
    let alert_id = alert_everyone(&b, &key, MESSAGES).await;
    fake.wait_for_distinct_recipients(MESSAGES, Duration::from_secs(170)).await;
    poll_until("every message recorded with its Twilio SID", Duration::from_secs(60), || async {
        (scalar(&db, "SELECT COUNT(*) FROM sms_messages WHERE twilio_sid IS NULL").await == 0).then_some(())
    })
    .await;
    let elapsed = started.elapsed();

    let (distinct, sent) = fake.accepted_counts();
    let per_to = fake.accepted_per_to();
    let by_instance: Vec<(String, i64)> = secur360::on_db!(&db, p => sqlx::query_as(
        "SELECT lease_owner, COUNT(*) FROM sms_messages WHERE alert_id = $1 GROUP BY lease_owner ORDER BY lease_owner"
    ).bind(&alert_id).fetch_all(p).await)
    .unwrap();
    let runs: Vec<(String, String, String, String)> = secur360::on_db!(&db, p => sqlx::query_as(
        "SELECT occurrence, trigger, instance, status FROM job_runs WHERE job = 'sms_cleanup'"
    ).fetch_all(p).await)
    .unwrap();
    println!(
        "scale-out: {MESSAGES} messages through 2 instances in {elapsed:.1?}; sent {sent}, distinct {distinct}; \
         per instance {:?}; sms_cleanup runs {runs:?}",
        by_instance.iter().map(|(_, n)| n).collect::<Vec<_>>()
    );

    let timeouts = (timed_out_calls(&a), timed_out_calls(&b));
    assert_eq!(
        (distinct, sent),
        (MESSAGES, MESSAGES),
        "every message sent exactly once (provider calls that timed out, per instance: {timeouts:?})"
    );
    assert!(per_to.values().all(|&c| c == 1));
    assert_eq!(by_instance.len(), 2, "both instances dispatched part of the alert: {by_instance:?}");
    assert!(by_instance.iter().all(|(owner, n)| !owner.is_empty() && *n > 0));
    assert_eq!(
        scalar(&db, &format!("SELECT COUNT(*) FROM sms_messages WHERE alert_id = '{alert_id}' AND status = 'sending'"))
            .await,
        MESSAGES as i64
    );

    // The occurrence both schedulers found due ran once, under its schedule key.
    let key_expected = occurrence.with_timezone(&chrono_tz::UTC).to_rfc3339();
    assert_eq!(runs.len(), 1, "one run of the occurrence: {runs:?}");
    assert_eq!(
        (runs[0].0.as_str(), runs[0].1.as_str(), runs[0].3.as_str()),
        (key_expected.as_str(), "schedule", "succeeded")
    );
    let (s, jobs) = a.operator(Method::GET, "/api/jobs", None).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{jobs}");
    a.assert_no_panic();
    b.assert_no_panic();
}
