//! What the group-commit ingests share (`sms::ingest` for status callbacks, `billing::ingest` for new Stripe
//! events): a bounded queue of jobs in front of worker tasks, a job refused at once (503) when the queue is full
//! or the workers are stopped, and a stop that lets the workers drain the queue before they end. What a worker
//! does with its jobs stays with each ingest.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::error::{ApiError, ApiResult};

/// The receiving end, shared by the workers of one ingest.
pub type Intake<J> = Arc<tokio::sync::Mutex<mpsc::Receiver<J>>>;

/// The queue and workers of one ingest.
pub struct Workers<J> {
    queue: mpsc::Sender<J>,
    stop: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<J: Send + 'static> Workers<J> {
    /// A queue of `capacity` jobs and `count` workers, each `work(intake, stop)`, spawned on the current Tokio
    /// runtime in the named system database context `scope`. Outside a runtime (no HTTP server) there are none
    /// and the queue is closed: every job is refused as stopped.
    pub fn start<F, Fut>(capacity: usize, count: usize, scope: &'static str, work: F) -> Self
    where
        F: Fn(Intake<J>, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (queue, jobs) = mpsc::channel(capacity);
        let (stop, stopped) = watch::channel(false);
        let intake: Intake<J> = Arc::new(tokio::sync::Mutex::new(jobs));
        let workers = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => (0..count)
                .map(|_| runtime.spawn(crate::db::scope::system(scope, work(intake.clone(), stopped.clone()))))
                .collect(),
            Err(_) => Vec::new(),
        };
        Workers { queue, stop, workers: Mutex::new(workers) }
    }

    /// Hand `job` to the workers, or refuse it at once: 503 `busy` (retry after 1 s) when the queue is full,
    /// `stopped()` when the workers are gone.
    pub fn send(&self, job: J, busy: (&'static str, &str), stopped: fn() -> ApiError) -> ApiResult<()> {
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ApiError::unavailable(busy.0, busy.1).with_retry_after(1),
            mpsc::error::TrySendError::Closed(_) => stopped(),
        })
    }

    /// Stop taking jobs, let the workers apply the queued ones, and wait for them to end.
    pub async fn shutdown(&self, what: &str) {
        let _ = self.stop.send(true);
        let workers = self.workers.lock().map(|mut w| std::mem::take(&mut *w)).unwrap_or_default();
        for worker in workers {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "a {what} ingest worker failed");
            }
        }
    }
}
