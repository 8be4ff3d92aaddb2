//! Fault 7, the API half: SIGTERM to an API process while synchronous requests
//! wait for their jobs. It stops accepting connections, answers every request in
//! flight (a waiting one gets 202 with its job id at once: the batch is durably
//! accepted) and exits 0; the jobs complete once a worker runs.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, send, spawn_app_with, workspace_binary};
use crate::private::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_api_answers_what_it_holds_and_exits_zero() {
    let mut app = spawn_app_with(TestOptions::default().workers(0)).await;
    let port = free_port();
    let mut api =
        tokio::process::Command::new(workspace_binary("STUDENTSYNC_API_BIN", "studentsync-api"))
            .envs(&app.env)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn studentsync-api");
    let address = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let healthz = format!("{address}/healthz");
    while !app
        .client
        .get(&healthz)
        .send()
        .await
        .is_ok_and(|response| response.status() == StatusCode::OK)
    {
        assert!(Instant::now() < deadline, "the API process did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Four synchronous requests wait on the API process (no worker runs).
    let mut waiting = Vec::new();
    let mut refs_by_prefix = Vec::new();
    for r in 0..4 {
        let prefix = format!("drain-{r}");
        let (body, refs) = new_students_batch(&prefix, 50);
        refs_by_prefix.push(refs);
        let request = app
            .client
            .post(format!("{address}/v3/students/batch-upsert"))
            .bearer_auth(&app.api_key)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        waiting.push(tokio::spawn(send(request)));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.jobs_count().await < 4 {
        assert!(Instant::now() < deadline, "the requests were not recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    crate::sigterm(api.id().expect("running"));
    let signalled = Instant::now();

    let mut history = History::default();
    for (request, refs) in waiting.into_iter().zip(refs_by_prefix) {
        let reply = request.await.expect("request task");
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert!(reply.header("location").is_some());
        history.accept(reply.body["jobId"].as_str().unwrap().to_string(), refs);
    }
    eprintln!(
        "in-flight requests answered {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(signalled.elapsed() < Duration::from_secs(5));
    let exit = tokio::time::timeout(Duration::from_secs(15), api.wait())
        .await
        .expect("the API exits within 15 s of SIGTERM")
        .expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens after the exit"
    );

    // Accepted means accepted: a worker completes every job.
    app.start_worker();
    history.check(&app).await;
    app.cleanup().await;
}
