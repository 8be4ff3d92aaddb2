//! Fault 6: a full queue (`QUEUE_MAX_LENGTH`, `x-overflow: reject-publish`)
//! answers 503 with `Retry-After` to new batches, records nothing for them, and
//! never drops the accepted ones.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, assert_problem, send, spawn_app_with};

const MAX_LENGTH: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_batches_and_keeps_the_accepted_ones() {
    let mut app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .env("QUEUE_MAX_LENGTH", MAX_LENGTH),
    )
    .await;
    let mut history = History::default();
    let mut refused = 0;
    for b in 0..MAX_LENGTH + 6 {
        let (body, refs) = new_students_batch(&format!("bp-{b}"), 5);
        let jobs_before = app.jobs_count().await;
        let started = Instant::now();
        let reply = send(app.batch_request(&body).header("Prefer", "respond-async")).await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered in {:?}",
            started.elapsed()
        );
        if reply.status == StatusCode::ACCEPTED {
            assert_eq!(refused, 0, "accepted after a refusal with nothing consumed");
            history.accept(reply.body["jobId"].as_str().unwrap().to_string(), refs);
            continue;
        }
        assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!(retry_after >= 1, "{retry_after}");
        assert_eq!(app.jobs_count().await, jobs_before, "a 503 records no job");
        history.refused.push(refs);
        refused += 1;
    }
    // A quorum queue checks the limit after an enqueue, so it takes one message
    // beyond `x-max-length` before it starts refusing.
    let accepted = history.accepted.len();
    assert!(
        (MAX_LENGTH..=MAX_LENGTH + 1).contains(&accepted),
        "accepted {accepted} with x-max-length {MAX_LENGTH}"
    );
    assert!(refused >= 5, "refused {refused}");

    app.start_worker();
    history.check(&app).await;
    // Drained: accepted again.
    let (body, refs) = new_students_batch("bp-after", 5);
    history.accept(app.upsert_async(&body).await, refs);
    history.check(&app).await;
    app.cleanup().await;
}
