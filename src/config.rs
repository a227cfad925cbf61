//! Typed settings read from the environment (and an optional `.env`), validated once at start-up.
//!
//! Every variable of the runbook is here. Secrets are wrapped in [`Secret`], whose `Debug` never shows the value;
//! `print-config` and the status page show presence and a short fingerprint only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use url::Url;

use crate::domain::phone::Phone;

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/secur360.db";
pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_BILLING_SYNC_CRON: &str = "0 4 * * *";
pub const DEFAULT_SMS_CLEANUP_CRON: &str = "0 3 * * 0";
pub const DEFAULT_CRON_TZ: &str = "America/Toronto";

/// A secret value: never printed, never serialised, compared in constant time by its users.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the few places that must use it (signing, authentication headers).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable fingerprint safe to display: the first 8 hex digits of SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("sha256:{}", &hex::encode(digest)[..8])
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub secret_key: Option<Secret>,
    pub webhook_secrets: Vec<Secret>,
    pub price_monthly: Option<String>,
    pub price_annual: Option<String>,
    pub price_addon_site_monthly: Option<String>,
    pub price_addon_site_annual: Option<String>,
    pub account_country: String,
    pub trial_days: Option<u32>,
    pub api_base: Url,
}

#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub auth_token_secondary: Option<Secret>,
    pub messaging_service_sid: Option<String>,
    pub phone_number: Option<Phone>,
    pub api_base: Url,
}

/// SMS queue and limits.
#[derive(Debug, Clone)]
pub struct SmsSettings {
    /// Largest body accepted, in SMS segments.
    pub max_segments: u32,
    /// Messages a tenant may queue per minute (counted in the database, so across instances).
    pub rate_per_minute: u32,
    /// Recipients per alert.
    pub max_recipients: u32,
    /// Provider calls in flight per dispatcher.
    pub dispatch_concurrency: u32,
    /// Messages claimed per second by a dispatcher.
    pub dispatch_rate_per_second: u32,
    /// Provider attempts before a message is `failed`.
    pub max_attempts: u32,
    /// Timeout of one provider call, in milliseconds.
    pub provider_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub app_url: Url,
    pub database_url: Secret,
    /// PostgreSQL: the owner role's connection for migrations (the runtime role of `database_url` cannot).
    pub database_owner_url: Option<Secret>,
    pub database_max_connections: u32,
    pub bind_addr: SocketAddr,
    pub admin_token: Option<Secret>,
    pub cron_secret: Option<Secret>,
    pub stripe: StripeSettings,
    pub twilio: TwilioSettings,
    pub sms: SmsSettings,
    pub owner_mobile: Option<Phone>,
    pub public_contact_number: Option<Phone>,
    /// `None` when the variable is set to an empty string (schedule disabled).
    pub billing_sync_cron: Option<String>,
    pub sms_cleanup_cron: Option<String>,
    pub cron_tz: chrono_tz::Tz,
    pub sms_retention_days: u32,
    pub audit_retention_days: u32,
    pub past_due_grace_days: u32,
    pub expected_apex_a: Option<Ipv4Addr>,
    pub expected_www_cname: Option<String>,
    pub log_format: LogFormat,
    /// Who answers STOP/START/HELP: this service, or Twilio's Advanced Opt-Out (then we stay silent).
    pub keyword_replies: KeywordReplies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeywordReplies {
    Service,
    Twilio,
}

/// One documented variable: its name, whether it is secret, and a one-line meaning (README and print-config).
pub struct VarDoc {
    pub name: &'static str,
    pub secret: bool,
    pub meaning: &'static str,
}

pub const VARIABLES: &[VarDoc] = &[
    VarDoc {
        name: "APP_URL",
        secret: false,
        meaning: "public base URL (alias NEXT_PUBLIC_APP_URL); webhook URLs and signatures are built from it",
    },
    VarDoc {
        name: "DATABASE_URL",
        secret: true,
        meaning: "sqlite://… (default sqlite://data/secur360.db) or postgres://…",
    },
    VarDoc {
        name: "DATABASE_OWNER_URL",
        secret: true,
        meaning: "PostgreSQL only: connection as the owner role, used by `migrate` and `serve --migrate` (default DATABASE_URL)",
    },
    VarDoc { name: "DATABASE_MAX_CONNECTIONS", secret: false, meaning: "connection pool size (default 10)" },
    VarDoc { name: "BIND_ADDR", secret: false, meaning: "listen address (default 127.0.0.1:8080)" },
    VarDoc {
        name: "ADMIN_TOKEN",
        secret: true,
        meaning: "operator credential (at least 24 characters); unset refuses every operator request",
    },
    VarDoc {
        name: "CRON_SECRET",
        secret: true,
        meaning: "bearer secret of the HTTP job triggers; unset refuses them (the operator token still works)",
    },
    VarDoc { name: "STRIPE_SECRET_KEY", secret: true, meaning: "Stripe API key (sk_… or rk_…)" },
    VarDoc {
        name: "STRIPE_WEBHOOK_SECRET",
        secret: true,
        meaning: "webhook signing secret(s) whsec_…, comma-separated during rotation",
    },
    VarDoc { name: "STRIPE_PRICE_MONTHLY", secret: false, meaning: "base plan price, monthly (price_…)" },
    VarDoc { name: "STRIPE_PRICE_ANNUAL", secret: false, meaning: "base plan price, annual (price_…)" },
    VarDoc { name: "STRIPE_PRICE_ADDON_SITE_MONTHLY", secret: false, meaning: "additional-site add-on price, monthly" },
    VarDoc { name: "STRIPE_PRICE_ADDON_SITE_ANNUAL", secret: false, meaning: "additional-site add-on price, annual" },
    VarDoc {
        name: "STRIPE_ACCOUNT_COUNTRY",
        secret: false,
        meaning: "two-letter country of the Stripe account (default CA)",
    },
    VarDoc {
        name: "STRIPE_TRIAL_DAYS",
        secret: false,
        meaning: "optional trial length in days, decided by the server",
    },
    VarDoc { name: "STRIPE_API_BASE", secret: false, meaning: "Stripe API base URL (default https://api.stripe.com)" },
    VarDoc { name: "TWILIO_ACCOUNT_SID", secret: false, meaning: "Twilio account SID (AC…)" },
    VarDoc { name: "TWILIO_AUTH_TOKEN", secret: true, meaning: "Twilio auth token" },
    VarDoc {
        name: "TWILIO_AUTH_TOKEN_SECONDARY",
        secret: true,
        meaning: "secondary token, accepted for webhook signatures during rotation",
    },
    VarDoc {
        name: "TWILIO_MESSAGING_SERVICE_SID",
        secret: false,
        meaning: "sender messaging service (MG…); preferred over the number",
    },
    VarDoc {
        name: "TWILIO_PHONE_NUMBER",
        secret: false,
        meaning: "sender number (E.164) when no messaging service is set",
    },
    VarDoc { name: "TWILIO_API_BASE", secret: false, meaning: "Twilio API base URL (default https://api.twilio.com)" },
    VarDoc { name: "SMS_MAX_SEGMENTS", secret: false, meaning: "largest SMS body accepted, in segments (default 4)" },
    VarDoc {
        name: "SMS_RATE_PER_MINUTE",
        secret: false,
        meaning: "SMS a tenant may queue per minute, across instances (default 2000, the recipient cap)",
    },
    VarDoc { name: "SMS_MAX_RECIPIENTS", secret: false, meaning: "recipients per alert (default 2000)" },
    VarDoc {
        name: "SMS_DISPATCH_CONCURRENCY",
        secret: false,
        meaning: "Twilio calls in flight per instance (default 8)",
    },
    VarDoc {
        name: "SMS_DISPATCH_RATE_PER_SECOND",
        secret: false,
        meaning: "SMS sent per second per instance (default 20)",
    },
    VarDoc {
        name: "SMS_MAX_ATTEMPTS",
        secret: false,
        meaning: "provider attempts before an SMS is marked failed (default 6)",
    },
    VarDoc {
        name: "SMS_PROVIDER_TIMEOUT_MS",
        secret: false,
        meaning: "timeout of one Twilio call in milliseconds (default 10000)",
    },
    VarDoc { name: "OWNER_MOBILE", secret: false, meaning: "where inbound calls and non-keyword SMS are forwarded" },
    VarDoc { name: "PUBLIC_CONTACT_NUMBER", secret: false, meaning: "public number quoted in SMS replies" },
    VarDoc {
        name: "BILLING_SYNC_CRON",
        secret: false,
        meaning: "billing sync schedule (default `0 4 * * *`; empty disables)",
    },
    VarDoc {
        name: "SMS_CLEANUP_CRON",
        secret: false,
        meaning: "SMS cleanup schedule (default `0 3 * * 0`; empty disables)",
    },
    VarDoc { name: "CRON_TZ", secret: false, meaning: "time zone of the schedules (default America/Toronto)" },
    VarDoc {
        name: "SMS_RETENTION_DAYS",
        secret: false,
        meaning: "days before SMS bodies and numbers are scrubbed (default 180)",
    },
    VarDoc { name: "AUDIT_RETENTION_DAYS", secret: false, meaning: "days audit rows are kept (default 365)" },
    VarDoc {
        name: "PAST_DUE_GRACE_DAYS",
        secret: false,
        meaning: "days of full access while a subscription is past due (default 7)",
    },
    VarDoc {
        name: "EXPECTED_APEX_A",
        secret: false,
        meaning: "expected A record of the apex, checked by the status page",
    },
    VarDoc { name: "EXPECTED_WWW_CNAME", secret: false, meaning: "expected CNAME of www, checked by the status page" },
    VarDoc { name: "LOG_FORMAT", secret: false, meaning: "`text` (default) or `json`" },
    VarDoc {
        name: "SMS_KEYWORD_REPLIES",
        secret: false,
        meaning:
            "`service` (default: we answer STOP/START/HELP) or `twilio` (Advanced Opt-Out answers; we stay silent)",
    },
];

/// All problems found in the configuration, reported together so the operator fixes them in one pass.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

struct Reader<'a> {
    vars: &'a BTreeMap<String, String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    /// The trimmed value, `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn problem(&mut self, msg: String) {
        self.problems.push(msg);
    }

    fn parse<T: FromStr>(&mut self, name: &str, default: T, what: &str) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.problem(format!("{name} must be {what} (got {v:?})"));
                default
            }),
        }
    }

    fn url(&mut self, name: &str, value: &str) -> Option<Url> {
        match Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            _ => {
                self.problem(format!(
                    "{name} must be an absolute http(s) URL such as https://c-secur360.ca (got {value:?})"
                ));
                None
            }
        }
    }

    fn prefixed(&mut self, name: &str, prefixes: &[&str], example: &str) -> Option<String> {
        let v = self.get(name)?;
        if prefixes.iter().any(|p| v.starts_with(p)) && !v.contains(char::is_whitespace) {
            Some(v)
        } else {
            self.problem(format!("{name} must start with {} (for example {example})", prefixes.join(" or ")));
            None
        }
    }

    fn secret(&mut self, name: &str, prefixes: &[&str], min_len: usize) -> Option<Secret> {
        let v = self.get(name)?;
        if !prefixes.is_empty() && !prefixes.iter().any(|p| v.starts_with(p)) {
            self.problem(format!("{name} must start with {}", prefixes.join(" or ")));
            return None;
        }
        if v.len() < min_len {
            self.problem(format!("{name} must be at least {min_len} characters long"));
            return None;
        }
        Some(Secret::new(v))
    }

    fn phone(&mut self, name: &str) -> Option<Phone> {
        let v = self.get(name)?;
        match Phone::parse(&v) {
            Ok(p) => Some(p),
            Err(e) => {
                self.problem(format!("{name}: {e}"));
                None
            }
        }
    }

    /// Cron variables: unset → default; set but empty → disabled.
    fn cron(&mut self, name: &str, default: &str) -> Option<String> {
        let expr = match self.vars.get(name) {
            None => default.to_owned(),
            Some(v) if v.trim().is_empty() => return None,
            Some(v) => v.trim().to_owned(),
        };
        match croner::Cron::new(&expr).parse() {
            Ok(_) => Some(expr),
            Err(e) => {
                self.problem(format!(
                    "{name} must be a 5-field cron expression such as \"{default}\" ({e}); set it empty to disable"
                ));
                None
            }
        }
    }
}

impl Settings {
    /// Read the process environment, after loading `.env` if present (the environment wins).
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::from_vars(std::env::vars().collect())
    }

    pub fn from_vars(vars: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut r = Reader { vars: &vars, problems: Vec::new() };

        let bind_addr = r.parse(
            "BIND_ADDR",
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            "a socket address such as 127.0.0.1:8080 or 0.0.0.0:8080",
        );
        let app_url = match r.get("APP_URL").or_else(|| r.get("NEXT_PUBLIC_APP_URL")) {
            Some(v) => r.url("APP_URL", v.trim_end_matches('/')),
            None => Url::parse(&format!("http://{bind_addr}")).ok(),
        };
        if let Some(u) = &app_url {
            if u.path() != "/" || u.query().is_some() {
                r.problem("APP_URL must be a bare origin such as https://c-secur360.ca (no path or query)".into());
            }
        }

        let database_url = r.get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        if !["sqlite:", "postgres://", "postgresql://"].iter().any(|p| database_url.starts_with(p)) {
            r.problem(
                "DATABASE_URL must start with sqlite: or postgres:// (for example sqlite://data/secur360.db)".into(),
            );
        }
        if is_transaction_pooler(&database_url) {
            r.problem(
                "DATABASE_URL points at a Supabase transaction-mode pooler (port 6543): row-level security \
                 settings are kept per connection, which that pooler shares between clients; use the session \
                 pooler or the direct connection (same host, port 5432)"
                    .into(),
            );
        }
        let database_owner_url = r.get("DATABASE_OWNER_URL");
        if let Some(owner) = &database_owner_url {
            if !["postgres://", "postgresql://"].iter().any(|p| owner.starts_with(p)) {
                r.problem("DATABASE_OWNER_URL must start with postgres:// (it is used only with PostgreSQL)".into());
            } else if database_url.starts_with("sqlite:") {
                r.problem("DATABASE_OWNER_URL is set but DATABASE_URL is SQLite: unset it, or use PostgreSQL".into());
            }
        }
        let database_max_connections = r.parse("DATABASE_MAX_CONNECTIONS", 10u32, "a positive integer");
        if database_max_connections == 0 {
            r.problem("DATABASE_MAX_CONNECTIONS must be at least 1".into());
        }

        let admin_token = r.secret("ADMIN_TOKEN", &[], 24);
        let cron_secret = r.secret("CRON_SECRET", &[], 16);

        let webhook_secrets = match r.get("STRIPE_WEBHOOK_SECRET") {
            None => Vec::new(),
            Some(v) => {
                let parts: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                if parts.iter().any(|s| !s.starts_with("whsec_")) {
                    r.problem("STRIPE_WEBHOOK_SECRET must be one or more comma-separated whsec_… secrets".into());
                    Vec::new()
                } else {
                    parts.into_iter().map(Secret::new).collect()
                }
            }
        };
        let stripe_api_base = r.get("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".into());
        let stripe_api_base = r.url("STRIPE_API_BASE", &stripe_api_base);
        let account_country = r.get("STRIPE_ACCOUNT_COUNTRY").unwrap_or_else(|| "CA".into()).to_uppercase();
        if account_country.len() != 2 || !account_country.chars().all(|c| c.is_ascii_alphabetic()) {
            r.problem("STRIPE_ACCOUNT_COUNTRY must be a two-letter country code such as CA".into());
        }
        let trial_days = match r.get("STRIPE_TRIAL_DAYS") {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(d) if (1..=730).contains(&d) => Some(d),
                _ => {
                    r.problem("STRIPE_TRIAL_DAYS must be a whole number of days between 1 and 730, or unset".into());
                    None
                }
            },
        };
        let stripe = StripeSettings {
            secret_key: r.secret("STRIPE_SECRET_KEY", &["sk_", "rk_"], 8),
            webhook_secrets,
            price_monthly: r.prefixed("STRIPE_PRICE_MONTHLY", &["price_"], "price_1Abc…"),
            price_annual: r.prefixed("STRIPE_PRICE_ANNUAL", &["price_"], "price_1Abc…"),
            price_addon_site_monthly: r.prefixed("STRIPE_PRICE_ADDON_SITE_MONTHLY", &["price_"], "price_1Abc…"),
            price_addon_site_annual: r.prefixed("STRIPE_PRICE_ADDON_SITE_ANNUAL", &["price_"], "price_1Abc…"),
            account_country,
            trial_days,
            api_base: stripe_api_base.unwrap_or_else(|| Url::parse("https://api.stripe.com").expect("constant URL")),
        };

        let twilio_api_base = r.get("TWILIO_API_BASE").unwrap_or_else(|| "https://api.twilio.com".into());
        let twilio_api_base = r.url("TWILIO_API_BASE", &twilio_api_base);
        let account_sid = r.get("TWILIO_ACCOUNT_SID");
        if let Some(sid) = &account_sid {
            if !(sid.len() == 34 && sid.starts_with("AC") && sid[2..].chars().all(|c| c.is_ascii_hexdigit())) {
                r.problem("TWILIO_ACCOUNT_SID must be AC followed by 32 hexadecimal digits".into());
            }
        }
        let messaging_service_sid = r.get("TWILIO_MESSAGING_SERVICE_SID");
        if let Some(sid) = &messaging_service_sid {
            if !(sid.len() == 34 && sid.starts_with("MG") && sid[2..].chars().all(|c| c.is_ascii_hexdigit())) {
                r.problem("TWILIO_MESSAGING_SERVICE_SID must be MG followed by 32 hexadecimal digits".into());
            }
        }
        let twilio = TwilioSettings {
            account_sid,
            auth_token: r.secret("TWILIO_AUTH_TOKEN", &[], 16),
            auth_token_secondary: r.secret("TWILIO_AUTH_TOKEN_SECONDARY", &[], 16),
            messaging_service_sid,
            phone_number: r.phone("TWILIO_PHONE_NUMBER"),
            api_base: twilio_api_base.unwrap_or_else(|| Url::parse("https://api.twilio.com").expect("constant URL")),
        };
        if twilio.account_sid.is_some() != twilio.auth_token.is_some() {
            r.problem("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set together (or both unset for the simulated provider)".into());
        }
        if twilio.account_sid.is_some() && twilio.messaging_service_sid.is_none() && twilio.phone_number.is_none() {
            r.problem("Twilio needs a sender: set TWILIO_MESSAGING_SERVICE_SID or TWILIO_PHONE_NUMBER".into());
        }

        let sms = SmsSettings {
            max_segments: r.parse("SMS_MAX_SEGMENTS", 4u32, "a whole number of segments"),
            rate_per_minute: r.parse("SMS_RATE_PER_MINUTE", 2000u32, "a whole number of messages"),
            max_recipients: r.parse("SMS_MAX_RECIPIENTS", 2000u32, "a whole number of recipients"),
            dispatch_concurrency: r.parse("SMS_DISPATCH_CONCURRENCY", 8u32, "a whole number"),
            dispatch_rate_per_second: r.parse("SMS_DISPATCH_RATE_PER_SECOND", 20u32, "a whole number"),
            max_attempts: r.parse("SMS_MAX_ATTEMPTS", 6u32, "a whole number of attempts"),
            provider_timeout_ms: r.parse("SMS_PROVIDER_TIMEOUT_MS", 10_000u64, "a whole number of milliseconds"),
        };
        for (name, v) in [
            ("SMS_MAX_SEGMENTS", sms.max_segments),
            ("SMS_RATE_PER_MINUTE", sms.rate_per_minute),
            ("SMS_MAX_RECIPIENTS", sms.max_recipients),
            ("SMS_DISPATCH_CONCURRENCY", sms.dispatch_concurrency),
            ("SMS_DISPATCH_RATE_PER_SECOND", sms.dispatch_rate_per_second),
            ("SMS_MAX_ATTEMPTS", sms.max_attempts),
        ] {
            if v == 0 {
                r.problem(format!("{name} must be at least 1"));
            }
        }
        if sms.provider_timeout_ms == 0 {
            r.problem("SMS_PROVIDER_TIMEOUT_MS must be at least 1".into());
        }

        let owner_mobile = r.phone("OWNER_MOBILE");
        let public_contact_number = r.phone("PUBLIC_CONTACT_NUMBER");
        let billing_sync_cron = r.cron("BILLING_SYNC_CRON", DEFAULT_BILLING_SYNC_CRON);
        let sms_cleanup_cron = r.cron("SMS_CLEANUP_CRON", DEFAULT_SMS_CLEANUP_CRON);
        let cron_tz_name = r.get("CRON_TZ").unwrap_or_else(|| DEFAULT_CRON_TZ.into());
        let cron_tz = cron_tz_name.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            r.problem(format!("CRON_TZ must be an IANA time zone such as America/Toronto (got {cron_tz_name:?})"));
            chrono_tz::America::Toronto
        });
        let sms_retention_days = r.parse("SMS_RETENTION_DAYS", 180u32, "a whole number of days");
        let audit_retention_days = r.parse("AUDIT_RETENTION_DAYS", 365u32, "a whole number of days");
        let past_due_grace_days = r.parse("PAST_DUE_GRACE_DAYS", 7u32, "a whole number of days");
        if sms_retention_days == 0 || audit_retention_days == 0 {
            r.problem("SMS_RETENTION_DAYS and AUDIT_RETENTION_DAYS must be at least 1".into());
        }
        let expected_apex_a = match r.get("EXPECTED_APEX_A") {
            None => None,
            Some(v) => v.parse().map(Some).unwrap_or_else(|_| {
                r.problem(format!("EXPECTED_APEX_A must be an IPv4 address such as 76.76.21.21 (got {v:?})"));
                None
            }),
        };
        let expected_www_cname = r.get("EXPECTED_WWW_CNAME").map(|v| v.trim_end_matches('.').to_lowercase());
        let log_format = match r.get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                r.problem(format!("LOG_FORMAT must be text or json (got {other:?})"));
                LogFormat::Text
            }
        };

        let keyword_replies = match r.get("SMS_KEYWORD_REPLIES").as_deref() {
            None | Some("service") => KeywordReplies::Service,
            Some("twilio") => KeywordReplies::Twilio,
            Some(other) => {
                r.problem(format!("SMS_KEYWORD_REPLIES must be service or twilio (got {other:?})"));
                KeywordReplies::Service
            }
        };

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        Ok(Settings {
            app_url: app_url.expect("checked above"),
            database_url: Secret::new(database_url),
            database_owner_url: database_owner_url.map(Secret::new),
            database_max_connections,
            bind_addr,
            admin_token,
            cron_secret,
            stripe,
            twilio,
            sms,
            owner_mobile,
            public_contact_number,
            billing_sync_cron,
            sms_cleanup_cron,
            cron_tz,
            sms_retention_days,
            audit_retention_days,
            past_due_grace_days,
            expected_apex_a,
            expected_www_cname,
            log_format,
            keyword_replies,
        })
    }

    /// The public URL of one of our own paths, e.g. `absolute_url("/api/sms/status")`.
    pub fn absolute_url(&self, path: &str) -> String {
        format!("{}{}", self.app_url.as_str().trim_end_matches('/'), path)
    }

    /// The apex host of `APP_URL` (without a leading `www.`), for the canonical-host redirect.
    pub fn apex_host(&self) -> Option<String> {
        self.app_url.host_str().map(|h| h.strip_prefix("www.").unwrap_or(h).to_ascii_lowercase())
    }

    pub fn stripe_configured(&self) -> bool {
        self.stripe.secret_key.is_some()
    }

    pub fn twilio_configured(&self) -> bool {
        self.twilio.account_sid.is_some() && self.twilio.auth_token.is_some()
    }

    /// Display rows for `print-config` and the admin page: (name, shown value). Secrets: presence + fingerprint.
    pub fn display_rows(&self) -> Vec<(&'static str, String)> {
        fn secret(s: &Option<Secret>) -> String {
            s.as_ref().map_or_else(|| "unset".into(), |s| format!("set ({})", s.fingerprint()))
        }
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "unset".into(), |v| v.to_string())
        }
        let whsec = if self.stripe.webhook_secrets.is_empty() {
            "unset".to_owned()
        } else {
            let fps: Vec<String> = self.stripe.webhook_secrets.iter().map(Secret::fingerprint).collect();
            format!("set, {} secret(s) ({})", fps.len(), fps.join(", "))
        };
        let backend = if self.database_url.expose().starts_with("sqlite:") { "sqlite" } else { "postgres" };
        vec![
            ("APP_URL", self.app_url.as_str().trim_end_matches('/').to_owned()),
            ("DATABASE_URL", format!("{backend}, {}", self.database_url.fingerprint())),
            ("DATABASE_OWNER_URL", secret(&self.database_owner_url)),
            ("DATABASE_MAX_CONNECTIONS", self.database_max_connections.to_string()),
            ("BIND_ADDR", self.bind_addr.to_string()),
            ("ADMIN_TOKEN", secret(&self.admin_token)),
            ("CRON_SECRET", secret(&self.cron_secret)),
            ("STRIPE_SECRET_KEY", secret(&self.stripe.secret_key)),
            ("STRIPE_WEBHOOK_SECRET", whsec),
            ("STRIPE_PRICE_MONTHLY", opt(&self.stripe.price_monthly)),
            ("STRIPE_PRICE_ANNUAL", opt(&self.stripe.price_annual)),
            ("STRIPE_PRICE_ADDON_SITE_MONTHLY", opt(&self.stripe.price_addon_site_monthly)),
            ("STRIPE_PRICE_ADDON_SITE_ANNUAL", opt(&self.stripe.price_addon_site_annual)),
            ("STRIPE_ACCOUNT_COUNTRY", self.stripe.account_country.clone()),
            ("STRIPE_TRIAL_DAYS", opt(&self.stripe.trial_days)),
            ("STRIPE_API_BASE", self.stripe.api_base.to_string()),
            ("TWILIO_ACCOUNT_SID", opt(&self.twilio.account_sid)),
            ("TWILIO_AUTH_TOKEN", secret(&self.twilio.auth_token)),
            ("TWILIO_AUTH_TOKEN_SECONDARY", secret(&self.twilio.auth_token_secondary)),
            ("TWILIO_MESSAGING_SERVICE_SID", opt(&self.twilio.messaging_service_sid)),
            ("TWILIO_PHONE_NUMBER", opt(&self.twilio.phone_number)),
            ("TWILIO_API_BASE", self.twilio.api_base.to_string()),
            ("SMS_MAX_SEGMENTS", self.sms.max_segments.to_string()),
            ("SMS_RATE_PER_MINUTE", self.sms.rate_per_minute.to_string()),
            ("SMS_MAX_RECIPIENTS", self.sms.max_recipients.to_string()),
            ("SMS_DISPATCH_CONCURRENCY", self.sms.dispatch_concurrency.to_string()),
            ("SMS_DISPATCH_RATE_PER_SECOND", self.sms.dispatch_rate_per_second.to_string()),
            ("SMS_MAX_ATTEMPTS", self.sms.max_attempts.to_string()),
            ("SMS_PROVIDER_TIMEOUT_MS", self.sms.provider_timeout_ms.to_string()),
            ("OWNER_MOBILE", opt(&self.owner_mobile)),
            ("PUBLIC_CONTACT_NUMBER", opt(&self.public_contact_number)),
            ("BILLING_SYNC_CRON", self.billing_sync_cron.clone().unwrap_or_else(|| "disabled".into())),
            ("SMS_CLEANUP_CRON", self.sms_cleanup_cron.clone().unwrap_or_else(|| "disabled".into())),
            ("CRON_TZ", self.cron_tz.name().to_owned()),
            ("SMS_RETENTION_DAYS", self.sms_retention_days.to_string()),
            ("AUDIT_RETENTION_DAYS", self.audit_retention_days.to_string()),
            ("PAST_DUE_GRACE_DAYS", self.past_due_grace_days.to_string()),
            ("EXPECTED_APEX_A", opt(&self.expected_apex_a)),
            ("EXPECTED_WWW_CNAME", opt(&self.expected_www_cname)),
            ("LOG_FORMAT", format!("{:?}", self.log_format).to_lowercase()),
            ("SMS_KEYWORD_REPLIES", format!("{:?}", self.keyword_replies).to_lowercase()),
        ]
    }
}

/// Supabase's transaction-mode poolers, both on port 6543: the shared one (Supavisor, `*.pooler.supabase.com`)
/// and the dedicated one (PgBouncer, `db.<ref>.supabase.co`). They hand a server connection to another client
/// after each transaction, so settings written into the connection (the row-level-security scope of queries
/// outside a transaction) would reach another client's queries.
fn is_transaction_pooler(database_url: &str) -> bool {
    match Url::parse(database_url) {
        Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") => {
            let supabase = |h: &str| h.ends_with(".pooler.supabase.com") || h.ends_with(".supabase.co");
            u.port() == Some(6543) && u.host_str().is_some_and(supabase)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_empty_environment_gives_the_embedded_defaults() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(s.bind_addr.to_string(), DEFAULT_BIND_ADDR);
        assert_eq!(s.billing_sync_cron.as_deref(), Some(DEFAULT_BILLING_SYNC_CRON));
        assert_eq!(s.cron_tz, chrono_tz::America::Toronto);
        assert_eq!((s.sms_retention_days, s.audit_retention_days), (180, 365));
        assert!(!s.stripe_configured() && !s.twilio_configured());
    }

    #[test]
    fn the_next_public_alias_sets_the_app_url() {
        let s = Settings::from_vars(vars(&[("NEXT_PUBLIC_APP_URL", "https://c-secur360.ca/")])).unwrap();
        assert_eq!(s.absolute_url("/api/sms/status"), "https://c-secur360.ca/api/sms/status");
        assert_eq!(s.apex_host().as_deref(), Some("c-secur360.ca"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Settings::from_vars(vars(&[
            ("APP_URL", "c-secur360.ca"),
            ("STRIPE_SECRET_KEY", "pk_live_123456789"),
            ("CRON_TZ", "Mars/Olympus"),
            ("BILLING_SYNC_CRON", "every day"),
            ("OWNER_MOBILE", "not a phone"),
            ("TWILIO_ACCOUNT_SID", "AC123"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        for name in
            ["APP_URL", "STRIPE_SECRET_KEY", "CRON_TZ", "BILLING_SYNC_CRON", "OWNER_MOBILE", "TWILIO_ACCOUNT_SID"]
        {
            assert!(text.contains(name), "{name} missing from {text}");
        }
    }

    #[test]
    fn supabase_transaction_pooler_is_refused_and_the_session_pooler_accepted() {
        let pooler = "postgres://secur360_app.abcd:pw@aws-0-ca-central-1.pooler.supabase.com";
        for refused in
            [format!("{pooler}:6543/postgres"), "postgres://secur360_app:pw@db.abcd.supabase.co:6543/postgres".into()]
        {
            let text = Settings::from_vars(vars(&[("DATABASE_URL", &refused)])).unwrap_err().to_string();
            assert!(text.contains("transaction-mode pooler") && text.contains("port 5432"), "{text}");
            assert!(!text.contains("pw@"), "the URL's password is not repeated: {text}");
        }
        let direct = "postgres://secur360_app:pw@db.abcd.supabase.co:5432/postgres".to_owned();
        for ok in [format!("{pooler}:5432/postgres"), direct, "postgres://u@db.example:6543/x".to_owned()] {
            assert!(Settings::from_vars(vars(&[("DATABASE_URL", &ok)])).is_ok(), "{ok}");
        }
    }

    #[test]
    fn sms_limits_have_their_defaults_are_documented_and_zero_is_refused() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        let l = &s.sms;
        assert_eq!((l.max_segments, l.rate_per_minute, l.max_recipients, l.dispatch_concurrency), (4, 2000, 2000, 8));
        // An alert larger than the per-minute rate is refused: with the defaults, the largest allowed one fits.
        assert!(l.max_recipients <= l.rate_per_minute);
        assert_eq!((l.dispatch_rate_per_second, l.max_attempts, l.provider_timeout_ms), (20, 6, 10_000));
        let shown: Vec<&str> = s.display_rows().into_iter().map(|(k, _)| k).collect();
        for name in [
            "SMS_MAX_SEGMENTS",
            "SMS_RATE_PER_MINUTE",
            "SMS_MAX_RECIPIENTS",
            "SMS_DISPATCH_CONCURRENCY",
            "SMS_DISPATCH_RATE_PER_SECOND",
            "SMS_MAX_ATTEMPTS",
            "SMS_PROVIDER_TIMEOUT_MS",
        ] {
            assert!(shown.contains(&name) && VARIABLES.iter().any(|v| v.name == name), "{name}");
        }
        let err = Settings::from_vars(vars(&[("SMS_MAX_ATTEMPTS", "0"), ("SMS_MAX_SEGMENTS", "many")])).unwrap_err();
        assert!(err.to_string().contains("SMS_MAX_ATTEMPTS") && err.to_string().contains("SMS_MAX_SEGMENTS"));
    }

    #[test]
    fn an_empty_cron_variable_disables_the_schedule() {
        let s = Settings::from_vars(vars(&[("SMS_CLEANUP_CRON", "")])).unwrap();
        assert_eq!(s.sms_cleanup_cron, None);
    }

    #[test]
    fn secrets_never_appear_in_debug_or_display_rows() {
        let token = "a-very-secret-admin-token-value";
        let s = Settings::from_vars(vars(&[
            ("ADMIN_TOKEN", token),
            ("STRIPE_WEBHOOK_SECRET", "whsec_one, whsec_two"),
            ("DATABASE_URL", "postgres://user:hunter2@db/secur360"),
        ]))
        .unwrap();
        let debug = format!("{s:?}");
        let rows = format!("{:?}", s.display_rows());
        for text in [&debug, &rows] {
            assert!(!text.contains(token) && !text.contains("hunter2") && !text.contains("whsec_one"));
        }
        assert!(rows.contains("2 secret(s)"));
    }
}
