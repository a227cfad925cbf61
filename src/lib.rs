//! secur360: the operations backbone of C-Secur360 (billing, SMS alerts, voice, tenants, audit, runbook).

pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod sms;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tenancy;
pub mod time;
