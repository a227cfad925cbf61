//! The store: SQLite or PostgreSQL, chosen at runtime from `DATABASE_URL`.
//!
//! SQL is written once with `$n` placeholders and run on either pool through [`on_db!`] / [`on_tx!`], which
//! instantiate the same query code for both drivers. Times are bound from Rust (milliseconds since the epoch).

pub mod admin;
pub mod api_keys;
pub mod billing;
pub mod scope;
pub mod sites;
pub mod sms;
pub mod sms_status;
pub mod subscriptions;
pub mod tenants;
pub mod voice;
pub mod workers;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Connection, Postgres, Sqlite};

/// Bound on waiting for a connection: past it a request gets 503 instead of hanging.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A write transaction on either backend. SQLite transactions start with `BEGIN IMMEDIATE` so that writers
/// queue on the database lock (honouring `busy_timeout`) instead of failing on a read-to-write upgrade.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Run the same code on whichever pool `db` holds: `on_db!(db, pool => query.fetch_all(pool).await)`.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// Run the same code on the connection of a [`Tx`]: `on_tx!(tx, c => query.fetch_one(&mut *c).await)`.
/// Both arms must give one type: map `execute` results with `.map(|r| r.rows_affected())`.
#[macro_export]
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::db::Tx::Sqlite(t) => {
                let $conn = &mut **t;
                $body
            }
            $crate::db::Tx::Postgres(t) => {
                let $conn = &mut **t;
                $body
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Push `(v1, v2, …)`, each value bound, onto `q`: the list of a `… IN (…)` (callers chunk the values).
pub(crate) fn push_in_list<'args, DB: sqlx::Database>(q: &mut sqlx::QueryBuilder<'args, DB>, values: &[&'args str])
where
    &'args str: sqlx::Encode<'args, DB> + sqlx::Type<DB>,
{
    q.push("(");
    let mut list = q.separated(", ");
    for value in values {
        list.push_bind(*value);
    }
    q.push(")");
}

impl Db {
    /// Connect to `url`. For SQLite the file (and its folder) is created on first use.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .context("DATABASE_URL is not a valid sqlite URL")?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // FULL: an acknowledged write survives power loss, not only a crash of the process.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let file = opts.get_filename().to_path_buf();
            let in_memory = file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:");
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty() && !in_memory) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the database folder {}", dir.display()))?;
            }
            // An in-memory database lives in one connection; keep exactly that one forever.
            let pool = PoolOptions::<Sqlite>::new()
                .max_connections(if in_memory { 1 } else { max_connections })
                .min_connections(if in_memory { 1 } else { 0 })
                .idle_timeout(if in_memory { None } else { Some(Duration::from_secs(600)) })
                .max_lifetime(if in_memory { None } else { Some(Duration::from_secs(1800)) })
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // Never hand out (or keep) a connection still inside a transaction (see `begin`).
                .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
                .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
                .connect_with(opts)
                .await
                .with_context(|| format!("cannot open the SQLite database {}", file.display()))?;
            Ok(Db::Sqlite(pool))
        } else {
            let opts = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid postgres URL")?;
            // Row-level security: every connection carries the scope of the task that takes it (db::scope).
            let pool = PoolOptions::<Postgres>::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| Box::pin(scope::apply(conn)))
                .before_acquire(|conn, _| {
                    Box::pin(async move {
                        // Never hand out a connection still inside a transaction (see `begin`): close it.
                        if conn.is_in_transaction() {
                            return Ok(false);
                        }
                        scope::apply(conn).await.map(|()| true)
                    })
                })
                .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
                .connect_with(opts)
                .await
                .context("cannot connect to PostgreSQL (check DATABASE_URL and that the server is up)")?;
            Ok(Db::Postgres(pool))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Apply pending migrations (PostgreSQL takes an advisory lock, so concurrent instances are safe).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let p = match self {
            Db::Sqlite(p) => return SQLITE_MIGRATOR.run(p).await.context("applying database migrations failed"),
            Db::Postgres(p) => p,
        };
        let mut conn = p.acquire().await.context("applying database migrations failed")?;
        let Err(e) = POSTGRES_MIGRATOR.run_direct(&mut *conn).await else { return Ok(()) };
        // A failed run leaves its session's migration lock held: the connection must not go back to the pool,
        // where the next run (another connection) would wait for that lock for ever.
        conn.close_on_drop();
        drop(conn);
        // A migration outside a transaction (an index built CONCURRENTLY) that was interrupted leaves its index
        // behind (invalid if the build did not finish) without being recorded, and then fails on every start:
        // name the index and the way out.
        let outside_tx = matches!(&e, sqlx::migrate::MigrateError::ExecuteMigration(_, v)
            if POSTGRES_MIGRATOR.iter().any(|m| m.version == *v && m.no_tx));
        let invalid: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT i.indisvalid AND n.nspname = current_schema() ORDER BY 1",
        )
        .fetch_all(p)
        .await
        .unwrap_or_default();
        let e = anyhow::Error::new(e);
        let runbook = "(README, runbook \"An upgrade stopped while building an index\")";
        Err(if !invalid.is_empty() {
            e.context(format!(
                "applying database migrations failed; an interrupted upgrade left the invalid index {} behind: \
                 drop it (as the owner: DROP INDEX CONCURRENTLY <name>;) and migrate again {runbook}",
                invalid.join(", ")
            ))
        } else if outside_tx {
            e.context(format!(
                "applying database migrations failed in a migration that runs outside a transaction; if an \
                 earlier run of it was interrupted after it built its index, drop that index (as the owner: DROP \
                 INDEX CONCURRENTLY <name>;) and migrate again {runbook}"
            ))
        } else {
            e.context("applying database migrations failed")
        })
    }

    /// The newest migration version this binary knows, and the newest applied one.
    pub async fn migration_versions(&self) -> Result<(i64, Option<i64>), sqlx::Error> {
        let known = match self {
            Db::Sqlite(_) => &SQLITE_MIGRATOR,
            Db::Postgres(_) => &POSTGRES_MIGRATOR,
        }
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
        let applied: Option<i64> = on_db!(self, p => sqlx::query_scalar(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE"
        ).fetch_one(p).await)?;
        Ok((known, applied))
    }

    /// PostgreSQL: refuse a connection whose role skips row-level security (a superuser or a BYPASSRLS role), so
    /// the service never runs with tenant isolation silently off. SQLite: nothing to check.
    pub async fn check_runtime_role(&self) -> anyhow::Result<()> {
        let Some(role) = self.role().await.context("reading the database role")? else { return Ok(()) };
        if role.superuser || role.bypass_rls {
            anyhow::bail!(
                "DATABASE_URL connects as role {}, which {} row-level security, so tenant isolation would be \
                 off; connect as the runtime role (a member of secur360_runtime; README \"PostgreSQL roles\") and \
                 give the owner role to DATABASE_OWNER_URL for migrations",
                role.name,
                if role.superuser { "is a superuser and bypasses" } else { "has BYPASSRLS and bypasses" }
            );
        }
        Ok(())
    }

    /// The PostgreSQL role this pool connects as (`None` on SQLite, which has no roles).
    pub async fn role(&self) -> Result<Option<Role>, sqlx::Error> {
        let Db::Postgres(p) = self else { return Ok(None) };
        let (name, superuser, bypass_rls): (String, bool, bool) =
            sqlx::query_as("SELECT rolname::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
                .fetch_one(p)
                .await?;
        Ok(Some(Role { name, superuser, bypass_rls }))
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_db!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|r| r.rows_affected())).map(|_| ())
    }

    /// Open a transaction (SQLite: `BEGIN IMMEDIATE`, the write lock taken at once; PostgreSQL: the task's scope
    /// written by the BEGIN itself, [`scope::begin_statement`]).
    ///
    /// A request whose client goes away is dropped wherever it is waiting. Dropped while its BEGIN was in
    /// flight, the connection went back to the pool inside a transaction nobody owned: on SQLite it held the
    /// write lock for good, and every later write failed (`bench/run` hit it when wrk closed its connections).
    /// So the BEGIN runs in a task of its own, in the caller's database scope, which always completes; when the
    /// caller is gone, the transaction it opened is dropped there and rolled back.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let db = self.clone();
        let task = tokio::spawn(scope::run(scope::current(), async move {
            Ok(match db {
                Db::Sqlite(p) => Tx::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
                Db::Postgres(p) => Tx::Postgres(match scope::begin_statement() {
                    Some(begin) => scope::opening_transaction(p.begin_with(begin)).await?,
                    None => p.begin().await?,
                }),
            })
        }));
        task.await.map_err(|e| sqlx::Error::Protocol(format!("the task opening a transaction failed: {e}")))?
    }

    pub async fn close(&self) {
        on_db!(self, p => p.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Tx::Sqlite(_) => Backend::Sqlite,
            Tx::Postgres(_) => Backend::Postgres,
        }
    }
}

/// A PostgreSQL role as far as row-level security is concerned.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub bypass_rls: bool,
}

/// Backend-neutral classification of database errors (never SQLSTATE text).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_foreign_key_violation())
}

/// The database could not be reached (as opposed to refusing a statement).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_))
        || matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(SQLITE_BUSY))
}

/// SQLite's primary result code for "database is locked" after `busy_timeout` (a contention outage).
const SQLITE_BUSY: &str = "5";
