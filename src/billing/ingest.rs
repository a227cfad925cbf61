//! Group commit of new Stripe webhook events: the ingest workers of an instance apply the new events of
//! concurrent requests together, one transaction (and one durable commit) per batch instead of one per event.
//!
//! A request verifies the signature, parses the event and does its network reads (`events::prefetch`), then
//! hands the event over a bounded queue with a one-shot reply and waits for it. A worker takes whatever is
//! waiting (the first event, then those already queued, up to [`BATCH_MAX`], 64 on PostgreSQL; no timer: a lone event is applied at
//! once) and applies the batch (`events::apply_batch`): each event in a savepoint of its own, so an event that
//! fails or is already stored (a redelivery, or a second delivery in the same batch) is rolled back alone and the
//! others are committed. Each request is answered once the batch is committed: applied, or "take the stored
//! path" (the event's request then stores it and applies it on its own, as before group commit, which records a
//! failure for the retries or finds the event already processed). A full queue, or workers that are gone, is
//! answered 503 at once (as status callbacks; Stripe retries).
//!
//! On PostgreSQL several batches are in flight at once: while one waits for its commit, the next is applied. Two
//! deliveries of one event in concurrent batches meet on the event's unique id (the second waits for the first's
//! commit and finds it stored); a deadlock between batches costs the events involved the stored path, no more.
//! SQLite, one writer, applies one batch at a time.
//!
//! The workers work in the Stripe webhook's system database context (row-level security), as the handler does.
//! [`StripeIngest::shutdown`] stops taking events (503), applies those already queued and ends the workers;
//! `Application::run_until` calls it once in-flight requests are finished, before closing the pool.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::events::{apply_batch, NewEvent};
use crate::config::Settings;
use crate::db::{Backend, Db};
use crate::error::{ApiError, ApiResult};
use crate::intake::Workers;

/// Most events applied in one transaction on SQLite.
pub const BATCH_MAX: usize = 256;
/// On PostgreSQL: each event's savepoint is a subtransaction, and past 64 in one transaction PostgreSQL's
/// per-backend cache of subtransaction ids overflows (every snapshot, in every session, then reads pg_subtrans).
const POSTGRES_BATCH_MAX: usize = 64;
/// Most events waiting for the ingest workers; beyond, requests are answered 503 at once.
pub const QUEUE_MAX: usize = 4096;
/// Batches in flight at once on PostgreSQL. SQLite has one writer: one batch at a time.
const POSTGRES_WORKERS: usize = 4;

/// What a request is told once its event's batch is over: `Some(status)`, applied and committed; `None`, not
/// applied by the batch (nothing of it remains): take the stored path.
pub type Answer = Option<&'static str>;

struct Job {
    event: NewEvent,
    reply: oneshot::Sender<Answer>,
}

/// The handle requests use to reach this instance's ingest workers (cheap to clone).
#[derive(Clone)]
pub struct StripeIngest {
    inner: Arc<Workers<Job>>,
}

/// The receiving end, shared by the workers (one takes a batch at a time).
type Intake = crate::intake::Intake<Job>;

/// An event handed to the workers; [`Pending::answer`] waits for its batch.
pub struct Pending(oneshot::Receiver<Answer>);

impl Pending {
    pub async fn answer(self) -> ApiResult<Answer> {
        // The workers answer every job they take; a dropped reply means they are gone (stopped or panicked).
        self.0.await.map_err(|_| stopped())
    }
}

impl StripeIngest {
    /// Start the ingest workers on the current Tokio runtime. Outside one (no HTTP server), there are none and
    /// new events are answered 503.
    pub fn start(db: Db, settings: Arc<Settings>) -> Self {
        let (count, batch_max) = match db.backend() {
            Backend::Postgres => (POSTGRES_WORKERS, POSTGRES_BATCH_MAX),
            Backend::Sqlite => (1, BATCH_MAX),
        };
        let workers = Workers::start(QUEUE_MAX, count, "stripe-webhook", |intake, stop| {
            worker(db.clone(), settings.clone(), intake, stop, batch_max)
        });
        StripeIngest { inner: Arc::new(workers) }
    }

    /// Queue `event` for a batch, or refuse it at once (503) when the queue is full or the workers are stopped.
    pub fn enqueue(&self, event: NewEvent) -> ApiResult<Pending> {
        let (reply, answer) = oneshot::channel();
        let busy = ("stripe_ingest_busy", "too many Stripe events waiting; retry shortly");
        self.inner.send(Job { event, reply }, busy, stopped)?;
        Ok(Pending(answer))
    }

    /// Apply `event` in the next batch; answered once that batch is committed (or has failed).
    pub async fn submit(&self, event: NewEvent) -> ApiResult<Answer> {
        self.enqueue(event)?.answer().await
    }

    /// Stop taking events, apply the queued ones, and wait for the workers to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown("Stripe event").await;
    }
}

fn stopped() -> ApiError {
    ApiError::unavailable("stripe_ingest_stopped", "Stripe events are not being taken now; retry shortly")
        .with_retry_after(5)
}

async fn worker(db: Db, settings: Arc<Settings>, intake: Intake, mut stop: watch::Receiver<bool>, batch_max: usize) {
    let mut jobs = Vec::with_capacity(batch_max);
    loop {
        let mut queue = intake.lock().await;
        let taken = tokio::select! {
            biased;
            n = queue.recv_many(&mut jobs, batch_max) => Some(n),
            _ = stop.changed() => None,
        };
        let Some(n) = taken else {
            // Shutdown (or every handle dropped): refuse new events, then drain the queued ones.
            queue.close();
            continue;
        };
        drop(queue);
        if n == 0 {
            return; // closed and drained
        }
        let (events, replies): (Vec<NewEvent>, Vec<_>) = jobs.drain(..).map(|j| (j.event, j.reply)).unzip();
        let answers = apply_batch(&db, &settings.stripe, events).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}
