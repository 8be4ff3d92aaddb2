//! Fault 7: SIGTERM to a worker process in the middle of its work: it stops
//! consuming, finishes (or hands back) the batches in hand, acks what committed
//! and exits 0 promptly; another worker completes the rest.

use std::time::{Duration, Instant};

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_drains_and_exits_zero() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let mut worker = app.spawn_worker_process();
    app.wait_for_consumer_count(1).await;

    let mut history = History::default();
    for b in 0..8 {
        let (body, refs) = new_students_batch(&format!("term-{b}"), 300);
        history.accept(app.upsert_async(&body).await, refs);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    crate::sigterm(worker.child.id().expect("running"));
    let started = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
        .await
        .expect("the worker exits within 30 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}\n{}", worker.log());
    let log = worker.log();
    assert!(log.contains("worker stopped"), "{log}");
    eprintln!("worker drained in {:?}", started.elapsed());

    // It stopped consuming: the queue keeps what it did not take.
    app.wait_for_consumer_count(0).await;
    let _rescuer = app.spawn_worker_process();
    history.check(&app).await;
    app.cleanup().await;
}
