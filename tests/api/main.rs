//! The integration suite: one binary, every test against the real app on SQLite and on PostgreSQL.

mod helpers;

mod admin;
mod audit_log;
mod auth;
mod bad_input;
mod billing;
mod billing_localstripe;
mod billing_webhooks;
mod cdp;
mod cli;
mod fake_stripe;
mod health;
mod inbound;
mod jobs;
mod signatures;
mod sites;
mod status;
mod store;
mod tenants;
mod verification;
mod workers;
