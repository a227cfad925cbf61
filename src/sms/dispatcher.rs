//! The SMS dispatcher: claim due messages with a short lease (emergency first), commit, call the provider with
//! no transaction open and bounded concurrency, then record each outcome in one short transaction.
//!
//! `run_once(state, now)` does one pass (at most `SMS_DISPATCH_RATE_PER_SECOND` messages); `run_loop` repeats
//! it at most once per second in `serve`. Tests call `run_once` with a chosen `now`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::audit::{self, Entry, Outcome, Zone};
use crate::db::sms::{self, Claimed, Due};
use crate::db::sms_status::{self, StatusUpdate};
use crate::db::workers::{self, ConsentEvent};
use crate::domain::sms_status::{transition, MessageStatus};
use crate::sms::alerts::EMERGENCY_PRIORITY;
use crate::sms::twilio::SendOutcome;
use crate::state::AppState;

/// First retry delay; doubled per attempt, capped, with jitter.
const BACKOFF_BASE_MS: i64 = 30_000;
const BACKOFF_CAP_MS: i64 = 3_600_000;

/// How old the pass's consent read may be when a message's provider call starts; past it the message reads its
/// recipient's consent again (one query) before the call.
const CONSENT_MAX_AGE_MS: u64 = 1_000;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct DispatchReport {
    pub claimed: usize,
    pub accepted: usize,
    pub simulated: usize,
    pub retried: usize,
    pub failed: usize,
    pub canceled: usize,
    /// Outcomes not recorded because the lease was lost (another claim took over) or the store failed.
    pub lost: usize,
}

/// Delay before attempt `attempts + 1` after a transient failure: exponential, capped, with full jitter in
/// the upper half (so retries of one burst spread out); the provider's `Retry-After` (at least 1 s) when given.
pub fn backoff_ms(attempts: i64, retry_after_ms: Option<i64>) -> i64 {
    let exp = BACKOFF_BASE_MS.saturating_mul(1i64 << attempts.clamp(1, 20).saturating_sub(1)).min(BACKOFF_CAP_MS);
    let jittered = rand::thread_rng().gen_range(exp / 2..=exp);
    retry_after_ms.map_or(jittered, |ra| ra.max(1_000))
}

fn lease_ms(state: &AppState) -> i64 {
    // Long enough for the consent check, the provider call (timeout) and recording the outcome.
    (state.settings.sms.provider_timeout_ms as i64).saturating_mul(2) + 30_000
}

/// One dispatch pass at `now` (at most `SMS_DISPATCH_RATE_PER_SECOND` messages).
pub async fn run_once(state: &AppState, now: i64) -> anyhow::Result<DispatchReport> {
    run_pass(state, now, state.settings.sms.dispatch_rate_per_second as usize, Due::WithExpiredLeases).await
}

/// One dispatch pass at `now` of at most `limit` messages, of those `which` names (queued ones, also claims whose
/// lease expired, or emergencies only: see `db::sms::claim_due`). Runs in the dispatcher's system database context.
pub async fn run_pass(state: &AppState, now: i64, limit: usize, which: Due) -> anyhow::Result<DispatchReport> {
    crate::db::scope::system("sms-dispatcher", pass(state, now, limit, which)).await
}

async fn pass(state: &AppState, now: i64, limit: usize, which: Due) -> anyhow::Result<DispatchReport> {
    let limits = &state.settings.sms;
    let owner = state.instance_id.to_string();
    let claimed = sms::claim_due(&state.db, now, now + lease_ms(state), &owner, limit as i64, which).await?;
    let mut report = DispatchReport { claimed: claimed.len(), ..Default::default() };
    if claimed.is_empty() {
        return Ok(report);
    }
    // Consent is checked again just before sending: for the whole pass in one query, before any of its calls. A
    // message whose turn comes later than `CONSENT_MAX_AGE_MS` after that read (a slow provider) reads its own again.
    let consent = match sms::consent_blocks(&state.db, &claimed).await {
        Ok(blocks) => blocks,
        Err(e) => {
            // The leases expire and the messages are claimed again: nothing is lost.
            tracing::error!(error = format!("{e:#}"), n = claimed.len(), "checking the consent of claimed SMS failed");
            report.lost += claimed.len();
            return Ok(report);
        }
    };
    let consent_read = tokio::time::Instant::now();
    let permits = Arc::new(Semaphore::new(limits.dispatch_concurrency as usize));
    let mut tasks = JoinSet::new();
    for (m, block) in claimed.into_iter().zip(consent) {
        let state = state.clone();
        let permits = permits.clone();
        let span = tracing::info_span!("sms_dispatch", message_id = %m.id, attempt = m.attempts, kind = %m.kind);
        // Spawned tasks do not inherit the task-local database scope: carry the dispatcher's system scope over.
        let scope = crate::db::scope::current();
        tasks.spawn(
            crate::db::scope::run(scope, async move {
                if let Some(reason) = block {
                    return (m, Ok(Sent::Blocked(reason)));
                }
                let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
                let fresh = consent_read.elapsed() <= Duration::from_millis(CONSENT_MAX_AGE_MS);
                let sent = send_one(&state, &m, fresh).await;
                (m, sent)
            })
            .instrument(span),
        );
    }
    // Outcomes are recorded as the sends finish, in groups: each transaction takes every send that finished while
    // the previous one was being recorded. A lone outcome is recorded at once; under load one commit (one fsync,
    // a few set-based statements) serves many messages instead of one each.
    while let Some(first) = tasks.join_next().await {
        let mut done = vec![first];
        while let Some(more) = tasks.try_join_next() {
            done.push(more);
        }
        let mut group = Vec::with_capacity(done.len());
        for d in done {
            match d {
                Ok((m, Ok(sent))) => group.push((m, sent)),
                Ok((m, Err(e))) => {
                    // The lease expires and the message is claimed again: nothing is lost.
                    tracing::error!(message_id = %m.id, error = format!("{e:#}"), "checking an SMS's consent failed");
                    report.lost += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "an SMS dispatch task panicked");
                    report.lost += 1;
                }
            }
        }
        record_group(state, &owner, group, now, &mut report).await;
    }
    Ok(report)
}

enum Recorded {
    Accepted,
    Simulated,
    Retried,
    Failed,
    Canceled,
}

impl DispatchReport {
    fn count(&mut self, recorded: Option<Recorded>) {
        match recorded {
            Some(Recorded::Accepted) => self.accepted += 1,
            Some(Recorded::Simulated) => self.simulated += 1,
            Some(Recorded::Retried) => self.retried += 1,
            Some(Recorded::Failed) => self.failed += 1,
            Some(Recorded::Canceled) => self.canceled += 1,
            None => self.lost += 1,
        }
    }
}

/// What a dispatch task came back with: the consent check's veto, or the provider's answer.
pub enum Sent {
    Blocked(&'static str),
    Provider(SendOutcome),
}

/// Call the provider for a message whose consent the pass found (re-read here unless `fresh`: it may have been
/// withdrawn since). No transaction is open here.
async fn send_one(state: &AppState, m: &Claimed, fresh: bool) -> anyhow::Result<Sent> {
    if !fresh {
        let (kind, tenant, worker) = (&m.kind, m.tenant_id.as_deref(), m.worker_id.as_deref());
        if let Some(reason) = sms::consent_block(&state.db, kind, tenant, worker, &m.to_phone).await? {
            return Ok(Sent::Blocked(reason));
        }
    }
    let body = m.body.clone().unwrap_or_default();
    Ok(Sent::Provider(state.sms.send(&m.to_phone, &body).await))
}

/// The recording half of a pass, for a group of messages this instance claimed and tried (tests drive it with
/// chosen outcomes): one transaction for the group, one by one if that fails.
pub async fn record(state: &AppState, group: Vec<(Claimed, Sent)>, now: i64) -> DispatchReport {
    let mut report = DispatchReport { claimed: group.len(), ..Default::default() };
    let owner = state.instance_id.to_string();
    crate::db::scope::system("sms-dispatcher", record_group(state, &owner, group, now, &mut report)).await;
    report
}

/// Record a group of outcomes in one transaction; if that fails, each in its own, so one bad outcome cannot hold
/// the others back (an outcome not recorded is lost only until its lease expires and the message is claimed again).
async fn record_group(
    state: &AppState,
    owner: &str,
    group: Vec<(Claimed, Sent)>,
    now: i64,
    report: &mut DispatchReport,
) {
    if group.is_empty() {
        return;
    }
    match record_all(state, owner, &group, now).await {
        Ok(recorded) => recorded.into_iter().for_each(|r| report.count(r)),
        Err(e) if group.len() > 1 => {
            tracing::warn!(
                error = format!("{e:#}"),
                n = group.len(),
                "recording SMS outcomes together failed; one by one"
            );
            for item in group {
                match record_all(state, owner, std::slice::from_ref(&item), now).await {
                    Ok(recorded) => recorded.into_iter().for_each(|r| report.count(r)),
                    Err(e) => {
                        tracing::error!(message_id = %item.0.id, error = format!("{e:#}"), "recording an SMS outcome failed");
                        report.lost += 1;
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "recording an SMS outcome failed");
            report.lost += 1;
        }
    }
}

/// What one outcome becomes once recorded: the row update, the report's count, the audit row's fields.
struct Plan<'a> {
    outcome: sms::Outcome<'a>,
    recorded: Recorded,
    /// Status, SID and error code of the audit row (retries have none: the message goes back to the queue).
    audit: Option<(&'static str, Option<&'a str>, Option<&'a str>)>,
}

fn plan<'a>(state: &AppState, m: &'a Claimed, sent: &'a Sent, now: i64) -> Plan<'a> {
    use sms::Outcome as O;
    let outcome = match sent {
        Sent::Blocked(reason) => {
            return Plan {
                outcome: O::settled(m, "canceled", Some(reason), None),
                recorded: Recorded::Canceled,
                audit: Some(("canceled", None, Some(reason))),
            }
        }
        Sent::Provider(outcome) => outcome,
    };
    match outcome {
        SendOutcome::Accepted { sid } => Plan {
            outcome: O::accepted(m, sid),
            recorded: Recorded::Accepted,
            audit: Some(("sending", Some(sid.as_str()), None)),
        },
        SendOutcome::Simulated => Plan {
            outcome: O::settled(m, "simulated", None, None),
            recorded: Recorded::Simulated,
            audit: Some(("simulated", None, None)),
        },
        SendOutcome::Transient { code, message, .. } if m.attempts >= i64::from(state.settings.sms.max_attempts) => {
            Plan {
                outcome: O::settled(m, "failed", Some(code.as_str()), Some(message.as_str())),
                recorded: Recorded::Failed,
                audit: Some(("failed", None, Some(code.as_str()))),
            }
        }
        SendOutcome::Transient { code, message, retry_after_ms } => Plan {
            outcome: O::retry(m, now + backoff_ms(m.attempts, *retry_after_ms), code, message),
            recorded: Recorded::Retried,
            audit: None,
        },
        SendOutcome::Permanent { code, message } => Plan {
            outcome: O::settled(m, "failed", Some(code.as_str()), Some(message.as_str())),
            recorded: Recorded::Failed,
            audit: Some(("failed", None, Some(code.as_str()))),
        },
    }
}

/// Record a group of outcomes in one transaction with set-based statements: whatever the group's size, one
/// update of the messages, one statement for the SIDs' locks and one taking their early callbacks, then the audit
/// rows (an alert's aggregate is not stored: it is computed from its messages when the alert is read). Per
/// message, in order: what it was recorded as, `None` when the lease was lost to a newer claim and nothing was
/// written for it.
async fn record_all(
    state: &AppState,
    owner: &str,
    group: &[(Claimed, Sent)],
    now: i64,
) -> anyhow::Result<Vec<Option<Recorded>>> {
    let plans: Vec<Plan> = group.iter().map(|(m, sent)| plan(state, m, sent, now)).collect();
    let mut tx = state.db.begin().await?;
    // Locks in one order, whatever the group holds: the SIDs (sorted), then message rows. A status callback
    // takes only its SIDs' locks before rows, so neither it nor another instance's group can deadlock with this
    // one. Audit rows take no lock: they are sealed into the chain afterwards (`audit::seal`).
    let sids: Vec<&str> = plans.iter().filter_map(|p| p.outcome.sid).collect();
    sms::lock_sids(&mut tx, &sids).await?;
    let outcomes: Vec<sms::Outcome> = plans.iter().map(|p| p.outcome).collect();
    let written = sms::record_outcomes(&mut tx, owner, &outcomes, now).await?;

    // Callbacks that arrived before we knew the SIDs: applied now, in the order they came.
    let recorded_sids: Vec<&str> =
        plans.iter().zip(&written).filter(|(_, w)| **w).filter_map(|(p, _)| p.outcome.sid).collect();
    let mut after: HashMap<String, (MessageStatus, Option<String>)> = HashMap::new();
    if !recorded_sids.is_empty() {
        for e in sms::take_pending_events(&mut tx, &recorded_sids).await? {
            let (status, code) = after.entry(e.twilio_sid).or_insert((MessageStatus::Sending, None));
            if let Some(next) = MessageStatus::from_twilio(&e.status).and_then(|s| transition(*status, s)) {
                *status = next;
                *code = e.error_code.or(code.take());
            }
        }
    }
    let moved: Vec<StatusUpdate> = plans
        .iter()
        .zip(&written)
        .filter(|(_, w)| **w)
        .filter_map(|(p, _)| {
            let (status, code) = after.get(p.outcome.sid?)?;
            (*status != MessageStatus::Sending).then(|| StatusUpdate {
                id: p.outcome.message.id.as_str(),
                status: status.as_str(),
                error_code: code.as_deref(),
                at: now,
            })
        })
        .collect();
    if !moved.is_empty() {
        sms_status::set_statuses(&mut tx, &moved).await?;
    }

    for ((m, sent), _) in group.iter().zip(&written).filter(|(_, w)| **w) {
        if matches!(sent, Sent::Provider(SendOutcome::Permanent { code, .. }) if code == "21610") {
            record_carrier_opt_out(&mut tx, m, now).await?;
        }
    }

    let entries: Vec<Entry> = plans
        .iter()
        .zip(&written)
        .filter(|(_, w)| **w)
        .filter_map(|(p, _)| {
            p.audit.map(|(status, sid, code)| audit_entry(state, p.outcome.message, status, sid, code))
        })
        .collect();
    audit::append_many(&mut tx, &entries, now).await?;
    tx.commit().await?;

    Ok(plans
        .into_iter()
        .zip(written)
        .map(|(p, w)| {
            if !w {
                return None;
            }
            let m = p.outcome.message;
            match p.audit {
                Some((status, _, _)) => crate::metrics::sms_outcome(&m.kind, status),
                None => tracing::warn!(
                    message_id = %m.id, attempt = m.attempts, code = p.outcome.error_code, "SMS send failed; will retry"
                ),
            }
            Some(p.recorded)
        })
        .collect())
}

/// The audit row of a recorded outcome.
fn audit_entry(state: &AppState, m: &Claimed, status: &str, sid: Option<&str>, error_code: Option<&str>) -> Entry {
    let outcome = match status {
        "failed" => Outcome::Failure,
        "sending" => Outcome::Success,
        _ => Outcome::Info,
    };
    let mut entry = Entry::new(Zone::Twilio, "send_sms", format!("dispatcher:{}", state.instance_id))
        .subject(&m.id)
        .outcome(outcome)
        .details(json!({
            "kind": m.kind, "to": m.to_phone_masked, "status": status, "attempt": m.attempts,
            "twilio_sid": sid, "error_code": error_code, "provider": state.sms.name(),
        }));
    if let Some(t) = &m.tenant_id {
        entry = entry.tenant(t);
    }
    entry
}

/// Twilio 21610: the recipient replied STOP to our sender. Withdraw consent for that phone everywhere and
/// write it to the consent ledger.
async fn record_carrier_opt_out(tx: &mut crate::db::Tx, m: &Claimed, now: i64) -> anyhow::Result<()> {
    let evidence = format!("Twilio error 21610 on message {}", m.id);
    let holders = sms::workers_with_phone(tx, &m.to_phone).await?;
    for (tenant_id, worker_id, consent) in &holders {
        if *consent {
            sms::withdraw_consent(tx, tenant_id, worker_id, "carrier_21610", now).await?;
        }
        let event = ConsentEvent {
            tenant_id: Some(tenant_id),
            worker_id: Some(worker_id),
            phone: &m.to_phone,
            old_consent: Some(*consent),
            new_consent: false,
            source: "carrier_21610",
            evidence: &evidence,
            actor: "twilio",
            at: now,
        };
        workers::insert_consent_event(tx, &event).await?;
    }
    if holders.is_empty() {
        let event = ConsentEvent {
            tenant_id: m.tenant_id.as_deref(),
            worker_id: None,
            phone: &m.to_phone,
            old_consent: None,
            new_consent: false,
            source: "carrier_21610",
            evidence: &evidence,
            actor: "twilio",
            at: now,
        };
        workers::insert_consent_event(tx, &event).await?;
    }
    tracing::info!(message_id = %m.id, to = %m.to_phone_masked, "carrier 21610: consent withdrawn for the phone");
    Ok(())
}

impl DispatchReport {
    fn add(&mut self, r: &DispatchReport) {
        self.claimed += r.claimed;
        self.accepted += r.accepted;
        self.simulated += r.simulated;
        self.retried += r.retried;
        self.failed += r.failed;
        self.canceled += r.canceled;
        self.lost += r.lost;
    }
}

/// The dispatcher's per-second budget (`SMS_DISPATCH_RATE_PER_SECOND`) in `run_loop`. General passes spend what
/// is left of the second. Emergencies queued once it is spent do not wait for the next second: they are sent at
/// once on the next second's budget, at most `ahead_max` messages (one pass) ahead, so the rate over two seconds
/// stays within the setting.
#[derive(Debug)]
struct Budget {
    rate: usize,
    ahead_max: usize,
    /// Left in this second.
    left: usize,
    /// Taken ahead from the next second.
    owed: usize,
}

impl Budget {
    fn new(rate: usize, ahead_max: usize) -> Self {
        Budget { rate, ahead_max: ahead_max.min(rate), left: rate, owed: 0 }
    }

    /// A new second: its budget, less what was taken ahead of it.
    fn next_second(&mut self) {
        self.left = self.rate - self.owed.min(self.rate);
        self.owed = 0;
    }

    fn spend(&mut self, n: usize) {
        let now = n.min(self.left);
        self.left -= now;
        self.owed += n - now;
    }

    /// How many emergencies may be claimed now: what is left of this second, then up to `ahead_max` of the next.
    fn emergency_room(&self) -> usize {
        self.left + self.ahead_max.saturating_sub(self.owed)
    }
}

/// The background dispatcher of `serve`: at most `SMS_DISPATCH_RATE_PER_SECOND` messages per second, until `stop`.
///
/// Each second's budget is spent in short passes of a few messages per permit rather than one pass of the whole
/// budget: every pass claims emergencies first, so an emergency queued behind a backlog waits for one short pass,
/// not for a second's worth of general messages. When nothing is due, the loop sleeps until the next second or
/// until a message is queued in this process (`AppState::dispatch_wakeup`), whichever comes first. When the
/// second's budget is spent, a message queued in this process wakes the loop for a pass of emergencies only, on
/// the next second's budget ([`Budget`]).
pub async fn run_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    tracing::info!(provider = state.sms.name(), "SMS dispatcher started");
    let rate = (state.settings.sms.dispatch_rate_per_second as usize).max(1);
    let pass = (state.settings.sms.dispatch_concurrency as usize).saturating_mul(4).clamp(1, rate);
    let mut budget = Budget::new(rate, pass);
    'seconds: loop {
        let window_end = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut idle = false;
        let mut window = DispatchReport::default();
        // Expired leases (a crashed instance's claims) once per second, in the first pass.
        let mut first = true;
        while budget.left > 0 && tokio::time::Instant::now() < window_end && !*stop.borrow() {
            let limit = pass.min(budget.left);
            let which = if first { Due::WithExpiredLeases } else { Due::Queued };
            first = false;
            match run_pass(&state, state.now(), limit, which).await {
                Ok(r) => {
                    window.add(&r);
                    budget.spend(r.claimed);
                    if r.claimed < limit {
                        idle = true;
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "SMS dispatch pass failed");
                    idle = true;
                    break;
                }
            }
        }
        if window.claimed > 0 {
            tracing::info!(r = ?window, "SMS dispatch");
        }
        // Budget spent: the next second. Nothing due (or the store failed): poll in a second unless woken first.
        // Otherwise (the second ran out with budget left) go on at once.
        let wait = if idle {
            Duration::from_secs(1)
        } else if budget.left == 0 {
            window_end.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::ZERO
        };
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = stop.changed() => break 'seconds,
                _ = tokio::time::sleep_until(until) => break,
                _ = state.dispatch_wakeup.notified() => {
                    if idle {
                        break;
                    }
                    let limit = pass.min(budget.emergency_room());
                    if limit == 0 {
                        continue;
                    }
                    match run_pass(&state, state.now(), limit, Due::QueuedFromPriority(EMERGENCY_PRIORITY)).await {
                        Ok(r) => {
                            budget.spend(r.claimed);
                            if r.claimed > 0 {
                                tracing::info!(r = ?r, "SMS dispatch: emergencies after the second's budget was spent");
                            }
                        }
                        Err(e) => tracing::error!(error = format!("{e:#}"), "SMS dispatch pass of emergencies failed"),
                    }
                }
            }
        }
        if *stop.borrow() {
            break;
        }
        budget.next_second();
    }
    tracing::info!("SMS dispatcher stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_within_jitter_and_is_capped() {
        for attempt in 1..=12 {
            let exp = (BACKOFF_BASE_MS << (attempt - 1)).min(BACKOFF_CAP_MS);
            for _ in 0..50 {
                let d = backoff_ms(attempt, None);
                assert!((exp / 2..=exp).contains(&d), "attempt {attempt}: {d}");
            }
        }
        assert!(backoff_ms(60, None) <= BACKOFF_CAP_MS);
    }

    #[test]
    fn a_retry_after_from_the_provider_is_honoured() {
        assert_eq!(backoff_ms(1, Some(600_000)), 600_000);
        assert_eq!(backoff_ms(3, Some(2_000)), 2_000);
        assert_eq!(backoff_ms(3, Some(0)), 1_000);
    }

    #[test]
    fn emergencies_after_the_budget_is_spent_take_at_most_one_pass_of_the_next_second() {
        let mut b = Budget::new(1_000, 128);
        b.spend(990);
        assert_eq!((b.left, b.owed, b.emergency_room()), (10, 0, 138));
        // The second's budget is spent, then a pass of emergencies takes 30 ahead.
        b.spend(10);
        assert_eq!(b.emergency_room(), 128);
        b.spend(30);
        assert_eq!((b.left, b.owed, b.emergency_room()), (0, 30, 98));
        // More than one pass ahead is refused until the next second.
        b.spend(98);
        assert_eq!(b.emergency_room(), 0);
        // The next second pays it back: over the two seconds, no more than the rate.
        b.next_second();
        assert_eq!((b.left, b.owed, b.emergency_room()), (1_000 - 128, 0, 1_000));
        b.next_second();
        assert_eq!(b.left, 1_000);
    }

    #[test]
    fn a_budget_smaller_than_a_pass_lends_at_most_a_second_ahead() {
        let mut b = Budget::new(5, 128);
        b.spend(5);
        assert_eq!(b.emergency_room(), 5);
        b.spend(5);
        b.next_second();
        assert_eq!((b.left, b.owed), (0, 0));
        b.next_second();
        assert_eq!(b.left, 5);
    }
}
