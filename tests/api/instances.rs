//! Two instances of the service on one PostgreSQL database (scale-out), in process: each has its own pool,
//! listener and instance id, and both are driven at once. The SMS queue is claimed exactly once, a scheduled
//! occurrence runs once, the SMS rate limit is shared, and Stripe events for one object delivered to either
//! instance converge. (The same with real `serve` processes is in the process tests.)

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use secur360::jobs::schedule;
use secur360::on_db;
use secur360::sms::dispatcher::run_once;
use serde_json::json;

use crate::billing_webhooks::{deliver, event, link_customer, sub_object, webhook_vars};
use crate::helpers::*;
use crate::sms::{alert, sms_app, T0};

/// `n` consenting workers of `tenant`, written in one statement (the API path is tested elsewhere).
async fn workers(app: &TestApp, tenant: &str, n: usize) {
    app.exec(&format!(
        "INSERT INTO workers (id, tenant_id, name, phone, language, sms_consent, sms_consent_at, sms_consent_source, created_at, updated_at)
         SELECT 'wk_{tenant}_' || g, '{tenant}', 'Worker ' || g, '+1514600' || lpad(g::text, 4, '0'), 'fr', TRUE, 1, 'admin_api', g, g
         FROM generate_series(1, {n}) AS g"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_dispatching_one_queue_send_every_message_exactly_once() {
    let (a, fake) = sms_app(Backend::Postgres, true, &[("SMS_DISPATCH_RATE_PER_SECOND", "50")]).await;
    let b = a.another_instance().await;
    let key = a.tenant_with_key("acme").await;
    workers(&a, "acme", 400).await;
    let (s, body) =
        alert(&a, &key, json!({"kind": "general_alert", "body": "Evacuation", "recipients": {"all": true}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");

    let (mut by_a, mut by_b, mut rounds) = (0, 0, 0);
    loop {
        let (ra, rb) = tokio::join!(run_once(&a.state, T0), run_once(&b.state, T0));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!((ra.lost, rb.lost), (0, 0));
        by_a += ra.accepted;
        by_b += rb.accepted;
        rounds += 1;
        if ra.claimed + rb.claimed == 0 {
            break;
        }
        assert!(rounds < 100, "the queue drains");
    }
    let mut per_phone: HashMap<String, usize> = HashMap::new();
    for r in fake.requests() {
        *per_phone.entry(r.field("To").unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(per_phone.len(), 400, "every worker got the alert");
    assert!(per_phone.values().all(|&n| n == 1), "no message was sent twice");
    assert_eq!(by_a + by_b, 400);
    assert!(by_a > 0 && by_b > 0, "both instances took part ({by_a} / {by_b})");
    assert_eq!(a.count("sms_messages WHERE twilio_sid IS NOT NULL AND attempts = 1").await, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_occurrence_due_on_two_instances_runs_once() {
    let vars = [("SMS_CLEANUP_CRON", "0 3 * * *"), ("BILLING_SYNC_CRON", "")];
    let (a, _fake) = sms_app(Backend::Postgres, false, &vars).await;
    let b = a.another_instance().await;
    // T0 is 03:00 in Toronto: the cleanup is due on both at once.
    let (ran_a, ran_b) = tokio::join!(schedule::tick(&a.state, T0), schedule::tick(&b.state, T0));
    assert_eq!(ran_a.len() + ran_b.len(), 1, "one instance ran it");
    // Later ticks within the occurrence's hour do nothing, on either instance.
    let (again_a, again_b) =
        tokio::join!(schedule::tick(&a.state, T0 + 60_000), schedule::tick(&b.state, T0 + 120_000));
    assert_eq!(again_a.len() + again_b.len(), 0);
    let runs: Vec<(String, String)> =
        on_db!(&a.db, p => sqlx::query_as("SELECT occurrence, instance FROM job_runs WHERE job = 'sms_cleanup'").fetch_all(p).await)
            .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!([a.state.instance_id.as_ref(), b.state.instance_id.as_ref()].contains(&runs[0].1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sms_rate_limit_is_shared_by_every_instance() {
    let (a, _fake) = sms_app(Backend::Postgres, false, &[("SMS_RATE_PER_MINUTE", "10")]).await;
    let b = a.another_instance().await;
    let key = a.tenant_with_key("acme").await;
    workers(&a, "acme", 6).await;
    let body = json!({"kind": "general_alert", "body": "Test", "recipients": {"all": true}});
    // Two alerts of 6 at the same moment, one per instance: 12 > 10, so exactly one is refused.
    let ((sa, ba), (sb, bb)) = tokio::join!(alert(&a, &key, body.clone()), alert(&b, &key, body.clone()));
    let mut statuses = [sa, sb];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::TOO_MANY_REQUESTS], "{ba} {bb}");
    assert_eq!(a.count("sms_alerts").await, 1, "the refused alert left nothing behind");
    assert_eq!(a.count("sms_messages").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stripe_events_for_one_subscription_delivered_to_two_instances_converge() {
    let a = spawn_app_with(Backend::Postgres, webhook_vars()).await;
    let b = a.another_instance().await;
    a.tenant_with_key("acme").await;
    link_customer(&a, "acme", "cus_acme").await;
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 100;
    let events: Vec<String> = (0..6)
        .map(|i| {
            let status = if i % 2 == 0 { "active" } else { "past_due" };
            event(
                &format!("evt_{i}"),
                "customer.subscription.updated",
                t + i,
                sub_object("sub_x", "cus_acme", status, i + 1),
            )
        })
        .collect();
    // Newest first, alternating instances, each event delivered to both at once (a retry racing the original).
    for body in events.iter().rev() {
        let ((sa, ra), (sb, rb)) = tokio::join!(deliver(&a, body), deliver(&b, body));
        assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{ra} {rb}");
    }
    let state: (String, i64) = on_db!(&a.db, p => sqlx::query_as(
        "SELECT status, addon_quantity FROM subscriptions WHERE stripe_subscription_id = 'sub_x'"
    ).fetch_one(p).await)
    .unwrap();
    assert_eq!(state, ("past_due".to_owned(), 6), "the newest event wins whatever the instance and order");
    assert_eq!(a.count("billing_events").await, 6, "each event stored once");
    assert_eq!(a.count("system_audit_logs WHERE action = 'webhook_event'").await, 6, "and audited once");
    let (s, _) = a.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
}
