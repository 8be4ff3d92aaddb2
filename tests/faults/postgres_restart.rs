//! Fault 3: Postgres stopped in immediate mode (every backend killed, crash
//! recovery on start) while batches are being applied and clients submit. The
//! API answers 503 to what it cannot record (never 500, within 10 s); workers
//! never ack before commit and retry with backoff; every pool recovers; every
//! accepted batch completes exactly once.

use std::time::{Duration, Instant};

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, spawn_app_with};
use crate::private::postgres::PrivatePostgres;
use crate::submitter::{Submitter, until_accepted_again};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_batch_loses_nothing() {
    let mut postgres = tokio::task::block_in_place(PrivatePostgres::start);
    let app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .database_server(postgres.url()),
    )
    .await;
    let mut workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
    app.wait_for_consumer_count(2).await;
    let mut history = History::default();
    let mut refused = 0;

    for round in 0..2 {
        for b in 0..4 {
            let (body, refs) = new_students_batch(&format!("before-{round}-{b}"), 250);
            history.accept(app.upsert_async(&body).await, refs);
        }
        let submitters: Vec<Submitter> = (0..2)
            .map(|client| {
                let prefix = format!("during-{round}-{client}");
                Submitter::start(&app, &prefix, 20, Duration::from_millis(50))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + 200 * round)).await;

        tokio::task::block_in_place(|| postgres.stop_immediately());
        let stopped = Instant::now();
        // Longer than the pools' 5 s acquire timeout: requests that arrive
        // now cannot simply wait for the server to come back.
        tokio::time::sleep(Duration::from_secs(7)).await;
        tokio::task::block_in_place(|| postgres.boot());
        let restarted = Instant::now();

        // Accepting again once the pools have reconnected.
        let took =
            until_accepted_again(&app, &mut history, &format!("probe-{round}"), restarted).await;
        eprintln!("round {round}: accepting again {took:?} after the restart");
        for submitter in submitters {
            let seen = submitter.finish().await;
            eprintln!(
                "round {round}: a client saw {} accepted, {} refused ({:?} after the stop)",
                seen.accepted.len(),
                seen.refused.len(),
                seen.refused
                    .iter()
                    .map(|(at, _)| at.saturating_duration_since(stopped))
                    .collect::<Vec<_>>()
            );
            refused += seen.refused.len();
            seen.record_into(&mut history);
        }
    }
    // Requests that arrive while the server is down wait for a connection up
    // to the pool's acquire timeout (5 s), then get 503.
    assert!(
        refused > 0,
        "no request was refused while Postgres was down"
    );

    history.check(&app).await;
    for worker in &mut workers {
        assert!(worker.is_running(), "workers survive a Postgres restart");
    }
    drop(workers);
    app.cleanup().await;
    drop(postgres);
}
