//! Cheap-to-clone handles shared by handlers, workers and jobs.

use std::sync::Arc;

use crate::config::Settings;
use crate::db::Db;
use crate::domain::ids::new_id;
use crate::sms::twilio::SmsProvider;
use crate::time::Clock;

/// The state every handler and worker shares: one allocation behind an `Arc`, so that the several clones each
/// request makes (middleware, extractors) are one reference count each, not a copy of the provider clients'
/// strings (fields are reached through `Deref`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
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
    /// This instance's record of inbound calls, written off the answer path (`inbound::call_log`).
    pub call_log: crate::inbound::call_log::CallLog,
    /// The TwiML answering every inbound call, rendered once from the settings (`inbound::voice`).
    pub voice_answer: axum::body::Bytes,
    /// One Checkout at a time per tenant in this instance (`billing::service::checkout`).
    pub checkouts: crate::billing::service::CheckoutTurns,
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
        let call_log = crate::inbound::call_log::CallLog::start(db.clone());
        let voice_answer = crate::inbound::voice::inbound_answer(&settings).into();
        Ok(AppState(Arc::new(Shared {
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
            call_log,
            voice_answer,
            checkouts: Default::default(),
        })))
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
