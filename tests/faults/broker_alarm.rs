//! Fault 6, second half: a broker memory alarm blocks publishers. The API turns
//! that into 503 + `Retry-After` within a bounded time (the confirm timeout), and
//! accepts again by itself once the alarm clears; nothing accepted is lost.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::check::{History, new_students_batch};
use crate::helpers::{TestOptions, assert_problem, send, spawn_app_with};
use crate::private::rabbitmq::PrivateRabbitMq;
use crate::submitter::ANSWER_LIMIT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_turns_publishes_into_503() {
    let broker = tokio::task::block_in_place(PrivateRabbitMq::start);
    let app = spawn_app_with(TestOptions::default().env("AMQP_URL", broker.url())).await;
    let mut history = History::default();
    let (body, refs) = new_students_batch("before", 10);
    let job = app.upsert_ok(&body).await;
    history.accept(job["jobId"].as_str().unwrap().to_string(), refs);

    tokio::task::block_in_place(|| broker.memory_alarm(true));
    for b in 0..3 {
        let (body, refs) = new_students_batch(&format!("alarm-{b}"), 10);
        let started = Instant::now();
        let reply = send(app.batch_request(&body).header("Prefer", "respond-async")).await;
        let took = started.elapsed();
        eprintln!(
            "publish under a memory alarm answered {} in {took:?}",
            reply.status
        );
        assert!(took < ANSWER_LIMIT, "answered after {took:?}");
        assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        assert!(reply.header("retry-after").is_some());
        history.refused.push(refs);
    }

    tokio::task::block_in_place(|| broker.memory_alarm(false));
    let cleared = Instant::now();
    loop {
        let (body, refs) = new_students_batch(&format!("after-{}", history.refused.len()), 10);
        let reply = send(app.batch_request(&body).header("Prefer", "respond-async")).await;
        if reply.status == StatusCode::ACCEPTED {
            history.accept(reply.body["jobId"].as_str().unwrap().to_string(), refs);
            break;
        }
        assert_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        history.refused.push(refs);
        assert!(
            cleared.elapsed() < Duration::from_secs(30),
            "still refusing 30 s after the alarm cleared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "accepting again {:?} after the alarm cleared",
        cleared.elapsed()
    );
    history.check(&app).await;
    app.cleanup().await;
    drop(broker);
}
