//! Cheap-to-clone handles shared by handlers, workers and jobs.

use std::sync::Arc;

use crate::config::Settings;
use crate::db::Db;
use crate::time::Clock;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub clock: Clock,
    /// Identifies this process in leases and job runs (`host:pid:random`).
    pub instance_id: String,
    /// Outbound HTTP (provider APIs, probes): rustls, bounded timeouts.
    pub http: reqwest::Client,
    pub probes: crate::status::ProbeCache,
}

impl AppState {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let instance_id = format!("{host}:{}:{}", std::process::id(), crate::domain::ids::random_hex(3));
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(20))
            .user_agent(concat!("secur360/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with static settings");
        AppState { settings: Arc::new(settings), db, clock, instance_id, http, probes: Default::default() }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
