//! The dispatcher records a group of outcomes in one transaction with set-based statements. These tests drive
//! that recording directly (`dispatcher::record`) with chosen outcomes for messages the app's own instance
//! claimed, so one group is guaranteed to hold them all; and the consent read of a pass (`consent_blocks`).

use reqwest::{Method, StatusCode};
use secur360::db::sms::{self as sms_db, Claimed};
use secur360::domain::twilio_signature;
use secur360::on_db;
use secur360::sms::dispatcher::{self, DispatchReport, Sent};
use secur360::sms::twilio::SendOutcome;
use serde_json::json;

use crate::fake_twilio::{self, FakeTwilio};
use crate::helpers::*;
use crate::sms::{alert, run, sms_app, worker, T0};

const STATUS_URL: &str = "https://c-secur360.example/api/sms/status";

/// `async fn name(app, fake) { … }` on both backends, against the fake Twilio.
macro_rules! group_tests {
    ($(async fn $name:ident($app:ident, $fake:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    #[allow(unused_variables)]
                    let ($app, $fake): (TestApp, FakeTwilio) = sms_app(Backend::Sqlite, true, &[]).await;
                    $body
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    #[allow(unused_variables)]
                    let ($app, $fake): (TestApp, FakeTwilio) = sms_app(Backend::Postgres, true, &[]).await;
                    $body
                }
            }
        )*
    };
}

/// A tenant with `n` consenting workers and an alert to all of them, every message claimed by the app's own
/// instance at `T0` (lease until `T0 + 60 s`): the tenant key, the worker ids, the alert id, the claims (in the
/// workers' order).
async fn claimed_alert(app: &TestApp, n: usize) -> (String, Vec<String>, String, Vec<Claimed>) {
    let key = app.tenant_with_key("acme").await;
    let mut workers = Vec::new();
    for i in 0..n {
        workers.push(worker(app, &key, &format!("W{i}"), &format!("514 873 {}", 2300 + i), true).await);
    }
    let (_, a) = alert(app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
    assert_eq!(a["queued"], n, "{a}");
    let owner = app.state.instance_id.to_string();
    let mut claimed = sms_db::claim(&app.db, T0, T0 + 60_000, &owner, 100).await.unwrap();
    assert_eq!(claimed.len(), n);
    claimed.sort_by_key(|m| workers.iter().position(|w| Some(w) == m.worker_id.as_ref()));
    (key, workers, a["alert_id"].as_str().unwrap().to_owned(), claimed)
}

fn accepted(sid: &str) -> Sent {
    Sent::Provider(SendOutcome::Accepted { sid: sid.to_owned() })
}

/// Status, SID, error code, lease owner and next attempt of a message.
type Row = (String, Option<String>, Option<String>, Option<String>, i64);

async fn row(app: &TestApp, id: &str) -> Row {
    on_db!(&app.db, p => sqlx::query_as::<_, Row>(
        "SELECT status, twilio_sid, error_code, lease_owner, next_attempt_at FROM sms_messages WHERE id = $1"
    ).bind(id).fetch_one(p).await)
    .unwrap()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await).unwrap()
}

async fn alert_status(app: &TestApp, key: &str, id: &str) -> String {
    let (s, b) = app.send(Method::GET, &format!("/api/sms/alerts/{id}"), Some(key), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["status"].as_str().unwrap().to_owned()
}

async fn callback(app: &TestApp, fields: &[(&str, &str)]) {
    let params: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let sig = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
    let res = app.client.post(app.url("/api/sms/status")).form(&params).header("X-Twilio-Signature", sig);
    let (s, b) = read(res.send().await.unwrap()).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
}

group_tests! {
    async fn a_group_of_mixed_outcomes_leaves_each_message_in_its_own_state(app, fake) {
        let (key, _, alert_id, c) = claimed_alert(&app, 4).await;
        let now = T0 + 1_000;
        let group = vec![
            (c[0].clone(), accepted("SMgroup00000000000000000000000000a")),
            (c[1].clone(), Sent::Provider(SendOutcome::Permanent { code: "21211".into(), message: "invalid".into() })),
            (c[2].clone(), Sent::Provider(SendOutcome::Transient { code: "20500".into(), message: "server".into(), retry_after_ms: Some(5_000) })),
            (c[3].clone(), Sent::Blocked("no_consent")),
        ];
        let report = dispatcher::record(&app.state, group, now).await;
        assert_eq!(report, DispatchReport { claimed: 4, accepted: 1, retried: 1, failed: 1, canceled: 1, ..Default::default() });
        let owner = Some(app.state.instance_id.to_string());
        assert_eq!(row(&app, &c[0].id).await, ("sending".into(), Some("SMgroup00000000000000000000000000a".into()), None, owner.clone(), T0));
        assert_eq!(row(&app, &c[1].id).await, ("failed".into(), None, Some("21211".into()), owner.clone(), T0));
        assert_eq!(row(&app, &c[2].id).await, ("queued".into(), None, Some("20500".into()), None, now + 5_000));
        assert_eq!(row(&app, &c[3].id).await, ("canceled".into(), None, Some("no_consent".into()), owner, T0));
        // One audit row per recorded outcome except the retry; the alert is `sending` while one is in flight.
        assert_eq!(count(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'send_sms'").await, 3);
        assert_eq!(alert_status(&app, &key, &alert_id).await, "sending");
        // The retry is due again at its time, and only it.
        assert_eq!(run(&app, now + 4_999).await.claimed, 0);
        assert_eq!(run(&app, now + 5_000).await.accepted, 1);
        assert_eq!(fake.requests().len(), 1);
    }

    async fn a_message_whose_lease_was_taken_over_is_not_overwritten_while_the_rest_of_its_group_is(app, fake) {
        let (_, _, _, c) = claimed_alert(&app, 3).await;
        // The lease runs out and another instance takes one of the three over.
        let taken = sms_db::claim(&app.db, T0 + 60_001, T0 + 120_000, "inst_other", 1).await.unwrap();
        assert_eq!(taken.len(), 1);
        let sids = ["SMlease0000000000000000000000000000", "SMlease0000000000000000000000000001", "SMlease0000000000000000000000000002"];
        let group = c.iter().zip(sids).map(|(m, sid)| (m.clone(), accepted(sid))).collect();
        let report = dispatcher::record(&app.state, group, T0 + 60_002).await;
        assert_eq!((report.accepted, report.lost), (2, 1), "{report:?}");
        for (m, sid) in c.iter().zip(sids) {
            let (status, got_sid, _, owner, _) = row(&app, &m.id).await;
            assert_eq!(status, "sending");
            if m.id == taken[0].id {
                assert_eq!((got_sid, owner.as_deref()), (None, Some("inst_other")), "the new claim keeps the message");
            } else {
                assert_eq!(got_sid.as_deref(), Some(sid));
            }
        }
        assert_eq!(count(&app, "SELECT COUNT(*) FROM system_audit_logs WHERE action = 'send_sms'").await, 2);
    }

    async fn callbacks_that_came_before_their_sids_were_recorded_are_applied_for_every_message_of_the_group(app, fake) {
        let (key, _, alert_id, c) = claimed_alert(&app, 3).await;
        let sids = ["SMearly000000000000000000000000000", "SMearly000000000000000000000000001", "SMearly000000000000000000000000002"];
        callback(&app, &[("MessageSid", sids[0]), ("MessageStatus", "delivered")]).await;
        callback(&app, &[("MessageSid", sids[1]), ("MessageStatus", "sent")]).await;
        callback(&app, &[("MessageSid", sids[1]), ("MessageStatus", "undelivered"), ("ErrorCode", "30003")]).await;
        assert_eq!(count(&app, "SELECT COUNT(*) FROM sms_status_events WHERE applied = FALSE").await, 3);
        let group = c.iter().zip(sids).map(|(m, sid)| (m.clone(), accepted(sid))).collect();
        assert_eq!(dispatcher::record(&app.state, group, T0 + 1_000).await.accepted, 3);
        assert_eq!(row(&app, &c[0].id).await.0, "delivered");
        assert_eq!(row(&app, &c[1].id).await.0, "undelivered");
        assert_eq!(row(&app, &c[1].id).await.2.as_deref(), Some("30003"));
        assert_eq!(row(&app, &c[2].id).await.0, "sending");
        assert_eq!(count(&app, "SELECT COUNT(*) FROM sms_status_events WHERE applied = FALSE").await, 0);
        assert_eq!(alert_status(&app, &key, &alert_id).await, "sending");
        // The last one's callback settles the alert from its messages' statuses.
        callback(&app, &[("MessageSid", sids[2]), ("MessageStatus", "delivered")]).await;
        assert_eq!(alert_status(&app, &key, &alert_id).await, "partially_delivered");
    }

    async fn consent_withdrawn_between_the_claim_and_the_send_is_honoured_for_that_message_only(app, fake) {
        let (key, workers, alert_id, c) = claimed_alert(&app, 3).await;
        let (s, _) = app.send(Method::PATCH, &format!("/api/workers/{}", workers[1]), Some(&key), Some(json!({"sms_consent": false, "consent_evidence": "appel"}))).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(sms_db::consent_blocks(&app.db, &c).await.unwrap(), [None, Some("no_consent"), None]);
        // The claims' instance dies; the next pass takes them over, reads consent again and sends two of three.
        let report = run(&app, T0 + 60_001).await;
        assert_eq!((report.claimed, report.accepted, report.canceled), (3, 2, 1), "{report:?}");
        assert_eq!(row(&app, &c[1].id).await.0, "canceled");
        assert_eq!(row(&app, &c[1].id).await.2.as_deref(), Some("no_consent"));
        let to: Vec<String> = fake.requests().iter().map(|r| r.field("To").unwrap().to_owned()).collect();
        assert_eq!(to.len(), 2);
        assert!(!to.contains(&c[1].to_phone), "{to:?}");
        assert_eq!(alert_status(&app, &key, &alert_id).await, "sending");
    }
}
