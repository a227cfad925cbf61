//! The record of inbound calls, kept off the answer path (SPEC §5: every call is recorded).
//!
//! The TwiML that puts a caller through to `OWNER_MOBILE` depends on nothing but the configuration, so it does
//! not wait for the database: a worker calling the safety line while the database is unreachable is still put
//! through, and the endpoint answers at the pace of the HTTP stack instead of a durable commit per call. The
//! webhook hands the call to this instance's call log and answers; the log's worker records whatever is
//! waiting in one transaction (multi-row inserts, and the audit rows of the calls new to the database), then
//! pauses for [`PAUSE`] so that the next batch gathers the calls of that time, and keeps retrying through a
//! database outage, holding at most [`QUEUE_MAX`] calls in memory.
//!
//! What this trades, and what covers it:
//! - A graceful stop records every queued call before the pool closes ([`CallLog::shutdown`]).
//! - A call answered in the last moments before the process is killed (SIGKILL, power loss) may miss this
//!   record; `POST /api/voice/dial-status`, which Twilio sends when the `<Dial>` ends, records the call
//!   durably before it answers (it inserts the call when it is not there), so a forwarded call is still
//!   recorded. Twilio's own call log keeps every call.
//! - A call that finds the queue full waits up to [`FULL_WAIT`] for room (so a burst is slowed to the pace of
//!   the log, not dropped); still full after that (the database unreachable for a long time), it is put
//!   through but not recorded here: logged as an error and counted in `voice_calls_unrecorded_total`.
//!
//! A call that cannot be recorded even alone (a statement error, not an outage) is given up after
//! [`ALONE_ATTEMPTS`] attempts, logged and counted the same way, so one bad row never blocks the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::audit::{self, Entry, Zone};
use crate::db::voice::{insert_calls, NewCall};
use crate::db::{self, Db};
use crate::domain::phone::Phone;

/// Calls held in memory at most (about 200 bytes each); beyond, calls are answered but not recorded here.
pub const QUEUE_MAX: usize = 10_000;
/// Most calls recorded in one transaction (in multi-row statements of 400).
pub const BATCH_MAX: usize = 4096;
/// The pause after a batch that was not full: calls arriving meanwhile are recorded together, and the
/// webhook's hand-over does not wake the worker for each call. It bounds how long a call waits to be recorded
/// (and so what a crash may miss) to about this plus one commit, while calls arrive slower than the log
/// records them; faster, full batches follow one another without a pause and the webhooks wait for room.
pub const PAUSE: Duration = Duration::from_millis(50);
/// Attempts for a call recorded alone (after its batch failed for a reason other than an outage).
pub const ALONE_ATTEMPTS: u32 = 3;
/// Attempts of a batch once a stop was asked for, so that a stop during an outage ends.
const ATTEMPTS_WHEN_STOPPING: u32 = 3;
/// How long a call waits for room in a full queue before it is answered unrecorded (Twilio waits 15 s for
/// the answer; a SQLite commit may wait up to 5 s for the write lock).
pub const FULL_WAIT: Duration = Duration::from_secs(5);
/// The longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// An inbound call to record.
#[derive(Debug, Clone)]
pub struct Call {
    pub call: NewCall,
    /// Whether the answer forwarded it (an `OWNER_MOBILE` was configured).
    pub forwarded: bool,
}

enum Item {
    Call(Call),
    /// Answered once every call queued before it is recorded (or given up).
    Flush(oneshot::Sender<()>),
}

/// This instance's call log (cheap to clone).
#[derive(Clone)]
pub struct CallLog {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Item>,
    stop: watch::Sender<bool>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl CallLog {
    /// Start the worker on the current Tokio runtime. Outside one (no HTTP server), there is none: calls are
    /// queued and never recorded, which only the CLI's state (that answers no webhook) does.
    pub fn start(db: Db) -> Self {
        let (queue, items) = mpsc::channel(QUEUE_MAX);
        let (stop, stopped) = watch::channel(false);
        let worker = tokio::runtime::Handle::try_current()
            .ok()
            .map(|runtime| runtime.spawn(db::scope::system("twilio-webhook", worker(db, items, stopped))));
        CallLog { inner: Arc::new(Inner { queue, stop, worker: Mutex::new(worker) }) }
    }

    /// Queue `call` to be recorded; `false` when it could not be: logged and counted, and the caller answers
    /// the call anyway. When the queue is full the call waits up to [`FULL_WAIT`] for room (calls arriving
    /// faster than they are recorded are slowed to the log's pace instead of going unrecorded); still full
    /// after that (the database unreachable for long), or the log stopped: not recorded.
    pub async fn record(&self, call: Call) -> bool {
        let item = match self.inner.queue.try_send(Item::Call(call)) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(Item::Call(call))) => {
                return unrecorded(&call, "the call log is stopped")
            }
            Err(mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item)) => item,
        };
        match tokio::time::timeout(FULL_WAIT, self.inner.queue.send(item)).await {
            Ok(Ok(())) => true,
            Ok(Err(mpsc::error::SendError(Item::Call(call)))) => unrecorded(&call, "the call log is stopped"),
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::error!("inbound call answered but not recorded: the call log stayed full for {FULL_WAIT:?} (database unreachable?)");
                crate::metrics::voice_calls_unrecorded(1);
                false
            }
        }
    }

    /// Wait until every call queued before this is recorded (or given up). Returns at once when the log is
    /// stopped.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.queue.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Stop taking calls, record the queued ones (a few attempts each if the database is unreachable), and
    /// wait for the worker to end.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let worker = self.inner.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            if let Err(e) = worker.await {
                tracing::error!(error = %e, "the call log's worker failed");
            }
        }
    }
}

async fn worker(db: Db, mut items: mpsc::Receiver<Item>, mut stop: watch::Receiver<bool>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    let mut closed = false;
    loop {
        if !closed && *stop.borrow() {
            // Refuse new calls, then record the queued ones.
            items.close();
            closed = true;
        }
        let n = tokio::select! {
            biased;
            n = items.recv_many(&mut batch, BATCH_MAX) => n,
            _ = stop.wait_for(|stopping| *stopping), if !closed => continue,
        };
        if n == 0 {
            return; // closed and drained
        }
        let mut calls = Vec::with_capacity(n);
        let mut flushes = Vec::new();
        for item in batch.drain(..) {
            match item {
                Item::Call(call) => calls.push(call),
                Item::Flush(done) => flushes.push(done),
            }
        }
        if !calls.is_empty() {
            record_with_retries(&db, &calls, &mut stop).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
        // A full batch: more are waiting, record them at once; otherwise let the next batch gather.
        if n < BATCH_MAX && !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(PAUSE) => {}
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
        }
    }
}

/// Record `calls` in one transaction, retrying while the database is unreachable; when the batch fails for
/// another reason, each call alone.
async fn record_with_retries(db: &Db, calls: &[Call], stop: &mut watch::Receiver<bool>) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let e = match record(db, calls).await {
            Ok(_) => return,
            Err(e) => e,
        };
        if !db::is_unavailable(&e) {
            tracing::warn!(calls = calls.len(), error = %e, "recording calls failed; recording each alone");
            for call in calls {
                record_alone(db, call).await;
            }
            return;
        }
        if *stop.borrow() && attempt >= ATTEMPTS_WHEN_STOPPING {
            give_up(calls, &e);
            return;
        }
        tracing::warn!(calls = calls.len(), attempt, error = %e, "recording calls failed; retrying");
        // A stop cuts the pause short: its few last attempts come at once.
        tokio::select! {
            _ = tokio::time::sleep(backoff(attempt)) => {}
            _ = stop.wait_for(|stopping| *stopping) => {}
        }
    }
}

async fn record_alone(db: &Db, call: &Call) {
    let calls = std::slice::from_ref(call);
    for attempt in 1..=ALONE_ATTEMPTS {
        match record(db, calls).await {
            Ok(_) => return,
            Err(e) if attempt == ALONE_ATTEMPTS => give_up(calls, &e),
            Err(_) => tokio::time::sleep(backoff(attempt)).await,
        }
    }
}

fn unrecorded(call: &Call, why: &str) -> bool {
    tracing::error!(call_sid = %call.call.sid, "inbound call answered but not recorded: {why}");
    crate::metrics::voice_calls_unrecorded(1);
    false
}

fn give_up(calls: &[Call], e: &sqlx::Error) {
    for call in calls {
        tracing::error!(call_sid = %call.call.sid, error = %e, "inbound call answered but not recorded: giving up");
    }
    crate::metrics::voice_calls_unrecorded(calls.len() as u64);
}

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(10))).min(MAX_BACKOFF)
}

/// Record `calls` in one transaction with the audit rows of those new to the database; how many were new.
pub async fn record(db: &Db, calls: &[Call]) -> Result<usize, sqlx::Error> {
    let rows: Vec<NewCall> = calls.iter().map(|c| c.call.clone()).collect();
    let mut tx = db.begin().await?;
    let inserted = insert_calls(&mut tx, &rows).await?;
    let by_sid: HashMap<&str, &Call> = calls.iter().rev().map(|c| (c.call.sid.as_str(), c)).collect();
    let entries: Vec<Entry> = inserted
        .iter()
        .filter_map(|sid| by_sid.get(sid.as_str()))
        .map(|c| {
            let from = Phone::mask_stored(&c.call.from).unwrap_or_else(|| "unknown caller".to_owned());
            Entry::new(Zone::Voice, "inbound_call", "twilio")
                .subject(&c.call.sid)
                .details(json!({ "from": from, "forwarded": c.forwarded }))
        })
        .collect();
    // Each row keeps the time its call arrived; the audit rows take the batch's newest.
    let at = calls.iter().map(|c| c.call.at).max().unwrap_or_default();
    audit::append_many(&mut tx, &entries, at).await?;
    tx.commit().await?;
    Ok(inserted.len())
}
