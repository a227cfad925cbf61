//! Queuing SMS: tenant alerts (recipients resolved inside the tenant, consent enforced, rate-limited) and the
//! operator's test SMS. One durable `sms_messages` row per recipient commits with the alert, its rate-window
//! usage and its audit row, before any provider call; the dispatcher sends them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::audit::{self, Zone};
use crate::db::{self, sms};
use crate::domain::ids::{new_id, new_ordered_id};
use crate::domain::phone::Phone;
use crate::domain::sms_segments::{self, Encoding, SegmentInfo};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::Actor;

pub const KINDS: [&str; 5] = ["lock_applied", "lock_removed", "general_alert", "emergency", "work_completion"];

/// Claimed before everything else by the dispatcher.
pub const EMERGENCY_PRIORITY: i64 = 100;

pub fn priority(kind: &str) -> i64 {
    if kind == "emergency" {
        EMERGENCY_PRIORITY
    } else {
        0
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAlert {
    kind: String,
    body: String,
    ast_id: Option<String>,
    recipients: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestSms {
    to: String,
    body: String,
}

enum Recipients {
    Workers(Vec<String>),
    Site(String),
    All,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_field", format!("{field}: {message}"))
}

fn shape<T: serde::de::DeserializeOwned>(v: Value) -> ApiResult<T> {
    serde_json::from_value(v).map_err(|e| {
        ApiError::unprocessable("invalid_body", format!("the JSON body does not have the expected fields: {e}"))
    })
}

fn parse_recipients(v: &Value) -> ApiResult<Recipients> {
    const HOW: &str = "give exactly one of {\"worker_ids\": [..]}, {\"site_id\": \"..\"} or {\"all\": true}";
    let Some(obj) = v.as_object().filter(|o| o.len() == 1) else {
        return Err(invalid("recipients", HOW));
    };
    match obj.iter().next() {
        Some((k, Value::Array(ids))) if k == "worker_ids" => {
            if ids.is_empty() {
                return Err(invalid("recipients.worker_ids", "must list at least one worker id"));
            }
            let mut out: Vec<String> = Vec::with_capacity(ids.len());
            let mut seen = std::collections::HashSet::with_capacity(ids.len());
            for id in ids {
                let id = id
                    .as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= 64)
                    .ok_or_else(|| invalid("recipients.worker_ids", "every entry must be a worker id string"))?;
                if seen.insert(id) {
                    out.push(id.to_owned());
                }
            }
            Ok(Recipients::Workers(out))
        }
        Some((k, Value::String(site))) if k == "site_id" && !site.trim().is_empty() => {
            Ok(Recipients::Site(site.trim().to_owned()))
        }
        Some((k, Value::Bool(true))) if k == "all" => Ok(Recipients::All),
        _ => Err(invalid("recipients", HOW)),
    }
}

/// Body rules shared by every sending endpoint: not empty, within the segment maximum.
fn check_body(state: &AppState, body: &str) -> ApiResult<SegmentInfo> {
    if body.trim().is_empty() {
        return Err(invalid("body", "must not be empty"));
    }
    let info = sms_segments::analyze(body);
    let max = state.settings.sms.max_segments;
    if info.segments > max {
        let forced = if info.non_gsm_chars.is_empty() {
            String::new()
        } else {
            let chars: Vec<String> = info.non_gsm_chars.iter().map(|c| format!("{c:?}")).collect();
            format!("; these characters force UCS-2 (70 per segment): {}", chars.join(" "))
        };
        return Err(ApiError::unprocessable(
            "too_many_segments",
            format!(
                "body: {} SMS segments ({}) exceed the maximum of {max} (SMS_MAX_SEGMENTS); shorten the message{forced}",
                info.segments,
                encoding_name(info.encoding),
            ),
        ));
    }
    Ok(info)
}

fn encoding_name(e: Encoding) -> &'static str {
    match e {
        Encoding::Gsm7 => "gsm7",
        Encoding::Ucs2 => "ucs2",
    }
}

fn parse_idempotency_key(key: Option<&str>) -> ApiResult<Option<&str>> {
    match key {
        None => Ok(None),
        Some(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..=0x7e).contains(&b)) => Ok(Some(k)),
        Some(_) => Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is a good choice)",
        )),
    }
}

fn request_hash(scope: &str, request: &Value) -> String {
    hex::encode(Sha256::digest(format!("{scope}\n{request}").as_bytes()))
}

/// The stored answer for a repeated key, or 409 when the key was used for another request.
async fn replay(state: &AppState, tenant_id: Option<&str>, key: &str, hash: &str) -> ApiResult<Option<Answer>> {
    let Some(found) = sms::find_by_idempotency_key(&state.db, tenant_id, key).await? else {
        return Ok(None);
    };
    if found.request_hash.as_deref() != Some(hash) {
        return Err(ApiError::conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request; use a new key for a new message",
        ));
    }
    let response = found.response.filter(|r| serde_json::from_str::<serde::de::IgnoredAny>(r).is_ok());
    response.map(|r| Some(Answer(r))).ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("alert {} has an idempotency key but no stored response", found.id))
    })
}

fn seconds_left_in_window(now: i64) -> u64 {
    let next = (now.div_euclid(60_000) + 1) * 60_000;
    ((next - now + 999) / 1000).max(1) as u64
}

/// The JSON answer to a queued alert or test SMS, as stored for replays of its idempotency key.
pub struct Answer(pub String);

impl Answer {
    fn value(self) -> ApiResult<Value> {
        serde_json::from_str(&self.0).map_err(|e| ApiError::internal(e.into()))
    }
}

impl axum::response::IntoResponse for Answer {
    fn into_response(self) -> axum::response::Response {
        let json = axum::http::HeaderValue::from_static("application/json");
        (axum::http::StatusCode::ACCEPTED, [(axum::http::header::CONTENT_TYPE, json)], self.0).into_response()
    }
}

/// The answer to `POST /api/sms/alerts`.
#[derive(Serialize)]
struct AlertAnswer<'a> {
    alert_id: &'a str,
    kind: &'a str,
    status: &'a str,
    provider: &'a str,
    encoding: &'a str,
    segments: u32,
    non_gsm_chars: Vec<String>,
    recipients: Vec<Outcome<'a>>,
    queued: usize,
    skipped: usize,
}

/// What became of one recipient of an alert: `queued`, or `skipped` with its reason.
#[derive(Serialize)]
struct Outcome<'a> {
    worker_id: &'a str,
    phone_masked: Option<&'a str>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// `POST /api/sms/alerts`: queue one message per consenting recipient of the tenant.
pub async fn create_alert(
    state: &AppState,
    tenant_id: &str,
    request: Value,
    idempotency_key: Option<&str>,
    actor: &Actor,
) -> ApiResult<Answer> {
    let key = parse_idempotency_key(idempotency_key)?;
    let hash = request_hash("alert", &request);
    let input: NewAlert = shape(request.clone())?;
    let kind = input.kind.trim();
    if !KINDS.contains(&kind) {
        return Err(invalid("kind", format!("{kind:?} is not a kind; use one of {}", KINDS.join(", "))));
    }
    let info = check_body(state, &input.body)?;
    let ast_id = match input.ast_id.as_deref().map(str::trim) {
        Some(a) if a.is_empty() || a.len() > 100 => return Err(invalid("ast_id", "must be 1 to 100 characters")),
        other => other,
    };
    let recipients = parse_recipients(&input.recipients)?;
    if let Some(k) = key {
        if let Some(previous) = replay(state, Some(tenant_id), k, &hash).await? {
            return Ok(previous);
        }
    }

    let now = state.now();
    let limits = &state.settings.sms;
    let mut tx = state.db.begin().await?;
    crate::tenancy::ensure_writable(state, &mut tx, tenant_id).await?;
    let candidates = sms::candidates(&mut tx, tenant_id).await?;
    // (worker id, the worker if found)
    let targets: Vec<(String, Option<&sms::Candidate>)> = match &recipients {
        Recipients::Workers(ids) => {
            let by_id: std::collections::HashMap<&str, &sms::Candidate> =
                candidates.iter().map(|c| (c.id.as_str(), c)).collect();
            ids.iter().map(|id| (id.clone(), by_id.get(id.as_str()).copied())).collect()
        }
        Recipients::Site(site) => {
            if !sms::site_exists(&mut tx, tenant_id, site).await? {
                return Err(invalid("recipients.site_id", format!("no site {site:?} in this tenant")));
            }
            candidates.iter().filter(|c| c.site_id.as_deref() == Some(site)).map(|c| (c.id.clone(), Some(c))).collect()
        }
        Recipients::All => candidates.iter().map(|c| (c.id.clone(), Some(c))).collect(),
    };
    if targets.len() > limits.max_recipients as usize {
        return Err(ApiError::unprocessable(
            "too_many_recipients",
            format!(
                "recipients: {} recipients exceed the maximum of {} per alert (SMS_MAX_RECIPIENTS); split the alert",
                targets.len(),
                limits.max_recipients
            ),
        ));
    }

    let alert_id = new_id("alrt");
    let mut rows: Vec<(String, &sms::Candidate, Option<&'static str>, String)> = Vec::new();
    // Each target in the request's order: its row in `rows`, or the id of a worker not found (no row).
    let mut order: Vec<Result<usize, &str>> = Vec::with_capacity(targets.len());
    let mut seen_phones: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (worker_id, found) in &targets {
        let Some(c) = found else {
            order.push(Err(worker_id));
            continue;
        };
        let masked = Phone::mask_stored(&c.phone).unwrap_or_else(|| "+•••".into());
        // A withdrawal in the ledger (STOP, carrier, admin) is reported as such, before a consent never given.
        let reason = if c.ledger_consent == Some(false) {
            Some("opted_out")
        } else if !c.sms_consent {
            Some("no_consent")
        } else if !seen_phones.insert(c.phone.as_str()) {
            Some("duplicate_phone")
        } else {
            None
        };
        order.push(Ok(rows.len()));
        rows.push((new_ordered_id("msg"), c, reason, masked));
    }
    let outcomes: Vec<Outcome<'_>> = order
        .iter()
        .map(|target| match target {
            Err(worker_id) => Outcome { worker_id, phone_masked: None, outcome: "skipped", reason: Some("not_found") },
            Ok(i) => {
                let (_, c, reason, masked) = &rows[*i];
                let outcome = if reason.is_some() { "skipped" } else { "queued" };
                Outcome { worker_id: &c.id, phone_masked: Some(masked), outcome, reason: *reason }
            }
        })
        .collect();
    let queued = rows.iter().filter(|r| r.2.is_none()).count();
    let skipped = outcomes.len() - queued;

    if queued > 0 {
        let limit = i64::from(limits.rate_per_minute);
        if queued as i64 > limit {
            return Err(ApiError::unprocessable(
                "too_many_recipients",
                format!(
                    "recipients: {queued} messages exceed the tenant's limit of {limit} per minute \
                     (SMS_RATE_PER_MINUTE); split the alert"
                ),
            ));
        }
        if !sms::take_rate(&mut tx, tenant_id, now.div_euclid(60_000) * 60_000, queued as i64, limit).await? {
            let secs = seconds_left_in_window(now);
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this tenant may queue {limit} SMS per minute and this alert would exceed it; retry in {secs} s"
                ),
            )
            .with_retry_after(secs));
        }
    }

    let status = if queued > 0 { "queued" } else { "skipped" };
    let encoding = encoding_name(info.encoding);
    let response = AlertAnswer {
        alert_id: &alert_id,
        kind,
        status,
        provider: state.sms.name(),
        encoding,
        segments: info.segments,
        non_gsm_chars: info.non_gsm_chars.iter().map(|c| c.to_string()).collect(),
        recipients: outcomes,
        queued,
        skipped,
    };
    // Serialized once: stored for replays and sent as is (10,000 recipients make a megabyte).
    let response_text = serde_json::to_string(&response).map_err(|e| ApiError::internal(e.into()))?;
    let spec = input.recipients.to_string();
    let inserted = sms::insert_alert(
        &mut tx,
        &sms::NewAlert {
            id: &alert_id,
            tenant_id: Some(tenant_id),
            kind,
            body: &input.body,
            ast_id,
            recipients_spec: &spec,
            encoding,
            segments: i64::from(info.segments),
            status,
            idempotency_key: key,
            request_hash: &hash,
            response: &response_text,
            created_by: &actor.name,
            at: now,
        },
    )
    .await;
    if let Err(e) = inserted {
        drop(tx);
        return replay_after_conflict(state, Some(tenant_id), key, &hash, e).await;
    }
    let messages: Vec<sms::NewMessage<'_>> = rows
        .iter()
        .map(|(id, c, reason, masked)| sms::NewMessage {
            id,
            alert_id: Some(&alert_id),
            tenant_id: Some(tenant_id),
            worker_id: Some(&c.id),
            kind,
            priority: priority(kind),
            to_phone: &c.phone,
            to_phone_masked: masked,
            body: &input.body,
            encoding,
            segments: i64::from(info.segments),
            status: if reason.is_some() { "skipped" } else { "queued" },
            error_code: *reason,
            at: now,
        })
        .collect();
    sms::insert_messages(&mut tx, &messages).await?;
    let entry = actor.entry(Zone::Sms, "sms_alert_create").tenant(tenant_id).subject(&alert_id).details(json!({
        "kind": kind, "encoding": encoding, "segments": info.segments, "queued": queued, "skipped": skipped,
        "ast_id": ast_id,
    }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    if queued > 0 {
        state.dispatch_wakeup.notify_one();
    }
    tracing::info!(alert_id, kind, queued, skipped, "SMS alert queued");
    Ok(Answer(response_text))
}

/// The alert insert failed. A unique violation on the idempotency key means another request with the same key
/// committed first: answer as it did. Anything else is an error.
async fn replay_after_conflict(
    state: &AppState,
    tenant_id: Option<&str>,
    key: Option<&str>,
    hash: &str,
    e: sqlx::Error,
) -> ApiResult<Answer> {
    match (db::is_unique_violation(&e), key) {
        (true, Some(k)) => replay(state, tenant_id, k, hash).await?.ok_or_else(|| e.into()),
        _ => Err(e.into()),
    }
}

/// `POST /api/send-sms` (operator, runbook test procedure): one message of kind `test`, no tenant.
pub async fn send_test(
    state: &AppState,
    request: Value,
    idempotency_key: Option<&str>,
    actor: &Actor,
) -> ApiResult<Value> {
    let key = parse_idempotency_key(idempotency_key)?;
    let hash = request_hash("test", &request);
    let input: TestSms = shape(request)?;
    let to = Phone::parse(&input.to).map_err(|e| ApiError::unprocessable("invalid_phone", format!("to: {e}")))?;
    let info = check_body(state, &input.body)?;
    if let Some(k) = key {
        if let Some(previous) = replay(state, None, k, &hash).await? {
            return previous.value();
        }
    }
    let blocked = sms::consent_block(&state.db, "test", None, None, to.as_str()).await?;
    let now = state.now();
    let alert_id = new_id("alrt");
    let message_id = new_ordered_id("msg");
    let masked = to.masked();
    let encoding = encoding_name(info.encoding);
    let status = if blocked.is_some() { "skipped" } else { "queued" };
    let response = json!({
        "alert_id": alert_id,
        "message_id": message_id,
        "kind": "test",
        "to_masked": masked,
        "status": status,
        "reason": blocked,
        "provider": state.sms.name(),
        "encoding": encoding,
        "segments": info.segments,
        "non_gsm_chars": info.non_gsm_chars.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    });
    let response_text = response.to_string();
    let mut tx = state.db.begin().await?;
    let inserted = sms::insert_alert(
        &mut tx,
        &sms::NewAlert {
            id: &alert_id,
            tenant_id: None,
            kind: "test",
            body: &input.body,
            ast_id: None,
            recipients_spec: "{\"to\":1}",
            encoding,
            segments: i64::from(info.segments),
            status,
            idempotency_key: key,
            request_hash: &hash,
            response: &response_text,
            created_by: &actor.name,
            at: now,
        },
    )
    .await;
    if let Err(e) = inserted {
        drop(tx);
        return replay_after_conflict(state, None, key, &hash, e).await?.value();
    }
    sms::insert_message(
        &mut tx,
        &sms::NewMessage {
            id: &message_id,
            alert_id: Some(&alert_id),
            tenant_id: None,
            worker_id: None,
            kind: "test",
            priority: 0,
            to_phone: to.as_str(),
            to_phone_masked: &masked,
            body: &input.body,
            encoding,
            segments: i64::from(info.segments),
            status,
            error_code: blocked,
            at: now,
        },
    )
    .await?;
    let entry = actor
        .entry(Zone::Twilio, "send_sms")
        .subject(&message_id)
        .details(json!({ "kind": "test", "to": masked, "segments": info.segments, "status": status }));
    audit::append(&mut tx, &entry, now).await?;
    tx.commit().await?;
    if blocked.is_none() {
        state.dispatch_wakeup.notify_one();
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_counts_the_seconds_left_in_the_minute() {
        assert_eq!(seconds_left_in_window(60_000), 60);
        assert_eq!(seconds_left_in_window(60_001), 60);
        assert_eq!(seconds_left_in_window(119_500), 1);
        assert_eq!(seconds_left_in_window(119_999), 1);
    }

    #[test]
    fn recipients_take_exactly_one_form() {
        assert!(matches!(parse_recipients(&json!({"all": true})), Ok(Recipients::All)));
        assert!(matches!(parse_recipients(&json!({"site_id": "site_1"})), Ok(Recipients::Site(_))));
        match parse_recipients(&json!({"worker_ids": ["a", "b", "a"]})) {
            Ok(Recipients::Workers(ids)) => assert_eq!(ids, ["a", "b"]),
            _ => panic!("worker ids"),
        }
        for bad in [
            json!({}),
            json!({"all": false}),
            json!({"all": true, "site_id": "x"}),
            json!({"worker_ids": []}),
            json!({"worker_ids": [1]}),
            json!({"site_id": ""}),
            json!(["all"]),
        ] {
            assert!(parse_recipients(&bad).is_err(), "{bad}");
        }
    }
}
