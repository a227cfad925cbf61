//! secur360: the operations backbone of C-Secur360 (billing, SMS alerts, voice, tenants, audit, runbook).

pub mod admin;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod env_changes;
pub mod error;
pub mod http;
pub mod inbound;
pub mod intake;
pub mod jobs;
pub mod metrics;
pub mod outbox;
pub mod sms;
pub mod startup;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod tenancy;
pub mod time;
pub mod verification;
