//! The worker's Prometheus metrics. Where `WORKER_METRICS_ADDR` is set, the
//! process serves them on that address (any path answers, in the text format):
//! batches and students applied, batches dead-lettered, and the mailer's
//! emails sent, failed and deferred. Unset, the counters go nowhere.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

/// Installs the process-wide recorder and its scrape endpoint on `addr`.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr} (WORKER_METRICS_ADDR)"))?;
    for (name, help) in [
        (
            "worker_batches_applied_total",
            "batches applied (jobs completed)",
        ),
        (
            "worker_students_applied_total",
            "students in applied batches",
        ),
        (
            "worker_batches_dead_lettered_total",
            "batches that failed every delivery",
        ),
        (
            "mailer_emails_sent_total",
            "credentials emails accepted by the SMTP server",
        ),
        (
            "mailer_emails_failed_total",
            "credentials emails given up after every attempt",
        ),
        (
            "mailer_attempts_failed_total",
            "failed credentials email attempts",
        ),
        (
            "mailer_emails_deferred_total",
            "credentials emails deferred by the school's hourly cap",
        ),
    ] {
        metrics::describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    tracing::info!(%addr, "serving metrics");
    Ok(())
}
