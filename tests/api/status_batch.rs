//! Status callbacks applied in batches (group commit, `sms::ingest`): the same result as one by one, whatever a
//! batch holds; every callback of concurrent requests stored and applied; a failing callback fails alone; 503
//! when the ingest task is not taking callbacks, and at once when its queue is full. Batches are driven directly
//! (`apply_batch`, `apply_all`) in the Twilio webhook's database context, as the ingest task runs them.

use reqwest::{Method, StatusCode};
use secur360::db::scope;
use secur360::domain::sms_status::MessageStatus::{Delivered, Sent, Undelivered};
use secur360::domain::twilio_signature;
use secur360::on_db;
use secur360::sms::ingest::{apply_all, QUEUE_MAX};
use secur360::sms::status::{apply_batch, Applied, Callback};
use serde_json::json;

use crate::fake_twilio::{self, Reply};
use crate::helpers::*;
use crate::sms::{alert, run, sms_app, worker, T0};

const STATUS_URL: &str = "https://c-secur360.example/api/sms/status";

/// `async fn name(app, fake, vars = &[..]) { … }` on both backends, with the fake Twilio configured.
macro_rules! batch_tests {
    ($(async fn $name:ident($app:ident, $fake:ident, vars = $extra:expr) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    #[allow(unused_variables)]
                    let ($app, $fake) = sms_app(Backend::Sqlite, true, $extra).await;
                    $body
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    #[allow(unused_variables)]
                    let ($app, $fake) = sms_app(Backend::Postgres, true, $extra).await;
                    $body
                }
            }
        )*
    };
}

fn sid(n: usize) -> String {
    format!("SM{n:032x}")
}

fn cb(sid: &str, status: &str, error_code: Option<&str>) -> Callback {
    Callback { sid: sid.into(), status: status.into(), error_code: error_code.map(Into::into), received_at: T0 + 1_000 }
}

async fn batch(app: &TestApp, callbacks: &[Callback]) -> Result<Vec<Applied>, sqlx::Error> {
    scope::system("twilio-webhook", apply_batch(&app.state.db, callbacks)).await
}

/// `(status, error_code)` of the message holding `sid`.
async fn message(app: &TestApp, sid: &str) -> (String, Option<String>) {
    on_db!(&app.db, p => sqlx::query_as("SELECT status, error_code FROM sms_messages WHERE twilio_sid = $1")
        .bind(sid).fetch_one(p).await)
    .unwrap()
}

/// The alert as its tenant reads it: `(status, updated_at)`.
async fn alert_view(app: &TestApp, key: &str, id: &str) -> (String, String) {
    let (s, b) = app.send(Method::GET, &format!("/api/sms/alerts/{id}"), Some(key), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    (b["status"].as_str().unwrap().to_owned(), b["updated_at"].as_str().unwrap().to_owned())
}

async fn alert_status(app: &TestApp, key: &str, id: &str) -> String {
    alert_view(app, key, id).await.0
}

async fn unapplied(app: &TestApp) -> i64 {
    app.count("sms_status_events WHERE applied = FALSE").await
}

async fn signed(app: &TestApp, sid: &str, status: &str) -> (StatusCode, serde_json::Value) {
    read(signed_response(app, sid, status).await).await
}

async fn signed_response(app: &TestApp, sid: &str, status: &str) -> reqwest::Response {
    let params: Vec<(String, String)> =
        [("MessageSid", sid), ("MessageStatus", status), ("AccountSid", fake_twilio::ACCOUNT_SID)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let sig = twilio_signature::compute(STATUS_URL, &params, fake_twilio::AUTH_TOKEN);
    app.client.post(app.url("/api/sms/status")).form(&params).header("X-Twilio-Signature", sig).send().await.unwrap()
}

/// An alert to `n` consenting workers, dispatched: the tenant's key and the alert's id; its messages hold
/// `sid(1)` … `sid(n)`.
async fn dispatched_alert(app: &TestApp, n: usize) -> (String, String) {
    let key = app.tenant_with_key("acme").await;
    for i in 0..n {
        worker(app, &key, &format!("W{i}"), &format!("514 873 {}", 2100 + i), true).await;
    }
    let (s, a) = alert(app, &key, json!({"kind": "general_alert", "body": "x", "recipients": {"all": true}})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{a}");
    assert_eq!(run(app, T0).await.accepted, n);
    (key, a["alert_id"].as_str().unwrap().to_owned())
}

batch_tests! {
    async fn a_batch_applies_the_callbacks_of_each_sid_in_arrival_order(app, fake, vars = &[]) {
        let (key, alert_id) = dispatched_alert(&app, 3).await;
        let events = app.count("sms_status_events").await;
        let callbacks = [
            cb(&sid(1), "sent", None),
            cb(&sid(2), "undelivered", Some("30003")),
            cb(&sid(1), "delivered", None),
            cb(&sid(3), "queued", None),          // stale: the message is already `sending`
            cb(&sid(1), "sent", None),            // late: never overwrites `delivered`
            cb(&sid(2), "delivered", None),       // a second final state: the first one stays
            cb("SMnotrecordedyet0001", "delivered", None),
            cb(&sid(1), "delivered", None),       // repeated
            cb(&sid(3), "receiving", None),       // says nothing about an outbound message
        ];
        let applied = batch(&app, &callbacks).await.unwrap();
        use Applied::{Moved, Pending, Unchanged};
        assert_eq!(applied, [
            Moved(Sent), Moved(Undelivered), Moved(Delivered), Unchanged, Unchanged, Unchanged, Pending, Unchanged, Unchanged,
        ]);
        assert_eq!(message(&app, &sid(1)).await, ("delivered".into(), None));
        assert_eq!(message(&app, &sid(2)).await, ("undelivered".into(), Some("30003".into())));
        assert_eq!(message(&app, &sid(3)).await, ("sending".into(), None));
        // The aggregate and the time of the last change, from the messages as the tenant reads them.
        assert_eq!(alert_view(&app, &key, &alert_id).await, ("sending".into(), secur360::time::to_rfc3339(T0 + 1_000)));
        // Every callback is stored; only the one for a SID not recorded yet waits.
        assert_eq!(app.count("sms_status_events").await, events + 9);
        assert_eq!(unapplied(&app).await, 1);

        // The next batch moves the last message: the alert's aggregate follows.
        let later = |c: Callback| Callback { received_at: T0 + 5_000, ..c };
        let applied = batch(&app, &[later(cb(&sid(3), "delivered", None)), later(cb(&sid(2), "sent", None))]).await.unwrap();
        assert_eq!(applied, [Moved(Delivered), Unchanged]);
        assert_eq!(
            alert_view(&app, &key, &alert_id).await,
            ("partially_delivered".into(), secur360::time::to_rfc3339(T0 + 5_000))
        );
        assert_eq!(unapplied(&app).await, 1);
    }

    async fn callbacks_for_a_sid_not_recorded_yet_are_kept_and_applied_when_it_is(app, fake, vars = &[]) {
        let early = "SMearly0000000000000000000000000000";
        fake.script([Reply::Created(early.into())]);
        let (s, t) = app.operator(Method::POST, "/api/send-sms", Some(json!({ "to": "514 873 2015", "body": "Test" }))).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{t}");
        let applied = batch(&app, &[cb(early, "sent", None), cb(early, "delivered", None), cb(early, "sent", None)]).await.unwrap();
        assert_eq!(applied, [Applied::Pending, Applied::Pending, Applied::Pending]);
        assert_eq!(unapplied(&app).await, 3);
        run(&app, T0).await;
        assert_eq!(message(&app, early).await.0, "delivered");
        assert_eq!(unapplied(&app).await, 0);
    }

    async fn two_hundred_concurrent_callbacks_are_all_stored_and_applied(app, fake, vars = &[("SMS_DISPATCH_RATE_PER_SECOND", "30")]) {
        let (key, alert_id) = dispatched_alert(&app, 25).await;
        let events = app.count("sms_status_events").await;
        // Eight reports per message, fired all at once: whatever order they arrive in, each message ends delivered.
        let reports = ["queued", "sending", "sent", "delivered", "delivered", "read", "sent", "sending"];
        let posts = (1..=25).flat_map(|n| reports.iter().map(move |r| (sid(n), *r)));
        let answers = futures::future::join_all(posts.map(|(sid, r)| {
            let app = &app;
            async move { signed(app, &sid, r).await }
        }))
        .await;
        assert_eq!(answers.len(), 200);
        for (s, b) in &answers {
            assert_eq!(*s, StatusCode::NO_CONTENT, "{b}");
        }
        assert_eq!(app.count("sms_status_events").await, events + 200);
        assert_eq!(unapplied(&app).await, 0);
        assert_eq!(app.count("sms_messages WHERE status = 'delivered'").await, 25);
        assert_eq!(alert_status(&app, &key, &alert_id).await, "delivered");
    }

    async fn a_callback_the_database_refuses_fails_alone(app, fake, vars = &[]) {
        dispatched_alert(&app, 2).await;
        // The database refuses to store one SID's callbacks (a trigger): an honest failure of one item of a batch.
        match app.backend {
            Backend::Sqlite => app.exec("CREATE TRIGGER poison BEFORE INSERT ON sms_status_events \
                WHEN NEW.twilio_sid = 'SMpoison' BEGIN SELECT RAISE(ABORT, 'refused'); END").await,
            Backend::Postgres => {
                app.exec("CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                    IF NEW.twilio_sid = 'SMpoison' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$").await;
                app.exec("CREATE TRIGGER poison BEFORE INSERT ON sms_status_events FOR EACH ROW EXECUTE FUNCTION poison()").await;
            }
        }
        let events = app.count("sms_status_events").await;
        // A batch is all or nothing…
        assert!(batch(&app, &[cb(&sid(1), "delivered", None), cb("SMpoison", "sent", None)]).await.is_err());
        assert_eq!(app.count("sms_status_events").await, events);
        assert_eq!(message(&app, &sid(1)).await.0, "sending");
        // …so the ingest applies a failed batch one callback at a time: only the refused one gets an error.
        let callbacks = [cb(&sid(1), "delivered", None), cb("SMpoison", "sent", None), cb(&sid(2), "sent", None)];
        let answers = scope::system("twilio-webhook", apply_all(&app.state.db, &callbacks)).await;
        assert_eq!(answers[0].as_ref().ok(), Some(&Applied::Moved(Delivered)));
        assert_eq!(answers[1].as_ref().err().map(|e| e.status.as_u16()), Some(500));
        assert_eq!(answers[2].as_ref().ok(), Some(&Applied::Moved(Sent)));
        assert_eq!((message(&app, &sid(1)).await.0, message(&app, &sid(2)).await.0), ("delivered".into(), "sent".into()));
        assert_eq!(app.count("sms_status_events").await, events + 2);
        // Over HTTP: the refused callback is answered 5xx (Twilio retries it), the others 204.
        assert_eq!(signed(&app, "SMpoison", "sent").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(signed(&app, &sid(2), "delivered").await.0, StatusCode::NO_CONTENT);
        assert_eq!(app.count("sms_status_events").await, events + 3);
    }

    async fn callbacks_are_answered_503_when_the_ingest_is_stopped(app, fake, vars = &[]) {
        dispatched_alert(&app, 1).await;
        assert_eq!(signed(&app, &sid(1), "sent").await.0, StatusCode::NO_CONTENT);
        let events = app.count("sms_status_events").await;
        app.state.status_ingest.shutdown().await;
        let (s, b) = signed(&app, &sid(1), "delivered").await;
        assert_eq!((s, error_code(&b)), (StatusCode::SERVICE_UNAVAILABLE, "status_ingest_stopped"), "{b}");
        assert_eq!(app.count("sms_status_events").await, events);
        assert_eq!(message(&app, &sid(1)).await.0, "sent");
    }
}

/// A full queue: an instance whose ingest workers never take a job ([`StalledWorkers`]) gets `QUEUE_MAX` callbacks
/// waiting, each submitted as a request submits it (polled once, it has queued its job and waits for the answer);
/// the next callback is answered 503 `status_ingest_busy` with `Retry-After` at once, and nothing is stored.
async fn a_full_queue_answers_503_at_once_and_stores_nothing(backend: Backend) {
    let fake = crate::fake_twilio::FakeTwilio::start().await;
    let (app, stalled) = spawn_app_with_stalled_workers(backend, &fake.vars(), secur360::time::Clock::manual(T0)).await;
    let before = app.snapshot().await;
    let mut waiting = Vec::with_capacity(QUEUE_MAX);
    for n in 0..QUEUE_MAX {
        let mut submission = Box::pin(app.state.status_ingest.submit(cb(&sid(n), "delivered", None)));
        assert!(futures::poll!(submission.as_mut()).is_pending(), "callback {n} answered before the queue was full");
        waiting.push(submission);
    }

    // Over HTTP: 503 with the error body and Retry-After, within a bound (a request that waited for room would not).
    let res =
        tokio::time::timeout(std::time::Duration::from_secs(10), signed_response(&app, &sid(QUEUE_MAX), "delivered"))
            .await
            .expect("a full queue is answered at once, never waited on");
    assert_eq!(res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("1"));
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let (s, b) = read(res).await;
    assert_eq!((s, error_code(&b)), (StatusCode::SERVICE_UNAVAILABLE, "status_ingest_busy"), "{b}");
    // Submitted directly: refused on its first poll.
    use futures::FutureExt;
    let refused = app.state.status_ingest.submit(cb(&sid(QUEUE_MAX + 1), "sent", None)).now_or_never();
    let err = refused.expect("answered at once").expect_err("refused");
    assert_eq!((err.status.as_u16(), err.code, err.retry_after), (503, "status_ingest_busy", Some(1)));
    assert_eq!(app.snapshot().await, before, "a refused callback is not stored");

    // The workers gone, the callbacks that waited are answered (503 stopped: Twilio retries them), none left hanging.
    drop(stalled);
    for answer in futures::future::join_all(waiting).await {
        assert_eq!(answer.expect_err("never applied").code, "status_ingest_stopped");
    }
    assert_eq!(app.snapshot().await, before);
}

mod a_full_queue_is_answered_503_at_once_with_retry_after_and_nothing_is_stored {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        a_full_queue_answers_503_at_once_and_stores_nothing(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        a_full_queue_answers_503_at_once_and_stores_nothing(Backend::Postgres).await;
    }
}
