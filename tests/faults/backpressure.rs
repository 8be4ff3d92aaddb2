//! Fault 6: a full queue (`QUEUE_MAX_LENGTH`, `x-overflow: reject-publish`)
//! answers 503 with `Retry-After` to new batches, records nothing for them, and
//! never drops the accepted ones.

use reqwest::StatusCode;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, assert_problem, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_batches_and_keeps_the_accepted_ones() {
    let mut app =
        spawn_app_with(TestOptions::default().workers(0).env("QUEUE_MAX_LENGTH", 3)).await;
    let mut history = History::default();
    for b in 0..3 {
        let (body, refs) = new_students_batch(&format!("bp-{b}"), 5);
        history.accept(app.upsert_async(&body).await, refs);
    }
    let jobs_before = app.jobs_count().await;
    for b in 3..6 {
        let (body, refs) = new_students_batch(&format!("bp-{b}"), 5);
        let started = std::time::Instant::now();
        let reply = app.upsert(&body).await;
        assert!(started.elapsed().as_secs() < 10, "answered in time");
        assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        let retry_after: u64 = reply
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!(retry_after >= 1, "{retry_after}");
        history.refused.push(refs);
    }
    assert_eq!(app.jobs_count().await, jobs_before, "a 503 records no job");

    app.start_worker();
    history.check(&app).await;
    // Drained: accepted again.
    let (body, refs) = new_students_batch("bp-after", 5);
    history.accept(app.upsert_async(&body).await, refs);
    history.check(&app).await;
    app.cleanup().await;
}
