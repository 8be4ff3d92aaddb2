//! `studentsync-worker`: reads its configuration, then consumes batches until
//! SIGINT or SIGTERM.

use studentsync::config::Config;

/// jemalloc instead of glibc malloc: the request and batch paths allocate many
/// small strings across threads, where glibc spent over half of the API's CPU.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    studentsync::telemetry::init();
    let config = Config::from_env()?;
    tracing::info!(?config, "starting studentsync-worker");
    studentsync_worker::run(config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("install SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}
