//! Operations: health, readiness, metrics, the OpenAPI document, 503 when the
//! queue is unreachable or full, and graceful shutdown.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

/// An address nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = send(app.client.get(app.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("m-1")])).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples: Vec<&str> = text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!samples.is_empty(), "some samples after a request: {text}");
    for line in &samples {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "metric line {line:?}"
        );
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "sample value in {line:?}"
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_its_metrics_where_asked() {
    let port = closed_port().await;
    let app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .env("WORKER_METRICS_ADDR", format!("127.0.0.1:{port}")),
    )
    .await;
    let _worker = app.spawn_worker_process();
    app.wait_for_consumer_count(1).await;
    let job = app
        .upsert_ok(&batch(vec![
            student("wm-1"),
            student("wm-2"),
            student("wm-3"),
        ]))
        .await;
    assert_eq!(job["summary"]["created"], 3, "{job}");

    let text = app
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.parse::<f64>().ok())
    };
    assert_eq!(sample("worker_batches_applied_total"), Some(1.0), "{text}");
    assert_eq!(sample("worker_students_applied_total"), Some(3.0), "{text}");
    assert_eq!(sample("mailer_emails_sent_total"), Some(0.0), "{text}");
    assert!(
        text.contains("# TYPE worker_batches_dead_lettered_total counter"),
        "{text}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_declares_every_endpoint() {
    let app = spawn_app().await;
    let reply = send(app.client.get(app.url("/openapi.json"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let document = &reply.body;
    let version = document["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3.1."), "{version}");
    let paths = document["paths"].as_object().expect("paths");

    let batch = &paths["/v3/students/batch-upsert"]["post"];
    let responses = batch["responses"].as_object().expect("batch responses");
    for status in [
        "200", "202", "207", "400", "401", "413", "415", "422", "429", "503",
    ] {
        assert!(
            responses.contains_key(status),
            "batch-upsert declares {status}: {:?}",
            responses.keys()
        );
    }
    let expected: [(&str, &str); 12] = [
        ("/v3/jobs/{jobId}", "get"),
        ("/v3/jobs", "get"),
        ("/v3/students", "get"),
        ("/v3/students/{studentId}", "get"),
        ("/v3/students/{studentId}/archive", "post"),
        ("/v3/students/{studentId}/unarchive", "post"),
        ("/v3/admin/schools", "post"),
        ("/v3/admin/schools/{schoolId}/api-keys", "post"),
        ("/v3/admin/api-keys/{apiKeyId}", "delete"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ];
    for (path, method) in expected {
        let operation = paths
            .get(path)
            .and_then(|item| item.get(method))
            .unwrap_or_else(|| panic!("{method} {path} in the document: {:?}", paths.keys()));
        assert!(operation["responses"].is_object(), "{method} {path}");
    }
    let student_get = &paths["/v3/students/{studentId}"]["get"]["responses"];
    assert!(student_get.get("404").is_some(), "{student_get}");
    let job_get = &paths["/v3/jobs/{jobId}"]["get"]["responses"];
    assert!(
        job_get.get("200").is_some() && job_get.get("404").is_some(),
        "{job_get}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_makes_batches_503_and_readyz_say_so() {
    let port = closed_port().await;
    let app = spawn_app_with(TestOptions::default().workers(0).env(
        "AMQP_URL",
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
    ))
    .await;
    assert_eq!(
        send(app.client.get(app.url("/healthz"))).await.status,
        StatusCode::OK
    );

    let ready = send(app.client.get(app.url("/readyz"))).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.body
    );
    let text = ready.body.to_string().to_lowercase();
    assert!(
        text.contains("rabbitmq") || text.contains("amqp") || text.contains("queue"),
        "{text}"
    );

    let started = std::time::Instant::now();
    let reply = app.upsert(&batch(vec![student("nowhere")])).await;
    assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "answered in {:?}",
        started.elapsed()
    );
    let retry_after: u64 = reply
        .header("retry-after")
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        app.jobs_count().await,
        0,
        "nothing written when the broker refuses"
    );
    assert_eq!(app.students_count().await, 0);

    // Reads do not need the broker.
    assert_eq!(app.get_json("/v3/students").await.status, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_batches_with_503() {
    const BOUND: usize = 2;
    let mut app = spawn_app_with(
        TestOptions::default()
            .workers(0)
            .env("QUEUE_MAX_LENGTH", BOUND),
    )
    .await;
    // RabbitMQ quorum queues apply `x-max-length` + `reject-publish` once the
    // backlog is *over* the bound, so one message past it may be accepted.
    let mut accepted = Vec::new();
    let refused = loop {
        let reference = format!("full-{}", accepted.len());
        let reply = send(
            app.batch_request(&batch(vec![student(&reference)]))
                .header("Prefer", "respond-async"),
        )
        .await;
        if reply.status != StatusCode::ACCEPTED {
            break reply;
        }
        accepted.push(reply.body["jobId"].as_str().unwrap().to_string());
        assert!(
            accepted.len() <= BOUND + 1,
            "a backlog of {} accepted with a bound of {BOUND}",
            accepted.len()
        );
    };
    assert!(
        accepted.len() >= BOUND,
        "refused below the bound: {}",
        refused.body
    );
    assert_problem(&refused, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(
        app.jobs_count().await,
        accepted.len() as i64,
        "the refused batch left no job behind"
    );

    // Drained, it accepts again.
    app.start_worker();
    for job_id in &accepted {
        app.wait_for_job(job_id).await;
    }
    let job = app.upsert_ok(&batch(vec![student("after-drain")])).await;
    assert_eq!(job["summary"]["created"], 1);
    assert_eq!(app.students_count().await, accepted.len() as i64 + 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_graceful() {
    let mut app = spawn_app_with(TestOptions::default().workers(2)).await;
    app.upsert_ok(&batch(vec![student("bye")])).await;
    let outcomes = app.stop().await;
    assert_eq!(outcomes.len(), 3);
    for (name, outcome) in outcomes {
        assert_eq!(outcome, Ok(()), "{name}");
    }
    // The port is released.
    let refused = app.client.get(app.url("/healthz")).send().await;
    assert!(refused.is_err(), "the API no longer answers");
    app.cleanup().await;
}
