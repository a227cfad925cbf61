//! `spawn_app_with()`: the real application (same startup path as `main`) on a loopback port, over a fresh
//! database per test — a temporary SQLite file or a new PostgreSQL database on `TEST_POSTGRES_URL`.

use std::collections::BTreeMap;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secur360::config::Settings;
use secur360::db::Db;
use secur360::on_db;
use secur360::startup::Application;
use secur360::state::AppState;
use secur360::time::Clock;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declare tests that run once per backend: `both_backends! { async fn name(app) { … } }` gives
/// `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    (with $vars:expr; $(async fn $name:ident($app:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let $app = $crate::helpers::spawn_app_with($crate::helpers::Backend::Sqlite, $vars).await;
                    $body
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let $app = $crate::helpers::spawn_app_with($crate::helpers::Backend::Postgres, $vars).await;
                    $body
                }
            }
        )*
    };
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $crate::both_backends! { with &[]; $(async fn $name($app) $body)* }
    };
}

pub fn postgres_base_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, migrated database of the given backend, and its URL. Never skips: no PostgreSQL is a failure.
pub async fn fresh_database(backend: Backend) -> (Db, String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temporary directory");
            let url = format!("sqlite://{}", dir.path().join("secur360.db").display());
            let db = Db::connect(&url, 5).await.expect("open sqlite");
            db.migrate().await.expect("migrate sqlite");
            (db, url, Some(dir))
        }
        Backend::Postgres => {
            let base = postgres_base_url();
            let admin = Db::connect(&base, 1).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is required for the postgres half of the suite (TEST_POSTGRES_URL={base}): {e:#}. Run scripts/test, which starts one.")
            });
            let name = format!("s360t_{}", uuid::Uuid::new_v4().simple());
            on_db!(&admin, p => sqlx::query(&format!("CREATE DATABASE {name}")).execute(p).await.map(|r| r.rows_affected())).expect("create database");
            admin.close().await;
            let mut url = url::Url::parse(&base).expect("TEST_POSTGRES_URL is a URL");
            url.set_path(&name);
            // The owner (here the cluster's superuser) migrates; the service runs as the runtime role.
            let db = Db::connect(url.as_str(), 5).await.expect("connect to the test database");
            db.migrate().await.expect("migrate postgres");
            ensure_runtime_login(&db).await;
            url.set_username(RUNTIME_LOGIN).expect("a postgres URL takes a user name");
            url.set_password(None).expect("a postgres URL takes a password");
            (db, url.to_string(), None)
        }
    }
}

/// The login role the service runs as in tests: a member of `secur360_runtime` (created by the migrations), not a
/// superuser, no BYPASSRLS. The test cluster trusts local connections, so it has no password.
pub const RUNTIME_LOGIN: &str = "secur360_test_app";

pub async fn ensure_runtime_login(owner: &Db) {
    let sql = format!(
        "DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_LOGIN}') THEN
                CREATE ROLE {RUNTIME_LOGIN} LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE secur360_runtime;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; -- another test created it meanwhile
        END $$"
    );
    on_db!(owner, p => sqlx::query(&sql).execute(p).await.map(|r| r.rows_affected()))
        .expect("create the runtime login role");
}

/// The owner's URL for a database [`fresh_database`] made: the same database as the cluster's administrator.
pub fn owner_url(runtime_url: &str) -> String {
    let base = url::Url::parse(&postgres_base_url()).expect("TEST_POSTGRES_URL is a URL");
    let mut url = url::Url::parse(runtime_url).expect("a database URL");
    url.set_username(base.username()).expect("a postgres URL takes a user name");
    url.set_password(base.password()).expect("a postgres URL takes a password");
    url.to_string()
}

pub struct TestApp {
    pub backend: Backend,
    pub address: String,
    /// The owner's connection (PostgreSQL: not bound by row-level security), for assertions on what was stored.
    pub db: Db,
    /// The running app's state (settings, provider, clock): tests drive the SMS dispatcher through it.
    pub state: AppState,
    pub clock: Clock,
    pub client: reqwest::Client,
    /// The environment the app was built from (its database URL included), for [`TestApp::another_instance`].
    pub env: BTreeMap<String, String>,
    _dir: Option<tempfile::TempDir>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Spawn with extra environment variables (on top of a loopback bind, the test database and `ADMIN_TOKEN`).
pub async fn spawn_app_with(backend: Backend, vars: &[(&str, &str)]) -> TestApp {
    let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    spawn_app_at(backend, &vars, Clock::system()).await
}

/// Spawn with extra variables and a given clock (`Clock::manual` for tests that move time). The SMS
/// dispatcher loop does not run: tests call `dispatcher::run_once(&app.state, now)`.
pub async fn spawn_app_at(backend: Backend, vars: &[(String, String)], clock: Clock) -> TestApp {
    let (db, db_url, dir) = fresh_database(backend).await;
    start_instance(backend, db, test_env(&db_url, vars), clock, dir).await
}

/// A loopback bind, the test database and `ADMIN_TOKEN`, then `vars`.
fn test_env(db_url: &str, vars: &[(String, String)]) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    env.insert("DATABASE_URL".into(), db_url.to_owned());
    env.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// The database handle an instance runs on: on PostgreSQL its own pool as the runtime role; on SQLite `db`.
async fn instance_db(backend: Backend, db: &Db, settings: &Settings) -> Db {
    let app_db = match backend {
        Backend::Sqlite => db.clone(),
        Backend::Postgres => Db::connect(settings.database_url.expose(), 5).await.expect("connect as the runtime role"),
    };
    app_db.check_runtime_role().await.expect("the test app runs as a role bound by row-level security");
    app_db
}

/// Build and serve one instance of the app on `env` (its `DATABASE_URL`). On PostgreSQL it gets its own pool as the
/// runtime role; `db` (the owner's handle, for inspection) is shared by every instance, and SQLite instances use it.
async fn start_instance(
    backend: Backend,
    db: Db,
    env: BTreeMap<String, String>,
    clock: Clock,
    dir: Option<tempfile::TempDir>,
) -> TestApp {
    let settings = Settings::from_vars(env.clone()).expect("test settings are valid");
    let app_db = instance_db(backend, &db, &settings).await;
    let app = Application::build_with(settings, app_db, clock.clone()).await.expect("build app");
    let address = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    TestApp { backend, address, db, state, clock, client, env, _dir: dir, _shutdown: tx }
}

/// The workers of an instance built by [`spawn_app_with_stalled_workers`]: its status-callback and Stripe event
/// ingest workers (and its call log) were spawned on a Tokio runtime that nothing drives. They hold their queues'
/// receiving ends, so the queues stay open, but never take a job: a queue fills for real, as behind workers stuck
/// on a database that does not answer. Dropping this drops the workers, and with them the jobs still queued
/// (unanswered: the requests waiting on them are told the workers are gone).
pub struct StalledWorkers(Option<tokio::runtime::Runtime>);

impl Drop for StalledWorkers {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            // Drops the never-polled worker tasks now, without the blocking wait a plain drop does (refused inside
            // the test's runtime).
            runtime.shutdown_background();
        }
    }
}

/// The app served as [`spawn_app_at`] serves it (the same state, router and middleware), except that its
/// background workers are spawned on a runtime that never runs them ([`StalledWorkers`]). `Application` spawns
/// them on the current runtime, so the state is built here, under the stalled runtime's context, and the
/// router served on the test's runtime.
pub async fn spawn_app_with_stalled_workers(
    backend: Backend,
    vars: &[(String, String)],
    clock: Clock,
) -> (TestApp, StalledWorkers) {
    let (db, db_url, dir) = fresh_database(backend).await;
    let env = test_env(&db_url, vars);
    let settings = Settings::from_vars(env.clone()).expect("test settings are valid");
    let app_db = instance_db(backend, &db, &settings).await;
    let stalled = tokio::runtime::Builder::new_current_thread().build().expect("a runtime for the stalled workers");
    let state = {
        let _spawn_there = stalled.enter();
        AppState::new(settings, app_db, clock.clone()).expect("app state")
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let address = format!("http://{}", listener.local_addr().unwrap());
    let router = secur360::http::router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let app = TestApp { backend, address, db, state, clock, client, env, _dir: dir, _shutdown: tx };
    (app, StalledWorkers(Some(stalled)))
}

impl TestApp {
    /// A second instance of the service on the same database, as a scaled-out deployment runs it: its own pool,
    /// listener and instance id; the same settings and clock. `TestApp::db` is shared (the owner's handle).
    pub async fn another_instance(&self) -> TestApp {
        let other = start_instance(self.backend, self.db.clone(), self.env.clone(), self.clock.clone(), None).await;
        assert_ne!(other.state.instance_id, self.state.instance_id, "each instance has its own id");
        other
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.request(method, path, token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        read(rb.send().await.expect("request sent")).await
    }

    pub async fn operator(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Create a paying tenant (an active subscription without add-on in the mirror, see [`subscribe`]) and
    /// return an API key for it.
    pub async fn tenant_with_key(&self, id: &str) -> String {
        let key = self.tenant_without_subscription(id).await;
        subscribe(&self.db, id, "active", 0).await;
        key
    }

    /// Create a tenant that has no subscription (suspended, read-only: SPEC §2) and return an API key for it.
    pub async fn tenant_without_subscription(&self, id: &str) -> String {
        let (s, b) = self
            .operator(Method::POST, "/api/tenants", Some(json!({ "id": id, "name": format!("Tenant {id}") })))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = self
            .operator(Method::POST, &format!("/api/tenants/{id}/api-keys"), Some(json!({ "label": "tests" })))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["key"].as_str().expect("key in response").to_owned()
    }

    /// `GET /api/entitlements` with a tenant key (must answer 200).
    pub async fn entitlements(&self, key: &str) -> Value {
        let (s, e) = self.send(Method::GET, "/api/entitlements", Some(key), None).await;
        assert_eq!(s, StatusCode::OK, "{e}");
        e
    }

    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        on_db!(&self.db, p => sqlx::query_scalar::<_, i64>(&sql).fetch_one(p).await).expect("count")
    }

    /// Row counts of every table a request could write, to prove that refused requests wrote nothing.
    pub async fn snapshot(&self) -> Vec<(String, i64)> {
        let mut out = Vec::new();
        for t in [
            "tenants",
            "sites",
            "workers",
            "api_keys",
            "consent_events",
            "system_audit_logs",
            "subscriptions",
            "sms_alerts",
            "sms_messages",
            "sms_status_events",
            "rate_limits",
            "phone_verifications",
        ] {
            out.push((t.to_owned(), self.count(t).await));
        }
        out
    }

    pub async fn exec(&self, sql: &str) {
        on_db!(&self.db, p => sqlx::query(sql).execute(p).await.map(|_| ())).expect("statement runs");
    }
}

/// Give `tenant` a subscription `sub_{tenant}` of customer `cus_{tenant}` in the billing mirror, with `status` and
/// `addon` additional sites, as the mirror would hold it (without a live one a tenant is read-only, SPEC §2).
/// Written directly, as the state a test starts from; the billing tests also reach the mirror through Stripe
/// events.
pub async fn subscribe(db: &Db, tenant: &str, status: &str, addon: i64) {
    let sql = "INSERT INTO subscriptions (stripe_subscription_id, tenant_id, stripe_customer_id, status, \
               addon_quantity, stripe_created, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, 1, 1)";
    let (sub, customer) = (format!("sub_{tenant}"), format!("cus_{tenant}"));
    on_db!(db, p => sqlx::query(sql).bind(&sub).bind(tenant).bind(&customer).bind(status).bind(addon)
        .execute(p).await.map(|_| ()))
    .expect("subscription inserted");
}

pub async fn read(res: Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    (status, body)
}

/// Assert the SPEC §7 error shape and return the code.
pub fn error_code(body: &Value) -> &str {
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"));
    let message = body["error"]["message"].as_str().expect("error message");
    assert!(!message.is_empty());
    code
}
