//! PostgreSQL row-level security (PostgreSQL only: SQLite has no roles; there the tenant filter of every query is
//! the isolation). Two tenants with rows in every tenant-owned table, then deliberately unfiltered queries run
//! as the runtime role the service uses: with a tenant's context they return that tenant's rows only, without a
//! context nothing, and writes outside the tenant are refused by the database itself.

use reqwest::{Method, StatusCode};
use secur360::config::Settings;
use secur360::db::scope::{self, Scope};
use secur360::db::Db;
use secur360::on_db;
use secur360::startup::{Application, Migrations};
use sqlx::{Connection, PgConnection};

use crate::helpers::*;
use crate::sms::{alert, sms_app, worker};

/// Tables whose rows belong to a tenant (`tenant_id`); every one gets rows for both tenants below.
const TENANT_TABLES: [&str; 13] = [
    "sites",
    "api_keys",
    "workers",
    "customers",
    "subscriptions",
    "invoices",
    "billing_events",
    "sms_alerts",
    "sms_messages",
    "consent_events",
    "phone_verifications",
    "rate_limits",
    "system_audit_logs",
];

/// Platform tables: only a system context sees them.
const SYSTEM_TABLES: [&str; 6] =
    ["admin_sessions", "sms_status_events", "sms_inbound", "voice_calls", "job_runs", "config_fingerprints"];

/// Two tenants, `acme` and `beta`, each with a site, workers, an alert and its messages, a phone verification,
/// consent-ledger rows, a rate window, audit rows and a billing mirror (its subscription from `tenant_with_key`);
/// plus rows in the platform tables.
async fn two_tenants() -> TestApp {
    let (app, _fake) = sms_app(Backend::Postgres, false, &[]).await;
    for (tenant, phone) in [("acme", "514 873 2015"), ("beta", "514 873 2016")] {
        let key = app.tenant_with_key(tenant).await;
        let (s, b) =
            app.send(Method::POST, "/api/sites", Some(&key), Some(serde_json::json!({ "name": "Usine" }))).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let worker_id = worker(&app, &key, "Jean", phone, true).await;
        worker(&app, &key, "Marie", "514 873 2099", true).await;
        let (s, b) = alert(
            &app,
            &key,
            serde_json::json!({"kind": "general_alert", "body": "Test", "recipients": {"all": true}}),
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        let (s, b) = app.send(Method::POST, &format!("/api/workers/{worker_id}/verification"), Some(&key), None).await;
        assert!(s.is_success(), "{b}");
        exec_all(&app, &format!(
            "INSERT INTO customers (stripe_customer_id, tenant_id, created_at, updated_at) VALUES ('cus_{tenant}', '{tenant}', 1, 1);
             INSERT INTO invoices (stripe_invoice_id, tenant_id, stripe_customer_id, status, currency, amount_due, amount_paid,
                 amount_remaining, subtotal, total, stripe_created, created_at, updated_at)
                 VALUES ('in_{tenant}', '{tenant}', 'cus_{tenant}', 'paid', 'cad', 100, 100, 0, 100, 100, 1, 1, 1);
             INSERT INTO billing_events (stripe_event_id, event_type, tenant_id, stripe_created, payload, source,
                 processing_status, received_at)
                 VALUES ('evt_{tenant}', 'invoice.paid', '{tenant}', 1, '{{}}', 'webhook', 'processed', 1)"
        ))
        .await;
    }
    exec_all(
        &app,
        "INSERT INTO sms_status_events (twilio_sid, status, received_at) VALUES ('SM1', 'delivered', 1);
         INSERT INTO job_runs (id, job, occurrence, trigger, instance, status, started_at, lease_until)
             VALUES ('run_1', 'sms_cleanup', 'manual:1', 'cli', 'i', 'succeeded', 1, 1)",
    )
    .await;
    app
}

/// Run `;`-separated statements as the owner.
async fn exec_all(app: &TestApp, sql: &str) {
    on_db!(&app.db, p => sqlx::raw_sql(sql).execute(p).await.map(|_| ())).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A connection as the runtime role, outside the service: what any code holding the pool could run.
async fn runtime_connection(app: &TestApp) -> PgConnection {
    let url = app.state.settings.database_url.expose().to_owned();
    let mut conn = PgConnection::connect(&url).await.expect("connect as the runtime role");
    let role: String = sqlx::query_scalar("SELECT current_user::text").fetch_one(&mut conn).await.unwrap();
    assert_eq!(role, RUNTIME_LOGIN);
    conn
}

async fn set_context(conn: &mut PgConnection, tenant: &str, system: &str) {
    sqlx::query("SELECT set_config('app.tenant_id', $1, false), set_config('app.system', $2, false)")
        .bind(tenant)
        .bind(system)
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_forces_row_level_security_and_the_runtime_role_cannot_bypass_it() {
    let app = spawn_app_with(Backend::Postgres, &[]).await;
    let unprotected: Vec<String> = on_db!(&app.db, p => sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'
           AND NOT (c.relrowsecurity AND c.relforcerowsecurity
                    AND EXISTS (SELECT 1 FROM pg_policy pol WHERE pol.polrelid = c.oid))
         ORDER BY 1"
    ).fetch_all(p).await)
    .unwrap();
    assert!(unprotected.is_empty(), "tables without forced row-level security and a policy: {unprotected:?}");
    let tables: i64 = on_db!(&app.db, p => sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'"
    ).fetch_one(p).await)
    .unwrap();
    assert_eq!(tables as usize, TENANT_TABLES.len() + SYSTEM_TABLES.len() + 1, "a new table needs a policy here");

    let mut conn = runtime_connection(&app).await;
    let (superuser, bypass, member): (bool, bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls, pg_has_role(current_user, 'secur360_runtime', 'MEMBER')
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((superuser, bypass, member), (false, false, true));
    // The runtime role can neither switch the policies off, nor empty a table wholesale, nor alter the schema.
    for sql in [
        "ALTER TABLE workers DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE workers NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON workers",
        "TRUNCATE workers",
        "SET row_security = off; SELECT COUNT(*) FROM workers",
        "DELETE FROM _sqlx_migrations",
        "CREATE TABLE sneaky (id int)",
    ] {
        let refused = sqlx::raw_sql(sql).execute(&mut conn).await;
        assert!(refused.is_err(), "the runtime role could run: {sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfiltered_query_through_the_runtime_role_returns_only_the_callers_rows() {
    let app = two_tenants().await;
    let mut conn = runtime_connection(&app).await;
    for table in TENANT_TABLES {
        let owner_counts: (i64, i64) = on_db!(&app.db, p => sqlx::query_as(&format!(
            "SELECT COUNT(*) FILTER (WHERE tenant_id = 'acme'), COUNT(*) FROM {table}"
        )).fetch_one(p).await)
        .unwrap();
        assert!(owner_counts.0 > 0, "the fixture has acme rows in {table}");
        assert!(owner_counts.1 > owner_counts.0, "the fixture has other rows in {table}");

        set_context(&mut conn, "acme", "").await;
        let seen = scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await;
        let foreign =
            scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table} WHERE tenant_id IS DISTINCT FROM 'acme'")).await;
        assert_eq!((seen, foreign), (owner_counts.0, 0), "{table} as acme");

        set_context(&mut conn, "", "").await;
        assert_eq!(scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await, 0, "{table} without context");

        set_context(&mut conn, "", "test-system").await;
        assert_eq!(
            scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await,
            owner_counts.1,
            "{table} as system"
        );
    }
    set_context(&mut conn, "acme", "").await;
    let tenants: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants").fetch_all(&mut conn).await.unwrap();
    assert_eq!(tenants, ["acme"]);
    for table in SYSTEM_TABLES {
        assert_eq!(scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await, 0, "{table} as a tenant");
    }
    set_context(&mut conn, "", "").await;
    for table in SYSTEM_TABLES.iter().chain(["tenants"].iter()) {
        assert_eq!(scalar(&mut conn, &format!("SELECT COUNT(*) FROM {table}")).await, 0, "{table} without context");
    }
    set_context(&mut conn, "", "test-system").await;
    assert!(scalar(&mut conn, "SELECT COUNT(*) FROM job_runs").await > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_callers_tenant_are_refused_by_the_database() {
    let app = two_tenants().await;
    let mut conn = runtime_connection(&app).await;
    set_context(&mut conn, "acme", "").await;
    let insert = sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, created_at, updated_at) VALUES ('site_x', 'beta', 'Intrus', 1, 1)",
    )
    .execute(&mut conn)
    .await;
    assert!(insert.is_err(), "a site was written into another tenant");
    // Unfiltered updates and deletes reach the caller's rows only.
    let acme_workers = app.count("workers WHERE tenant_id = 'acme'").await;
    let beta_before = app.snapshot().await;
    let updated = sqlx::query("UPDATE workers SET name = 'Renamed'").execute(&mut conn).await.unwrap();
    assert_eq!(updated.rows_affected() as i64, acme_workers);
    assert_eq!(app.count("workers WHERE tenant_id = 'beta' AND name = 'Renamed'").await, 0);
    let moved = sqlx::query("UPDATE workers SET tenant_id = 'beta'").execute(&mut conn).await;
    assert!(moved.is_err(), "a row was moved into another tenant");
    let deleted = sqlx::query("DELETE FROM sms_messages").execute(&mut conn).await.unwrap();
    assert!(deleted.rows_affected() > 0);
    assert!(app.count("sms_messages WHERE tenant_id = 'beta'").await > 0, "beta's messages survive");
    let after = app.snapshot().await;
    let changed: Vec<_> = beta_before.iter().zip(&after).filter(|(b, a)| b != a).map(|(b, _)| &b.0).collect();
    assert_eq!(changed, ["sms_messages"], "only the deleted acme messages changed the row counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_scope_follows_the_task_and_never_leaks_through_a_pooled_connection() {
    let app = two_tenants().await;
    // One connection, reused by every scope in turn.
    let db = Db::connect(app.state.settings.database_url.expose(), 1).await.unwrap();
    let unfiltered = || async {
        on_db!(&db, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM workers").fetch_one(p).await).unwrap()
    };
    let acme = app.count("workers WHERE tenant_id = 'acme'").await;
    let beta = app.count("workers WHERE tenant_id = 'beta'").await;
    assert_eq!(scope::run(Scope::Tenant("acme".into()), unfiltered()).await, acme);
    assert_eq!(unfiltered().await, 0, "outside any scope the same connection sees nothing");
    assert_eq!(scope::run(Scope::None, unfiltered()).await, 0);
    assert_eq!(scope::system("test", unfiltered()).await, acme + beta);
    assert_eq!(scope::run(Scope::Tenant("beta".into()), unfiltered()).await, beta);
    // A request narrows its own scope once authenticated, and only its own.
    let narrowed = scope::run(Scope::None, async {
        let before = unfiltered().await;
        scope::enter(Scope::Tenant("acme".into()));
        (before, unfiltered().await)
    })
    .await;
    assert_eq!(narrowed, (0, acme));
    assert_eq!(unfiltered().await, 0);
    // A transaction carries the scope it was begun in.
    let in_tx = scope::run(Scope::Tenant("beta".into()), async {
        let mut tx = db.begin().await.unwrap();
        let n: i64 =
            secur360::on_tx!(&mut tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM workers").fetch_one(&mut *c).await)
                .unwrap();
        tx.commit().await.unwrap();
        n
    })
    .await;
    assert_eq!(in_tx, beta);
    // The BEGIN writes the scope for the transaction only (no write when the connection is taken): whatever
    // the connection's session was left with by the previous task, a transaction sees its own scope, and the
    // next task its own.
    let count_in_tx = |scope: Scope| {
        let db = db.clone();
        scope::run(scope, async move {
            let mut tx = db.begin().await.unwrap();
            let n: i64 = secur360::on_tx!(&mut tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM workers").fetch_one(&mut *c).await)
                .unwrap();
            tx.commit().await.unwrap();
            n
        })
    };
    assert_eq!(scope::system("test", unfiltered()).await, acme + beta);
    assert_eq!(count_in_tx(Scope::Tenant("acme".into())).await, acme, "after a system session");
    assert_eq!(count_in_tx(Scope::None).await, 0, "no scope sees nothing, whatever the session holds");
    assert_eq!(scope::system("test", unfiltered()).await, acme + beta);
    assert_eq!(count_in_tx(Scope::Tenant("beta".into())).await, beta);
    assert_eq!(unfiltered().await, 0, "after a transaction, the next task's own scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sees_only_its_tenant_even_through_the_api() {
    let app = two_tenants().await;
    // The API already filters; this checks the pool hook end to end: acme's key lists acme's workers only.
    let key = app.tenant_with_key("gamma").await;
    let (s, b) = app.send(Method::GET, "/api/workers", Some(&key), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["workers"].as_array().map(Vec::len), Some(0), "{b}");
}

#[tokio::test]
async fn serve_refuses_a_database_role_that_bypasses_row_level_security() {
    let (db, runtime_url, _dir) = fresh_database(Backend::Postgres).await;
    // A superuser (the test cluster's administrator) and a plain role with BYPASSRLS are both refused.
    on_db!(&db, p => sqlx::raw_sql(
        "DO $$ BEGIN
            CREATE ROLE secur360_test_bypass LOGIN NOSUPERUSER BYPASSRLS IN ROLE secur360_runtime;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ).execute(p).await.map(|_| ()))
    .unwrap();
    let mut bypass_url = url::Url::parse(&runtime_url).unwrap();
    bypass_url.set_username("secur360_test_bypass").unwrap();
    for (url, expected) in [(owner_url(&runtime_url), "is a superuser"), (bypass_url.to_string(), "has BYPASSRLS")] {
        let settings = Settings::from_vars(
            [("DATABASE_URL", url.as_str()), ("BIND_ADDR", "127.0.0.1:0")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
        .unwrap();
        let err = match Application::build(settings, Migrations::ApplyOnSqlite).await {
            Ok(_) => panic!("serve started as a role that bypasses row-level security"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(expected) && err.contains("row-level security"), "{err}");
        assert!(!err.contains("postgres://"), "the error does not echo the connection string: {err}");
    }
    // The runtime role is accepted.
    let settings = Settings::from_vars(
        [("DATABASE_URL", runtime_url.as_str()), ("BIND_ADDR", "127.0.0.1:0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
    .unwrap();
    assert!(Application::build(settings, Migrations::ApplyOnSqlite).await.is_ok());
}
