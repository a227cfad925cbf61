//! Cheap-to-clone handles shared by handlers, workers and jobs.

use std::sync::Arc;

use crate::config::Settings;
use crate::db::Db;
use crate::domain::ids::new_id;
use crate::sms::twilio::SmsProvider;
use crate::time::Clock;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub clock: Clock,
    /// Twilio, or the simulated provider when no credentials are configured.
    pub sms: SmsProvider,
    /// This process, as recorded in queue leases.
    pub instance_id: Arc<str>,
}

impl AppState {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> anyhow::Result<Self> {
        let sms = SmsProvider::from_settings(&settings)?;
        Ok(AppState { settings: Arc::new(settings), db, clock, sms, instance_id: new_id("inst").into() })
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
