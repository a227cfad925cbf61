//! The SMS provider: Twilio's `Messages.json`, or the simulated provider when no credentials are configured
//! (SPEC §1: its messages are stored as `simulated`, never `sent`/`delivered`).

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use crate::config::{Secret, Settings};

/// What one provider call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Twilio accepted the message and gave it a SID.
    Accepted { sid: String },
    /// Nothing was sent: the simulated provider.
    Simulated,
    /// Worth retrying: 429 (with its `Retry-After` in ms), 5xx, timeouts, connection errors.
    Transient { code: String, message: String, retry_after_ms: Option<i64> },
    /// Twilio refused this message for good (invalid number, unsubscribed, …).
    Permanent { code: String, message: String },
}

#[derive(Clone)]
pub enum SmsProvider {
    Twilio(TwilioClient),
    Simulated,
}

impl SmsProvider {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(match (&settings.twilio.account_sid, &settings.twilio.auth_token) {
            (Some(sid), Some(token)) => SmsProvider::Twilio(TwilioClient::new(
                settings.twilio.api_base.as_str(),
                sid,
                token.clone(),
                Sender::from_settings(settings),
                settings.absolute_url("/api/sms/status"),
                Duration::from_millis(settings.sms.provider_timeout_ms),
            )?),
            _ => SmsProvider::Simulated,
        })
    }

    /// `"twilio"` or `"simulated"`, as API responses say it.
    pub fn name(&self) -> &'static str {
        match self {
            SmsProvider::Twilio(_) => "twilio",
            SmsProvider::Simulated => "simulated",
        }
    }

    pub async fn send(&self, to: &str, body: &str) -> SendOutcome {
        match self {
            SmsProvider::Twilio(c) => c.send(to, body).await,
            SmsProvider::Simulated => SendOutcome::Simulated,
        }
    }
}

/// Who the message comes from: the messaging service if set, else the number.
#[derive(Debug, Clone)]
pub enum Sender {
    MessagingService(String),
    From(String),
    None,
}

impl Sender {
    fn from_settings(settings: &Settings) -> Self {
        match (&settings.twilio.messaging_service_sid, &settings.twilio.phone_number) {
            (Some(mg), _) => Sender::MessagingService(mg.clone()),
            (None, Some(p)) => Sender::From(p.as_str().to_owned()),
            (None, None) => Sender::None,
        }
    }
}

#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: String,
    account_sid: String,
    token: Secret,
    sender: Sender,
    status_callback: String,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<serde_json::Value>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct TwilioMessage {
    sid: Option<String>,
}

impl TwilioClient {
    pub fn new(
        api_base: &str,
        account_sid: &str,
        token: Secret,
        sender: Sender,
        status_callback: String,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("secur360/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TwilioClient {
            http,
            messages_url: format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", api_base.trim_end_matches('/')),
            account_sid: account_sid.to_owned(),
            token,
            sender,
            status_callback,
        })
    }

    /// The form fields of one message.
    pub fn form(&self, to: &str, body: &str) -> Vec<(&'static str, String)> {
        let mut form = vec![("To", to.to_owned()), ("Body", body.to_owned())];
        match &self.sender {
            Sender::MessagingService(mg) => form.push(("MessagingServiceSid", mg.clone())),
            Sender::From(from) => form.push(("From", from.clone())),
            Sender::None => {}
        }
        form.push(("StatusCallback", self.status_callback.clone()));
        form
    }

    /// POST these form fields to `Messages.json` with basic auth; the status and body text.
    pub async fn post_form(
        &self,
        form: &[(&str, String)],
    ) -> Result<(StatusCode, Option<i64>, String), reqwest::Error> {
        let res = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.token.expose()))
            .form(form)
            .send()
            .await?;
        let status = res.status();
        let retry_after_ms = res
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .map(|s| s.clamp(0, 86_400) * 1000);
        let text = res.text().await?;
        Ok((status, retry_after_ms, text))
    }

    pub async fn send(&self, to: &str, body: &str) -> SendOutcome {
        let (status, retry_after_ms, text) = match self.post_form(&self.form(to, body)).await {
            Ok(r) => r,
            Err(e) => {
                let code = if e.is_timeout() { "timeout" } else { "connection_error" };
                // reqwest's message names the URL (account SID, not a secret) and the cause, never the token.
                return SendOutcome::Transient {
                    code: code.into(),
                    message: e.without_url().to_string(),
                    retry_after_ms: None,
                };
            }
        };
        if status.is_success() {
            return match serde_json::from_str::<TwilioMessage>(&text).ok().and_then(|m| m.sid) {
                Some(sid) => SendOutcome::Accepted { sid },
                // Accepted without a SID we can track: retrying could send twice; fail loudly instead.
                None => SendOutcome::Permanent {
                    code: "no_sid".into(),
                    message: format!("Twilio answered {status} without a message SID"),
                },
            };
        }
        let err: Option<TwilioError> = serde_json::from_str(&text).ok();
        let code = err.as_ref().and_then(|e| e.code.as_ref()).map(|c| match c {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let message = err
            .and_then(|e| e.message)
            .unwrap_or_else(|| format!("Twilio answered {status}"))
            .chars()
            .take(300)
            .collect::<String>();
        if status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
            || status == StatusCode::UNAUTHORIZED
            || status == StatusCode::REQUEST_TIMEOUT
        {
            // 401: our credentials are wrong or rotating; the message itself is fine, keep it queued.
            SendOutcome::Transient {
                code: code.unwrap_or_else(|| format!("http_{}", status.as_u16())),
                message,
                retry_after_ms,
            }
        } else {
            // Any other 4xx is about this message (21211 invalid number, 21408 region not enabled, 21610
            // unsubscribed, 21614 not a mobile, …): retrying cannot help.
            SendOutcome::Permanent { code: code.unwrap_or_else(|| format!("http_{}", status.as_u16())), message }
        }
    }
}
