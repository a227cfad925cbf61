//! Process-level faults (issue 9): a real `secur360 serve` killed with SIGKILL in the middle of an SMS alert
//! and in the middle of Stripe webhooks; the database stopped under load (a private PostgreSQL cluster); the
//! SMS provider down for a while. Each test prints its figures; RELIABILITY.md records them.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secur360::db::Db;
use secur360::on_db;
use serde_json::{json, Value};

use crate::fake_twilio::FakeTwilio;
use crate::helpers::*;
use crate::process::{poll_until, vars, ServeProcess};

// ---------------------------------------------------------------------------------------------------------
// Shared set-up

/// Insert `n` consenting workers of `tenant` straight into the real schema (the API would take minutes for
/// 10,000): distinct Montreal numbers `+1514873NNNN`, consent recorded as given at registration.
pub async fn insert_consenting_workers(db: &Db, tenant: &str, n: usize) {
    let now = secur360::time::Clock::system().now_ms();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| {
                format!(
                    "('wrk_{tenant}_{i:05}', '{tenant}', 'Worker {i}', '+1514873{i:04}', 'fr', TRUE, {now}, \
                     'worker_registration', {now}, {now})"
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO workers (id, tenant_id, name, phone, language, sms_consent, sms_consent_at, \
             sms_consent_source, created_at, updated_at) VALUES {}",
            values.join(", ")
        );
        on_db!(db, p => sqlx::query(&sql).execute(p).await.map(|_| ())).expect("insert workers");
    }
}

pub async fn scalar(db: &Db, sql: &str) -> i64 {
    on_db!(db, p => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The variables of a `serve` sending alerts of up to `recipients` through `fake` as fast as this machine
/// allows: `rate` messages claimed per pass (the in-flight bound of one instance), `concurrency` provider
/// calls at once, schedules off unless a test sets them.
pub fn sms_serve_vars(
    fake: &FakeTwilio,
    db_url: &str,
    recipients: usize,
    rate: u32,
    concurrency: u32,
) -> Vec<(String, String)> {
    let mut v = fake.vars();
    v.extend(vars(&[
        ("DATABASE_URL", db_url),
        ("SMS_MAX_RECIPIENTS", &recipients.to_string()),
        ("SMS_RATE_PER_MINUTE", &recipients.to_string()),
        ("SMS_DISPATCH_RATE_PER_SECOND", &rate.to_string()),
        ("SMS_DISPATCH_CONCURRENCY", &concurrency.to_string()),
        ("DATABASE_MAX_CONNECTIONS", "10"),
        // Generous: a loopback fake on a loaded 2-core machine can take more than the fake's 500 ms default,
        // and a timed-out call may still have been taken (an ambiguous, duplicate-prone failure). Lease 40 s.
        ("SMS_PROVIDER_TIMEOUT_MS", PROCESS_PROVIDER_TIMEOUT_MS),
        ("BILLING_SYNC_CRON", ""),
        ("SMS_CLEANUP_CRON", ""),
    ]));
    v
}

pub const PROCESS_PROVIDER_TIMEOUT_MS: &str = "5000";

/// Provider calls of a process that timed out (logged "will retry" with code `timeout`): each may have been
/// taken by Twilio all the same, so each may be a duplicate.
pub fn timed_out_calls(p: &ServeProcess) -> usize {
    p.log_lines().iter().filter(|l| l.contains("will retry") && l.contains(r#""code":"timeout""#)).count()
}

/// Queue one general alert to every worker of the tenant; returns the alert id.
pub async fn alert_everyone(p: &ServeProcess, key: &str, expected: usize) -> String {
    let body = json!({ "kind": "general_alert", "body": "Alerte : évacuez la zone B. / Evacuate zone B.", "recipients": { "all": true } });
    let (s, b) = p.send(Method::POST, "/api/sms/alerts", Some(key), Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{}", truncate(&b));
    assert_eq!(b["queued"].as_u64(), Some(expected as u64), "{}", truncate(&b));
    b["alert_id"].as_str().unwrap().to_owned()
}

fn truncate(v: &Value) -> String {
    v.to_string().chars().take(600).collect()
}

// ---------------------------------------------------------------------------------------------------------
// 1. SIGKILL in the middle of a 10,000-message alert

const CRASH_MESSAGES: usize = 10_000;
/// Messages claimed per dispatch pass (`SMS_DISPATCH_RATE_PER_SECOND`). One pass runs at a time per instance.
const CRASH_CLAIM_BATCH: u32 = 250;
/// Provider calls in flight (`SMS_DISPATCH_CONCURRENCY`). The dispatcher claims passes of 4 messages per permit
/// (at most the per-second rate) and records the outcomes of a pass in groups, so when the process dies at most
/// one pass of claimed messages can have reached Twilio without their SID being stored: the duplicate bound of
/// one crash. (Outcomes that fail to record while the process lives, and calls that time out, can be sent twice
/// too: the test counts them from the log.)
const CRASH_CONCURRENCY: u32 = 32;
/// Messages one dispatch pass claims (`run_loop`): 4 per permit, at most the per-second budget.
const CRASH_PASS: usize = {
    let pass = CRASH_CONCURRENCY as usize * 4;
    if pass < CRASH_CLAIM_BATCH as usize {
        pass
    } else {
        CRASH_CLAIM_BATCH as usize
    }
};

async fn crash_in_the_middle_of_an_alert(backend: Backend) {
    let fake = FakeTwilio::start().await;
    let (db, url, _dir) = fresh_database(backend).await;
    let mut serve = ServeProcess::start(
        &format!("crash-{backend:?}"),
        &sms_serve_vars(&fake, &url, CRASH_MESSAGES, CRASH_CLAIM_BATCH, CRASH_CONCURRENCY),
    )
    .await;
    let key = serve.tenant_with_key(&db, "crash").await;
    insert_consenting_workers(&db, "crash", CRASH_MESSAGES).await;

    let started = Instant::now();
    let alert_id = alert_everyone(&serve, &key, CRASH_MESSAGES).await;
    let queued_in = started.elapsed();
    eprintln!("crash ({backend:?}): alert of {CRASH_MESSAGES} queued in {queued_in:.1?}");

    // Kill once a good part is out, while dispatch passes are in flight.
    fake.wait_for_distinct_recipients(CRASH_MESSAGES * 3 / 10, Duration::from_secs(240)).await;
    serve.kill9();
    let killed_at = started.elapsed();
    let (distinct_at_kill, sent_at_kill) = fake.accepted_counts();
    let recorded_at_kill = scalar(&db, "SELECT COUNT(*) FROM sms_messages WHERE twilio_sid IS NOT NULL").await as usize;
    // Claimed by the dead process and not recorded: each may or may not have reached Twilio.
    let in_flight_at_kill =
        scalar(&db, "SELECT COUNT(*) FROM sms_messages WHERE status = 'sending' AND twilio_sid IS NULL").await as usize;
    assert!(distinct_at_kill < CRASH_MESSAGES, "the whole alert went out before the kill; nothing was tested");

    eprintln!("crash ({backend:?}): SIGKILL at {killed_at:.1?}, {sent_at_kill} sent, {recorded_at_kill} recorded");
    serve.restart().await;
    eprintln!("crash ({backend:?}): restarted at {:.1?}", started.elapsed());
    fake.wait_for_distinct_recipients(CRASH_MESSAGES, Duration::from_secs(300)).await;
    // Every message's outcome is stored (a SID): nothing can be claimed and sent again after this point.
    poll_until("every message recorded with its Twilio SID", Duration::from_secs(120), || async {
        let n = scalar(&db, "SELECT COUNT(*) FROM sms_messages WHERE twilio_sid IS NULL").await;
        (n == 0).then_some(())
    })
    .await;
    let total_time = started.elapsed();

    let per_to = fake.accepted_per_to();
    let (distinct, sent) = fake.accepted_counts();
    let duplicates = sent - distinct;
    let twice = per_to.values().filter(|&&c| c > 1).count();
    let max_per_to = per_to.values().copied().max().unwrap_or(0);
    let lost_records = serve.log_lines().iter().filter(|l| l.contains("recording an SMS outcome failed")).count();
    let timeouts = timed_out_calls(&serve);
    let bound = in_flight_at_kill + lost_records + timeouts;
    println!(
        "crash test ({backend:?}): {CRASH_MESSAGES} messages; queued in {queued_in:.1?}; SIGKILL at {killed_at:.1?} \
         after {sent_at_kill} sent ({recorded_at_kill} recorded); restarted; all out at {total_time:.1?}; \
         sent {sent}, distinct {distinct}, duplicates {duplicates} ({twice} recipients twice, max {max_per_to}), \
         bound {bound} ({in_flight_at_kill} claimed and unrecorded at the kill, at most one pass of {CRASH_PASS}, + \
         {lost_records} outcome(s) that failed to record + {timeouts} timed-out call(s))"
    );

    assert_eq!(distinct, CRASH_MESSAGES, "every recipient got the alert");
    assert!(
        in_flight_at_kill <= CRASH_PASS,
        "{in_flight_at_kill} messages were claimed and unrecorded at the kill: more than one pass ({CRASH_PASS})"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates exceed the in-flight bound ({in_flight_at_kill} claimed and unrecorded at the \
         kill + {lost_records} outcomes that failed to record + {timeouts} timed-out calls)"
    );
    assert!(max_per_to <= 2, "a recipient got the alert {max_per_to} times from a single crash");
    // The store agrees: every message handed to Twilio once it restarted, none lost or left behind.
    let messages = scalar(&db, &format!("SELECT COUNT(*) FROM sms_messages WHERE alert_id = '{alert_id}'")).await;
    let sending = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM sms_messages WHERE alert_id = '{alert_id}' AND status = 'sending' AND twilio_sid IS NOT NULL"),
    )
    .await;
    assert_eq!((messages, sending), (CRASH_MESSAGES as i64, CRASH_MESSAGES as i64));
    let (s, view) = serve.send(Method::GET, &format!("/api/sms/alerts/{alert_id}"), Some(&key), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(view["status"].as_str(), Some("sending"), "{}", truncate(&view));
    serve.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigkill_in_the_middle_of_a_10000_message_alert_loses_nothing_on_sqlite() {
    crash_in_the_middle_of_an_alert(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigkill_in_the_middle_of_a_10000_message_alert_loses_nothing_on_postgres() {
    crash_in_the_middle_of_an_alert(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------
// 4. Provider outage: Twilio answers 500, then 429, then times out; messages wait and then go

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name} check"))
}

async fn next_attempts(app: &TestApp) -> Vec<i64> {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>("SELECT next_attempt_at FROM sms_messages ORDER BY id").fetch_all(p).await).unwrap()
}

async fn provider_outage(backend: Backend) {
    use crate::fake_twilio::Reply;
    use crate::sms::{alert, run, sms_app, T0};
    const N: usize = 20;
    let (app, fake) = sms_app(backend, true, &[]).await;
    let key = app.tenant_with_key("outage").await;
    insert_consenting_workers(&app.db, "outage", N).await;

    fake.start_outage(Reply::ServerError);
    let body = json!({ "kind": "emergency", "body": "Fuite de gaz, évacuez.", "recipients": { "all": true } });
    let (s, b) = alert(&app, &key, body).await;
    assert_eq!((s, b["queued"].as_u64()), (StatusCode::ACCEPTED, Some(N as u64)), "{b}");
    let alert_id = b["alert_id"].as_str().unwrap().to_owned();

    // 500: every message goes back to the queue for a backed-off retry; nothing is lost or marked failed.
    let mut now = T0;
    let r = run(&app, now).await;
    assert_eq!((r.claimed, r.retried, r.accepted, r.failed), (N, N, 0, 0), "{r:?}");
    assert!(
        next_attempts(&app).await.iter().all(|&t| (now + 15_000..=now + 30_000).contains(&t)),
        "first retry in 15–30 s"
    );
    assert_eq!(run(&app, now + 10_000).await.claimed, 0, "nothing is due before its retry time");

    // The status page shows it while it lasts: the Twilio probe fails, the queue holds the alert.
    let (s, status) = app.operator(Method::GET, "/api/system/status", None).await;
    assert!(s == StatusCode::OK || s == StatusCode::SERVICE_UNAVAILABLE, "{status}");
    let (twilio, queue) = (check(&status, "twilio"), check(&status, "sms_queue"));
    assert_eq!(twilio["status"], "warning", "{twilio}");
    assert!(twilio["detail"].as_str().unwrap().contains("500"), "{twilio}");
    assert_eq!(queue["data"]["depth"].as_i64(), Some(N as i64), "{queue}");
    assert_eq!(
        (queue["status"].as_str(), queue["data"]["retrying"].as_i64()),
        (Some("warning"), Some(N as i64)),
        "{queue}"
    );
    assert_ne!(status["status"], "healthy");

    // 429 with Retry-After: the provider's delay is honoured exactly.
    fake.start_outage(Reply::TooMany(120));
    now += 30_000;
    let r = run(&app, now).await;
    assert_eq!((r.claimed, r.retried), (N, N), "{r:?}");
    assert!(next_attempts(&app).await.iter().all(|&t| t == now + 120_000));
    assert_eq!(run(&app, now + 119_000).await.claimed, 0);

    // Timeouts (past SMS_PROVIDER_TIMEOUT_MS): retried too. Twilio may have taken them, so they can arrive twice.
    fake.start_outage(Reply::Delay(Duration::from_secs(2)));
    now += 120_000;
    let r = run(&app, now).await;
    assert_eq!((r.claimed, r.retried, r.accepted), (N, N, 0), "{r:?}");
    let (_, taken_during_timeouts) = fake.accepted_counts();
    let errors: Vec<Option<String>> =
        on_db!(&app.db, p => sqlx::query_scalar("SELECT error_code FROM sms_messages").fetch_all(p).await).unwrap();
    assert!(errors.iter().all(|e| e.as_deref() == Some("timeout")), "{errors:?}");
    let (_, view) = app.send(Method::GET, &format!("/api/sms/alerts/{alert_id}"), Some(&key), None).await;
    // The tenant sees the alert waiting, and why: each recipient's attempts and last error.
    assert_eq!(view["status"], "queued", "{view}");
    assert!(
        view["recipients"].as_array().unwrap().iter().all(|r| r["attempts"] == 3 && r["error_code"] == "timeout"),
        "{view}"
    );

    // The provider is back: at the next due time every message goes, on its fourth attempt.
    fake.end_outage();
    now += 120_000; // attempt 4's backoff is at most 2 min
    let r = run(&app, now).await;
    assert_eq!((r.claimed, r.accepted, r.failed), (N, N, 0), "{r:?}");
    let attempts: Vec<i64> =
        on_db!(&app.db, p => sqlx::query_scalar("SELECT attempts FROM sms_messages").fetch_all(p).await).unwrap();
    assert!(attempts.iter().all(|&a| a == 4), "{attempts:?}");
    let (distinct, sent) = fake.accepted_counts();
    assert_eq!(distinct, N, "every recipient got the alert");
    assert_eq!(sent, N + taken_during_timeouts, "duplicates only from the timed-out attempts");
    assert_eq!(
        scalar(&app.db, "SELECT COUNT(*) FROM sms_messages WHERE status = 'queued' OR twilio_sid IS NULL").await,
        0
    );
    let (_, status) = app.operator(Method::GET, "/api/system/status", None).await;
    assert!(check(&status, "sms_queue")["data"]["oldest_due_age_seconds"].is_null(), "nothing waits: {status}");
    assert_eq!(check(&status, "sms_queue")["data"]["retrying"], 0, "nothing waits: {status}");
    println!(
        "provider outage ({backend:?}): {N} messages, 500 → 429 (Retry-After 120 s honoured) → timeouts → back; \
         all accepted on attempt 4 after {} s of clock; {taken_during_timeouts} duplicate(s) from timed-out attempts",
        (now - T0) / 1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_provider_outage_messages_wait_then_go_and_the_status_shows_it_on_sqlite() {
    provider_outage(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_provider_outage_messages_wait_then_go_and_the_status_shows_it_on_postgres() {
    provider_outage(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------
// 2. SIGKILL while Stripe webhooks are being processed; Stripe redelivers

const SUBSCRIPTIONS: usize = 30;
const EVENTS_PER_SUBSCRIPTION: usize = 5;

/// The events of one subscription, oldest first: created, then updates; (event id, body, status, add-on qty).
fn subscription_story(i: usize, t0: i64) -> Vec<(String, String, &'static str, i64)> {
    use crate::billing_webhooks::{event, sub_object};
    let statuses = ["active", "active", "past_due", "active", "past_due"];
    (0..EVENTS_PER_SUBSCRIPTION)
        .map(|k| {
            let id = format!("evt_kill_{i:03}_{k}");
            let kind = if k == 0 { "customer.subscription.created" } else { "customer.subscription.updated" };
            let addon = ((i + k) % 4) as i64;
            let status = statuses[(i + k) % statuses.len()];
            let body = event(
                &id,
                kind,
                t0 + k as i64 * 10,
                sub_object(&format!("sub_kill_{i:03}"), &format!("cus_kill_{i:03}"), status, addon),
            );
            (id, body, status, addon)
        })
        .collect()
}

async fn deliver_to(p: &ServeProcess, body: &str) -> Result<StatusCode, reqwest::Error> {
    use secur360::domain::stripe_signature;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let header = stripe_signature::sign(body.as_bytes(), crate::billing_webhooks::SECRET, now);
    let res = p
        .client
        .post(p.url("/api/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("Stripe-Signature", header)
        .body(body.to_owned())
        .send()
        .await?;
    Ok(res.status())
}

async fn kill_during_webhooks(backend: Backend) {
    use futures::StreamExt;
    let (db, url, _dir) = fresh_database(backend).await;
    let mut env = vars(crate::billing_webhooks::webhook_vars());
    env.extend(vars(&[("DATABASE_URL", &url), ("BILLING_SYNC_CRON", ""), ("SMS_CLEANUP_CRON", "")]));
    let mut serve = ServeProcess::start(&format!("webhooks-{backend:?}"), &env).await;
    for i in 0..SUBSCRIPTIONS {
        let (s, b) = serve
            .operator(
                Method::POST,
                "/api/tenants",
                Some(json!({ "id": format!("kill-{i:03}"), "name": format!("Kill {i}") })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let sql = format!("INSERT INTO customers (stripe_customer_id, tenant_id, created_at, updated_at) VALUES ('cus_kill_{i:03}', 'kill-{i:03}', 1, 1)");
        on_db!(&db, p => sqlx::query(&sql).execute(p).await.map(|_| ())).unwrap();
    }
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 3600;
    let stories: Vec<_> = (0..SUBSCRIPTIONS).map(|i| subscription_story(i, t0)).collect();
    // Stripe's first delivery attempt: every event, eight at a time, interleaved across subscriptions.
    let first: Vec<String> =
        (0..EVENTS_PER_SUBSCRIPTION).flat_map(|k| stories.iter().map(move |s| s[k].1.clone())).collect();
    let total = first.len();

    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kill_after = total / 3;
    let reached = std::sync::Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let delivery = {
        let (acked, reached, serve_ref) = (acked.clone(), reached.clone(), &serve);
        futures::stream::iter(first.iter())
            .map(move |body| {
                let (acked, reached) = (acked.clone(), reached.clone());
                async move {
                    if let Ok(s) = deliver_to(serve_ref, body).await {
                        if s.is_success() && acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == kill_after {
                            reached.notify_one();
                        }
                    }
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>()
    };
    // Deliver until a third is acknowledged, then SIGKILL with deliveries in flight.
    tokio::select! {
        _ = delivery => panic!("every delivery finished before the kill"),
        _ = reached.notified() => {}
    }
    serve.kill9();
    let acked_before_kill = acked.load(std::sync::atomic::Ordering::SeqCst);
    let unfinished =
        scalar(&db, "SELECT COUNT(*) FROM billing_events WHERE processing_status NOT IN ('processed', 'ignored')")
            .await;

    // Stripe retries what was not acknowledged; we redeliver everything, newest first (order is not guaranteed).
    serve.restart().await;
    let redelivered: Vec<StatusCode> = futures::stream::iter(first.iter().rev())
        .then(|b| async { deliver_to(&serve, b).await.expect("redelivery answered") })
        .collect()
        .await;
    assert!(redelivered.iter().all(|s| s.is_success()), "{redelivered:?}");

    // Events left mid-processing by the dead process are re-applied by serve's retry pass once their lease lapses.
    let expected: Vec<(String, String, i64)> = stories
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (format!("sub_kill_{i:03}"), s[EVENTS_PER_SUBSCRIPTION - 1].2.to_owned(), s[EVENTS_PER_SUBSCRIPTION - 1].3)
        })
        .collect();
    poll_until("the subscription mirror converges and every event is processed", Duration::from_secs(170), || async {
        let rows: Vec<(String, String, i64)> = on_db!(&db, p => sqlx::query_as(
            "SELECT stripe_subscription_id, status, addon_quantity FROM subscriptions ORDER BY stripe_subscription_id"
        ).fetch_all(p).await)
        .unwrap();
        let pending =
            scalar(&db, "SELECT COUNT(*) FROM billing_events WHERE processing_status NOT IN ('processed', 'ignored')")
                .await;
        (rows == expected && pending == 0).then_some(())
    })
    .await;
    let converged = started.elapsed();
    // Each event had exactly one effect: one audit row per event, one stored row per event.
    let audited: Vec<(String, i64)> = on_db!(&db, p => sqlx::query_as(
        "SELECT subject, COUNT(*) FROM system_audit_logs WHERE action = 'webhook_event' GROUP BY subject HAVING COUNT(*) <> 1"
    ).fetch_all(p).await).unwrap();
    assert!(audited.is_empty(), "events audited more than once: {audited:?}");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM billing_events").await, total as i64);
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT subject) FROM system_audit_logs WHERE action = 'webhook_event'").await,
        total as i64
    );
    println!(
        "webhook kill ({backend:?}): {total} events; SIGKILL after {acked_before_kill} acknowledged, {unfinished} stored but \
         not finished; all redelivered (2xx); mirror right {converged:.1?} after the first delivery"
    );
    serve.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigkill_during_stripe_webhooks_then_redelivery_leaves_the_mirror_right_on_sqlite() {
    kill_during_webhooks(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_sigkill_during_stripe_webhooks_then_redelivery_leaves_the_mirror_right_on_postgres() {
    kill_during_webhooks(Backend::Postgres).await;
}

// ---------------------------------------------------------------------------------------------------------
// 3. Database outage under load (a private PostgreSQL cluster, stopped with -m immediate and started again)

/// One request of the load: when it started and ended relative to the test's start, its answer.
#[derive(Debug, Clone)]
struct Outcome {
    phone: String,
    started: Duration,
    took: Duration,
    status: Option<StatusCode>,
}

/// Past this a request during the outage counts as hanging: the pool's ACQUIRE_TIMEOUT and a margin for a
/// busy machine.
const OUTAGE_ANSWER_BOUND: Duration = Duration::from_secs(secur360::db::ACQUIRE_TIMEOUT.as_secs() + 5);

async fn database_outage() {
    use crate::pg_cluster::{private_database, PrivateCluster};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let cluster = PrivateCluster::start();
    let (db, url) = private_database(&cluster).await;
    let mut env = vars(&[
        ("DATABASE_URL", &url),
        ("DATABASE_MAX_CONNECTIONS", "5"),
        ("BILLING_SYNC_CRON", ""),
        ("SMS_CLEANUP_CRON", ""),
    ]);
    env.extend(vars(&crate::inbound::twilio_vars()));
    let mut serve = ServeProcess::start("db-outage", &env).await;
    let key = serve.tenant_with_key(&db, "outage").await;

    // The load: four clients creating workers back to back, each answer recorded.
    let t0 = Instant::now();
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (outcomes, stop, next) = (outcomes.clone(), stop.clone(), next.clone());
        let (client, url, key) = (serve.client.clone(), serve.url("/api/workers"), key.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let phone = format!("+1514874{n:04}");
                let started = t0.elapsed();
                let res = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&json!({ "name": format!("Load {n}"), "phone": phone, "language": "fr" }))
                    .send()
                    .await;
                let took = t0.elapsed() - started;
                outcomes.lock().unwrap().push(Outcome { phone, started, took, status: res.ok().map(|r| r.status()) });
            }
        }));
    }
    let count = |pred: &dyn Fn(&Outcome) -> bool| outcomes.lock().unwrap().iter().filter(|o| pred(o)).count();

    poll_until("50 workers created before the outage", Duration::from_secs(60), || async {
        (count(&|o| o.status == Some(StatusCode::CREATED)) >= 50).then_some(())
    })
    .await;
    let stopping = t0.elapsed();
    cluster.stop_immediate();
    let stopped = t0.elapsed();

    // Requests sent once the server is down: 503 within the bound, never a hang.
    poll_until("12 requests answered during the outage", Duration::from_secs(90), || async {
        (count(&|o| o.started > stopped) >= 12).then_some(())
    })
    .await;
    let (s, ready) = serve.send(Method::GET, "/readyz", None, None).await;
    assert_eq!((s, ready["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("database_unavailable")));
    // The safety line still puts callers through: the TwiML does not wait for the database.
    let calls = ["CAoutage1", "CAoutage2", "CAoutage3"];
    for sid in calls {
        let (s, twiml) = signed_call(&serve, sid).await;
        assert_eq!(s, StatusCode::OK, "a call during the outage: {twiml}");
        assert!(twiml.contains(&format!(">{}</Dial>", crate::inbound::OWNER)), "{twiml}");
    }
    let restarting = t0.elapsed();
    cluster.start_server();
    let restarted = t0.elapsed();

    // The same process recovers: ready again, and writes succeed.
    poll_until("/readyz answers 200 again", Duration::from_secs(60), || async {
        let r = serve.client.get(serve.url("/readyz")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    let ready_again = t0.elapsed();
    poll_until("20 workers created after the restart", Duration::from_secs(60), || async {
        (count(&|o| o.started > restarted && o.status == Some(StatusCode::CREATED)) >= 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert!(serve.is_running(), "serve exited during the outage:\n{}", serve.tail(30));
    serve.assert_no_panic();

    let all = outcomes.lock().unwrap().clone();
    let during: Vec<&Outcome> = all.iter().filter(|o| o.started > stopped && o.started + o.took < restarting).collect();
    let in_flight: Vec<&Outcome> =
        all.iter().filter(|o| o.started <= stopped && o.started + o.took > stopping).collect();
    let slowest = during.iter().map(|o| o.took).max().unwrap_or_default();
    assert!(!during.is_empty());
    for o in &during {
        assert_eq!(o.status, Some(StatusCode::SERVICE_UNAVAILABLE), "a request during the outage: {o:?}");
        assert!(o.took <= OUTAGE_ANSWER_BOUND, "a request hung for {:?} during the outage", o.took);
    }
    // Requests caught by the stop itself fail (500 or 503) but never claim a success that is not stored.
    for o in &in_flight {
        assert!(o.took <= OUTAGE_ANSWER_BOUND, "a request in flight at the stop hung for {:?}", o.took);
        let answered = o.status.map(|s| s.as_u16());
        assert!(matches!(answered, Some(201 | 500 | 503)), "a request in flight at the stop: {o:?}");
    }
    // Nothing acknowledged is lost: every 201 is in the database, and nothing else was written.
    let acked: std::collections::BTreeSet<String> =
        all.iter().filter(|o| o.status == Some(StatusCode::CREATED)).map(|o| o.phone.clone()).collect();
    let stored: std::collections::BTreeSet<String> = on_db!(&db, p => sqlx::query_scalar::<_, String>(
        "SELECT phone FROM workers WHERE tenant_id = 'outage'"
    ).fetch_all(p).await)
    .unwrap()
    .into_iter()
    .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let unacked_stored = stored.difference(&acked).count();
    // The calls answered during the outage were recorded once the database was back (the graceful stop records
    // whatever the call log still holds), each once.
    let status = serve.terminate().await;
    assert!(status.success(), "serve did not stop cleanly: {status:?}\n{}", serve.tail(30));
    let recorded: Vec<String> = on_db!(&db, p => sqlx::query_scalar(
        "SELECT twilio_call_sid FROM voice_calls ORDER BY twilio_call_sid"
    ).fetch_all(p).await)
    .unwrap();
    assert_eq!(recorded, calls, "calls answered during the outage");
    let statuses_in_flight: Vec<Option<u16>> = in_flight.iter().map(|o| o.status.map(|s| s.as_u16())).collect();
    println!(
        "database outage (PostgreSQL, private cluster): {} requests; {} acknowledged before, all kept; outage {:.1?} \
         (stop took {:.1?}); {} requests during it, all 503, slowest {slowest:.1?} (bound {OUTAGE_ANSWER_BOUND:?}); \
         in flight at the stop: {statuses_in_flight:?}; ready again {:.1?} after the server came back; \
         {unacked_stored} stored without an acknowledgement (the answer was lost with the connection)",
        all.len(),
        all.iter().filter(|o| o.started < stopping && o.status == Some(StatusCode::CREATED)).count(),
        restarted - stopping,
        stopped - stopping,
        during.len(),
        ready_again - restarted,
    );
}

/// A signed inbound call to `serve`: (status, TwiML).
async fn signed_call(serve: &ServeProcess, sid: &str) -> (StatusCode, String) {
    let path = "/api/voice/inbound";
    let params: Vec<(String, String)> = [("CallSid", sid), ("From", "+14165550123"), ("To", crate::inbound::CONTACT)]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let url = format!("{}{path}", crate::inbound::APP_URL);
    let signature = secur360::domain::twilio_signature::compute(&url, &params, crate::inbound::TOKEN);
    let res = serve.client.post(serve.url(path)).header("x-twilio-signature", signature).form(&params).send().await;
    let res = res.expect("the call webhook is answered");
    (res.status(), res.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_database_outage_under_load_answers_503_in_bound_and_recovers_without_restart() {
    database_outage().await;
}
