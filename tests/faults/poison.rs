//! Fault 5: a poison batch, one whose application fails on every delivery (here
//! a trigger makes Postgres refuse to complete its job). It is dead-lettered after
//! `QUEUE_DELIVERY_LIMIT` deliveries, its job ends `failed` with a problem
//! object, nothing of it is stored, and other traffic keeps flowing meanwhile.

use std::time::Duration;

use crate::check::{History, new_students_batch};
use uuid::Uuid;

use crate::helpers::{TestOptions, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_is_dead_lettered_and_its_job_fails() {
    let mut app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .env("QUEUE_DELIVERY_LIMIT", 3),
    )
    .await;
    let (poison_body, poison_refs) = new_students_batch("poison", 3);
    let poison_job = app.upsert_async(&poison_body).await;
    // The transaction of this one batch always fails at its last statement
    // (marking the job completed), whatever its rows: a fault of the batch as a
    // whole, not of one row (rows the database rejects are isolated per item).
    let poison: Uuid = poison_job.parse().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'poisoned batch %', NEW.id;
         END $$;
         CREATE TRIGGER poison BEFORE UPDATE ON jobs FOR EACH ROW
             WHEN (NEW.id = '{poison}' AND NEW.status = 'completed')
             EXECUTE FUNCTION poison();"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
    app.start_worker();

    let mut history = History::default();
    for b in 0..4 {
        let (body, refs) = new_students_batch(&format!("healthy-{b}"), 20);
        history.accept(app.upsert_async(&body).await, refs);
    }

    let job = app
        .wait_for_job_within(&poison_job, Duration::from_secs(60))
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    let problem = &job["error"];
    assert_eq!(problem["code"], "batch_failed", "{job}");
    assert!(
        problem["type"].is_string() && problem["title"].is_string(),
        "{job}"
    );
    assert!(problem["detail"].is_string(), "{job}");
    assert!(job.get("results").is_none_or(|r| r.is_null()), "{job}");

    // Healthy batches, before and after the dead-lettering, all complete.
    let (body, refs) = new_students_batch("healthy-after", 20);
    history.accept(app.upsert_async(&body).await, refs);
    history.check(&app).await;
    for reference in &poison_refs {
        assert!(app.student_by_ref(reference).await.is_none(), "{reference}");
    }
    // The dead-letter queue was drained (the worker acked it after failing the job).
    let dead_letter_queue = app.topology().dead_letter_queue;
    let dead = app.queue_counts_of(&dead_letter_queue).await;
    assert_eq!(dead.map(|(messages, _)| messages), Some(0));
    app.cleanup().await;
}
