//! Build the application from settings: database, state, router, bound listener. `main` and the tests use
//! this same path.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::db::{Backend, Db};
use crate::state::AppState;
use crate::time::Clock;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Run the background work (scheduler, SMS dispatcher, Stripe retries, audit sealer) in this process. `serve` does;
    /// tests drive jobs and `run_once` directly.
    background: bool,
}

/// Whether `serve` applies migrations itself. SQLite: always (embedded default). PostgreSQL: only when asked,
/// since production runs `secur360 migrate` with the owner role before rolling out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    Apply,
    ApplyOnSqlite,
}

impl Application {
    pub async fn build(settings: Settings, migrations: Migrations) -> anyhow::Result<Self> {
        let db = Db::connect(settings.database_url.expose(), settings.database_max_connections).await?;
        db.check_runtime_role().await?;
        if migrations == Migrations::Apply || db.backend() == Backend::Sqlite {
            migrate(&settings, &db).await?;
        } else {
            let (known, applied) = db.migration_versions().await.unwrap_or((1, None));
            if applied != Some(known) {
                anyhow::bail!(
                    "the database schema is not current (applied {applied:?}, expected {known}); \
                     run `secur360 migrate` with the owner role, or `serve --migrate`"
                );
            }
        }
        let app = Self::build_with(settings, db, Clock::system()).await?.with_background();
        let changes = crate::env_changes::record(&app.state).await.context("recording configuration changes")?;
        if !changes.is_empty() {
            tracing::info!(added = ?changes.added, changed = ?changes.changed, removed = ?changes.removed, "configuration changed since the last start");
        }
        Ok(app)
    }

    /// Build on an existing database handle and clock (tests inject both). The SMS dispatcher loop is off;
    /// turn it on with [`Application::with_dispatcher`].
    pub async fn build_with(settings: Settings, db: Db, clock: Clock) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {} (BIND_ADDR)", settings.bind_addr))?;
        Ok(Application { listener, state: AppState::new(settings, db, clock)?, background: false })
    }

    /// Also run the background work (scheduler, SMS dispatcher, Stripe retries, audit sealer) while serving.
    pub fn with_background(mut self) -> Self {
        self.background = true;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests and close the pool.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let app = crate::http::router(self.state.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut background = Vec::new();
        if self.background {
            background.push(tokio::spawn(crate::jobs::schedule::run_loop(self.state.clone(), stop_rx.clone())));
            background.push(tokio::spawn(billing_retry_loop(self.state.clone(), stop_rx.clone())));
            background.push(tokio::spawn(crate::sms::dispatcher::run_loop(self.state.clone(), stop_rx.clone())));
            background.push(tokio::spawn(crate::audit::run_sealer(self.state.db.clone(), stop_rx.clone())));
        }
        tracing::info!(addr = %self.local_addr(), backend = ?self.state.db.backend(), "secur360 listening");
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        // Stop background work, let it finish its current step (the status-callback and Stripe event ingests:
        // their queues, answered by now since no request is in flight; the call log: the calls it still holds),
        // then close the pool.
        let _ = stop_tx.send(true);
        for task in background {
            let _ = task.await;
        }
        self.state.status_ingest.shutdown().await;
        self.state.stripe_ingest.shutdown().await;
        self.state.call_log.shutdown().await;
        served.context("HTTP server failed")?;
        self.state.db.close().await;
        tracing::info!("secur360 stopped");
        Ok(())
    }
}

/// Apply pending migrations as the owner role: `DATABASE_OWNER_URL` when set (PostgreSQL, where the runtime role
/// of `DATABASE_URL` may not create or alter tables), else through `db` itself.
pub async fn migrate(settings: &Settings, db: &Db) -> anyhow::Result<()> {
    match &settings.database_owner_url {
        Some(owner_url) if db.backend() == Backend::Postgres => {
            let owner = Db::connect(owner_url.expose(), 1).await.context("connecting with DATABASE_OWNER_URL")?;
            let applied = owner.migrate().await;
            owner.close().await;
            applied
        }
        _ => db.migrate().await,
    }
}

/// Every minute, re-apply Stripe events whose processing failed (or that a crashed instance left leased).
async fn billing_retry_loop(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(60),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match crate::billing::retry_failed(&state, state.now()).await {
            Ok(r) if r.attempted > 0 => tracing::info!(?r, "re-applied failed Stripe events"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "retrying failed Stripe events failed"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is called (not when the future is
/// first polled), so a signal sent as soon as the "listening" line appears is never missed.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let term = async move {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutdown signal received; finishing in-flight requests");
    }
}
