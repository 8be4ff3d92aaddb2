//! Waiting and jobs: `Prefer: respond-async` / `wait=N` answers 202 with
//! `Location`, `Retry-After` and `Preference-Applied`; a 202 is durable even with
//! no worker running; `GET /v3/jobs/{id}` and `GET /v3/jobs`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

#[track_caller]
fn assert_accepted(reply: &Reply, preference: Option<&str>) -> String {
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let job_id = reply.body["jobId"].as_str().expect("jobId").to_string();
    assert!(Uuid::parse_str(&job_id).is_ok());
    let status = reply.body["status"].as_str().unwrap_or_default();
    assert!(
        status == "queued" || status == "processing",
        "{}",
        reply.body
    );
    let status_url = reply.body["statusUrl"].as_str().expect("statusUrl");
    assert!(
        status_url.ends_with(&format!("/v3/jobs/{job_id}")),
        "{status_url}"
    );
    let location = reply.header("location").expect("Location");
    assert!(
        location.ends_with(&format!("/v3/jobs/{job_id}")),
        "{location}"
    );
    let retry_after = reply.header("retry-after").expect("Retry-After");
    let seconds: u64 = retry_after.trim().parse().expect("Retry-After in seconds");
    assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
    if let Some(preference) = preference {
        let applied = reply
            .header("preference-applied")
            .expect("Preference-Applied");
        assert!(
            applied.replace(' ', "").contains(preference),
            "Preference-Applied {applied:?} names {preference}"
        );
    }
    job_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn respond_async_answers_202_then_the_job_completes() {
    let app = spawn_app().await;
    let reply = send(
        app.batch_request(&example_payload())
            .header("Prefer", "respond-async"),
    )
    .await;
    let job_id = assert_accepted(&reply, Some("respond-async"));

    let job = app.wait_for_job(&job_id).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["jobId"], job_id);
    assert_eq!(job["dryRun"], false);
    assert_eq!(
        job["summary"],
        json!({"total": 2, "created": 2, "updated": 0, "unchanged": 0, "failed": 0})
    );
    let results = results_of(&job);
    assert_eq!(results[0]["externalReferenceId"], "SIS-1001");
    // The mailer may already have sent it (live outbox state).
    assert!(
        ["queued", "sent"].contains(&results[1]["credentialsEmail"].as_str().unwrap_or_default()),
        "{job}"
    );
    assert!(
        job["completedAt"].is_string() && job["expiresAt"].is_string(),
        "{job}"
    );
    assert_eq!(app.students_count().await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_202_is_durable_while_no_worker_runs() {
    let mut app = spawn_app_with(TestOptions::default().workers(0)).await;

    // wait=1 with no worker: 202 after about a second.
    let started = Instant::now();
    let reply = send(
        app.batch_request(&batch(vec![student("durable-1")]))
            .header("Prefer", "wait=1"),
    )
    .await;
    let elapsed = started.elapsed();
    let waited_job = assert_accepted(&reply, Some("wait=1"));
    assert!(elapsed >= Duration::from_millis(900), "waited {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "waited {elapsed:?}");

    let async_job = assert_accepted(
        &send(
            app.batch_request(&batch(vec![student("durable-2")]))
                .header("Prefer", "respond-async"),
        )
        .await,
        Some("respond-async"),
    );
    for job_id in [&waited_job, &async_job] {
        let job = app.get_json(&format!("/v3/jobs/{job_id}")).await;
        assert_eq!(job.status, StatusCode::OK);
        assert_eq!(job.body["status"], "queued", "{}", job.body);
        assert!(job.body.get("results").is_none() || job.body["results"].is_null());
        assert!(job.body.get("summary").is_none() || job.body["summary"].is_null());
    }
    // Durably in the broker.
    let (messages, consumers) = app.queue_counts().await.expect("the batch queue exists");
    assert_eq!((messages, consumers), (2, 0));
    assert_eq!(app.students_count().await, 0);

    // A worker started later processes both.
    app.start_worker();
    for job_id in [&waited_job, &async_job] {
        let job = app.wait_for_job(job_id).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["summary"]["created"], 1);
    }
    assert_eq!(app.students_count().await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_jobs_are_404() {
    let app = spawn_app().await;
    for path in [
        format!("/v3/jobs/{}", Uuid::new_v4()),
        "/v3/jobs/not-a-uuid".to_string(),
    ] {
        let reply = app.get_json(&path).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.body
        );
        assert!(reply.content_type().starts_with("application/problem+json"));
    }
    app.cleanup().await;
}

fn jobs_of(body: &Value) -> Vec<Value> {
    body["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("jobs array: {body}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_list_filters_pages_and_sorts_newest_first() {
    let mut app = spawn_app_with(TestOptions::default().workers(0)).await;
    let mut submitted = Vec::new();
    for i in 0..5 {
        submitted.push(
            app.upsert_async(&batch(vec![student(&format!("list-{i}"))]))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let queued = app.get_json("/v3/jobs?status=queued").await;
    assert_eq!(queued.status, StatusCode::OK, "{}", queued.body);
    let listed: Vec<String> = jobs_of(&queued.body)
        .iter()
        .map(|job| job["jobId"].as_str().unwrap().to_string())
        .collect();
    let mut newest_first = submitted.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    let completed = app.get_json("/v3/jobs?status=completed").await;
    assert!(jobs_of(&completed.body).is_empty(), "{}", completed.body);

    app.start_worker();
    for job_id in &submitted {
        app.wait_for_job(job_id).await;
    }
    let queued = app.get_json("/v3/jobs?status=queued").await;
    assert!(jobs_of(&queued.body).is_empty(), "{}", queued.body);

    // Pages of two: 2 + 2 + 1, newest first, no results in the list.
    let mut seen = Vec::new();
    let mut path = "/v3/jobs?status=completed&limit=2".to_string();
    let mut pages = 0;
    loop {
        let page = app.get_json(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let jobs = jobs_of(&page.body);
        assert!(jobs.len() <= 2);
        for job in &jobs {
            assert_eq!(job["status"], "completed");
            assert!(
                job.get("results").is_none(),
                "lists carry no results: {job}"
            );
            seen.push(job["jobId"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page.body["nextCursor"].as_str() {
            Some(cursor) => {
                assert!(
                    cursor
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)),
                    "URL-safe cursor: {cursor}"
                );
                path = format!("/v3/jobs?status=completed&limit=2&cursor={cursor}");
            }
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen, newest_first);
    assert_distinct(&seen);

    // Without a filter: all five.
    let all = app.get_json("/v3/jobs").await;
    assert_eq!(jobs_of(&all.body).len(), 5, "{}", all.body);

    for bad in ["/v3/jobs?status=bogus", "/v3/jobs?limit=0"] {
        let reply = app.get_json(bad).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            reply.body
        );
    }
    app.cleanup().await;
}
