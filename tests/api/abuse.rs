//! The abuse corpus (issue 9): forged, replayed, expired and malformed webhooks for both providers; oversized
//! and malformed bodies on every JSON/form endpoint; path traversal, SQL metacharacters, NUL bytes, very long
//! strings and unicode oddities in every string field, path segment and query parameter; and tenant A's key
//! used with tenant B's ids on every tenant endpoint.
//!
//! Every refused case must answer the expected 4xx with the SPEC §7 shape `{"error": {"code", "message"}}`
//! (the admin pages answer an HTML error page instead) and have NO effect: the row count and a
//! digest of the content of every table (read from the catalog, so a new table is covered without edits) are
//! the same before and after. A hostile value in a free-text field is data: it is accepted, echoed verbatim
//! and only the expected tables change.
//!
//! The endpoints, from the router in `src/http/mod.rs` (`every_route_of_the_router_is_in_the_corpus` fails when
//! a route is added there and not here):
//!
//! | route                                        | methods            | caller        | input                       |
//! |----------------------------------------------|--------------------|---------------|-----------------------------|
//! | /healthz, /readyz                            | GET                | anyone        | -                           |
//! | /metrics                                     | GET                | operator      | -                           |
//! | /admin                                       | GET                | anyone        | - (redirect)                |
//! | /admin/login                                 | GET, POST          | anyone        | query `lang`; form          |
//! | /admin/logout                                | POST               | admin session | form (CSRF)                 |
//! | /admin/runbook                               | GET                | admin session | query                       |
//! | /admin/procedures/{name}                     | POST               | admin session | path; form (CSRF)           |
//! | /api/tenants                                 | GET, POST          | operator      | JSON                        |
//! | /api/tenants/{id}                            | GET, PATCH, DELETE | operator      | path; JSON                  |
//! | /api/tenants/{id}/api-keys                   | GET, POST          | operator      | path; optional JSON         |
//! | /api/tenants/{id}/api-keys/{key_id}          | DELETE             | operator      | path                        |
//! | /api/audit                                   | GET                | operator      | query                       |
//! | /api/jobs, /api/system/status                | GET                | operator      | -                           |
//! | /api/sms/cleanup, /api/billing/sync          | GET, POST          | cron/operator | -                           |
//! | /api/entitlements                            | GET                | tenant key    | -                           |
//! | /api/sites                                   | GET, POST          | tenant key    | JSON                        |
//! | /api/sites/{id}                              | GET, PATCH, DELETE | tenant key    | path; JSON                  |
//! | /api/workers                                 | GET, POST          | tenant key    | query `site_id`; JSON       |
//! | /api/workers/{id}                            | GET, PATCH, DELETE | tenant key    | path; JSON                  |
//! | /api/workers/{id}/consent                    | GET, POST          | tenant key    | path; JSON                  |
//! | /api/workers/{id}/verification               | POST               | tenant key    | path                        |
//! | /api/workers/{id}/verification/check         | POST               | tenant key    | path; JSON                  |
//! | /api/sms/inbound                             | POST               | Twilio        | signed form                 |
//! | /api/voice/inbound, /api/voice/dial-status   | POST               | Twilio        | signed form                 |
//! | /api/sms/status                              | POST               | Twilio        | signed form                 |
//! | /api/billing/checkout                        | POST               | tenant key    | JSON                        |
//! | /api/billing/sites                           | PUT                | tenant key    | JSON                        |
//! | /api/billing/portal                          | POST               | tenant key    | -                           |
//! | /api/billing/subscription                    | GET                | tenant key    | -                           |
//! | /api/webhooks/stripe                         | POST               | Stripe        | signed JSON                 |
//! | /api/sms/alerts                              | POST               | tenant key    | JSON (+ Idempotency-Key)    |
//! | /api/sms/alerts/{id}                         | GET                | tenant key    | path                        |
//! | /api/send-sms                                | POST               | operator      | JSON (+ Idempotency-Key)    |

use std::io::{Read, Write};

use reqwest::{Method, StatusCode};
use secur360::domain::{stripe_signature, twilio_signature};
use serde_json::{json, Value};

use crate::billing_webhooks::{event, link_customer, sub_object, SECRET as STRIPE_SECRET};
use crate::both_backends;
use crate::fake_stripe::{PRICE_ADDON_MONTHLY, PRICE_MONTHLY};
use crate::helpers::*;

const APP_URL: &str = "https://c-secur360.ca";
const TW_TOKEN: &str = "twilio-primary-token-0123456789";
const TW_SECONDARY: &str = "twilio-secondary-token-0123456789";
const CONTACT: &str = "+15148739999";

const VARS: &[(&str, &str)] = &[
    ("APP_URL", APP_URL),
    ("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
    ("TWILIO_AUTH_TOKEN", TW_TOKEN),
    ("TWILIO_AUTH_TOKEN_SECONDARY", TW_SECONDARY),
    ("TWILIO_PHONE_NUMBER", CONTACT),
    // Nothing listens here, and no dispatcher runs in tests: nothing is ever sent.
    ("TWILIO_API_BASE", "http://127.0.0.1:9"),
    ("OWNER_MOBILE", "+14384031234"),
    ("PUBLIC_CONTACT_NUMBER", CONTACT),
    ("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET),
    ("STRIPE_PRICE_MONTHLY", PRICE_MONTHLY),
    ("STRIPE_PRICE_ADDON_SITE_MONTHLY", PRICE_ADDON_MONTHLY),
    ("STRIPE_PRICE_ANNUAL", "price_base_year"),
    ("STRIPE_PRICE_ADDON_SITE_ANNUAL", "price_addon_year"),
];

// ---------------------------------------------------------------------------------------------------------
// The state of every table

/// Columns that legitimately change on a refused request (a tenant key's last use is recorded when the key
/// authenticates, before the handler refuses the body).
const VOLATILE: &[(&str, &str)] = &[("api_keys", "last_used_at")];

/// One query giving (table, row count, digest of the content) for every table of the schema, built from the
/// catalog once per backend (every test database has the same migrated schema).
static STATE_SQL: std::sync::Mutex<Vec<(Backend, String)>> = std::sync::Mutex::new(Vec::new());

async fn state_sql(app: &TestApp) -> String {
    if let Some((_, sql)) = STATE_SQL.lock().unwrap().iter().find(|(b, _)| *b == app.backend) {
        return sql.clone();
    }
    let pg = app.backend == Backend::Postgres;
    let tables_sql = if pg {
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' ORDER BY 1"
    };
    let tables: Vec<String> =
        secur360::on_db!(&app.db, p => sqlx::query_scalar(tables_sql).fetch_all(p).await).expect("list tables");
    assert!(tables.len() >= 10, "the catalog lists the schema's tables: {tables:?}");
    let mut parts = Vec::new();
    for t in tables {
        let cols_sql = if pg {
            format!(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = current_schema() \
                 AND table_name = '{t}' ORDER BY ordinal_position"
            )
        } else {
            format!("SELECT name FROM pragma_table_info('{t}') ORDER BY cid")
        };
        let cols: Vec<String> =
            secur360::on_db!(&app.db, p => sqlx::query_scalar(&cols_sql).fetch_all(p).await).expect("list columns");
        let cols: Vec<String> = cols.into_iter().filter(|c| !VOLATILE.contains(&(t.as_str(), c.as_str()))).collect();
        parts.push(if pg {
            let row = cols
                .iter()
                .map(|c| format!("COALESCE(CAST(\"{c}\" AS TEXT), '~null~')"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "SELECT CAST('{t}' AS TEXT), COUNT(*), COALESCE(md5(string_agg(r, chr(10) ORDER BY r)), '') FROM \
                 (SELECT concat_ws('|', {row}) AS r FROM \"{t}\") s"
            )
        } else {
            let row = cols.iter().map(|c| format!("quote(\"{c}\")")).collect::<Vec<_>>().join(" || '|' || ");
            format!(
                "SELECT '{t}', COUNT(*), COALESCE(group_concat(r, char(10)), '') FROM \
                 (SELECT {row} AS r FROM \"{t}\" ORDER BY r) s"
            )
        });
    }
    let sql = parts.join(" UNION ALL ");
    STATE_SQL.lock().unwrap().push((app.backend, sql.clone()));
    sql
}

/// (table, row count, digest of the content) for every table of the schema, once the calls the app has answered
/// are recorded (the call log records them off the answer path).
async fn state(app: &TestApp) -> Vec<(String, i64, String)> {
    app.state.call_log.flush().await;
    let sql = state_sql(app).await;
    let mut rows: Vec<(String, i64, String)> =
        secur360::on_db!(&app.db, p => sqlx::query_as(&sql).fetch_all(p).await).expect("table digests");
    rows.sort();
    rows
}

/// The tables whose count or content differ.
fn changed(before: &[(String, i64, String)], after: &[(String, i64, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in after {
        match before.iter().find(|b| b.0 == a.0) {
            Some(b) if b == a => {}
            Some(b) => out.push(format!("{} ({} -> {} rows)", a.0, b.1, a.1)),
            None => out.push(format!("{} (new table)", a.0)),
        }
    }
    for b in before {
        if !after.iter().any(|a| a.0 == b.0) {
            out.push(format!("{} (table gone)", b.0));
        }
    }
    out
}

fn changed_tables(before: &[(String, i64, String)], after: &[(String, i64, String)]) -> Vec<String> {
    changed(before, after).into_iter().map(|c| c.split(' ').next().unwrap().to_owned()).collect()
}

/// An expected refusal: status and §7 error code.
type Expect = (StatusCode, &'static str);

/// (label, path, content type, body, expected status, words of the page answered)
type AdminFormCase = (&'static str, &'static str, &'static str, Vec<u8>, StatusCode, &'static str);

/// (label, path and query requested, content type, body, X-Twilio-Signature, expected)
type TwilioCase = (&'static str, String, Option<&'static str>, Vec<u8>, Option<String>, Expect);

/// A refusal: the status, the §7 shape and the code.
#[track_caller]
fn assert_refused(label: &str, status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{label}: {body}");
    let got = body["error"]["code"].as_str().unwrap_or_else(|| panic!("{label}: not a §7 error body: {body}"));
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{label}: no error message: {body}");
    assert_eq!(got, code, "{label}: {body}");
}

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP, for what a URL library would normalise (`..`, `%2e%2e`) or refuse to send

/// One HTTP/1.1 request written byte for byte on a fresh loopback connection.
async fn raw(app: &TestApp, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> (StatusCode, Value) {
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || method != "GET" {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    let bytes = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        s.write_all(&req).expect("write request");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read response");
        out
    })
    .await
    .unwrap();
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let mut body = bytes[split + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let text = String::from_utf8_lossy(&body).to_string();
    let value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (StatusCode::from_u16(status).unwrap(), value)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else { return out };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

// ---------------------------------------------------------------------------------------------------------
// The world: two tenants with a site, a consenting worker and an alert each

struct World {
    key_a: String,
    key_b: String,
    site_a: String,
    site_b: String,
    worker_a: String,
    worker_b: String,
    alert_b: String,
    key_id_b: String,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn deliver_stripe(app: &TestApp, body: &str) -> (StatusCode, Value) {
    crate::billing_webhooks::deliver(app, body).await
}

async fn world(app: &TestApp) -> World {
    let key_a = app.tenant_with_key("acme").await;
    let key_b = app.tenant_with_key("globex").await;
    // Room for many sites (hostile site names are created as data).
    for t in ["acme", "globex"] {
        link_customer(app, t, &format!("cus_{t}")).await;
        let sub = sub_object(&format!("sub_{t}"), &format!("cus_{t}"), "active", 200);
        let (s, b) =
            deliver_stripe(app, &event(&format!("evt_world_{t}"), "customer.subscription.created", now_secs(), sub))
                .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let mut ids = Vec::new();
    for (key, phone) in [(&key_a, "514 873 2015"), (&key_b, "514 873 2016")] {
        let (s, site) = app.send(Method::POST, "/api/sites", Some(key), Some(json!({"name": "Usine"}))).await;
        assert_eq!(s, StatusCode::CREATED, "{site}");
        let site = site["id"].as_str().unwrap().to_owned();
        let body = json!({"name": "Jean", "phone": phone, "sms_consent": true, "site_id": site});
        let (s, w) = app.send(Method::POST, "/api/workers", Some(key), Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{w}");
        ids.push((site, w["id"].as_str().unwrap().to_owned()));
    }
    let body = json!({"kind": "lock_applied", "body": "Cadenas posé", "recipients": {"worker_ids": [ids[1].1]}});
    let (s, alert) = app.send(Method::POST, "/api/sms/alerts", Some(&key_b), Some(body)).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{alert}");
    let (s, keys) = app.operator(Method::GET, "/api/tenants/globex/api-keys", None).await;
    assert_eq!(s, StatusCode::OK, "{keys}");
    World {
        key_a,
        key_b,
        site_a: ids[0].0.clone(),
        site_b: ids[1].0.clone(),
        worker_a: ids[0].1.clone(),
        worker_b: ids[1].1.clone(),
        alert_b: alert["alert_id"].as_str().expect("alert id").to_owned(),
        key_id_b: keys["api_keys"][0]["id"].as_str().unwrap().to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Hostile strings

/// (label, value): for JSON string fields, form fields, path segments and query values.
fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("traversal", "../../../etc/passwd".into()),
        ("encoded traversal", "%2e%2e%2f%2e%2e%2fetc%2fpasswd".into()),
        ("windows traversal", "..\\..\\windows\\win.ini".into()),
        ("sql or", "' OR 1=1 --".into()),
        ("sql drop", "\"; DROP TABLE tenants; --".into()),
        ("sql union", "x' UNION SELECT secret_hash FROM api_keys --".into()),
        ("nul byte", "a\u{0}b".into()),
        ("encoded nul", "%00".into()),
        ("very long", "A".repeat(10_000)),
        ("very long multibyte", "é".repeat(5_000)),
        ("rtl override", "\u{202e}fdp.exe".into()),
        ("zero width", "a\u{200b}\u{200d}\u{2060}b".into()),
        ("combining marks", "e\u{301}\u{302}\u{303}\u{304}".into()),
        ("emoji zwj", "👷🏽\u{200d}♀️🔒".into()),
        ("fullwidth", "％２ｅ％２ｅ／ｅｔｃ".into()),
        ("bom", "\u{feff}x".into()),
        ("noncharacters", "\u{fffe}\u{ffff}\u{fdd0}".into()),
        ("astral", "𝕏𐍈\u{10ffff}".into()),
        ("crlf", "a\r\nSet-Cookie: x=1".into()),
        ("html", "<script>alert(1)</script>".into()),
        ("only spaces", "   ".into()),
    ]
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[derive(Clone, Copy, Debug)]
enum Field {
    /// Every hostile value is refused with this status and code.
    Refused(StatusCode, &'static str),
    /// `parse_name`: trimmed, 1..=200 characters, no control characters; else 422 `invalid_field`.
    Name,
    /// Trimmed free text of at most this many characters (empty allowed: it clears / defaults the field).
    Text(usize),
    /// Free text, required (not blank), at most this many characters.
    Required(usize),
    /// An SMS body: not blank, at most `SMS_MAX_SEGMENTS` (4) segments.
    SmsBody,
    /// A recipient worker id: 1 to 64 bytes once trimmed; an id that is not one of the tenant's workers is
    /// reported as a skipped recipient (`not_found`), the alert is recorded and nothing is queued.
    WorkerId,
}

enum Want {
    Accepted(String),
    Refused(StatusCode, &'static str),
}

fn expect(field: Field, v: &str) -> Want {
    let t = v.trim();
    let n = t.chars().count();
    let invalid = Want::Refused(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
    if v.contains('\0') {
        // No field has a use for U+0000, and PostgreSQL text cannot hold it: refused for every JSON body.
        return Want::Refused(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    match field {
        Field::Refused(s, c) => Want::Refused(s, c),
        Field::Name if t.is_empty() || n > 200 || has_control(t) => invalid,
        Field::Name => Want::Accepted(t.to_owned()),
        Field::Text(max) if n > max => invalid,
        Field::Text(_) => Want::Accepted(t.to_owned()),
        Field::Required(max) if t.is_empty() || n > max => invalid,
        Field::Required(_) => Want::Accepted(t.to_owned()),
        Field::WorkerId if t.is_empty() || t.len() > 64 => invalid,
        Field::WorkerId => Want::Accepted(t.to_owned()),
        Field::SmsBody if t.is_empty() => invalid,
        Field::SmsBody => {
            let info = secur360::domain::sms_segments::analyze(v);
            if info.segments > 4 {
                Want::Refused(StatusCode::UNPROCESSABLE_ENTITY, "too_many_segments")
            } else {
                Want::Accepted(v.to_owned())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------

both_backends! {
    with VARS;

    async fn stripe_forged_replayed_expired_and_malformed_deliveries_have_no_effect(app) {
        let _w = world(&app).await;
        let now = now_secs();
        let body = event("evt_abuse_1", "customer.subscription.updated", now, sub_object("sub_acme", "cus_acme", "past_due", 3));
        let sig = |b: &str, secret: &str, t: i64| stripe_signature::sign(b.as_bytes(), secret, t);
        let good = sig(&body, STRIPE_SECRET, now);
        let v1 = good.split_once(",v1=").unwrap().1.to_owned();
        let huge = format!("{{\"id\": \"evt_huge\", \"pad\": \"{}\"}}", "x".repeat(300 * 1024));
        let invalid = (StatusCode::BAD_REQUEST, "invalid_signature");
        let missing = (StatusCode::BAD_REQUEST, "missing_signature");
        let malformed = (StatusCode::BAD_REQUEST, "malformed_event");
        let mut flipped = v1.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        // (label, body, Stripe-Signature header, expected)
        let cases: Vec<(&str, String, Option<String>, Expect)> = vec![
            ("no header", body.clone(), None, missing),
            ("empty header", body.clone(), Some(String::new()), missing),
            ("blank header", body.clone(), Some("   ".into()), missing),
            ("garbage header", body.clone(), Some("garbage".into()), invalid),
            ("t only", body.clone(), Some(format!("t={now}")), invalid),
            ("v1 only", body.clone(), Some(format!("v1={v1}")), invalid),
            ("t without value", body.clone(), Some(format!("t,v1={v1}")), invalid),
            ("t not a number", body.clone(), Some(format!("t=abc,v1={v1}")), invalid),
            ("t overflows i64", body.clone(), Some(format!("t=99999999999999999999,v1={v1}")), invalid),
            ("semicolons", body.clone(), Some(format!("t={now};v1={v1}")), invalid),
            ("v0 only", body.clone(), Some(format!("t={now},v0={v1}")), invalid),
            ("upper-case hex", body.clone(), Some(format!("t={now},v1={}", v1.to_uppercase())), invalid),
            ("one hex digit flipped", body.clone(), Some(format!("t={now},v1={flipped}")), invalid),
            ("truncated signature", body.clone(), Some(format!("t={now},v1={}", &v1[..32])), invalid),
            ("signature of another body", body.clone(), Some(sig("{}", STRIPE_SECRET, now)), invalid),
            ("wrong secret", body.clone(), Some(sig(&body, "whsec_someone_else", now)), invalid),
            ("empty secret", body.clone(), Some(sig(&body, "", now)), invalid),
            ("signed timestamp moved", body.clone(), Some(format!("t={},v1={v1}", now + 1)), invalid),
            ("expired (6 min old)", body.clone(), Some(sig(&body, STRIPE_SECRET, now - 360)), invalid),
            ("a day old", body.clone(), Some(sig(&body, STRIPE_SECRET, now - 86_400)), invalid),
            ("from the future (+6 min)", body.clone(), Some(sig(&body, STRIPE_SECRET, now + 360)), invalid),
            ("timestamp 0", body.clone(), Some(sig(&body, STRIPE_SECRET, 0)), invalid),
            ("negative timestamp", body.clone(), Some(sig(&body, STRIPE_SECRET, -1)), invalid),
            ("tampered body", body.replace("past_due", "active\u{20}"), Some(good.clone()), invalid),
            ("body with a trailing newline", format!("{body}\n"), Some(good.clone()), invalid),
            ("8 KiB header", body.clone(), Some(format!("t={now},{}", "v1=00,".repeat(1_400))), invalid),
            ("signed: not JSON", "not json".into(), Some(sig("not json", STRIPE_SECRET, now)), malformed),
            ("signed: truncated JSON", body[..body.len() / 2].to_owned(), Some(sig(&body[..body.len() / 2], STRIPE_SECRET, now)), malformed),
            ("signed: JSON array", "[]".into(), Some(sig("[]", STRIPE_SECRET, now)), malformed),
            ("signed: no type", "{\"id\": \"evt_x\"}".into(), Some(sig("{\"id\": \"evt_x\"}", STRIPE_SECRET, now)), malformed),
            ("signed: id not a string", "{\"id\": 7, \"type\": \"invoice.paid\", \"created\": 1, \"data\": {\"object\": {}}}".into(),
                Some(sig("{\"id\": 7, \"type\": \"invoice.paid\", \"created\": 1, \"data\": {\"object\": {}}}", STRIPE_SECRET, now)), malformed),
            ("signed: empty body", String::new(), Some(sig("", STRIPE_SECRET, now)), malformed),
            ("too large", huge.clone(), Some(sig(&huge, STRIPE_SECRET, now)), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")),
        ];
        let before = state(&app).await;
        for (label, b, h, (want, code)) in &cases {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(h) = h {
                headers.push(("Stripe-Signature", h.as_str()));
            }
            let (s, res) = raw(&app, "POST", "/api/webhooks/stripe", &headers, b.as_bytes()).await;
            assert_refused(&format!("stripe {label}"), s, &res, *want, code);
        }
        // A header that is not visible ASCII cannot be read: treated as missing.
        let (s, res) = raw(&app, "POST", "/api/webhooks/stripe", &[("Content-Type", "application/json"), ("Stripe-Signature", "t=1,v1=\u{e9}")], body.as_bytes()).await;
        assert_refused("stripe non-ASCII header", s, &res, StatusCode::BAD_REQUEST, "missing_signature");
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "a refused Stripe delivery changed nothing");

        // Replays: the genuine delivery applies once; the same bytes again, and the same event id with another
        // (validly signed) content, are acknowledged as duplicates with no effect.
        let (s, res) = raw(&app, "POST", "/api/webhooks/stripe", &[("Content-Type", "application/json"), ("Stripe-Signature", &good)], body.as_bytes()).await;
        assert_eq!((s, res["duplicate"].as_bool()), (StatusCode::OK, Some(false)), "{res}");
        let applied = state(&app).await;
        assert!(changed_tables(&before, &applied).contains(&"billing_events".to_owned()));
        let other = body.replace("past_due", "canceled");
        for (label, b, h) in [
            ("same bytes", body.clone(), good.clone()),
            ("same id, other content", other.clone(), sig(&other, STRIPE_SECRET, now)),
            ("same id, re-signed later", body.clone(), sig(&body, STRIPE_SECRET, now + 60)),
        ] {
            let (s, res) = raw(&app, "POST", "/api/webhooks/stripe", &[("Content-Type", "application/json"), ("Stripe-Signature", &h)], b.as_bytes()).await;
            assert_eq!((s, res["duplicate"].as_bool()), (StatusCode::OK, Some(true)), "replay {label}: {res}");
        }
        assert_eq!(changed(&applied, &state(&app).await), Vec::<String>::new(), "a replayed event changed nothing");
        // A replay of the genuine request once it is older than the tolerance is refused outright.
        let old = sig(&body, STRIPE_SECRET, now - 600);
        let (s, res) = raw(&app, "POST", "/api/webhooks/stripe", &[("Content-Type", "application/json"), ("Stripe-Signature", &old)], body.as_bytes()).await;
        assert_refused("stripe stale replay", s, &res, StatusCode::BAD_REQUEST, "invalid_signature");
        assert_eq!(changed(&applied, &state(&app).await), Vec::<String>::new());
    }

    async fn twilio_forged_replayed_and_malformed_requests_have_no_effect(app) {
        let _w = world(&app).await;
        let endpoints: [(&str, Vec<(&str, &str)>); 4] = [
            ("/api/sms/inbound", vec![("MessageSid", "SMabuse1"), ("From", "+15148732015"), ("To", CONTACT), ("Body", "STOP")]),
            ("/api/voice/inbound", vec![("CallSid", "CAabuse1"), ("From", "+15148732015"), ("To", CONTACT), ("CallStatus", "ringing")]),
            ("/api/voice/dial-status", vec![("CallSid", "CAabuse1"), ("DialCallStatus", "completed"), ("From", "+15148732015"), ("To", CONTACT)]),
            ("/api/sms/status", vec![("MessageSid", "SMabuse1"), ("MessageStatus", "delivered")]),
        ];
        let enc = |p: &[(String, String)]| serde_urlencoded::to_string(p).unwrap();
        let own = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let forbidden = (StatusCode::FORBIDDEN, "invalid_signature");
        let before = state(&app).await;
        let mut n = 0;
        for (path, params) in &endpoints {
            let params = own(params);
            let url = format!("{APP_URL}{path}");
            let good = twilio_signature::compute(&url, &params, TW_TOKEN);
            let mut tampered = params.clone();
            tampered[0].1.push('x');
            let mut added = params.clone();
            added.push(("Extra".into(), "1".into()));
            let mut removed = params.clone();
            removed.pop();
            let mut nul = params.clone();
            nul[1].1.push('\0');
            let mut dup = params.clone();
            dup.push(params[0].clone());
            dup.last_mut().unwrap().1.push('2');
            let form = Some("application/x-www-form-urlencoded");
            let huge = format!("{}&Pad={}", enc(&params), "x".repeat(300 * 1024));
            let cases: Vec<TwilioCase> = vec![
                ("no signature", path.to_string(), form, enc(&params).into_bytes(), None, forbidden),
                ("empty signature", path.to_string(), form, enc(&params).into_bytes(), Some(String::new()), forbidden),
                ("garbage signature", path.to_string(), form, enc(&params).into_bytes(), Some("not-base64!!".into()), forbidden),
                ("all-zero signature", path.to_string(), form, enc(&params).into_bytes(), Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()), forbidden),
                ("signature without padding", path.to_string(), form, enc(&params).into_bytes(), Some(good.trim_end_matches('=').to_owned()), forbidden),
                ("signature twice", path.to_string(), form, enc(&params).into_bytes(), Some(format!("{good},{good}")), forbidden),
                ("wrong token", path.to_string(), form, enc(&params).into_bytes(), Some(twilio_signature::compute(&url, &params, "another-token")), forbidden),
                ("signed for another path", path.to_string(), form, enc(&params).into_bytes(),
                    Some(twilio_signature::compute(&format!("{APP_URL}/api/sms/other"), &params, TW_TOKEN)), forbidden),
                ("signed for another host", path.to_string(), form, enc(&params).into_bytes(),
                    Some(twilio_signature::compute(&format!("https://evil.example{path}"), &params, TW_TOKEN)), forbidden),
                ("signed for http", path.to_string(), form, enc(&params).into_bytes(),
                    Some(twilio_signature::compute(&format!("http://c-secur360.ca{path}"), &params, TW_TOKEN)), forbidden),
                ("signed without the query", format!("{path}?tenant=acme"), form, enc(&params).into_bytes(), Some(good.clone()), forbidden),
                ("signed with a query not sent", path.to_string(), form, enc(&params).into_bytes(),
                    Some(twilio_signature::compute(&format!("{url}?a=1"), &params, TW_TOKEN)), forbidden),
                ("tampered value", path.to_string(), form, enc(&tampered).into_bytes(), Some(good.clone()), forbidden),
                ("added parameter", path.to_string(), form, enc(&added).into_bytes(), Some(good.clone()), forbidden),
                ("removed parameter", path.to_string(), form, enc(&removed).into_bytes(), Some(good.clone()), forbidden),
                ("repeated parameter", path.to_string(), form, enc(&dup).into_bytes(), Some(good.clone()), forbidden),
                ("params as JSON", path.to_string(), Some("application/json"),
                    serde_json::to_vec(&params).unwrap(), Some(good.clone()), forbidden),
                ("no content type", path.to_string(), None, enc(&params).into_bytes(), Some(good.clone()), forbidden),
                ("bad percent escapes", path.to_string(), form, b"MessageSid=%zz&From=%&To=%%41".to_vec(), Some(good.clone()), forbidden),
                ("invalid UTF-8", path.to_string(), form, b"MessageSid=\xff\xfe&From=%ff%c3".to_vec(), Some(good.clone()), forbidden),
                ("NUL bytes", path.to_string(), form, b"MessageSid=a%00b&From=\x00".to_vec(), Some(good.clone()), forbidden),
                ("only separators", path.to_string(), form, b"&&&===&=&".to_vec(), Some(good.clone()), forbidden),
                ("too large", path.to_string(), form, huge.into_bytes(), Some(good.clone()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")),
                // Correctly signed, but not a form: Twilio never sends that.
                ("signed JSON body", path.to_string(), Some("application/json"), b"{\"MessageSid\": \"x\"}".to_vec(),
                    Some(twilio_signature::compute(&url, &[], TW_TOKEN)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")),
                // Correctly signed, required field missing.
                ("signed, required field missing", path.to_string(), form, Vec::new(),
                    Some(twilio_signature::compute(&url, &[], TW_TOKEN)), (StatusCode::BAD_REQUEST, "missing_field")),
                // Correctly signed, a NUL in a field (PostgreSQL text cannot hold it).
                ("signed, NUL in a field", path.to_string(), form, enc(&nul).into_bytes(),
                    Some(twilio_signature::compute(&url, &nul, TW_TOKEN)), (StatusCode::BAD_REQUEST, "malformed_form")),
            ];
            for (label, target, ctype, body, sig, (want, code)) in cases {
                if label == "signed, required field missing" && *path == "/api/sms/status" {
                    continue; // covered below: the status callback tolerates unknown messages
                }
                let mut headers: Vec<(&str, &str)> = Vec::new();
                if let Some(c) = ctype {
                    headers.push(("Content-Type", c));
                }
                if let Some(s) = &sig {
                    headers.push(("X-Twilio-Signature", s.as_str()));
                }
                let (s, res) = raw(&app, "POST", &target, &headers, &body).await;
                assert_refused(&format!("twilio {path} {label}"), s, &res, want, code);
                n += 1;
            }
        }
        assert!(n >= 90, "{n} cases");
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "a refused Twilio request changed nothing");

        // Genuine (signed) requests whose fields hold hostile values: handled as data or refused, never a 5xx;
        // a refusal changes nothing.
        let mut serial = 0;
        for (path, params) in &endpoints {
            for field in 0..params.len() {
                for (vlabel, value) in hostile() {
                    serial += 1;
                    let mut p = own(params);
                    if field != 0 {
                        p[0].1 = format!("{}{serial}", p[0].1); // a fresh MessageSid / CallSid
                    }
                    p[field].1 = value.clone();
                    let sig = twilio_signature::compute(&format!("{APP_URL}{path}"), &p, TW_TOKEN);
                    let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("X-Twilio-Signature", sig.as_str())];
                    let before = state(&app).await;
                    let (s, res) = raw(&app, "POST", path, &headers, enc(&p).as_bytes()).await;
                    let what = format!("{path} {} = {vlabel}", p[field].0);
                    assert!(s.is_success() || s.is_client_error(), "{what}: {s} {res}");
                    if s.is_client_error() {
                        error_code(&res);
                        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "{what}: refused, yet changed");
                    }
                    if value.contains('\0') {
                        assert_refused(&what, s, &res, StatusCode::BAD_REQUEST, "malformed_form");
                    }
                }
            }
        }

        // Replays: a genuine inbound SMS / call applies once; the same request again changes nothing.
        for (path, params) in &endpoints[..2] {
            let params = own(params);
            let sig = twilio_signature::compute(&format!("{APP_URL}{path}"), &params, TW_TOKEN);
            let headers = [("Content-Type", "application/x-www-form-urlencoded"), ("X-Twilio-Signature", sig.as_str())];
            let (s, first) = raw(&app, "POST", path, &headers, enc(&params).as_bytes()).await;
            assert_eq!(s, StatusCode::OK, "{path}: {first}");
            let applied = state(&app).await;
            let (s, again) = raw(&app, "POST", path, &headers, enc(&params).as_bytes()).await;
            assert_eq!((s, &again), (StatusCode::OK, &first), "{path}: a replay gets the same answer");
            assert_eq!(changed(&applied, &state(&app).await), Vec::<String>::new(), "{path}: a replay changed nothing");
        }
    }

    async fn malformed_and_oversized_bodies_on_every_json_endpoint_are_refused_without_effect(app) {
        let w = world(&app).await;
        let a = w.key_a.as_str();
        // (caller token, method, path): every route that reads a JSON body.
        let endpoints: Vec<(&str, Method, String)> = vec![
            (ADMIN_TOKEN, Method::POST, "/api/tenants".into()),
            (ADMIN_TOKEN, Method::PATCH, "/api/tenants/acme".into()),
            (ADMIN_TOKEN, Method::POST, "/api/tenants/acme/api-keys".into()),
            (ADMIN_TOKEN, Method::POST, "/api/send-sms".into()),
            (a, Method::POST, "/api/sites".into()),
            (a, Method::PATCH, format!("/api/sites/{}", w.site_a)),
            (a, Method::POST, "/api/workers".into()),
            (a, Method::PATCH, format!("/api/workers/{}", w.worker_a)),
            (a, Method::POST, format!("/api/workers/{}/consent", w.worker_a)),
            (a, Method::POST, format!("/api/workers/{}/verification/check", w.worker_a)),
            (a, Method::POST, "/api/billing/checkout".into()),
            (a, Method::PUT, "/api/billing/sites".into()),
            (a, Method::POST, "/api/sms/alerts".into()),
        ];
        let json = Some("application/json");
        let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(300 * 1024));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let bad = (StatusCode::BAD_REQUEST, "malformed_json");
        let shape = (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
        let media = (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
        // (label, content type, body, expected)
        let cases: Vec<(&str, Option<&str>, Vec<u8>, Expect)> = vec![
            // Syntax errors before any key is known (a known-bad key would be a shape error first).
            ("truncated", json, b"{\"na".to_vec(), bad),
            ("empty", json, b"".to_vec(), bad),
            ("not JSON", json, b"name=x".to_vec(), bad),
            ("single quotes", json, b"{'name': 'x'}".to_vec(), bad),
            ("lone comma", json, b"{,}".to_vec(), bad),
            ("comment", json, b"{/* */}".to_vec(), bad),
            ("NaN", json, b"NaN".to_vec(), bad),
            ("invalid UTF-8", json, b"{\"\xff\xfe\": 1}".to_vec(), bad),
            ("lone surrogate escape", json, b"{\"\\ud800\": 1}".to_vec(), bad),
            ("byte order mark", json, "\u{feff}{\"name\": \"x\"}".as_bytes().to_vec(), bad),
            ("10 000 nested arrays", json, deep.into_bytes(), bad),
            ("no content type", None, b"{\"name\": \"x\"}".to_vec(), media),
            ("form content type", Some("application/x-www-form-urlencoded"), b"name=x".to_vec(), media),
            ("text/plain", Some("text/plain"), b"{\"name\": \"x\"}".to_vec(), media),
            ("too large", json, huge.into_bytes(), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")),
            ("unknown field", json, b"{\"nmae\": \"x\"}".to_vec(), shape),
            ("wrong type", json, b"{\"name\": 42, \"id\": 1, \"label\": 1, \"plan\": 1, \"kind\": 1, \"to\": 1, \"code\": 1, \"consent\": \"yes\", \"additional_sites\": \"1\"}".to_vec(), shape),
            ("array body", json, b"[]".to_vec(), shape),
            ("string body", json, b"\"x\"".to_vec(), shape),
            ("null body", json, b"null".to_vec(), shape),
        ];
        let before = state(&app).await;
        let mut n = 0;
        for (token, method, path) in &endpoints {
            let key_route = path.ends_with("/api-keys");
            for (label, ctype, body, (want, code)) in &cases {
                let mut headers = vec![("Authorization", format!("Bearer {token}"))];
                if let Some(c) = ctype {
                    headers.push(("Content-Type", c.to_string()));
                }
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let value_typed = path.ends_with("/alerts") || path.ends_with("/send-sms");
                let (want, code) = match (key_route, *code) {
                    // The key route reads an optional JSON body whatever its content type (empty = default label).
                    (true, "unsupported_media_type") => continue,
                    (true, _) if *label == "empty" => continue,
                    // A typed body refuses the first `[` (shape); a free JSON value hits the nesting limit (syntax).
                    _ if *label == "10 000 nested arrays" && !value_typed => shape,
                    _ => (*want, *code),
                };
                let (s, res) = raw(&app, method.as_str(), path, &headers, body).await;
                assert_refused(&format!("{method} {path} {label}"), s, &res, want, code);
                n += 1;
            }
        }
        assert!(n >= 240, "{n} cases");
        // A complete object followed by more: refused as a whole, never half-read.
        let (s, res) = raw(&app, "POST", "/api/sites", &[("Authorization", &format!("Bearer {a}")), ("Content-Type", "application/json")], b"{\"name\": \"Trailing\"} {\"name\": \"x\"}").await;
        assert_refused("trailing value", s, &res, StatusCode::BAD_REQUEST, "malformed_json");
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "a refused body changed nothing");
    }

    async fn hostile_strings_in_every_string_field_are_data_or_refused(app) {
        let w = world(&app).await;
        let a = w.key_a.clone();
        let op = ADMIN_TOKEN.to_owned();
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        // (label, token, method, path, base body, field pointer, kind, echo pointer in the answer, tables an
        // accepted value may change)
        type Case = (&'static str, String, Method, String, Value, &'static str, Field, &'static str, &'static [&'static str]);
        let mut serial = 0; // makes ids, names and phones unique where the schema wants them unique
        let cases: Vec<Case> = vec![
            ("tenant id", op.clone(), Method::POST, "/api/tenants".into(), json!({"id": "", "name": "N"}), "/id", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("tenant name", op.clone(), Method::POST, "/api/tenants".into(), json!({"id": "", "name": ""}), "/name", Field::Name, "/name", &["tenants", "system_audit_logs"]),
            ("tenant province", op.clone(), Method::POST, "/api/tenants".into(), json!({"id": "tp", "name": "N", "province": ""}), "/province", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("tenant language", op.clone(), Method::POST, "/api/tenants".into(), json!({"id": "tl", "name": "N", "language": ""}), "/language", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("tenant name (patch)", op.clone(), Method::PATCH, "/api/tenants/acme".into(), json!({"name": ""}), "/name", Field::Name, "/name", &["tenants", "system_audit_logs"]),
            ("tenant province (patch)", op.clone(), Method::PATCH, "/api/tenants/acme".into(), json!({"province": ""}), "/province", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("tenant language (patch)", op.clone(), Method::PATCH, "/api/tenants/acme".into(), json!({"language": ""}), "/language", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("api key label", op.clone(), Method::POST, "/api/tenants/acme/api-keys".into(), json!({"label": ""}), "/label", Field::Name, "/label", &["api_keys", "system_audit_logs"]),
            ("test SMS to", op.clone(), Method::POST, "/api/send-sms".into(), json!({"to": "", "body": "test"}), "/to", Field::Refused(unprocessable, "invalid_phone"), "", &[]),
            // In B: A's site is renamed with the same values below, and names are unique per tenant.
            ("site name", w.key_b.clone(), Method::POST, "/api/sites".into(), json!({"name": ""}), "/name", Field::Name, "/name", &["sites", "system_audit_logs"]),
            ("site address", a.clone(), Method::POST, "/api/sites".into(), json!({"name": "", "address": ""}), "/address", Field::Text(500), "/address", &["sites", "system_audit_logs"]),
            ("site name (patch)", a.clone(), Method::PATCH, format!("/api/sites/{}", w.site_a), json!({"name": ""}), "/name", Field::Name, "/name", &["sites", "system_audit_logs"]),
            ("site address (patch)", a.clone(), Method::PATCH, format!("/api/sites/{}", w.site_a), json!({"address": ""}), "/address", Field::Text(500), "/address", &["sites", "system_audit_logs"]),
            ("worker name", a.clone(), Method::POST, "/api/workers".into(), json!({"name": "", "phone": ""}), "/name", Field::Name, "/name", &["workers", "consent_events", "system_audit_logs"]),
            ("worker phone", a.clone(), Method::POST, "/api/workers".into(), json!({"name": "P", "phone": ""}), "/phone", Field::Refused(unprocessable, "invalid_phone"), "", &[]),
            ("worker language", a.clone(), Method::POST, "/api/workers".into(), json!({"name": "L", "phone": "514 555 0101", "language": ""}), "/language", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("worker site id", a.clone(), Method::POST, "/api/workers".into(), json!({"name": "S", "phone": "514 555 0102", "site_id": ""}), "/site_id", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("worker consent evidence", a.clone(), Method::POST, "/api/workers".into(), json!({"name": "", "phone": "", "sms_consent": true, "consent_evidence": ""}), "/consent_evidence", Field::Text(1000), "", &["workers", "consent_events", "system_audit_logs"]),
            ("worker name (patch)", a.clone(), Method::PATCH, format!("/api/workers/{}", w.worker_a), json!({"name": ""}), "/name", Field::Name, "/name", &["workers", "system_audit_logs"]),
            ("worker phone (patch)", a.clone(), Method::PATCH, format!("/api/workers/{}", w.worker_a), json!({"phone": ""}), "/phone", Field::Refused(unprocessable, "invalid_phone"), "", &[]),
            ("worker language (patch)", a.clone(), Method::PATCH, format!("/api/workers/{}", w.worker_a), json!({"language": ""}), "/language", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("worker site id (patch)", a.clone(), Method::PATCH, format!("/api/workers/{}", w.worker_a), json!({"site_id": ""}), "/site_id", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("paper consent evidence", a.clone(), Method::POST, format!("/api/workers/{}/consent", w.worker_a), json!({"consent": true, "evidence": ""}), "/evidence", Field::Required(1000), "", &["consent_events", "workers", "system_audit_logs"]),
            ("verification code", a.clone(), Method::POST, format!("/api/workers/{}/verification/check", w.worker_a), json!({"code": ""}), "/code", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("checkout plan", a.clone(), Method::POST, "/api/billing/checkout".into(), json!({"plan": ""}), "/plan", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("alert kind", a.clone(), Method::POST, "/api/sms/alerts".into(), json!({"kind": "", "body": "b", "recipients": {"all": true}}), "/kind", Field::Refused(unprocessable, "invalid_field"), "", &[]),
            ("alert body", a.clone(), Method::POST, "/api/sms/alerts".into(), json!({"kind": "general_alert", "body": "", "recipients": {"worker_ids": [w.worker_a]}}), "/body", Field::SmsBody, "", &["sms_alerts", "sms_messages", "rate_limits", "system_audit_logs"]),
            ("alert ast id", a.clone(), Method::POST, "/api/sms/alerts".into(), json!({"kind": "general_alert", "body": "b", "ast_id": "", "recipients": {"worker_ids": [w.worker_a]}}), "/ast_id", Field::Required(100), "", &["sms_alerts", "sms_messages", "rate_limits", "system_audit_logs"]),
            ("alert worker id", a.clone(), Method::POST, "/api/sms/alerts".into(), json!({"kind": "general_alert", "body": "b", "recipients": {"worker_ids": [""]}}), "/recipients/worker_ids/0", Field::WorkerId, "", &["sms_alerts", "system_audit_logs"]),
            ("alert site id", a.clone(), Method::POST, "/api/sms/alerts".into(), json!({"kind": "general_alert", "body": "b", "recipients": {"site_id": ""}}), "/recipients/site_id", Field::Refused(unprocessable, "invalid_field"), "", &[]),
        ];
        let mut n = 0;
        let mut accepted = 0;
        for (label, token, method, path, base, pointer, field, echo, may_change) in &cases {
            for (vlabel, value) in hostile() {
                let mut body = base.clone();
                *body.pointer_mut(pointer).unwrap() = Value::String(value.clone());
                serial += 1;
                if body.get("id").is_some_and(|v| v == "") {
                    body["id"] = json!(format!("hostile{serial}"));
                }
                if body.get("name").is_some_and(|v| v == "") {
                    body["name"] = json!(format!("N{serial}"));
                }
                if body.get("phone").is_some_and(|v| v == "") {
                    body["phone"] = json!(format!("514 555 {:04}", 1000 + serial));
                }
                let before = state(&app).await;
                let (s, res) = app.send(method.clone(), path, Some(token), Some(body.clone())).await;
                let after = state(&app).await;
                let what = format!("{label} = {vlabel}");
                let want = expect(*field, &value);
                match want {
                    Want::Refused(status, code) => {
                        assert_refused(&what, s, &res, status, code);
                        assert_eq!(changed(&before, &after), Vec::<String>::new(), "{what}: refused, yet changed");
                    }
                    Want::Accepted(stored) => {
                        assert!(s.is_success(), "{what}: {s} {res}");
                        if !echo.is_empty() {
                            let got = res.pointer(echo).and_then(Value::as_str);
                            let want = if stored.is_empty() { None } else { Some(stored.as_str()) };
                            assert_eq!(got, want, "{what}: stored verbatim");
                        }
                        let changed = changed_tables(&before, &after);
                        assert!(changed.iter().all(|t| may_change.contains(&t.as_str())), "{what}: changed {changed:?}");
                        accepted += 1;
                    }
                }
                n += 1;
            }
        }
        eprintln!("{n} hostile-field cases, {accepted} accepted as data");
        assert!(n >= 600 && accepted > 0, "{n} / {accepted}");
        // Still all there: nothing was executed as SQL.
        assert!(app.count("tenants").await >= 2);
        let (s, sites) = app.send(Method::GET, "/api/sites", Some(&w.key_b), None).await;
        assert_eq!(s, StatusCode::OK, "{sites}");
        assert!(sites["sites"].as_array().unwrap().iter().any(|x| x["name"] == "' OR 1=1 --"), "{sites}");
    }

    async fn hostile_path_segments_and_query_values_are_not_found_or_refused_without_effect(app) {
        let w = world(&app).await;
        let a = format!("Bearer {}", w.key_a);
        let op = format!("Bearer {ADMIN_TOKEN}");
        // Raw segments, written as-is in the request line (the client does no normalisation).
        let segments: Vec<(&str, String)> = vec![
            ("dot dot", "..".into()),
            ("traversal", "../../../etc/passwd".into()),
            ("encoded traversal", "%2e%2e%2f%2e%2e%2fetc%2fpasswd".into()),
            ("double encoded", "%252e%252e%252f".into()),
            ("encoded backslash", "..%5c..%5cwin.ini".into()),
            ("sql or", "'%20OR%201=1%20--".into()),
            ("sql drop", "%22;%20DROP%20TABLE%20tenants;%20--".into()),
            ("encoded nul", "a%00b".into()),
            ("overlong utf-8 nul", "%c0%80".into()),
            ("invalid utf-8", "%ff%fe".into()),
            ("very long", "A".repeat(8_000)),
            ("rtl override", "%E2%80%AEfdp".into()),
            ("emoji", "%F0%9F%94%92".into()),
            ("percent alone", "%".into()),
        ];
        // (auth, method, path template with {} for the segment, expected status, code)
        let nf = (StatusCode::NOT_FOUND, "not_found");
        let routes: Vec<(&str, &str, String, Expect)> = vec![
            (&op, "GET", "/api/tenants/{}".into(), nf),
            (&op, "PATCH", "/api/tenants/{}".into(), nf),
            (&op, "DELETE", "/api/tenants/{}".into(), nf),
            (&op, "GET", "/api/tenants/{}/api-keys".into(), nf),
            (&op, "POST", "/api/tenants/{}/api-keys".into(), nf),
            (&op, "DELETE", "/api/tenants/{}/api-keys/k".into(), nf),
            (&op, "DELETE", "/api/tenants/acme/api-keys/{}".into(), nf),
            (&a, "GET", "/api/sites/{}".into(), nf),
            (&a, "PATCH", "/api/sites/{}".into(), nf),
            (&a, "DELETE", "/api/sites/{}".into(), nf),
            (&a, "GET", "/api/workers/{}".into(), nf),
            (&a, "PATCH", "/api/workers/{}".into(), nf),
            (&a, "DELETE", "/api/workers/{}".into(), nf),
            (&a, "GET", "/api/workers/{}/consent".into(), nf),
            (&a, "POST", "/api/workers/{}/consent".into(), nf),
            (&a, "POST", "/api/workers/{}/verification".into(), nf),
            (&a, "POST", "/api/workers/{}/verification/check".into(), nf),
            (&a, "GET", "/api/sms/alerts/{}".into(), nf),
        ];
        let bodies = |method: &str, path: &str| -> Vec<u8> {
            match method {
                "PATCH" if path.starts_with("/api/tenants") || path.starts_with("/api/sites") || path.starts_with("/api/workers") => b"{\"name\": \"X\"}".to_vec(),
                "POST" if path.ends_with("/consent") => b"{\"consent\": true, \"evidence\": \"papier\"}".to_vec(),
                "POST" if path.ends_with("/check") => b"{\"code\": \"123456\"}".to_vec(),
                "POST" if path.ends_with("/api-keys") => b"{}".to_vec(),
                _ => Vec::new(),
            }
        };
        let before = state(&app).await;
        let mut n = 0;
        for (auth, method, template, (want, code)) in &routes {
            for (label, seg) in &segments {
                let path = template.replace("{}", seg);
                let body = bodies(method, template);
                let mut headers = vec![("Authorization", *auth)];
                if !body.is_empty() {
                    headers.push(("Content-Type", "application/json"));
                }
                let (s, res) = raw(&app, method, &path, &headers, &body).await;
                let what = format!("{method} {template} with {label}");
                // A segment holding `/` (raw `../..`) no longer matches the route: the fallback's 404 (same shape).
                // Invalid UTF-8 after percent-decoding cannot be a path parameter: 400.
                let (want, code) = match *label {
                    "invalid utf-8" | "overlong utf-8 nul" | "encoded nul" => (StatusCode::BAD_REQUEST, "invalid_path"),
                    _ => (*want, *code),
                };
                assert_refused(&what, s, &res, want, code);
                n += 1;
            }
        }
        // Traversal out of the API prefix never reaches another route.
        for (label, target) in [
            ("up to the tenants", "/api/sites/../tenants"),
            ("encoded up to the tenants", "/api/sites/%2e%2e/tenants"),
            ("encoded slash", "/api/sites/..%2ftenants"),
            ("to the admin page", "/api/sites/../../admin/runbook"),
            ("to a file", "/../../../../etc/passwd"),
            ("double slash", "//api/tenants"),
        ] {
            let (s, res) = raw(&app, "GET", target, &[("Authorization", &a)], b"").await;
            assert_refused(label, s, &res, StatusCode::NOT_FOUND, "not_found");
            n += 1;
        }
        // Query values.
        let queries: Vec<(&str, String, Expect)> = vec![
            (&a, "/api/workers?site_id={}".into(), (StatusCode::OK, "")),
            (&op, "/api/audit?action={}".into(), (StatusCode::OK, "")),
            (&op, "/api/audit?tenant_id={}".into(), (StatusCode::OK, "")),
            (&op, "/api/audit?zone={}".into(), (StatusCode::BAD_REQUEST, "invalid_query")),
            (&op, "/api/audit?from={}".into(), (StatusCode::BAD_REQUEST, "invalid_query")),
            (&op, "/api/audit?to={}".into(), (StatusCode::BAD_REQUEST, "invalid_query")),
            (&op, "/api/audit?before={}".into(), (StatusCode::BAD_REQUEST, "invalid_query")),
            (&op, "/api/audit?limit={}".into(), (StatusCode::BAD_REQUEST, "invalid_query")),
        ];
        for (auth, template, (want, code)) in &queries {
            for (label, seg) in &segments {
                let target = template.replace("{}", seg);
                let (s, res) = raw(&app, "GET", &target, &[("Authorization", auth)], b"").await;
                let what = format!("GET {template} with {label}");
                if *label == "encoded nul" {
                    assert_refused(&what, s, &res, StatusCode::BAD_REQUEST, "invalid_query");
                } else if *want == StatusCode::OK {
                    // A filter value is data: an empty result, never more.
                    assert_eq!(s, StatusCode::OK, "{what}: {res}");
                    let list = res.get("workers").or_else(|| res.get("entries")).and_then(Value::as_array);
                    assert_eq!(list.map(Vec::len), Some(0), "{what}: {res}");
                } else {
                    assert_refused(&what, s, &res, *want, code);
                }
                n += 1;
            }
        }
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "hostile paths changed nothing");
        eprintln!("{n} hostile path/query cases");
    }

    async fn tenant_a_key_with_tenant_b_ids_is_not_found_everywhere_and_changes_nothing(app) {
        let w = world(&app).await;
        let a = w.key_a.as_str();
        let nf = (StatusCode::NOT_FOUND, "not_found");
        let no_site = (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field");
        let cases: Vec<(&str, Method, String, Option<Value>, Expect)> = vec![
            ("get B's site", Method::GET, format!("/api/sites/{}", w.site_b), None, nf),
            ("rename B's site", Method::PATCH, format!("/api/sites/{}", w.site_b), Some(json!({"name": "pwned"})), nf),
            ("delete B's site", Method::DELETE, format!("/api/sites/{}", w.site_b), None, nf),
            ("get B's worker", Method::GET, format!("/api/workers/{}", w.worker_b), None, nf),
            ("rename B's worker", Method::PATCH, format!("/api/workers/{}", w.worker_b), Some(json!({"name": "pwned"})), nf),
            ("withdraw B's worker consent by patch", Method::PATCH, format!("/api/workers/{}", w.worker_b), Some(json!({"sms_consent": false})), nf),
            ("delete B's worker", Method::DELETE, format!("/api/workers/{}", w.worker_b), None, nf),
            ("read B's consent history", Method::GET, format!("/api/workers/{}/consent", w.worker_b), None, nf),
            ("record B's consent", Method::POST, format!("/api/workers/{}/consent", w.worker_b), Some(json!({"consent": false, "evidence": "papier"})), nf),
            ("verify B's worker", Method::POST, format!("/api/workers/{}/verification", w.worker_b), None, nf),
            ("check B's code", Method::POST, format!("/api/workers/{}/verification/check", w.worker_b), Some(json!({"code": "123456"})), nf),
            ("read B's alert", Method::GET, format!("/api/sms/alerts/{}", w.alert_b), None, nf),
            ("create a worker in B's site", Method::POST, "/api/workers".into(), Some(json!({"name": "X", "phone": "514 555 0199", "site_id": w.site_b})), no_site),
            ("move A's worker to B's site", Method::PATCH, format!("/api/workers/{}", w.worker_a), Some(json!({"site_id": w.site_b})), no_site),
            ("alert B's site", Method::POST, "/api/sms/alerts".into(), Some(json!({"kind": "general_alert", "body": "x", "recipients": {"site_id": w.site_b}})), no_site),
        ];
        let before = state(&app).await;
        for (label, method, path, body, (want, code)) in &cases {
            let (s, res) = app.send(method.clone(), path, Some(a), body.clone()).await;
            assert_refused(label, s, &res, *want, code);
            let text = res.to_string();
            // Nothing of B's that the caller did not send comes back.
            let sent = format!("{path} {}", body.as_ref().map(Value::to_string).unwrap_or_default());
            for secret in [w.site_b.as_str(), w.worker_b.as_str(), "globex", "Usine", "+15148732016"] {
                if !sent.contains(secret) {
                    assert!(!text.contains(secret), "{label}: the answer leaks {secret}: {res}");
                }
            }
        }
        // A filter on B's site lists nothing of B's.
        let (s, list) = app.send(Method::GET, &format!("/api/workers?site_id={}", w.site_b), Some(a), None).await;
        assert_eq!((s, list["workers"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{list}");
        // A tenant key is not an operator token, on every operator route.
        for (method, path) in [
            (Method::GET, "/api/tenants".to_owned()),
            (Method::GET, "/api/tenants/globex".to_owned()),
            (Method::PATCH, "/api/tenants/globex".to_owned()),
            (Method::DELETE, "/api/tenants/globex".to_owned()),
            (Method::GET, "/api/tenants/globex/api-keys".to_owned()),
            (Method::POST, "/api/tenants/globex/api-keys".to_owned()),
            (Method::DELETE, format!("/api/tenants/globex/api-keys/{}", w.key_id_b)),
            (Method::GET, "/api/audit".to_owned()),
            (Method::GET, "/api/jobs".to_owned()),
            (Method::GET, "/api/system/status".to_owned()),
            (Method::GET, "/metrics".to_owned()),
            (Method::POST, "/api/send-sms".to_owned()),
            (Method::POST, "/api/sms/cleanup".to_owned()),
            (Method::POST, "/api/billing/sync".to_owned()),
        ] {
            let body = (method != Method::GET && method != Method::DELETE).then(|| json!({"name": "x"}));
            let (s, res) = app.send(method.clone(), &path, Some(a), body).await;
            assert_refused(&format!("tenant key on {method} {path}"), s, &res, StatusCode::UNAUTHORIZED, "unauthorized");
        }
        // The operator revoking B's key under A's id: no such key for A.
        let (s, res) = app.operator(Method::DELETE, &format!("/api/tenants/acme/api-keys/{}", w.key_id_b), None).await;
        assert_refused("B's key under A", s, &res, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "cross-tenant requests changed nothing");
        // An alert naming B's worker: that worker is reported exactly like an id that does not exist (skipped,
        // not_found, no phone), nothing is queued; only A's own alert record and audit row are written.
        let mut answers = Vec::new();
        for id in [w.worker_b.as_str(), "wrk_doesnotexist0000000"] {
            let body = json!({"kind": "general_alert", "body": "x", "recipients": {"worker_ids": [id]}});
            let before = state(&app).await;
            let (s, res) = app.send(Method::POST, "/api/sms/alerts", Some(a), Some(body)).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{res}");
            assert_eq!((res["queued"].as_i64(), res["status"].as_str()), (Some(0), Some("skipped")), "{res}");
            let r = &res["recipients"][0];
            answers.push((r["outcome"].clone(), r["reason"].clone(), r["phone_masked"].clone()));
            let mut changed = changed_tables(&before, &state(&app).await);
            changed.sort();
            assert_eq!(changed, ["sms_alerts", "system_audit_logs"], "{res}");
        }
        assert_eq!(answers[0], answers[1], "B's worker is indistinguishable from no worker");
        assert_eq!(answers[0], (json!("skipped"), json!("not_found"), Value::Null));
        // B still works, with all its rows.
        let (s, site) = app.send(Method::GET, &format!("/api/sites/{}", w.site_b), Some(&w.key_b), None).await;
        assert_eq!((s, site["name"].as_str()), (StatusCode::OK, Some("Usine")), "{site}");
        let (s, alert) = app.send(Method::GET, &format!("/api/sms/alerts/{}", w.alert_b), Some(&w.key_b), None).await;
        assert_eq!(s, StatusCode::OK, "{alert}");
    }

    async fn admin_forms_refuse_malformed_and_hostile_input_without_effect(app) {
        let (_cookie, token) = crate::admin::login(&app).await;
        let (s, html, _) = crate::admin::page(&app, &token, "/admin/runbook").await;
        assert_eq!(s, StatusCode::OK);
        let csrf = crate::admin::csrf_of(&html);
        let cookie = format!("s360_session={token}");
        let huge = format!("csrf_token={csrf}&body={}", "x".repeat(300 * 1024));
        let form = "application/x-www-form-urlencoded";
        let before = state(&app).await;
        let twice = format!("csrf_token={csrf}&csrf_token={csrf}");
        let cases: Vec<AdminFormCase> = vec![
            ("logout without CSRF", "/admin/logout", form, b"".to_vec(), StatusCode::FORBIDDEN, "Requête refusée"),
            ("logout with a wrong CSRF", "/admin/logout", form, b"csrf_token=%27%20OR%201=1--".to_vec(), StatusCode::FORBIDDEN, "Requête refusée"),
            ("procedure without CSRF", "/admin/procedures/billing-sync", form, b"".to_vec(), StatusCode::FORBIDDEN, "Requête refusée"),
            ("procedure with a NUL CSRF", "/admin/procedures/billing-sync", form, b"csrf_token=%00".to_vec(), StatusCode::FORBIDDEN, "Requête refusée"),
            ("unknown procedure", "/admin/procedures/..%2f..%2fetc%2fpasswd", form, format!("csrf_token={csrf}").into_bytes(), StatusCode::NOT_FOUND, "n&#39;existe pas"),
            ("procedure too large", "/admin/procedures/send-test-sms", form, huge.into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, "taille maximale"),
            ("procedure as JSON", "/admin/procedures/send-test-sms", "application/json", b"{}".to_vec(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/x-www-form-urlencoded"),
            ("procedure as text", "/admin/procedures/billing-sync", "text/plain", format!("csrf_token={csrf}").into_bytes(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type: text/plain"),
            ("procedure with a field twice", "/admin/procedures/billing-sync", form, twice.clone().into_bytes(), StatusCode::BAD_REQUEST, "duplicate field"),
            ("logout with a field twice", "/admin/logout", form, twice.into_bytes(), StatusCode::BAD_REQUEST, "mal formé"),
            ("login with a field twice", "/admin/login", form, format!("token={ADMIN_TOKEN}&token=x").into_bytes(), StatusCode::BAD_REQUEST, "mal formé"),
            ("login as JSON", "/admin/login", "application/json", format!("{{\"token\": \"{ADMIN_TOKEN}\"}}").into_bytes(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Requête invalide"),
            ("procedure in an invalid UTF-8 path", "/admin/procedures/%ff%fe", form, format!("csrf_token={csrf}").into_bytes(), StatusCode::BAD_REQUEST, "pas valide"),
        ];
        for (label, path, ctype, body, want, words) in &cases {
            let (s, res) = raw(&app, "POST", path, &[("Cookie", &cookie), ("Content-Type", ctype)], body).await;
            assert_eq!(s, *want, "{label}: {res}");
            let page = res.as_str().unwrap_or_else(|| panic!("{label}: not an HTML page: {res}"));
            assert!(page.starts_with("<!DOCTYPE html>") && page.contains(words), "{label}: {page}");
        }
        // The runbook's query: a parameter twice, a NUL.
        for (label, target, words) in [
            ("a parameter twice", "/admin/runbook?zone=dns&zone=sms", "duplicate field"),
            ("a NUL", "/admin/runbook?action=a%00b", "NUL"),
            ("a NUL in the login form's", "/admin/login?lang=%00", "NUL"),
        ] {
            let (s, res) = raw(&app, "GET", target, &[("Cookie", &cookie)], b"").await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{label}: {res}");
            let page = res.as_str().unwrap_or_else(|| panic!("{label}: not an HTML page: {res}"));
            assert!(page.starts_with("<!DOCTYPE html>") && page.contains(words), "{label}: {page}");
        }
        assert_eq!(changed(&before, &state(&app).await), Vec::<String>::new(), "refused admin forms changed nothing");
        // Hostile values in the procedures' fields are refused or handled as data: never a 5xx.
        for (vlabel, value) in hostile() {
            for (name, field) in [("send-test-sms", "to"), ("resync-tenant", "tenant_id"), ("replay-stripe-event", "event_id")] {
                let body = serde_urlencoded::to_string([("csrf_token", csrf.as_str()), (field, value.as_str()), ("body", "x")]).unwrap();
                let (s, res) = raw(&app, "POST", &format!("/admin/procedures/{name}"), &[("Cookie", &cookie), ("Content-Type", form)], body.as_bytes()).await;
                if value.contains('\0') {
                    assert_eq!(s, StatusCode::BAD_REQUEST, "{name} {field} = {vlabel}: {res}");
                    assert!(res.as_str().is_some_and(|p| p.contains("caractère NUL")), "{name} {field} = {vlabel}: {res}");
                } else {
                    assert_eq!(s, StatusCode::SEE_OTHER, "{name} {field} = {vlabel}: {res}");
                }
            }
        }
    }
}

#[test]
fn every_route_of_the_router_is_in_the_corpus() {
    let source = include_str!("../../src/http/mod.rs");
    let mut routes: Vec<&str> = source
        .split(".route(")
        .skip(1)
        .map(|r| r.trim_start().trim_start_matches('"').split('"').next().unwrap())
        .collect();
    routes.sort_unstable();
    let doc = include_str!("abuse.rs");
    let table: Vec<&str> = doc.lines().take_while(|l| l.starts_with("//!")).collect();
    for r in &routes {
        assert!(
            table.iter().any(|l| l.split('|').nth(1).is_some_and(|c| c.split(',').any(|p| p.trim() == *r))),
            "{r} is in the router but not in the corpus table of tests/api/abuse.rs"
        );
    }
    assert!(routes.len() >= 30, "{routes:?}");
}
