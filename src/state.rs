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
}

impl AppState {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        let instance_id = format!("{host}:{}:{}", std::process::id(), crate::domain::ids::random_hex(3));
        AppState { settings: Arc::new(settings), db, clock, instance_id }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
