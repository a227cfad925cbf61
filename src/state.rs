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
}

impl AppState {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> Self {
        AppState { settings: Arc::new(settings), db, clock }
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
