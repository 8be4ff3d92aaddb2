//! Fault 2: RabbitMQ stopped and started while clients submit. While it is down
//! the API answers 503 + `Retry-After` (never 500, never later than 10 s); the
//! API's publisher and the worker processes reconnect by themselves (topology
//! re-declared, consumers resumed); every batch accepted before, during or after
//! the outage completes exactly once.

use std::time::{Duration, Instant};

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, spawn_app_with};
use crate::private::rabbitmq::PrivateRabbitMq;
use crate::submitter::{Submitter, until_accepted_again};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_started_loses_nothing() {
    let mut broker = tokio::task::block_in_place(PrivateRabbitMq::start);
    let app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .env("AMQP_URL", broker.url()),
    )
    .await;
    let mut workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
    app.wait_for_consumer_count(2).await;
    let mut history = History::default();

    // In flight when the broker goes: queued batches, some being applied.
    for b in 0..4 {
        let (body, refs) = new_students_batch(&format!("before-{b}"), 200);
        history.accept(app.upsert_async(&body).await, refs);
    }
    let submitter = Submitter::start(&app, "during", 20, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(300)).await;

    tokio::task::block_in_place(|| broker.stop());
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| broker.boot());
    let restarted = Instant::now();
    eprintln!("broker down for {:?}", restarted - stopped);

    // Clients are accepted again once the API has reconnected.
    let took = until_accepted_again(&app, &mut history, "probe", restarted).await;
    eprintln!("accepting again {took:?} after the restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = submitter.finish().await;
    let refused_while_down = seen
        .refused
        .iter()
        .filter(|(at, _)| *at >= stopped && *at <= restarted)
        .count();
    assert!(
        refused_while_down > 0,
        "no request was refused while the broker was down"
    );
    eprintln!(
        "submitter: {} accepted, {} refused",
        seen.accepted.len(),
        seen.refused.len()
    );
    seen.record_into(&mut history);

    // The worker processes resumed consuming by themselves.
    app.wait_for_consumer_count(2).await;
    history.check(&app).await;
    for worker in &mut workers {
        assert!(worker.is_running(), "workers survive a broker restart");
    }
    drop(workers);
    app.cleanup().await;
}
