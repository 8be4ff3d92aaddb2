//! Concurrency: several worker processes sharing one queue, a worker killed in
//! the middle of a batch, and concurrent batches creating the same students.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn students(prefix: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| student(&format!("{prefix}-{i:03}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_the_queue() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;

    // The first process alone processes a batch.
    let mut first = app.spawn_worker_process();
    app.wait_for_consumer_count(1).await;
    let job = app.upsert_ok(&batch(students("solo", 5))).await;
    assert_eq!(job["summary"]["created"], 5);

    // Both consume at once: twenty batches submitted together all complete.
    let mut second = app.spawn_worker_process();
    app.wait_for_consumer_count(2).await;
    let app_ref = &app;
    let submissions = (0..20).map(|n| {
        let body = batch(students(&format!("both-{n:02}"), 15));
        async move { app_ref.upsert_async(&body).await }
    });
    let job_ids = futures_util::future::join_all(submissions).await;
    for job_id in &job_ids {
        let job = app.wait_for_job(job_id).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["summary"]["created"], 15, "{job}");
    }
    assert_eq!(app.students_count().await, 5 + 20 * 15);
    assert!(first.is_running() && second.is_running());

    // With the first one killed, the second one carries on alone.
    first.kill().await;
    app.wait_for_consumer_count(1).await;
    let job = app.upsert_ok(&batch(students("second", 7))).await;
    assert_eq!(job["summary"]["created"], 7);

    // With none running, accepted work waits in the queue for the next process.
    second.kill().await;
    app.wait_for_consumer_count(0).await;
    let waiting = app.upsert_async(&batch(students("later", 3))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let job = app.get_json(&format!("/v3/jobs/{waiting}")).await;
    assert_eq!(job.body["status"], "queued", "{}", job.body);
    let _third = app.spawn_worker_process();
    let job = app.wait_for_job(&waiting).await;
    assert_eq!(job["summary"]["created"], 3, "{job}");

    assert_eq!(app.students_count().await, 5 + 300 + 7 + 3);
    let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'completed'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(completed, 23);
    for log in [first.log(), second.log()] {
        assert!(
            log.contains(&app.namespace),
            "the process ran in the test's namespace:\n{log}"
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let mut victim = app.spawn_worker_process();
    app.wait_for_consumer_count(1).await;

    let items: Vec<Value> = (0..1000)
        .map(|i| {
            let mut item = student(&format!("kill-{i:04}"));
            item["email"] = json!(format!("k{i}@example.edu"));
            item
        })
        .collect();
    let job_id = app
        .upsert_async(&batch_with(
            items,
            json!({"onStudentCreated": {"sendCredentials": true}}),
        ))
        .await;
    // Kill it while (probably) in the middle of the batch; the outcome must be
    // the same wherever the kill lands.
    tokio::time::sleep(Duration::from_millis(150)).await;
    victim.kill().await;

    let _rescuer = app.spawn_worker_process();
    let job = app.wait_for_job(&job_id).await;
    assert_eq!(job["status"], "completed", "{job}");
    let summary = &job["summary"];
    assert_eq!(summary["total"], 1000);
    assert_eq!(summary["created"], 1000, "{summary}");
    assert_eq!(app.students_count().await, 1000);
    assert_eq!(
        app.count("credential_emails").await,
        1000,
        "exactly one email each"
    );
    let distinct_students: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT student_id) FROM credential_emails")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(distinct_students, 1000);
    app.cleanup().await;
}

/// Two worker processes applying three batches each at once: six batches in
/// flight, to make their transactions overlap.
fn batches_in_parallel() -> TestOptions {
    TestOptions::default()
        .workers(2)
        .env("WORKER_CONCURRENCY", 3)
        .env("WORKER_PREFETCH", 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_with_the_same_new_keys_create_each_once() {
    let app = spawn_app_with(batches_in_parallel()).await;
    let requests = (0..6).map(|n| {
        let items: Vec<Value> = (0..300)
            .map(|i| {
                let mut item = student(&format!("race-{i:03}"));
                item["firstName"] = json!(format!("Batch{n}"));
                item
            })
            .collect();
        let body = batch(items);
        let app = &app;
        async move { send(app.batch_request(&body).header("Prefer", "wait=60")).await }
    });
    let replies = futures_util::future::join_all(requests).await;
    let mut created = 0;
    let mut ids = BTreeSet::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let results = results_of(&reply.body);
        let summary = &reply.body["summary"];
        assert_eq!(summary["failed"], 0, "{summary}");
        assert_eq!(summary["total"], 300);
        created += summary["created"].as_u64().unwrap();
        for result in &results {
            let status = result["status"].as_str().unwrap();
            assert!(
                ["created", "updated", "unchanged"].contains(&status),
                "{result}"
            );
            ids.insert(result["studentId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        created, 300,
        "each key created exactly once across the batches"
    );
    assert_eq!(ids.len(), 300, "every batch saw the same 300 students");
    assert_eq!(app.students_count().await, 300);
    let names: Vec<String> = sqlx::query_scalar("SELECT DISTINCT first_name FROM students")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for name in names {
        assert!(name.starts_with("Batch"), "{name}");
    }
    app.cleanup().await;
}

/// Concurrent batches each changing a different field of the same students: the
/// worker reads rows without a lock and writes only the version it read, so no
/// batch may overwrite another's field with the value it read before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_updates_of_the_same_students_lose_nothing() {
    let app = spawn_app_with(batches_in_parallel()).await;
    let keys: Vec<String> = (0..300).map(|i| format!("merge-{i:03}")).collect();
    let created = app
        .upsert_ok(&batch(keys.iter().map(|key| student(key)).collect()))
        .await;
    assert_eq!(created["summary"]["created"], 300, "{created}");

    let fields = [
        "phone",
        "company",
        "badgeId",
        "fileNumber",
        "curriculumName",
        "lastName",
    ];
    for pass in 0..3 {
        let requests = fields.iter().map(|field| {
            let items: Vec<Value> = keys
                .iter()
                .map(|key| json!({"externalReferenceId": key, *field: format!("{field}-{pass}")}))
                .collect();
            let body = batch(items);
            let app = &app;
            async move { send(app.batch_request(&body).header("Prefer", "wait=60")).await }
        });
        let replies = futures_util::future::join_all(requests).await;
        for (reply, field) in replies.iter().zip(fields) {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            assert_eq!(
                reply.body["summary"]["updated"], 300,
                "{}",
                reply.body["summary"]
            );
            for result in results_of(&reply.body) {
                assert_eq!(result["changedFields"], json!([field]), "{result}");
            }
        }
        for key in keys.iter().step_by(37) {
            let found = app
                .get_json(&format!("/v3/students?externalReferenceId={key}"))
                .await;
            let stored = &found.body["students"][0];
            for field in fields {
                assert_eq!(stored[field], format!("{field}-{pass}"), "{stored}");
            }
        }
        let complete: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM students WHERE phone = $1 AND company = $2 AND badge_id = $3
               AND file_number = $4 AND curriculum_name = $5 AND last_name = $6",
        )
        .bind(format!("phone-{pass}"))
        .bind(format!("company-{pass}"))
        .bind(format!("badgeId-{pass}"))
        .bind(format!("fileNumber-{pass}"))
        .bind(format!("curriculumName-{pass}"))
        .bind(format!("lastName-{pass}"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            complete, 300,
            "every batch's field survived the others (pass {pass})"
        );
    }
    app.cleanup().await;
}
