//! Group commit of Twilio status callbacks: the ingest workers of an instance apply the verified callbacks of
//! concurrent requests together, one transaction (and one durable commit) per batch instead of one per callback.
//!
//! A request hands its callback over a bounded queue with a one-shot reply and waits for it. A worker takes
//! whatever is waiting (the first callback, then those already queued, up to [`BATCH_MAX`]; no timer: a lone
//! callback is applied at once), applies the batch (`status::apply_batch`), commits, then answers each request:
//! a request is answered 2xx only once its callback is durably stored. A batch that fails is applied again one
//! callback at a time, so a bad callback fails only its own request (5xx: Twilio retries). A full queue, or
//! workers that are gone, is answered 503 at once. On PostgreSQL several batches are in flight at once (each
//! takes its SIDs' locks before the next batch is taken, so one SID's callbacks keep their arrival order,
//! except when a failed batch is retried one by one);
//! SQLite, one writer, applies one batch at a time.
//!
//! The workers work in the Twilio webhook's system database context (row-level security), as the handler did.
//! [`StatusIngest::shutdown`] stops taking callbacks (503), applies those already queued and ends the workers;
//! `Application::run_until` calls it once in-flight requests are finished, before closing the pool.

use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::status::{apply_batch, apply_locked, apply_one, lock_batch, Applied, Callback};
use crate::db::{Backend, Db};
use crate::error::{ApiError, ApiResult};
use crate::intake::Workers;

/// Most callbacks applied in one transaction.
pub const BATCH_MAX: usize = 256;
/// Most callbacks waiting for the ingest task; beyond, requests are answered 503 at once.
pub const QUEUE_MAX: usize = 4096;
/// Batches in flight at once on PostgreSQL: while one waits for its commit, the next is applied (a batch costs
/// a few round trips, so one at a time left the server idle). SQLite has one writer: one batch at a time.
const POSTGRES_WORKERS: usize = 4;

struct Job {
    callback: Callback,
    reply: oneshot::Sender<ApiResult<Applied>>,
}

/// The handle requests use to reach this instance's ingest task (cheap to clone).
#[derive(Clone)]
pub struct StatusIngest {
    inner: Arc<Workers<Job>>,
}

/// The receiving end, shared by the workers: a worker holds it from taking a batch until that batch's SID
/// locks are held, so callbacks for one SID in two batches are applied in the order they arrived.
type Intake = crate::intake::Intake<Job>;

impl StatusIngest {
    /// Start the ingest workers on the current Tokio runtime. Outside one (no HTTP server), there are none and
    /// callbacks are answered 503.
    pub fn start(db: Db) -> Self {
        let count = match db.backend() {
            Backend::Postgres => POSTGRES_WORKERS,
            Backend::Sqlite => 1,
        };
        let workers =
            Workers::start(QUEUE_MAX, count, "twilio-webhook", |intake, stop| worker(db.clone(), intake, stop));
        StatusIngest { inner: Arc::new(workers) }
    }

    /// Store and apply `callback`; answered once its batch is committed (or has failed).
    pub async fn submit(&self, callback: Callback) -> ApiResult<Applied> {
        let (reply, answer) = oneshot::channel();
        let busy = ("status_ingest_busy", "too many status callbacks waiting; retry shortly");
        self.inner.send(Job { callback, reply }, busy, stopped)?;
        // The workers answer every job they take; a dropped reply means they are gone (stopped or panicked).
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Stop taking callbacks, apply the queued ones, and wait for the workers to end.
    pub async fn shutdown(&self) {
        self.inner.shutdown("status-callback").await;
    }
}

fn stopped() -> ApiError {
    ApiError::unavailable("status_ingest_stopped", "status callbacks are not being taken now; retry shortly")
        .with_retry_after(5)
}

enum Next {
    Batch(usize),
    Stop,
}

async fn worker(db: Db, intake: Intake, mut stop: watch::Receiver<bool>) {
    let mut jobs = Vec::with_capacity(BATCH_MAX);
    loop {
        let mut queue = intake.lock().await;
        let next = tokio::select! {
            biased;
            n = queue.recv_many(&mut jobs, BATCH_MAX) => Next::Batch(n),
            _ = stop.changed() => Next::Stop,
        };
        let n = match next {
            // Shutdown (or every handle dropped): refuse new callbacks, then drain the queued ones.
            Next::Stop => {
                queue.close();
                continue;
            }
            Next::Batch(n) => n,
        };
        if n == 0 {
            return; // closed and drained
        }
        let (callbacks, replies): (Vec<Callback>, Vec<_>) = jobs.drain(..).map(|j| (j.callback, j.reply)).unzip();
        let locked = lock_batch(&db, &callbacks).await;
        drop(queue);
        let applied = match locked {
            Ok(tx) => apply_locked(tx, &callbacks).await,
            Err(e) => Err(e),
        };
        let answers = answers(&db, &callbacks, applied).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

/// What a worker does with a batch, in one piece: apply it in one transaction or, when that fails, each callback
/// in its own, so that only the callbacks that fail alone get an error. One answer per callback, in order.
pub async fn apply_all(db: &Db, callbacks: &[Callback]) -> Vec<ApiResult<Applied>> {
    let applied = apply_batch(db, callbacks).await;
    answers(db, callbacks, applied).await
}

/// The answers to `callbacks` once their batch was `applied` (or failed: then applied one by one).
async fn answers(
    db: &Db,
    callbacks: &[Callback],
    applied: Result<Vec<Applied>, sqlx::Error>,
) -> Vec<ApiResult<Applied>> {
    match applied {
        Ok(applied) => applied.into_iter().map(Ok).collect(),
        Err(e) if callbacks.len() == 1 => vec![Err(e.into())],
        Err(e) => {
            tracing::warn!(callbacks = callbacks.len(), error = %e, "status batch failed; applying its callbacks one by one");
            apply_each(db, callbacks).await
        }
    }
}

async fn apply_each(db: &Db, callbacks: &[Callback]) -> Vec<ApiResult<Applied>> {
    let mut answers = Vec::with_capacity(callbacks.len());
    for callback in callbacks {
        answers.push(apply_one(db, callback).await);
    }
    answers
}
