//! Group commit of Twilio status callbacks: one ingest task per instance applies the verified callbacks of
//! concurrent requests together, one transaction (and one durable commit) per batch instead of one per callback.
//!
//! A request hands its callback over a bounded queue with a one-shot reply and waits for it. The task takes
//! whatever is waiting (the first callback, then those already queued, up to [`BATCH_MAX`]; no timer: a lone
//! callback is applied at once), applies the batch (`status::apply_batch`), commits, then answers each request:
//! a request is answered 2xx only once its callback is durably stored. A batch that fails is applied again one
//! callback at a time, so a bad callback fails only its own request (5xx: Twilio retries). A full queue, or an
//! ingest task that is gone, is answered 503 at once.
//!
//! The task works in the Twilio webhook's system database context (row-level security), as the handler did.
//! [`StatusIngest::shutdown`] stops taking callbacks (503), applies those already queued and ends the task;
//! `Application::run_until` calls it once in-flight requests are finished, before closing the pool.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::status::{apply_batch, apply_one, Applied, Callback};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};

/// Most callbacks applied in one transaction.
pub const BATCH_MAX: usize = 256;
/// Most callbacks waiting for the ingest task; beyond, requests are answered 503 at once.
pub const QUEUE_MAX: usize = 4096;

struct Job {
    callback: Callback,
    reply: oneshot::Sender<ApiResult<Applied>>,
}

/// The handle requests use to reach this instance's ingest task (cheap to clone).
#[derive(Clone)]
pub struct StatusIngest {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Job>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl StatusIngest {
    /// Start the ingest task on the current Tokio runtime. Outside one (no HTTP server), there is no task and
    /// callbacks are answered 503.
    pub fn start(db: Db) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE_MAX);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(crate::db::scope::system("twilio-webhook", run(db, jobs, stopped))));
        StatusIngest { inner: Arc::new(Inner { queue, stop, task: Mutex::new(task) }) }
    }

    /// Store and apply `callback`; answered once its batch is committed (or has failed).
    pub async fn submit(&self, callback: Callback) -> ApiResult<Applied> {
        let (reply, answer) = oneshot::channel();
        self.inner.queue.try_send(Job { callback, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::unavailable("status_ingest_busy", "too many status callbacks waiting; retry shortly")
                    .with_retry_after(1)
            }
            mpsc::error::TrySendError::Closed(_) => stopped(),
        })?;
        // The task answers every job it takes; a dropped reply means it is gone (stopped or panicked).
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Stop taking callbacks, apply the queued ones, and wait for the task to end.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the status-callback ingest task failed");
            }
        }
    }
}

fn stopped() -> ApiError {
    ApiError::unavailable("status_ingest_stopped", "status callbacks are not being taken now; retry shortly")
        .with_retry_after(5)
}

async fn run(db: Db, mut jobs: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        tokio::select! {
            biased;
            n = jobs.recv_many(&mut batch, BATCH_MAX) => {
                if n == 0 {
                    return; // closed and drained
                }
                apply(&db, &mut batch).await;
            }
            // Shutdown (or every handle dropped): refuse new callbacks, then drain the queued ones above.
            _ = stop.changed() => jobs.close(),
        }
    }
}

/// Apply `jobs` (emptied) and answer each.
async fn apply(db: &Db, jobs: &mut Vec<Job>) {
    let (callbacks, replies): (Vec<Callback>, Vec<_>) = jobs.drain(..).map(|j| (j.callback, j.reply)).unzip();
    for (reply, applied) in replies.into_iter().zip(apply_all(db, &callbacks).await) {
        let _ = reply.send(applied);
    }
}

/// What the ingest task does with a batch: apply it in one transaction or, when that fails, each callback in its
/// own, so that only the callbacks that fail alone get an error. One answer per callback, in order.
pub async fn apply_all(db: &Db, callbacks: &[Callback]) -> Vec<ApiResult<Applied>> {
    if callbacks.len() > 1 {
        match apply_batch(db, callbacks).await {
            Ok(applied) => return applied.into_iter().map(Ok).collect(),
            Err(e) => {
                tracing::warn!(callbacks = callbacks.len(), error = %e, "status batch failed; applying its callbacks one by one");
            }
        }
    }
    let mut answers = Vec::with_capacity(callbacks.len());
    for callback in callbacks {
        answers.push(apply_one(db, callback).await);
    }
    answers
}
