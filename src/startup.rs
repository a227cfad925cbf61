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
    /// Run the SMS dispatcher loop while serving (on for `serve`; tests drive `run_once` themselves).
    dispatcher: bool,
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
        if migrations == Migrations::Apply || db.backend() == Backend::Sqlite {
            db.migrate().await?;
        } else {
            let (known, applied) = db.migration_versions().await.unwrap_or((1, None));
            if applied != Some(known) {
                anyhow::bail!(
                    "the database schema is not current (applied {applied:?}, expected {known}); \
                     run `secur360 migrate` with the owner role, or `serve --migrate`"
                );
            }
        }
        Ok(Self::build_with(settings, db, Clock::system()).await?.with_dispatcher(true))
    }

    /// Build on an existing database handle and clock (tests inject both). The SMS dispatcher loop is off;
    /// turn it on with [`Application::with_dispatcher`].
    pub async fn build_with(settings: Settings, db: Db, clock: Clock) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind_addr)
            .await
            .with_context(|| format!("cannot listen on {} (BIND_ADDR)", settings.bind_addr))?;
        Ok(Application { listener, state: AppState::new(settings, db, clock)?, dispatcher: false })
    }

    pub fn with_dispatcher(mut self, on: bool) -> Self {
        self.dispatcher = on;
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
        tracing::info!(addr = %self.local_addr(), backend = ?self.state.db.backend(), "secur360 listening");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let dispatcher =
            self.dispatcher.then(|| tokio::spawn(crate::sms::dispatcher::run_loop(self.state.clone(), stopped)));
        let served = axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await;
        // Let the dispatcher finish its pass (outcomes recorded) before closing the pool.
        let _ = stop.send(true);
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
        served.context("HTTP server failed")?;
        self.state.db.close().await;
        tracing::info!("secur360 stopped");
        Ok(())
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
