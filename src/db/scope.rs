//! Whose data the database work of the current task may touch, and how PostgreSQL row-level security learns it.
//!
//! Every tenant-owned table on PostgreSQL has a policy keyed on two settings of the connection:
//! `app.tenant_id` (the authenticated tenant) and `app.system` (the reason for an explicit system context: a
//! webhook, a job, the operator). This module holds the current [`Scope`] in a task-local value and writes it
//! into those settings every time a connection is taken from the pool, so a query that forgets its
//! `tenant_id = $1` filter still sees only the caller's rows, and work done outside any scope sees nothing.
//!
//! - HTTP requests start in [`Scope::None`]; the authentication extractors narrow it to the tenant of the API key
//!   or to the operator's system context once the credential is verified ([`enter`]).
//! - Webhooks (after their signature is verified), jobs, the dispatcher, the CLI and start-up run under
//!   [`system`], which names why; the writes they make are recorded in the audit log with their actor.
//! - Inside a tenant transaction, the few reads and writes that are platform-wide by nature (an audit row, which
//!   may carry no tenant; the phone owner's STOP/START decisions) open a short [`open_window`] …
//!   [`close_window`] system window on that transaction only.
//!
//! SQLite has no row-level security: there the application-level binding (every tenant query filters on the
//! caller's `tenant_id`) is the only isolation, and these settings are not used.

use std::future::Future;
use std::sync::Mutex;

use super::Tx;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    /// Nothing authenticated: on PostgreSQL every tenant-owned (and platform) row is invisible.
    #[default]
    None,
    /// A tenant administrator: only this tenant's rows.
    Tenant(String),
    /// Platform work on behalf of no single tenant; the reason is kept in `app.system`.
    System(&'static str),
}

impl Scope {
    /// The values of `app.tenant_id` and `app.system` for this scope ('' = unset).
    pub fn settings(&self) -> (&str, &str) {
        match self {
            Scope::None => ("", ""),
            Scope::Tenant(t) => (t.as_str(), ""),
            Scope::System(reason) => ("", reason),
        }
    }
}

tokio::task_local! {
    static CURRENT: Mutex<Scope>;
    /// Set while a connection is taken for a transaction whose BEGIN writes the scope itself ([`begin_statement`]).
    static OPENING_TRANSACTION: ();
}

/// The scope of the running task ([`Scope::None`] outside any).
pub fn current() -> Scope {
    CURRENT.try_with(|s| s.lock().map(|s| s.clone()).unwrap_or_default()).unwrap_or_default()
}

/// Run `fut` in `scope` (nested scopes shadow the outer one until `fut` completes).
pub async fn run<F: Future>(scope: Scope, fut: F) -> F::Output {
    CURRENT.scope(Mutex::new(scope), fut).await
}

/// Run `fut` in an explicit system context named by `reason` (e.g. "stripe-webhook", "job:sms_cleanup").
pub async fn system<F: Future>(reason: &'static str, fut: F) -> F::Output {
    tracing::trace!(reason, "system database context");
    run(Scope::System(reason), fut).await
}

/// Narrow the scope of the current request to the caller once its credential is verified. Connections taken
/// from the pool afterwards carry it. Returns false outside a scope (nothing to narrow: the caller then keeps
/// seeing nothing on PostgreSQL).
pub fn enter(scope: Scope) -> bool {
    CURRENT
        .try_with(|s| {
            if let Ok(mut s) = s.lock() {
                *s = scope;
            }
        })
        .is_ok()
}

/// Statement that writes a scope into the connection's settings (session level: every acquisition rewrites
/// both, so nothing leaks from one task to the next through a pooled connection).
const APPLY: &str = "SELECT set_config('app.tenant_id', $1, false), set_config('app.system', $2, false)";

/// Write the current scope into a PostgreSQL connection (pool hook: after connect and before every acquire),
/// unless the connection is being taken for a transaction whose BEGIN writes it ([`opening_transaction`]).
pub async fn apply(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    if OPENING_TRANSACTION.try_with(|_| ()).is_ok() {
        return Ok(());
    }
    let scope = current();
    let (tenant, system) = scope.settings();
    sqlx::query(APPLY).bind(tenant).bind(system).execute(conn).await.map(|_| ())
}

/// The BEGIN of a PostgreSQL transaction that also writes the current scope into the transaction's settings, in
/// the same round trip (the simple protocol, which takes several statements but no parameters: the values are
/// inlined, so only values made of `[A-Za-z0-9_.:-]` are — tenant ids are slugs, reasons are names in the code).
/// `None` for any other value: the caller then opens the transaction the usual way (scope written at acquire).
///
/// Transaction-local settings override the connection's session settings, whichever task wrote those last, from
/// the transaction's first statement to its end; afterwards the connection keeps its session settings, which the
/// next acquisition rewrites as always. Saves one round trip per transaction (`bench/run`, BENCHMARKS.md).
pub fn begin_statement() -> Option<String> {
    let scope = current();
    let (tenant, system) = scope.settings();
    Some(format!(
        "BEGIN; SELECT set_config('app.tenant_id', {}, true), set_config('app.system', {}, true)",
        literal(tenant)?,
        literal(system)?
    ))
}

/// `value` as a SQL string literal, when it is made only of characters that need no escaping.
fn literal(value: &str) -> Option<String> {
    value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)).then(|| format!("'{value}'"))
}

/// Take a connection (and open its transaction) with `fut`, whose BEGIN is [`begin_statement`]'s: the pool's
/// acquire hook does not write the scope first.
pub async fn opening_transaction<F: Future>(fut: F) -> F::Output {
    OPENING_TRANSACTION.scope((), fut).await
}

/// Open a system window on this transaction only (PostgreSQL; a no-op on SQLite), for a platform-wide read or
/// write inside tenant work. Close it with [`close_window`]; a rollback closes it too.
pub async fn open_window(tx: &mut Tx, reason: &'static str) -> Result<(), sqlx::Error> {
    set_local_system(tx, reason).await
}

/// Close a window opened by [`open_window`], back to the task's own scope.
pub async fn close_window(tx: &mut Tx) -> Result<(), sqlx::Error> {
    let scope = current();
    set_local_system(tx, scope.settings().1).await
}

async fn set_local_system(tx: &mut Tx, value: &str) -> Result<(), sqlx::Error> {
    if let Tx::Postgres(t) = tx {
        sqlx::query("SELECT set_config('app.system', $1, true)").bind(value).execute(&mut **t).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_nest_and_requests_narrow_their_own() {
        assert_eq!(current(), Scope::None);
        run(Scope::None, async {
            assert!(enter(Scope::Tenant("acme".into())));
            assert_eq!(current(), Scope::Tenant("acme".into()));
            system("inner", async { assert_eq!(current(), Scope::System("inner")) }).await;
            assert_eq!(current(), Scope::Tenant("acme".into()));
        })
        .await;
        assert!(!enter(Scope::System("nowhere")), "outside a scope there is nothing to narrow");
        assert_eq!(current(), Scope::None);
        assert_eq!(Scope::Tenant("t".into()).settings(), ("t", ""));
        assert_eq!(Scope::System("job").settings(), ("", "job"));
    }

    #[tokio::test]
    async fn the_begin_statement_inlines_only_plain_values() {
        let begin = |scope: Scope| async move { run(scope, async { begin_statement() }).await };
        assert_eq!(
            begin(Scope::Tenant("acme-2".into())).await.as_deref(),
            Some("BEGIN; SELECT set_config('app.tenant_id', 'acme-2', true), set_config('app.system', '', true)")
        );
        assert_eq!(
            begin(Scope::System("job:sms_cleanup")).await.as_deref(),
            Some("BEGIN; SELECT set_config('app.tenant_id', '', true), set_config('app.system', 'job:sms_cleanup', true)")
        );
        for odd in ["a'b", "a b", "a;b", "é", "a\\b"] {
            assert_eq!(begin(Scope::Tenant(odd.into())).await, None, "{odd}");
        }
    }
}
