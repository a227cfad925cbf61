//! New Stripe events applied in batches (group commit, `billing::ingest`): every event of concurrent deliveries
//! applied, stored once and audited once; an event that fails fails alone (500, stored `failed` for the retries);
//! duplicate deliveries inside a batch and across concurrent batches have one effect; shutdown applies the
//! queued events, then refuses (503); a full queue refuses at once (503). Batches are driven directly (`apply_batch`, the ingest's `enqueue`) in the
//! Stripe webhook's database context, as the ingest workers run them.

use reqwest::StatusCode;
use secur360::billing::events::{apply_batch, Event, NewEvent, Prefetched};
use secur360::billing::ingest::QUEUE_MAX;
use secur360::db::scope;
use secur360::on_db;

use crate::billing_webhooks::{deliver, event, link_customer, sub_object, webhook_vars, SECRET};
use crate::both_backends;
use crate::helpers::*;

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn invoice_event(n: usize, customer: &str) -> String {
    let inv = crate::fake_stripe::invoice(&format!("in_{n}"), customer, "sub_x", "paid", 100 + n as i64);
    event(&format!("evt_{n}"), "invoice.paid", now_secs(), inv)
}

/// The event of `body` as a request hands it to the ingest workers.
fn new_event(app: &TestApp, body: &str) -> NewEvent {
    let ev = Event::parse(&serde_json::from_str(body).unwrap()).unwrap();
    let now = app.state.now();
    let row = ev.row(body, "webhook", now);
    NewEvent { ev, row, pre: Prefetched::default(), now }
}

async fn batch(app: &TestApp, bodies: &[String]) -> Vec<Option<&'static str>> {
    let events = bodies.iter().map(|b| new_event(app, b)).collect();
    scope::system("stripe-webhook", apply_batch(&app.state.db, &app.state.settings.stripe, events)).await
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    on_db!(&app.db, p => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await).unwrap()
}

/// `(stored events, audit rows)` of the event `id`.
async fn stored_and_audited(app: &TestApp, id: &str) -> (i64, i64) {
    (
        scalar(app, &format!("SELECT COUNT(*) FROM billing_events WHERE stripe_event_id = '{id}'")).await,
        scalar(app, &format!("SELECT COUNT(*) FROM system_audit_logs WHERE subject = '{id}'")).await,
    )
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let sql = format!("SELECT processing_status FROM billing_events WHERE stripe_event_id = '{id}'");
    on_db!(&app.db, p => sqlx::query_scalar::<_, String>(&sql).fetch_one(p).await).unwrap()
}

/// Make the database refuse to store invoice `in_poison` (a trigger): an honest SQL failure inside a batch.
async fn poison_invoice(app: &TestApp) {
    match app.backend {
        Backend::Sqlite => {
            app.exec(
                "CREATE TRIGGER poison BEFORE INSERT ON invoices \
            WHEN NEW.stripe_invoice_id = 'in_poison' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .await
        }
        Backend::Postgres => {
            app.exec(
                "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                IF NEW.stripe_invoice_id = 'in_poison' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
            )
            .await;
            app.exec("CREATE TRIGGER poison BEFORE INSERT ON invoices FOR EACH ROW EXECUTE FUNCTION poison()").await;
        }
    }
}

both_backends! {
    with webhook_vars();

    async fn a_hundred_concurrent_distinct_events_are_each_applied_stored_and_audited_once(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let bodies: Vec<String> = (0..100).map(|n| invoice_event(n, "cus_acme")).collect();
        let answers = futures::future::join_all(bodies.iter().map(|b| deliver(&app, b))).await;
        for (s, res) in &answers {
            assert_eq!((*s, res["duplicate"].as_bool(), res["status"].as_str()), (StatusCode::OK, Some(false), Some("processed")), "{res}");
        }
        assert_eq!(app.count("billing_events WHERE processing_status = 'processed' AND attempts = 1").await, 100);
        assert_eq!(app.count("system_audit_logs WHERE action = 'webhook_event'").await, 100);
        assert_eq!(app.count("invoices WHERE tenant_id = 'acme' AND status = 'paid'").await, 100);
        for n in [0, 42, 99] {
            assert_eq!(stored_and_audited(&app, &format!("evt_{n}")).await, (1, 1));
        }
        // Applied in batches or not, the same row as one by one.
        assert_eq!(scalar(&app, "SELECT amount_paid FROM invoices WHERE stripe_invoice_id = 'in_42'").await, 142);
    }

    async fn an_event_that_fails_in_a_batch_fails_alone(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        poison_invoice(&app).await;
        let poison = event("evt_poison", "invoice.paid", now_secs(),
            crate::fake_stripe::invoice("in_poison", "cus_acme", "sub_x", "paid", 1));
        // Applying fails in the application (no tenant for the customer) or in the database (the trigger): the
        // event's savepoint is rolled back, the others of the batch are committed.
        let unlinked = invoice_event(2, "cus_unlinked");
        let answers = batch(&app, &[invoice_event(1, "cus_acme"), poison.clone(), unlinked.clone(), invoice_event(3, "cus_acme")]).await;
        assert_eq!(answers, [Some("processed"), None, None, Some("processed")]);
        assert_eq!(stored_and_audited(&app, "evt_1").await, (1, 1));
        assert_eq!(stored_and_audited(&app, "evt_3").await, (1, 1));
        assert_eq!(stored_and_audited(&app, "evt_poison").await, (0, 0));
        assert_eq!(stored_and_audited(&app, "evt_2").await, (0, 0));
        assert_eq!(app.count("invoices").await, 2);

        // Over HTTP, delivered together with good events: the failing ones are answered 500 and stored `failed`
        // for the retries (the stored path), the others 200 and applied.
        let bodies = [poison, unlinked, invoice_event(4, "cus_acme"), invoice_event(5, "cus_acme")];
        let answers = futures::future::join_all(bodies.iter().map(|b| deliver(&app, b))).await;
        for (i, (s, res)) in answers.iter().enumerate() {
            if i < 2 {
                assert_eq!((*s, error_code(res)), (StatusCode::INTERNAL_SERVER_ERROR, "event_processing_failed"), "{res}");
            } else {
                assert_eq!((*s, res["status"].as_str()), (StatusCode::OK, Some("processed")), "{res}");
            }
        }
        for id in ["evt_poison", "evt_2"] {
            assert_eq!(status_of(&app, id).await, "failed");
            assert_eq!(stored_and_audited(&app, id).await, (1, 0));
        }
        for id in ["evt_4", "evt_5"] {
            assert_eq!((status_of(&app, id).await, stored_and_audited(&app, id).await), ("processed".into(), (1, 1)));
        }
        assert_eq!(app.count("invoices").await, 4);
    }

    async fn duplicate_deliveries_in_one_batch_or_in_concurrent_batches_have_one_effect(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let sub = event("evt_sub", "customer.subscription.created", now_secs(), sub_object("sub_d", "cus_acme", "active", 2));
        let inv = invoice_event(1, "cus_acme");
        // In one batch: the first delivery is applied, the later ones find it stored (their request then takes
        // the stored path, which finds it processed).
        let answers = batch(&app, &[sub.clone(), inv.clone(), sub.clone(), sub.clone(), inv.clone()]).await;
        assert_eq!(answers, [Some("processed"), Some("processed"), None, None, None]);
        assert_eq!(stored_and_audited(&app, "evt_sub").await, (1, 1));
        assert_eq!(stored_and_audited(&app, "evt_1").await, (1, 1));
        assert_eq!(app.count("subscriptions").await, 1);

        // In two concurrent batches, in opposite orders (on PostgreSQL, where batches overlap, a deadlock between
        // them may cost an event its batch, never a second effect): each event applied by exactly one batch.
        let bodies: Vec<String> = (10..20).map(|n| invoice_event(n, "cus_acme")).collect();
        let reversed: Vec<String> = bodies.iter().rev().cloned().collect();
        let (a, b) = tokio::join!(batch(&app, &bodies), batch(&app, &reversed));
        for (i, n) in (10..20).enumerate() {
            let applied = [a[i], b[bodies.len() - 1 - i]];
            assert_eq!(applied.iter().filter(|x| x.is_some()).count(), 1, "evt_{n}: {applied:?}");
        }
        // Redelivered over HTTP: 200, found stored, one effect in all.
        let answers = futures::future::join_all(bodies.iter().chain(&reversed).chain([&sub, &inv]).map(|b| deliver(&app, b))).await;
        for (s, res) in &answers {
            assert_eq!((*s, res["duplicate"].as_bool()), (StatusCode::OK, Some(true)), "{res}");
        }
        for n in 10..20 {
            assert_eq!(stored_and_audited(&app, &format!("evt_{n}")).await, (1, 1));
        }
        assert_eq!(stored_and_audited(&app, "evt_sub").await, (1, 1));
        assert_eq!(app.count("invoices").await, 11);

        // Twenty concurrent deliveries of each of three events over HTTP: one stored event and one audit row each.
        let bodies: Vec<String> = (30..33).map(|n| invoice_event(n, "cus_acme")).collect();
        let answers = futures::future::join_all((0..60).map(|i| deliver(&app, &bodies[i % 3]))).await;
        for (s, res) in &answers {
            assert_eq!(*s, StatusCode::OK, "{res}");
        }
        assert_eq!(answers.iter().filter(|(_, r)| r["duplicate"] == false).count(), 3, "{answers:?}");
        for n in 30..33 {
            assert_eq!(stored_and_audited(&app, &format!("evt_{n}")).await, (1, 1));
        }
    }

    async fn shutdown_applies_the_queued_events_then_refuses_new_ones(app) {
        app.tenant_without_subscription("acme").await;
        link_customer(&app, "acme", "cus_acme").await;
        let pending: Vec<_> = (0..50)
            .map(|n| app.state.stripe_ingest.enqueue(new_event(&app, &invoice_event(n, "cus_acme"))).unwrap())
            .collect();
        app.state.stripe_ingest.shutdown().await;
        for p in pending {
            assert_eq!(p.answer().await.unwrap(), Some("processed"));
        }
        assert_eq!(app.count("billing_events WHERE processing_status = 'processed'").await, 50);
        assert_eq!(app.count("system_audit_logs WHERE action = 'webhook_event'").await, 50);

        let (s, res) = deliver(&app, &invoice_event(99, "cus_acme")).await;
        assert_eq!((s, error_code(&res)), (StatusCode::SERVICE_UNAVAILABLE, "stripe_ingest_stopped"), "{res}");
        assert_eq!(stored_and_audited(&app, "evt_99").await, (0, 0));
        let err = app.state.stripe_ingest.enqueue(new_event(&app, &invoice_event(98, "cus_acme"))).err().unwrap();
        assert_eq!(err.status.as_u16(), 503);
    }
}

/// A full queue: an instance whose ingest workers never take a job ([`StalledWorkers`]) gets `QUEUE_MAX` events
/// queued; the next new event is answered 503 `stripe_ingest_busy` with `Retry-After` at once (Stripe retries),
/// and nothing of it is stored.
async fn a_full_queue_answers_503_at_once_and_stores_nothing(backend: Backend) {
    let vars: Vec<(String, String)> = webhook_vars().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let (app, stalled) = spawn_app_with_stalled_workers(backend, &vars, secur360::time::Clock::system()).await;
    app.tenant_without_subscription("acme").await;
    link_customer(&app, "acme", "cus_acme").await;
    let before = (app.snapshot().await, app.count("billing_events").await, app.count("invoices").await);
    let waiting: Vec<_> = (0..QUEUE_MAX)
        .map(|n| {
            app.state.stripe_ingest.enqueue(new_event(&app, &invoice_event(n, "cus_acme"))).expect("room in the queue")
        })
        .collect();

    // Over HTTP: 503 with the error body and Retry-After, within a bound (a request that waited for room would not).
    let body = invoice_event(QUEUE_MAX, "cus_acme");
    let header = secur360::domain::stripe_signature::sign(body.as_bytes(), SECRET, now_secs());
    let delivery = app
        .client
        .post(app.url("/api/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("Stripe-Signature", header)
        .body(body)
        .send();
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), delivery)
        .await
        .expect("a full queue is answered at once, never waited on")
        .unwrap();
    assert_eq!(res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()).as_deref(), Some("1"));
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let (s, res) = read(res).await;
    assert_eq!((s, error_code(&res)), (StatusCode::SERVICE_UNAVAILABLE, "stripe_ingest_busy"), "{res}");
    assert_eq!(stored_and_audited(&app, &format!("evt_{QUEUE_MAX}")).await, (0, 0));
    // Enqueued directly: refused.
    let err = app
        .state
        .stripe_ingest
        .enqueue(new_event(&app, &invoice_event(QUEUE_MAX + 1, "cus_acme")))
        .err()
        .expect("refused");
    assert_eq!((err.status.as_u16(), err.code, err.retry_after), (503, "stripe_ingest_busy", Some(1)));
    assert_eq!((app.snapshot().await, app.count("billing_events").await, app.count("invoices").await), before);

    // The workers gone, the events that waited are answered (503 stopped: Stripe retries them), none left hanging.
    drop(stalled);
    for pending in waiting {
        assert_eq!(pending.answer().await.expect_err("never applied").code, "stripe_ingest_stopped");
    }
    assert_eq!((app.snapshot().await, app.count("billing_events").await, app.count("invoices").await), before);
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
