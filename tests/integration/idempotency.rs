//! `Idempotency-Key`: a replay attaches to the original job; a different body is
//! refused; keys are scoped to the school.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

fn keyed(app: &TestApp, key: &str, body: &str) -> reqwest::RequestBuilder {
    app.post("/v3/students/batch-upsert")
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_returns_the_original_job() {
    let app = spawn_app().await;
    let body = r#"{"students":[{"externalReferenceId":"i-1","firstName":"A","lastName":"B"},{"externalReferenceId":"i-2","firstName":"A","lastName":"B","email":"bad"}],"options":{"dryRun":false}}"#;
    let first = send(keyed(&app, "key-1", body)).await;
    assert_eq!(first.status, StatusCode::MULTI_STATUS, "{}", first.body);
    assert_ne!(first.header("idempotent-replayed").as_deref(), Some("true"));
    let job_id = first.body["jobId"].clone();

    // Same JSON value, different key order and whitespace.
    let reordered = r#"{
        "options": {"dryRun": false},
        "students": [
            {"lastName": "B", "firstName": "A", "externalReferenceId": "i-1"},
            {"email": "bad", "externalReferenceId": "i-2", "lastName": "B", "firstName": "A"}
        ]
    }"#;
    for replay_body in [body, reordered] {
        let replay = send(keyed(&app, "key-1", replay_body)).await;
        assert_eq!(replay.status, StatusCode::MULTI_STATUS, "{}", replay.body);
        assert_eq!(
            replay.header("idempotent-replayed").as_deref(),
            Some("true")
        );
        assert_eq!(replay.body["jobId"], job_id);
        assert_eq!(replay.body["results"], first.body["results"]);
        assert_eq!(replay.body["summary"], first.body["summary"]);
    }
    assert_eq!(app.jobs_count().await, 1, "nothing processed twice");
    assert_eq!(app.students_count().await, 1);

    // A replay that asks for respond-async still gets the finished answer.
    let replay = send(keyed(&app, "key-1", body).header("Prefer", "respond-async")).await;
    assert_eq!(replay.status, StatusCode::MULTI_STATUS, "{}", replay.body);
    assert_eq!(replay.body["jobId"], job_id);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );

    // A new key is a new job.
    let other = send(keyed(&app, "key-2", body)).await;
    assert_eq!(other.status, StatusCode::MULTI_STATUS);
    assert_ne!(other.body["jobId"], job_id);
    assert_eq!(other.body["results"][0]["status"], "unchanged");
    assert_eq!(app.jobs_count().await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_a_different_body_is_422() {
    let app = spawn_app().await;
    let body = batch(vec![student("k-1")]).to_string();
    let first = send(keyed(&app, "reused", &body)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);

    for different in [
        batch(vec![student("k-2")]),
        batch_with(vec![student("k-1")], json!({"dryRun": true})),
        batch(vec![student("k-1"), student("k-1b")]),
    ] {
        let reply = send(keyed(&app, "reused", &different.to_string())).await;
        assert_problem(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        );
    }
    assert_eq!(app.jobs_count().await, 1);
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_school() {
    let app = spawn_app().await;
    let (_, other_key) = app.create_school("Other School").await;
    let body_a = batch(vec![student("scope-a")]).to_string();
    let body_b = batch(vec![student("scope-b")]).to_string();
    let a = send(keyed(&app, "shared-key", &body_a)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // School B: same key, different body → an independent job, not a 422.
    let b = send(
        app.client
            .post(app.url("/v3/students/batch-upsert"))
            .bearer_auth(&other_key)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "shared-key")
            .body(body_b),
    )
    .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_ne!(b.body["jobId"], a.body["jobId"]);
    assert_ne!(b.header("idempotent-replayed").as_deref(), Some("true"));

    // School B with A's exact body and key: still its own job, own student.
    let b2 = send(
        app.client
            .post(app.url("/v3/students/batch-upsert"))
            .bearer_auth(&other_key)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "shared-key-2")
            .body(body_a.clone()),
    )
    .await;
    assert_eq!(b2.status, StatusCode::OK, "{}", b2.body);
    assert_eq!(b2.body["results"][0]["status"], "created");
    assert_eq!(app.students_count().await, 3);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_queued_job_is_202_with_the_same_job() {
    let mut app = spawn_app_with(TestOptions::default().workers(0)).await;
    let body = batch(vec![student("q-1")]).to_string();
    let first = send(keyed(&app, "queued-key", &body).header("Prefer", "respond-async")).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let job_id = first.body["jobId"].as_str().unwrap().to_string();

    let replay = send(keyed(&app, "queued-key", &body).header("Prefer", "wait=1")).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.body);
    assert_eq!(replay.body["jobId"], job_id);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert!(
        replay
            .header("location")
            .unwrap()
            .ends_with(&format!("/v3/jobs/{job_id}"))
    );
    assert_eq!(app.jobs_count().await, 1);

    app.start_worker();
    let job = app.wait_for_job(&job_id).await;
    assert_eq!(job["status"], "completed");
    let replay = send(keyed(&app, "queued-key", &body)).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body["jobId"], job_id);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_make_one_job() {
    let app = spawn_app().await;
    let body = batch((0..50).map(|i| student(&format!("race-{i}"))).collect()).to_string();
    let requests = (0..6).map(|_| send(keyed(&app, "race-key", &body)));
    let replies = futures_util::future::join_all(requests).await;
    let job_ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
            reply.body["jobId"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(job_ids.len(), 1, "one job for one key: {job_ids:?}");
    let replayed = replies
        .iter()
        .filter(|reply| reply.header("idempotent-replayed").as_deref() == Some("true"))
        .count();
    assert_eq!(replayed, 5, "all but the original are replays");
    assert_eq!(app.jobs_count().await, 1);
    assert_eq!(app.students_count().await, 50);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_key_is_rejected() {
    let app = spawn_app().await;
    let body = batch(vec![student("long-key")]).to_string();
    let ok = send(keyed(&app, &"k".repeat(255), &body)).await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "255 characters is allowed: {}",
        ok.body
    );
    let reply = send(keyed(&app, &"k".repeat(256), &body)).await;
    assert!(
        reply.status == StatusCode::BAD_REQUEST || reply.status == StatusCode::UNPROCESSABLE_ENTITY,
        "{}: {}",
        reply.status,
        reply.body
    );
    assert!(reply.content_type().starts_with("application/problem+json"));
    assert_eq!(app.jobs_count().await, 1);
    app.cleanup().await;
}

/// A job row recorded under `key` by a request that never got its publish
/// confirmed (as if that API process died), `age` ago.
async fn unpublished_job(app: &TestApp, key: &str, body: &str, age: &str) -> uuid::Uuid {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    let fingerprint = studentsync_api::routes::batch::fingerprint(&value);
    let job_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, school_id, status, dry_run, total, idempotency_key, body_fingerprint, published, created_at)
         VALUES ($1, $2::uuid, 'queued', false, 1, $3, $4, false, now() - $5::interval)",
    )
    .bind(job_id)
    .bind(&app.school_id)
    .bind(key)
    .bind(fingerprint)
    .bind(age)
    .execute(&app.pool)
    .await
    .unwrap();
    job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_attaches_to_a_job_whose_publish_is_unconfirmed() {
    let app = spawn_app().await;
    let body = r#"{"students":[{"externalReferenceId":"u-1","firstName":"A","lastName":"B"}]}"#;
    unpublished_job(&app, "in-flight", body, "1 second").await;
    let started = std::time::Instant::now();
    let reply = send(keyed(&app, "in-flight", body).header("Prefer", "respond-async")).await;
    // Not a 202: that batch may never reach the queue.
    assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(reply.header("retry-after").is_some());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(app.student_by_ref("u-1").await.is_none());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_of_an_abandoned_unpublished_job_is_taken_over() {
    let app = spawn_app().await;
    let body = r#"{"students":[{"externalReferenceId":"a-1","firstName":"A","lastName":"B"}]}"#;
    let abandoned = unpublished_job(&app, "abandoned", body, "1 minute").await;
    let reply = send(keyed(&app, "abandoned", body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_ne!(reply.body["jobId"], abandoned.to_string());
    assert_ne!(reply.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(results_of(&reply.body)[0]["status"], "created");
    // The abandoned row is gone; the key now names the new job.
    let gone = app.get_json(&format!("/v3/jobs/{abandoned}")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let replay = send(keyed(&app, "abandoned", body)).await;
    assert_eq!(replay.body["jobId"], reply.body["jobId"]);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    app.cleanup().await;
}
