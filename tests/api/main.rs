//! The integration suite: one binary, every test against the real app on SQLite and on PostgreSQL.

mod helpers;

mod abuse;
mod admin;
mod audit_log;
mod auth;
mod bad_input;
mod billing;
mod billing_localstripe;
mod billing_webhooks;
mod cdp;
mod cli;
mod consent_flow;
mod dispatch_groups;
mod fake_stripe;
mod fake_twilio;
mod faults;
mod health;
mod inbound;
mod instances;
mod jobs;
mod pg_cluster;
mod process;
mod rls;
mod scale_out;
mod signatures;
mod sites;
mod sms;
mod status;
mod status_batch;
mod store;
mod stripe_batch;
mod tenants;
mod twilio_contract;
mod verification;
mod workers;
