//! The supervised consumer: connect, declare the topology, consume with manual
//! acks and a bounded prefetch, and start again with backoff whenever the
//! connection or channel breaks. Batches run concurrently up to
//! `WORKER_CONCURRENCY`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::{Worker, dead_letters, handler};

/// Backoff between reconnection attempts: doubling from the first to the max.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// A connection that lasted this long was healthy: the next backoff starts over.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(30);

/// Consumes until `stop` turns true, reconnecting as needed.
pub async fn supervise(worker: Arc<Worker>, mut stop: watch::Receiver<bool>) {
    let mut delay = FIRST_RETRY;
    while !*stop.borrow() {
        let connected_at = Instant::now();
        match consume(&worker, &mut stop).await {
            Ok(()) => return,
            Err(error) => {
                // A connection that lived a while starts the backoff afresh.
                if connected_at.elapsed() > HEALTHY_CONNECTION {
                    delay = FIRST_RETRY;
                }
                tracing::warn!(%error, retry_in = ?delay, "broker connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// One connection's life. Returns `Ok` only on a requested shutdown.
async fn consume(worker: &Arc<Worker>, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
    let connection =
        studentsync::queue::connect(&worker.config.amqp_url, "studentsync-worker").await?;
    let channel = connection.create_channel().await?;
    worker.topology.declare(&channel).await?;
    channel
        .basic_qos(worker.config.worker_prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "worker-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut batches = channel
        .basic_consume(
            worker.topology.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let dead_letter_channel = connection.create_channel().await?;
    let dead = dead_letters::consume(worker.clone(), &dead_letter_channel).await?;

    let permits = Arc::new(Semaphore::new(worker.config.worker_concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = stop.changed() => break Ok(()),
        };
        tokio::select! {
            delivery = batches.next() => match delivery {
                Some(Ok(delivery)) => {
                    let worker = worker.clone();
                    let stop = stop.clone();
                    in_flight.spawn(async move {
                        handler::handle(&worker, delivery, stop).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => break Err(error.into()),
                None => break Err(anyhow::anyhow!("consumer cancelled by the broker")),
            },
            _ = stop.changed() => break Ok(()),
            Some(task) = in_flight.join_next() => log_panic(task),
        }
        while let Some(task) = in_flight.try_join_next() {
            log_panic(task);
        }
    };
    dead.abort();
    // Stop taking new batches, then let the ones in hand finish (they ack what
    // they committed, or hand the message back).
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    while let Some(task) = in_flight.join_next().await {
        log_panic(task);
    }
    close(connection, channel).await;
    result
}

fn log_panic(task: Result<(), tokio::task::JoinError>) {
    if let Err(error) = task {
        tracing::error!(%error, "batch task panicked");
    }
}

async fn close(connection: Connection, channel: Channel) {
    let closing = async {
        let _ = channel.close(200, "bye".into()).await;
        let _ = connection.close(200, "bye".into()).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
}
