//! Fault 1: worker processes SIGKILLed again and again while batches are in
//! flight. Every accepted batch still completes (restarted workers pick the
//! unacked messages up), exactly as after one clean run.

use std::time::Duration;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_batch_lose_nothing_and_duplicate_nothing() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let mut workers = vec![app.spawn_worker_process(), app.spawn_worker_process()];
    app.wait_for_consumer_count(2).await;

    let mut history = History::default();
    for round in 0..4 {
        // Submit a few batches, then SIGKILL one worker while they are being
        // applied and start a fresh one in its place.
        for b in 0..3 {
            let (body, refs) = new_students_batch(&format!("kill-{round}-{b}"), 300);
            let job_id = app.upsert_async(&body).await;
            history.accept(job_id, refs);
        }
        tokio::time::sleep(Duration::from_millis(100 + 120 * round)).await;
        let victim = (round as usize) % workers.len();
        workers[victim].child.start_kill().expect("SIGKILL");
        let _ = workers[victim].child.wait().await;
        workers[victim] = app.spawn_worker_process();
    }
    history.check(&app).await;
    for worker in &mut workers {
        assert!(worker.is_running(), "survivors still run");
    }
    drop(workers);
    app.cleanup().await;
}
