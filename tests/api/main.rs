//! The integration suite: one binary, every test against the real app on SQLite and on PostgreSQL.

mod helpers;

mod admin;
mod audit_log;
mod auth;
mod bad_input;
mod cdp;
mod cli;
mod health;
mod signatures;
mod sites;
mod store;
mod tenants;
mod workers;
