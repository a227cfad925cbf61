//! Prometheus metrics: one process-wide recorder (installed once, shared by every app in the process — the
//! tests spawn many), the helpers the rest of the code calls, and the per-route latency summary of the admin page.
//!
//! The admin page's percentiles come from the same observations as `http_requests_duration_seconds`: the HTTP
//! middleware records each request once through [`http_request`], which feeds both the Prometheus histogram and
//! a per-route copy of its bucket counts ([`LATENCY_BUCKETS`]). Percentiles are estimated from those cumulative
//! bucket counts with linear interpolation inside the bucket, as PromQL's `histogram_quantile` does. The counts
//! are cumulative since the process started (like the Prometheus counters).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::db::Db;

pub const HTTP_DURATION: &str = "http_requests_duration_seconds";

/// Upper bounds (seconds) of the HTTP latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Route label of requests that matched no route (never the raw path: unbounded cardinality and user data).
pub const UNMATCHED: &str = "unmatched";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static ROUTES: OnceLock<Mutex<BTreeMap<String, RouteLatency>>> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), &LATENCY_BUCKETS)
            .expect("non-empty buckets")
            .set_buckets_for_metric(Matcher::Full("job_run_duration_seconds".into()), &LATENCY_BUCKETS)
            .expect("non-empty buckets");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Another recorder was installed first (an embedding program): ours still renders, but stays empty.
            tracing::warn!("a global metrics recorder was already installed; /metrics will not see recorded values");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency by matched route");
    metrics::describe_gauge!("db_pool_connections", "database pool connections by state (size, idle)");
    metrics::describe_counter!("sms_messages_total", "SMS outcomes by kind and outcome");
    metrics::describe_counter!("stripe_webhooks_total", "Stripe webhook deliveries by outcome");
    metrics::describe_counter!("job_runs_total", "scheduled job runs by job and outcome");
    metrics::describe_counter!(
        "voice_calls_unrecorded_total",
        "inbound calls put through but not recorded (call log full, or giving up on a call)"
    );
    metrics::describe_histogram!("job_run_duration_seconds", metrics::Unit::Seconds, "job run duration");
    metrics::describe_gauge!("sms_queue_depth", "SMS messages waiting to be sent");
}

/// Record one HTTP request (called by the HTTP middleware).
pub fn http_request(route: &str, status: u16, seconds: f64) {
    let _ = handle();
    metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "status" => status.to_string()).record(seconds);
    let mut routes = ROUTES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    match routes.get_mut(route) {
        Some(latency) => latency.observe(seconds),
        None => routes.entry(route.to_owned()).or_default().observe(seconds),
    }
}

/// An SMS reached an outcome (`sent`, `delivered`, `failed`, `undelivered`, `simulated`…) for an alert kind.
pub fn sms_outcome(kind: &str, outcome: &str) {
    let _ = handle();
    metrics::counter!("sms_messages_total", "kind" => kind.to_owned(), "outcome" => outcome.to_owned()).increment(1);
}

/// A Stripe webhook delivery ended with `outcome` (`processed`, `duplicate`, `bad_signature`, `failed`…).
pub fn stripe_webhook(outcome: &str) {
    let _ = handle();
    metrics::counter!("stripe_webhooks_total", "outcome" => outcome.to_owned()).increment(1);
}

/// `n` inbound calls were answered but could not be recorded (`inbound::call_log`).
pub fn voice_calls_unrecorded(n: u64) {
    let _ = handle();
    metrics::counter!("voice_calls_unrecorded_total").increment(n);
}

/// A job run finished.
pub fn job_run(job: &str, outcome: &str, seconds: f64) {
    let _ = handle();
    metrics::counter!("job_runs_total", "job" => job.to_owned(), "outcome" => outcome.to_owned()).increment(1);
    metrics::histogram!("job_run_duration_seconds", "job" => job.to_owned()).record(seconds);
}

/// Current number of queued SMS (set at scrape time or after each dispatcher pass).
pub fn queue_depth(n: u64) {
    let _ = handle();
    metrics::gauge!("sms_queue_depth").set(n as f64);
}

/// Share of the last 24 h's finished SMS that were delivered (set at scrape time; absent without traffic).
pub fn delivery_rate(delivered: i64, finished: i64) {
    let _ = handle();
    metrics::gauge!("sms_finished_24h").set(finished as f64);
    if finished > 0 {
        metrics::gauge!("sms_delivery_rate_24h").set(delivered as f64 / finished as f64);
    }
}

/// Prometheus text for a scrape: refresh the scrape-time gauges of this app's pool, then render.
pub fn render(db: &Db) -> String {
    let handle = handle();
    let (size, idle) = crate::on_db!(db, p => (p.size(), p.num_idle()));
    let backend = format!("{:?}", db.backend()).to_lowercase();
    metrics::gauge!("db_pool_connections", "state" => "size", "backend" => backend.clone()).set(f64::from(size));
    metrics::gauge!("db_pool_connections", "state" => "idle", "backend" => backend).set(idle as f64);
    handle.run_upkeep();
    handle.render()
}

/// Cumulative bucket counts of one route (same bounds as the Prometheus histogram, plus `+Inf`).
#[derive(Debug, Clone, Default)]
pub struct RouteLatency {
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    total: u64,
}

impl RouteLatency {
    pub fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0 < q ≤ 1) in seconds, interpolated inside its bucket; `None` without observations.
    /// Past the last finite bucket the answer is that bucket's bound (as `histogram_quantile` does).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = q * self.total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                    return LATENCY_BUCKETS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        LATENCY_BUCKETS.last().copied()
    }
}

/// One row of the admin page's latency table.
#[derive(Debug, Clone)]
pub struct RoutePercentiles {
    pub route: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// p50/p95/p99 per matched route, from the histogram's bucket counts.
pub fn route_percentiles() -> Vec<RoutePercentiles> {
    let routes = ROUTES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    routes
        .iter()
        .filter(|(_, l)| l.count() > 0)
        .map(|(route, l)| {
            let ms = |q| l.quantile(q).unwrap_or(0.0) * 1000.0;
            RoutePercentiles {
                route: route.clone(),
                count: l.count(),
                p50_ms: ms(0.5),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_observation_gives_no_percentile() {
        assert_eq!(RouteLatency::default().quantile(0.5), None);
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket_that_holds_the_rank() {
        let mut l = RouteLatency::default();
        for _ in 0..100 {
            l.observe(0.004); // bucket (0.0025, 0.005]
        }
        let p50 = l.quantile(0.5).unwrap();
        assert!((p50 - 0.00375).abs() < 1e-9, "{p50}");
        assert!((l.quantile(1.0).unwrap() - 0.005).abs() < 1e-9);
    }

    #[test]
    fn a_slow_tail_moves_p99_but_not_p50() {
        let mut l = RouteLatency::default();
        for _ in 0..98 {
            l.observe(0.002);
        }
        l.observe(2.0);
        l.observe(2.0);
        assert!(l.quantile(0.5).unwrap() <= 0.0025);
        assert!(l.quantile(0.99).unwrap() > 1.0);
    }

    #[test]
    fn observations_past_the_last_bucket_report_its_bound() {
        let mut l = RouteLatency::default();
        l.observe(100.0);
        assert_eq!(l.quantile(0.5), Some(30.0));
    }
}
