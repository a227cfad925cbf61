//! Helper of `bench/run` (not part of the service): a fast fake Twilio, a bare axum TwiML handler to compare the
//! voice endpoint with, and request signing for the load generators.
//!
//! ```text
//! bench_helper fake-twilio PORT            Twilio's Messages.json answering 201 at once; GET /stats (JSON)
//! bench_helper bare-twiml PORT             POST /api/voice/inbound → a fixed TwiML document, nothing else
//! bench_helper twilio-sign URL TOKEN FORM  X-Twilio-Signature of a form body (the service's own code)
//! bench_helper twilio-status URL TOKEN N OUT  N signed delivery callbacks for SIDs SMbench…0..N-1, one per line:
//!                                          "<X-Twilio-Signature>\t<form body>", for bench/presigned.lua
//! bench_helper twilio-voice URL TOKEN N OUT   N signed inbound calls with distinct CallSids CAbench…0..N-1, one
//!                                          per line: "<X-Twilio-Signature>\t<form body>", for bench/presigned.lua
//! bench_helper sqlite-limit FILE SECONDS   single-row durable INSERTs, one transaction each, on one connection
//!                                          with the service's SQLite settings: "tx/s p50_ms p99_ms"
//! bench_helper stripe-events SECRET TENANT N OUT
//!                                          N signed `invoice.paid` events (distinct ids), one per line:
//!                                          "<Stripe-Signature>\t<body>", for bench/stripe.lua
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

#[derive(Default)]
struct Calls {
    count: u64,
    first_ms: f64,
    last_ms: f64,
    /// First call time per `To`.
    first_by_to: HashMap<String, f64>,
}

#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Calls>>,
    sid: Arc<AtomicU64>,
}

async fn messages(State(fake): State<Fake>, body: axum::body::Bytes) -> impl IntoResponse {
    let at = now_ms();
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let to = form.iter().find(|(k, _)| k == "To").map(|(_, v)| v.clone()).unwrap_or_default();
    {
        let mut c = fake.calls.lock().expect("lock");
        if c.count == 0 {
            c.first_ms = at;
        }
        c.count += 1;
        c.last_ms = at;
        c.first_by_to.entry(to.clone()).or_insert(at);
    }
    let n = fake.sid.fetch_add(1, Ordering::Relaxed);
    let sid = format!("SM{n:032x}");
    let json = serde_json::json!({"sid": sid, "status": "queued", "to": to, "num_segments": "1"});
    (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], json.to_string())
}

#[derive(serde::Deserialize)]
struct StatsQuery {
    to: Option<String>,
}

async fn stats(State(fake): State<Fake>, q: axum::extract::Query<StatsQuery>) -> impl IntoResponse {
    let c = fake.calls.lock().expect("lock");
    let first_to = q.to.as_ref().and_then(|t| c.first_by_to.get(t).copied());
    axum::Json(serde_json::json!({
        "count": c.count, "first_ms": c.first_ms, "last_ms": c.last_ms, "first_to_ms": first_to,
    }))
}

async fn reset(State(fake): State<Fake>) -> impl IntoResponse {
    *fake.calls.lock().expect("lock") = Calls::default();
    "ok"
}

const BARE_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>\
<Say language=\"fr-CA\">Bonjour, vous avez joint C-Secur360. Veuillez patienter, nous transférons votre appel.</Say>\
<Say language=\"en-CA\">Hello, you have reached C-Secur360. Please hold while we transfer your call.</Say>\
<Dial timeout=\"25\" action=\"http://127.0.0.1/api/voice/dial-status\">+15145550000</Dial></Response>";

async fn bare() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], BARE_TWIML)
}

async fn serve(port: u16, app: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn stripe_events(secret: &str, tenant: &str, n: u64, out: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let t = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    // A run id keeps ids distinct across runs on one database.
    let run = format!("{:x}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros());
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for i in 0..n {
        let body = serde_json::json!({
            "id": format!("evt_bench_{run}_{i}"),
            "object": "event",
            "type": "invoice.paid",
            "created": t,
            "livemode": false,
            "data": {"object": {
                "id": format!("in_bench_{run}_{i}"),
                "object": "invoice",
                "customer": format!("cus_bench_{tenant}"),
                "subscription": null,
                "status": "paid",
                "currency": "cad",
                "amount_due": 9900, "amount_paid": 9900, "amount_remaining": 0,
                "subtotal": 9900, "tax": 0, "total": 9900,
                "attempt_count": 1,
                "created": t,
                "metadata": {"tenant_id": tenant},
            }},
        })
        .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())?;
        mac.update(format!("{t}.{body}").as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        writeln!(f, "t={t},v1={sig}\t{body}")?;
    }
    f.flush()?;
    Ok(())
}

/// The SID of benchmark message `i`: bench/run inserts the matching `sms_messages` rows with
/// `'SMbench0000000000000000' || (10000000000 + i)`.
fn bench_sid(i: u64) -> String {
    format!("SMbench0000000000000000{}", 10_000_000_000u64 + i)
}

/// Write `n` Twilio-signed forms, `form(i)` for i in 0..n, one per line: "<X-Twilio-Signature>\t<form body>".
fn presign_twilio(
    url: &str,
    token: &str,
    n: u64,
    out: &str,
    form: impl Fn(u64) -> Vec<(String, String)>,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for i in 0..n {
        let form = form(i);
        let sig = secur360::domain::twilio_signature::compute(url, &form, token);
        writeln!(f, "{sig}\t{}", serde_urlencoded::to_string(&form)?)?;
    }
    f.flush()?;
    Ok(())
}

fn pairs(fields: &[(&str, String)]) -> Vec<(String, String)> {
    fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// Delivery callbacks, one per benchmark message.
fn twilio_status(url: &str, token: &str, n: u64, out: &str) -> anyhow::Result<()> {
    presign_twilio(url, token, n, out, |i| {
        pairs(&[
            ("AccountSid", "AC0123456789abcdef0123456789abcdef".into()),
            ("MessageSid", bench_sid(i)),
            ("MessageStatus", "delivered".into()),
            ("SmsSid", bench_sid(i)),
            ("SmsStatus", "delivered".into()),
            ("To", "+15145550000".into()),
            ("ApiVersion", "2010-04-01".into()),
        ])
    })
}

/// Inbound calls as Twilio posts them to the voice URL, each a new call (a distinct `CallSid`).
fn twilio_voice(url: &str, token: &str, n: u64, out: &str) -> anyhow::Result<()> {
    presign_twilio(url, token, n, out, |i| {
        pairs(&[
            ("AccountSid", "AC0123456789abcdef0123456789abcdef".into()),
            ("CallSid", format!("CAbench000000000000000{}", 10_000_000_000u64 + i)),
            ("CallStatus", "ringing".into()),
            ("Direction", "inbound".into()),
            ("From", format!("+1514{}", 5_550_000 + i % 10_000)),
            ("To", "+14385550100".into()),
            ("ApiVersion", "2010-04-01".into()),
        ])
    })
}

/// The durable-write limit of SQLite here, through the same library and settings as the service (WAL,
/// synchronous=FULL, BEGIN IMMEDIATE): one writer at a time, so one connection.
async fn sqlite_limit(file: &str, seconds: f64) -> anyhow::Result<()> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
    use sqlx::{ConnectOptions, Connection};
    use std::time::{Duration, Instant};

    /// Run `sql` (binding the benchmark row when `row`), retrying while another connection holds a lock that
    /// SQLite reports at once rather than through the busy timeout (a WAL checkpoint of the running service).
    async fn exec(conn: &mut SqliteConnection, sql: &str, row: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut q = sqlx::query(sql);
            if row {
                q = q.bind("SMbench").bind("delivered").bind(1i64);
            }
            match q.execute(&mut *conn).await {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(2)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    // The service made the file and put it in WAL mode, which persists (asking for it again at connect needs a
    // lock that the running service may hold).
    let mut conn = SqliteConnectOptions::new()
        .filename(file)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    exec(
        &mut conn,
        "CREATE TABLE IF NOT EXISTS bench_durable_write (id INTEGER PRIMARY KEY AUTOINCREMENT, \
         twilio_sid TEXT NOT NULL, status TEXT NOT NULL, error_code TEXT, applied INTEGER NOT NULL DEFAULT 0, \
         received_at INTEGER NOT NULL)",
        false,
    )
    .await?;
    exec(&mut conn, "CREATE INDEX IF NOT EXISTS bench_durable_write_sid ON bench_durable_write (twilio_sid)", false)
        .await?;
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        exec(&mut conn, "BEGIN IMMEDIATE", false).await?;
        exec(&mut conn, "INSERT INTO bench_durable_write (twilio_sid, status, received_at) VALUES ($1, $2, $3)", true)
            .await?;
        exec(&mut conn, "COMMIT", false).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)];
    println!("{:.1} {:.2} {:.2}", lat.len() as f64 / elapsed, q(0.5), q(0.99));
    conn.close().await?;
    Ok(())
}

fn usage() -> anyhow::Result<()> {
    anyhow::bail!("usage: bench_helper fake-twilio PORT | bare-twiml PORT | twilio-sign URL TOKEN FORM | twilio-status URL TOKEN N OUT | twilio-voice URL TOKEN N OUT | sqlite-limit FILE SECONDS | stripe-events SECRET TENANT N OUT")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(0).as_str() {
        "fake-twilio" => {
            let app = Router::new()
                .route("/2010-04-01/Accounts/{sid}/Messages.json", post(messages))
                .route("/stats", get(stats))
                .route("/reset", post(reset))
                .with_state(Fake::default());
            serve(arg(1).parse()?, app).await
        }
        "bare-twiml" => serve(arg(1).parse()?, Router::new().route("/api/voice/inbound", post(bare))).await,
        "twilio-sign" => {
            let form: Vec<(String, String)> = serde_urlencoded::from_str(&arg(3))?;
            println!("{}", secur360::domain::twilio_signature::compute(&arg(1), &form, &arg(2)));
            Ok(())
        }
        "twilio-status" => twilio_status(&arg(1), &arg(2), arg(3).parse()?, &arg(4)),
        "twilio-voice" => twilio_voice(&arg(1), &arg(2), arg(3).parse()?, &arg(4)),
        "sqlite-limit" => sqlite_limit(&arg(1), arg(2).parse()?).await,
        "stripe-events" => stripe_events(&arg(1), &arg(2), arg(3).parse()?, &arg(4)),
        _ => usage(),
    }
}
