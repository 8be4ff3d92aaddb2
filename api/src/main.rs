//! `studentsync-api`: reads the configuration, applies migrations (creating the
//! database if needed) and serves HTTP on `BIND_ADDR` until SIGINT or SIGTERM.
//! `studentsync-api migrate` only applies the migrations.

use anyhow::Context;
use studentsync::{config::Config, db, telemetry};
use tokio::signal::unix::{SignalKind, signal};

/// jemalloc instead of glibc malloc: the request and batch paths allocate many
/// small strings across threads, where glibc spent over half of the API's CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init();
    let migrate_only = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("migrate") => true,
        Some(other) => anyhow::bail!("unknown command {other:?} (expected none or `migrate`)"),
    };
    let pool = db::prepare(&config.database_url, config.database_max_connections).await?;
    pool.close().await;
    if migrate_only {
        tracing::info!("migrations applied");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&config.bind_addr)
        .await
        .with_context(|| format!("cannot bind {}", config.bind_addr))?;
    tracing::info!(addr = %listener.local_addr()?, ?config, "studentsync-api listening");
    studentsync_api::run(config, listener, shutdown_signal()).await
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
