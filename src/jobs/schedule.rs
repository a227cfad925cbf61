//! The in-process scheduler: which occurrence of each cron schedule is due, and a ticking loop for `serve`.

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;

use super::{Job, StartError, Trigger};
use crate::state::AppState;

/// An occurrence missed by at most this long (e.g. during a restart) still runs; older ones are skipped.
pub const CATCH_UP_MS: i64 = 60 * 60 * 1000;

/// How often `serve` checks the schedules.
pub const TICK: std::time::Duration = std::time::Duration::from_secs(20);

/// The latest occurrence of `expr` in `tz` at or before `now`, if it is within the catch-up window.
pub fn due_occurrence(expr: &str, tz: chrono_tz::Tz, now_ms: i64) -> Option<DateTime<chrono_tz::Tz>> {
    let cron = Cron::new(expr).parse().ok()?;
    let now = tz.from_utc_datetime(&DateTime::<Utc>::from_timestamp_millis(now_ms)?.naive_utc());
    let mut cursor = tz.from_utc_datetime(&DateTime::<Utc>::from_timestamp_millis(now_ms - CATCH_UP_MS)?.naive_utc());
    let mut due = None;
    while let Ok(next) = cron.find_next_occurrence(&cursor, due.is_none()) {
        if next > now {
            break;
        }
        due = Some(next);
        cursor = next;
    }
    due
}

fn schedule_of(state: &AppState, job: Job) -> Option<&str> {
    match job {
        Job::BillingSync => state.settings.billing_sync_cron.as_deref(),
        Job::SmsCleanup => state.settings.sms_cleanup_cron.as_deref(),
    }
}

/// Run every job whose occurrence is due and not yet taken (by this or another instance).
/// Returns the jobs this call ran.
pub async fn tick(state: &AppState, now_ms: i64) -> Vec<super::RunRecord> {
    let mut ran = Vec::new();
    for job in Job::ALL {
        let Some(expr) = schedule_of(state, job) else { continue };
        let Some(occurrence) = due_occurrence(expr, state.settings.cron_tz, now_ms) else { continue };
        let key = occurrence.to_rfc3339();
        match super::run(state, job, Trigger::Schedule, Some(key), "scheduler").await {
            Ok(record) => ran.push(record),
            Err(StartError::OccurrenceTaken { .. }) => {}
            Err(StartError::AlreadyRunning { .. }) => {
                tracing::info!(job = job.as_str(), "scheduled occurrence skipped: a run is in progress");
            }
            Err(StartError::Db(e)) => {
                tracing::error!(job = job.as_str(), error = %e, "scheduler could not start a job")
            }
        }
    }
    ran
}

/// The loop `serve` runs until shutdown.
pub async fn run_loop(state: AppState, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => { tick(&state, state.now()).await; }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn the_daily_sync_is_due_at_four_in_toronto_and_for_an_hour_after() {
        let tz = chrono_tz::America::Toronto;
        // 04:00 EST is 09:00 UTC in November.
        assert_eq!(due_occurrence("0 4 * * *", tz, ms("2026-11-24T08:59:59Z")), None);
        let due = due_occurrence("0 4 * * *", tz, ms("2026-11-24T09:00:00Z")).unwrap();
        assert_eq!(due.to_rfc3339(), "2026-11-24T04:00:00-05:00");
        assert_eq!(due_occurrence("0 4 * * *", tz, ms("2026-11-24T09:59:00Z")).unwrap(), due);
        assert_eq!(due_occurrence("0 4 * * *", tz, ms("2026-11-24T10:00:01Z")), None);
    }

    #[test]
    fn daylight_saving_time_is_followed() {
        // In July Toronto is UTC-4: 04:00 local is 08:00 UTC.
        let due = due_occurrence("0 4 * * *", chrono_tz::America::Toronto, ms("2026-07-01T08:00:30Z")).unwrap();
        assert_eq!(due.to_rfc3339(), "2026-07-01T04:00:00-04:00");
    }

    #[test]
    fn the_latest_occurrence_in_the_window_wins() {
        let due = due_occurrence("*/10 * * * *", chrono_tz::UTC, ms("2026-11-24T12:35:00Z")).unwrap();
        assert_eq!(due.to_rfc3339(), "2026-11-24T12:30:00+00:00");
    }

    #[test]
    fn the_weekly_cleanup_runs_on_sundays_only() {
        let tz = chrono_tz::America::Toronto;
        // 2026-11-29 is a Sunday; 03:00 EST = 08:00 UTC.
        assert!(due_occurrence("0 3 * * 0", tz, ms("2026-11-29T08:00:00Z")).is_some());
        assert!(due_occurrence("0 3 * * 0", tz, ms("2026-11-28T08:00:00Z")).is_none());
    }
}
