//! The binary itself: subcommands against both backends, and a graceful stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::helpers::*;

fn secur360(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_secur360"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db_url)
        .envs(db_url.starts_with("postgres").then(|| ("DATABASE_OWNER_URL", owner_url(db_url))))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run secur360")
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

async fn story(backend: Backend) {
    let (db, url, _dir) = fresh_database(backend).await;
    ok(&secur360(&url, &["migrate"]));
    let created = ok(&secur360(&url, &["tenant", "create", "cerdia", "--name", "Cerdia", "--json"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"], "cerdia");
    let dup = secur360(&url, &["tenant", "create", "cerdia", "--name", "Again"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    assert!(ok(&secur360(&url, &["tenant", "list"])).contains("cerdia"));

    let key: serde_json::Value =
        serde_json::from_str(&ok(&secur360(&url, &["tenant", "api-key", "create", "cerdia", "--json"]))).unwrap();
    assert!(key["key"].as_str().unwrap().starts_with("s360_key_"));
    ok(&secur360(&url, &["tenant", "api-key", "revoke", "cerdia", key["id"].as_str().unwrap()]));

    let add_jean = ["worker", "add", "cerdia", "--name", "Jean", "--phone", "514 873 2015", "--sms-consent"];
    // Without a subscription the tenant is read-only (SPEC §2), from the command line too.
    let suspended = secur360(&url, &add_jean);
    assert!(!suspended.status.success());
    assert!(String::from_utf8_lossy(&suspended.stderr).contains("tenant_suspended"));
    subscribe(&db, "cerdia", "active", 0).await;
    ok(&secur360(&url, &add_jean));
    let bad = secur360(&url, &["worker", "add", "cerdia", "--name", "Paul", "--phone", "nope"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("phone"));
    assert!(ok(&secur360(&url, &["worker", "list", "cerdia"])).contains("+15148732015"));

    assert!(ok(&secur360(&url, &["audit", "verify"])).contains("intact"));
    // Tamper, and the command fails.
    match backend {
        Backend::Sqlite => {
            secur360::on_db!(&db, p => sqlx::query("DROP TRIGGER system_audit_logs_no_update").execute(p).await.map(|_| ())).unwrap()
        }
        Backend::Postgres => {
            secur360::on_db!(&db, p => sqlx::query("ALTER TABLE system_audit_logs DISABLE TRIGGER USER").execute(p).await.map(|_| ())).unwrap()
        }
    }
    secur360::on_db!(&db, p => sqlx::query("UPDATE system_audit_logs SET actor = 'someone-else' WHERE seq = 2").execute(p).await.map(|_| ())).unwrap();
    let verify = secur360(&url, &["audit", "verify"]);
    assert!(!verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("row 2 was modified"));
}

#[tokio::test]
async fn the_cli_manages_tenants_keys_workers_and_verifies_the_audit_chain_on_sqlite() {
    story(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_cli_manages_tenants_keys_workers_and_verifies_the_audit_chain_on_postgres() {
    story(Backend::Postgres).await;
}

#[test]
fn print_config_shows_presence_and_fingerprints_never_secrets() {
    let out = Command::new(env!("CARGO_BIN_EXE_secur360"))
        .arg("print-config")
        .env("ADMIN_TOKEN", "super-secret-operator-token-xyz")
        .env("STRIPE_SECRET_KEY", "sk_test_verysecretvalue")
        .env("DATABASE_URL", "postgres://u:hunter2@db.example/x")
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(text.contains("ADMIN_TOKEN") && text.contains("set (sha256:"));
    for secret in ["super-secret-operator-token-xyz", "sk_test_verysecretvalue", "hunter2"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

#[test]
fn invalid_configuration_stops_start_up_with_every_problem_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_secur360"))
        .arg("print-config")
        .env("APP_URL", "not a url")
        .env("CRON_TZ", "Nowhere/Land")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("APP_URL") && err.contains("CRON_TZ"), "{err}");
}

#[test]
fn serve_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_secur360"))
        .arg("serve")
        .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("s.db").display()))
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "listening" log line (no sleeps): the process tells us when it is ready.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening =
        lines.by_ref().map_while(Result::ok).find(|l| l.contains("secur360 listening")).expect("listening line");
    let addr: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let addr = addr["fields"]["addr"].as_str().unwrap().to_owned();
    let health = std::net::TcpStream::connect(&addr);
    assert!(health.is_ok());
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("secur360 stopped")));
    // serve runs the SMS dispatcher and lets it finish before exiting.
    assert!(rest.iter().any(|l| l.contains("SMS dispatcher stopped")), "{rest:?}");
    assert!(std::path::Path::new(&dir.path().join("s.db")).exists());
}

async fn sms_send(backend: Backend) {
    let (db, url, _dir) = fresh_database(backend).await;
    let out = ok(&secur360(&url, &["sms", "send", "--to", "514 873 2015", "--body", "Test secur360", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["provider"].as_str(), v["encoding"].as_str(), v["segments"].as_u64()),
        (Some("simulated"), Some("gsm7"), Some(1))
    );
    assert_eq!(v["dispatch"]["message_status"], "simulated", "{v}");
    assert_eq!(v["to_masked"], "+1••••••••15");
    let text = ok(&secur360(&url, &["sms", "send", "--to", "514 873 2016", "--body", "Test"]));
    assert!(text.contains("SIMULATED") && !text.contains("8732016"), "{text}");
    let bad = secur360(&url, &["sms", "send", "--to", "nope", "--body", "Test"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("to:"));
    let n: i64 = secur360::on_db!(&db, p => sqlx::query_scalar("SELECT COUNT(*) FROM sms_messages WHERE status = 'simulated'").fetch_one(p).await).unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn sms_send_queues_and_dispatches_a_test_message_through_the_simulated_provider_on_sqlite() {
    sms_send(Backend::Sqlite).await;
}

#[tokio::test]
async fn sms_send_queues_and_dispatches_a_test_message_through_the_simulated_provider_on_postgres() {
    sms_send(Backend::Postgres).await;
}
