//! Rate limits: per API key, shared by every API instance, with RateLimit and
//! RateLimit-Policy headers on every authenticated answer and 429 + Retry-After.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

/// One request every 5 s once the burst is spent: slow enough that a loaded
/// machine cannot refill the bucket between the burst's requests.
const PER_MINUTE: u32 = 12;
const BURST: u32 = 3;

/// `r` and `t` of a `RateLimit: "default";r=<remaining>;t=<seconds>` header.
fn parse_ratelimit(value: &str) -> (u64, u64) {
    assert!(value.starts_with("\"default\""), "RateLimit: {value}");
    let mut remaining = None;
    let mut reset = None;
    for part in value.split(';').skip(1) {
        let (key, number) = part.trim().split_once('=').unwrap_or(("", ""));
        match key {
            "r" => remaining = number.parse().ok(),
            "t" => reset = number.parse().ok(),
            _ => {}
        }
    }
    (
        remaining.unwrap_or_else(|| panic!("r= in {value}")),
        reset.unwrap_or_else(|| panic!("t= in {value}")),
    )
}

#[track_caller]
fn assert_policy(reply: &Reply) {
    let policy = reply
        .header("ratelimit-policy")
        .expect("RateLimit-Policy header");
    assert_eq!(
        policy.replace(' ', ""),
        format!("\"default\";q={PER_MINUTE};w=60")
    );
}

async fn limited_app() -> TestApp {
    spawn_app_with(TestOptions {
        rate_limit_per_minute: PER_MINUTE,
        rate_limit_burst: BURST,
        ..TestOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_429_until_retry_after() {
    let app = limited_app().await;
    let mut remaining = Vec::new();
    let mut limited = None;
    for _ in 0..(BURST + 3) {
        let reply = app.get_json("/v3/students").await;
        assert_policy(&reply);
        let (r, _) = parse_ratelimit(&reply.header("ratelimit").expect("RateLimit header"));
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(reply);
            break;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        remaining.push(r);
    }
    assert_eq!(
        remaining.len() as u32,
        BURST,
        "a burst of {BURST} passes: {remaining:?}"
    );
    assert_eq!(remaining, vec![2, 1, 0], "remaining counts down");
    let limited = limited.expect("a 429 after the burst");
    assert_problem(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After on 429")
        .trim()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let (r, t) = parse_ratelimit(&limited.header("ratelimit").unwrap());
    assert_eq!(r, 0);
    assert!((1..=60).contains(&t), "t={t}");

    // A batch is limited too, and nothing is written.
    let reply = app.upsert(&batch(vec![student("limited")])).await;
    assert_problem(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(app.jobs_count().await, 0);

    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let reply = app.get_json("/v3/students").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "after Retry-After: {}",
        reply.body
    );
    assert_policy(&reply);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_per_key_and_shared_by_instances() {
    let mut app = limited_app().await;
    let second_api = app.spawn_extra_api().await;
    let (_, other_key) = app.create_api_key(&app.school_id).await;

    // Use the burst up on the first instance.
    for _ in 0..BURST {
        assert_eq!(app.get_json("/v3/students").await.status, StatusCode::OK);
    }
    assert_eq!(
        app.get_json("/v3/students").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The second instance knows.
    let reply = send(
        app.client
            .get(format!("{second_api}/v3/students"))
            .bearer_auth(&app.api_key),
    )
    .await;
    assert_problem(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another key of the same school has its own budget.
    let reply = send(
        app.client
            .get(format!("{second_api}/v3/students"))
            .bearer_auth(&other_key),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_policy(&reply);
    let (r, _) = parse_ratelimit(&reply.header("ratelimit").unwrap());
    assert_eq!(r, u64::from(BURST) - 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authenticated_answer_carries_the_headers() {
    let app = limited_app().await;
    // Success, 404 and 422 alike.
    for path in [
        "/v3/students".to_string(),
        format!("/v3/students/{}", uuid::Uuid::new_v4()),
        "/v3/students?limit=0".to_string(),
    ] {
        let reply = app.get_json(&path).await;
        assert_policy(&reply);
        assert!(reply.header("ratelimit").is_some(), "{path}");
    }
    app.cleanup().await;
}
