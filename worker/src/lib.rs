//! Student Sync worker: consumes batch messages from RabbitMQ and applies them to
//! Postgres through the core engine, then publishes results to Redis; and sends
//! the credentials emails those batches queued (`mailer`). Any number of worker
//! processes may run on any host; they share the batches through the queue and
//! the emails through the outbox table.

mod consumer;
mod dead_letters;
mod handler;
mod mailer;
mod metrics_endpoint;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use studentsync::config::Config;
use studentsync::queue::Topology;
use studentsync::results::{self, ResultsStore};
use tokio::sync::{Notify, watch};

/// Shared by every batch this process handles.
pub(crate) struct Worker {
    pub pool: sqlx::PgPool,
    pub results: ResultsStore,
    pub config: Config,
    pub topology: Topology,
    /// Wakes this process's mailer when a batch queued credentials emails.
    pub mail_wakeup: Arc<Notify>,
}

/// Runs a worker until `shutdown` resolves; then stops consuming, finishes the
/// batches in hand (acking what committed) and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(addr) = config.worker_metrics_addr {
        metrics_endpoint::serve(addr)?;
    }
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let pool =
        studentsync::db::connect(&config.database_url, config.database_max_connections).await?;
    let redis = results::connect(&config.redis_url)?;
    let worker = Arc::new(Worker {
        pool,
        results: ResultsStore::new(redis, &config.namespace),
        topology: Topology::from_config(&config),
        mail_wakeup: Arc::new(Notify::new()),
        config,
    });
    let mut mailers = mailer::spawn(
        worker.pool.clone(),
        worker.results.clone(),
        worker.config.mail.clone(),
        worker.config.smtp_url.as_deref(),
        worker.mail_wakeup.clone(),
        stop.clone(),
    )?;
    tracing::info!(
        concurrency = worker.config.worker_concurrency,
        prefetch = worker.config.worker_prefetch,
        queue = %worker.topology.queue,
        "worker started"
    );
    let maintenance = tokio::spawn(purge_expired_jobs(worker.clone(), stop.clone()));
    consumer::supervise(worker.clone(), stop).await;
    maintenance.abort();
    // The mailers saw the same stop; an email in flight gets a short grace.
    while mailers.join_next().await.is_some() {}
    worker.pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Deletes jobs whose results expired, once an hour.
async fn purge_expired_jobs(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    loop {
        match studentsync::store::jobs::purge_expired(&worker.pool).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "purged expired jobs"),
            Err(error) => tracing::warn!(%error, "could not purge expired jobs"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}
