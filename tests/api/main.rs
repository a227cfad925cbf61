//! The integration suite: one binary, every test against the real app on SQLite and on PostgreSQL.

mod helpers;

mod audit_log;
mod auth;
mod bad_input;
mod cli;
mod fake_twilio;
mod health;
mod signatures;
mod sites;
mod sms;
mod store;
mod tenants;
mod twilio_contract;
mod workers;
