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
    /// Identifies this process in queue leases and job runs.
    pub instance_id: Arc<str>,
    /// Outbound HTTP (provider probes): rustls, bounded timeouts.
    pub http: reqwest::Client,
    pub probes: crate::status::ProbeCache,
    /// Wakes this process's SMS dispatcher when messages were queued (it otherwise polls once per second).
    pub dispatch_wakeup: Arc<tokio::sync::Notify>,
    /// This instance's status-callback ingest task (group commit; `sms::ingest`).
    pub status_ingest: crate::sms::ingest::StatusIngest,
    /// This instance's ingest workers for new Stripe events (group commit; `billing::ingest`).
    pub stripe_ingest: crate::billing::ingest::StripeIngest,
}

impl AppState {
    pub fn new(settings: Settings, db: Db, clock: Clock) -> anyhow::Result<Self> {
        let sms = SmsProvider::from_settings(&settings)?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(20))
            .user_agent(concat!("secur360/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let status_ingest = crate::sms::ingest::StatusIngest::start(db.clone());
        let settings = Arc::new(settings);
        let stripe_ingest = crate::billing::ingest::StripeIngest::start(db.clone(), settings.clone());
        Ok(AppState {
            settings,
            db,
            clock,
            sms,
            instance_id: new_id("inst").into(),
            http,
            probes: Default::default(),
            dispatch_wakeup: Default::default(),
            status_ingest,
            stripe_ingest,
        })
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}
