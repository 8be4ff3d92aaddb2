//! One delivery, start to finish: decode, apply in one transaction, publish the
//! result to Redis, and only then ack. The ack policy:
//! - applied, or already finished (a redelivery), or no such job: ack;
//! - Postgres unreachable: keep retrying with backoff; on shutdown hand the
//!   message back (nack + requeue), so nothing is acked before it committed;
//! - any other error: nack + requeue; after `x-delivery-limit` deliveries the
//!   broker dead-letters the batch and its job is marked failed;
//! - a message that cannot be decoded: reject without requeue (dead-lettered).

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use studentsync::engine::{self, Outcome};
use studentsync::job::BatchMessage;
use studentsync::store::jobs;
use tokio::sync::watch;

use crate::Worker;

pub async fn handle(worker: &Worker, delivery: Delivery, stop: watch::Receiver<bool>) {
    let message: BatchMessage = match serde_json::from_slice(&delivery.data) {
        Ok(message) => message,
        Err(error) => {
            tracing::error!(%error, "undecodable batch message; dead-lettering it");
            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let job_id = message.job_id;
    match apply_with_retry(worker, &message, stop).await {
        Some(Ok(Outcome::Completed(view))) => {
            metrics::counter!("worker_batches_applied_total").increment(1);
            metrics::counter!("worker_students_applied_total")
                .increment(message.items.len() as u64);
            publish(worker, &message, &view).await;
            ack(&delivery, job_id).await;
            if view.awaits_credentials_emails() {
                worker.mail_wakeup.notify_one();
            }
        }
        Some(Ok(Outcome::AlreadyFinished)) => {
            tracing::info!(%job_id, "redelivered batch already finished; acking");
            if let Ok(Some(record)) = jobs::get_any(&worker.pool, job_id).await {
                publish(worker, &message, &record.into_view()).await;
            }
            ack(&delivery, job_id).await;
        }
        Some(Ok(Outcome::UnknownJob)) => {
            tracing::warn!(%job_id, "batch for an unknown job (its publish was reported failed); dropping");
            ack(&delivery, job_id).await;
        }
        Some(Err(error)) => {
            tracing::error!(%job_id, %error, "batch failed; handing it back");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
        None => {
            tracing::info!(%job_id, "shutting down before the batch could be applied; handing it back");
            let _ = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
        }
    }
}

/// Applies the batch, waiting out Postgres outages. `None` when asked to stop
/// before it could be applied.
async fn apply_with_retry(
    worker: &Worker,
    message: &BatchMessage,
    mut stop: watch::Receiver<bool>,
) -> Option<Result<Outcome, sqlx::Error>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match engine::apply_batch(&worker.pool, message).await {
            Err(error) if is_unavailable(&error) => {
                tracing::warn!(job_id = %message.job_id, %error, retry_in = ?delay, "Postgres unavailable");
            }
            outcome => return Some(outcome),
        }
        if *stop.borrow() {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Errors that say "the database is not there right now", not "this batch is bad".
fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code == "57P01"
                || code == "57P02"
                || code == "57P03"
                || code == "53300"
        }),
        _ => false,
    }
}

async fn publish(worker: &Worker, message: &BatchMessage, view: &studentsync::job::JobView) {
    if let Err(error) = worker
        .results
        .publish_completed(message.school_id, view)
        .await
    {
        tracing::warn!(job_id = %message.job_id, %error, "could not publish the result to Redis; clients will read it from Postgres");
    }
}

async fn ack(delivery: &Delivery, job_id: uuid::Uuid) {
    if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
        // The broker will redeliver; the job is finished, so that is harmless.
        tracing::warn!(%job_id, %error, "ack failed");
    }
}
