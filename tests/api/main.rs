//! The integration suite: one binary, every test against the real app on SQLite and on PostgreSQL.

mod helpers;

mod audit_log;
mod auth;
mod bad_input;
mod billing;
mod billing_localstripe;
mod billing_webhooks;
mod cli;
mod fake_stripe;
mod health;
mod signatures;
mod sites;
mod store;
mod tenants;
mod workers;
