//! The dead-letter consumer: a batch that exhausted its deliveries (or could not
//! be decoded) lands in `{ns}.batches.dead`; its job is marked `failed` with a
//! problem object so that clients stop waiting, and the message is acked.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use serde_json::json;
use studentsync::store::jobs;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Worker;

/// Starts consuming dead letters on `channel`; the task ends with the channel.
pub async fn consume(worker: Arc<Worker>, channel: &Channel) -> lapin::Result<JoinHandle<()>> {
    let tag = format!(
        "dead-letters-{}-{}",
        std::process::id(),
        Uuid::new_v4().simple()
    );
    let mut deliveries = channel
        .basic_consume(
            worker.topology.dead_letter_queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(delivery)) = deliveries.next().await {
            let ids = serde_json::from_slice::<serde_json::Value>(&delivery.data)
                .ok()
                .and_then(|body| Some((id(&body, "jobId")?, id(&body, "schoolId")?)));
            match ids {
                Some((job_id, school_id)) => fail_job(&worker, job_id, school_id).await,
                None => tracing::error!("dead-lettered message without a job id; dropping it"),
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    }))
}

fn id(body: &serde_json::Value, field: &str) -> Option<Uuid> {
    body.get(field)?.as_str()?.parse().ok()
}

async fn fail_job(worker: &Worker, job_id: Uuid, school_id: Uuid) {
    let problem = json!({
        "type": "/problems/batch_failed",
        "title": "The batch could not be processed",
        "status": 500,
        "code": "batch_failed",
        "detail": "processing this batch failed on every delivery attempt; nothing of it was applied",
    });
    tracing::error!(%job_id, "batch dead-lettered; marking its job failed");
    if let Err(error) = jobs::fail(&worker.pool, job_id, &problem).await {
        tracing::error!(%job_id, %error, "could not mark the job failed");
        return;
    }
    metrics::counter!("worker_batches_dead_lettered_total").increment(1);
    if let Ok(Some(record)) = jobs::get_any(&worker.pool, job_id).await {
        let _ = worker
            .results
            .publish_completed(school_id, &record.into_view())
            .await;
    }
}
