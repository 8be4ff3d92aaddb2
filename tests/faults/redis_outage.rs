//! Fault 4: Redis killed, then back empty (a restart without persistence, same as
//! a flush). Job status and results are still served (from Postgres), a
//! synchronous request falls back to polling, rate limiting fails open, and once
//! Redis is back the API uses it again by itself.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, spawn_app_with};
use crate::private::redis::PrivateRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_flushed_degrades_but_serves() {
    let mut redis = PrivateRedis::start();
    let mut app = spawn_app_with(TestOptions {
        rate_limit_per_minute: 60,
        rate_limit_burst: 20,
        ..TestOptions::default()
            .workers(1)
            .env("REDIS_URL", redis.url())
    })
    .await;
    let mut history = History::default();

    // Healthy: a synchronous batch completes.
    let (body, refs) = new_students_batch("before", 5);
    let job = app.upsert_ok(&body).await;
    history.accept(job["jobId"].as_str().unwrap().to_string(), refs);

    redis.kill();
    // Redis down: job status and results come from Postgres.
    let job_id = job["jobId"].as_str().unwrap();
    let reply = app.get_json(&format!("/v3/jobs/{job_id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "completed");
    assert_eq!(reply.body["results"].as_array().unwrap().len(), 5);

    // Sync waiting falls back to polling; the rate limit fails open: more
    // requests than the burst all go through, none of them 429 or 5xx, each
    // answered well before the wait's deadline.
    for b in 0..3 {
        let (body, refs) = new_students_batch(&format!("down-{b}"), 5);
        let started = Instant::now();
        let job = app.upsert_ok(&body).await;
        eprintln!(
            "sync batch with Redis down answered in {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        history.accept(job["jobId"].as_str().unwrap().to_string(), refs);
    }
    for _ in 0..25 {
        let reply = app.get_json(&format!("/v3/jobs/{job_id}")).await;
        assert_eq!(reply.status, StatusCode::OK, "fails open: {}", reply.body);
    }
    let (body, refs) = new_students_batch("down-async", 5);
    history.accept(app.upsert_async(&body).await, refs);

    // Back, empty (as after FLUSHALL): results still served, sync works, and the
    // rate limit applies again by itself.
    redis.restart();
    let back = Instant::now();
    let (body, refs) = new_students_batch("after", 5);
    let job = app.upsert_ok(&body).await;
    history.accept(job["jobId"].as_str().unwrap().to_string(), refs);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = app.get_json(&format!("/v3/jobs/{job_id}")).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(
            Instant::now() < deadline,
            "the rate limit never applied again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "rate limit applied again {:?} after Redis restarted",
        back.elapsed()
    );
    // The checks read the jobs through the API: with a fresh key (the limit is
    // per key), since this one just spent its burst.
    let school_id = app.school_id.clone();
    app.api_key = app.create_api_key(&school_id).await.1;
    history.check(&app).await;
    app.cleanup().await;
}
