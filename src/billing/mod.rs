//! Billing with Stripe: the API client, event intake and application, the daily sync, and the tenant-admin
//! operations (SPEC §3). The mirror tables are in `db::billing`; access rules in `domain::billing`.

pub mod events;
pub mod ingest;
pub mod service;
pub mod stripe;
pub mod sync;
pub mod webhook;

pub use events::retry_failed;
