//! Hostile input and abuse (issue #5): bodies that never end, wrong types and
//! control characters in every field, inputs built to amplify into huge error
//! lists, one school flooding the service, and secrets that must never reach a
//! log. Every answer must be a 4xx problem or a 2xx, never a 5xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

const FIVE_MIB: usize = 5 * 1024 * 1024;

/// A raw HTTP/1.1 answer read off a socket.
struct RawReply {
    status: u16,
    head: String,
    body: Value,
}

/// Reads one response (head and a Content-Length body) from `reader`.
async fn read_raw_reply(reader: &mut (impl AsyncReadExt + Unpin)) -> RawReply {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = reader.read(&mut chunk).await.expect("read the answer");
        assert!(read > 0, "connection closed before an answer");
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head}"));
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = reader.read(&mut chunk).await.expect("read the body");
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = serde_json::from_slice(&buffer[head_end..]).unwrap_or(Value::Null);
    RawReply { status, head, body }
}

fn host_of(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_never_ends_is_cut_off_at_5_mib() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let host = host_of(&app);
    let stream = TcpStream::connect(&host).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST /v3/students/batch-upsert HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.api_key
    );
    writer.write_all(head.as_bytes()).await.unwrap();

    // Up to 64 MiB of whitespace in 64 KiB chunks, never the final chunk.
    const OFFERED: usize = 64 * 1024 * 1024;
    let written = Arc::new(AtomicUsize::new(0));
    let counter = written.clone();
    let sender = tokio::spawn(async move {
        let payload = vec![b' '; 64 * 1024];
        let mut framed = format!("{:x}\r\n", payload.len()).into_bytes();
        framed.extend_from_slice(&payload);
        framed.extend_from_slice(b"\r\n");
        while counter.load(Ordering::Relaxed) < OFFERED {
            match tokio::time::timeout(Duration::from_secs(5), writer.write_all(&framed)).await {
                Ok(Ok(())) => counter.fetch_add(payload.len(), Ordering::Relaxed),
                // The server closed the connection, or stopped reading.
                _ => break,
            };
        }
    });

    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(30), read_raw_reply(&mut reader))
        .await
        .expect("an answer while the body is still being sent");
    let answered_after = started.elapsed();
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{}",
        reply.head
    );
    assert_eq!(reply.body["code"], "payload_too_large", "{}", reply.body);
    sender.await.unwrap();
    let sent = written.load(Ordering::Relaxed);
    eprintln!(
        "chunked body: 413 after {answered_after:?}; the client got {:.1} MiB into the socket before the server stopped reading",
        sent as f64 / 1048576.0
    );
    // The server read the limit, no more: what the client managed to write
    // beyond it sits in socket buffers (a few MiB at most), never 64 MiB.
    assert!(sent >= FIVE_MIB, "sent only {sent} bytes");
    assert!(
        sent < 32 * 1024 * 1024,
        "the server kept reading: {sent} bytes"
    );
    assert_eq!(app.jobs_count().await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_5_mib_is_refused_without_reading_on_any_route() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let host = host_of(&app);
    let id = uuid::Uuid::new_v4();
    for (path, token) in [
        ("/v3/students/batch-upsert".to_string(), app.api_key.clone()),
        (format!("/v3/students/{id}/archive"), app.api_key.clone()),
        ("/v3/admin/schools".to_string(), app.admin_token.clone()),
    ] {
        let mut stream = TcpStream::connect(&host).await.unwrap();
        // Headers only: a server waiting for the 100 MiB would never answer.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            100 * 1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), read_raw_reply(&mut stream))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer without the body"));
        assert_eq!(reply.status, 413, "{path}: {}", reply.head);
        assert_eq!(reply.body["code"], "payload_too_large", "{path}");
    }
    assert_eq!(app.jobs_count().await, 0);
    assert_eq!(app.count("schools").await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_json_type_in_every_field_is_a_per_item_invalid_type() {
    let app = spawn_app().await;
    let fields = [
        "externalReferenceId",
        "externalReferenceType",
        "firstName",
        "lastName",
        "email",
        "phone",
        "photoUrl",
        "fileNumber",
        "curriculumName",
        "company",
        "badgeId",
    ];
    let wrong = [
        json!(0),
        json!(-1.5e300),
        json!(18446744073709551615u64),
        json!(true),
        json!(false),
        json!([]),
        json!(["x"]),
        json!({}),
        json!({"a": "b"}),
    ];
    let mut items = Vec::new();
    let mut expected = Vec::new();
    for field in fields {
        for value in &wrong {
            let mut item = student(&format!("wt-{}", items.len()));
            item[field] = value.clone();
            items.push(item);
            expected.push(format!("/students/{}/{field}", expected.len()));
        }
    }
    // Tags: not an array, or an array holding something other than strings.
    for value in [json!("a"), json!(1), json!(true), json!({})] {
        let mut item = student(&format!("wt-{}", items.len()));
        item["tags"] = value;
        items.push(item);
        expected.push(format!("/students/{}/tags", expected.len()));
    }
    for value in [json!(1), json!(null), json!(true), json!([]), json!({})] {
        let mut item = student(&format!("wt-{}", items.len()));
        item["tags"] = json!(["ok", value]);
        items.push(item);
        expected.push(format!("/students/{}/tags/1", expected.len()));
    }
    // And items that are not objects at all.
    for value in [json!(1), json!("s"), json!(null), json!(true), json!([{}])] {
        items.push(value);
        expected.push(format!("/students/{}", expected.len()));
    }
    let job = app.upsert_ok(&batch(items)).await;
    let results = results_of(&job);
    for (index, pointer) in expected.iter().enumerate() {
        assert_item_errors(&job, index, &[("invalid_type", pointer)]);
        // The id is echoed only when it was a string.
        let echoed = &results[index]["externalReferenceId"];
        if pointer.ends_with("/externalReferenceId")
            || !pointer.contains("/tags") && pointer.matches('/').count() == 2
        {
            assert!(echoed.is_null(), "{}", results[index]);
        }
    }
    assert_eq!(app.students_count().await, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_follow_the_contract_and_the_rest_of_unicode_is_stored_as_sent() {
    let app = spawn_app().await;
    let mut items = Vec::new();
    // Every C0 control character in a value, and alone as an id suffix.
    for code in 0u32..0x20 {
        let c = char::from_u32(code).unwrap();
        let mut item = student(&format!("c0-{code:02x}"));
        item["lastName"] = json!(format!("a{c}b"));
        items.push(item);
    }
    // DEL, C1 controls, and other characters that are not C0: accepted.
    let exotic = [
        "\u{7f}",
        "\u{80}\u{85}\u{9f}",
        "\u{200b}\u{200d}\u{feff}",
        "\u{202e}gnp.exe",
        "e\u{301}\u{301}\u{301}",
        "\u{10ffff}\u{1f600}",
        "a\u{2028}b\u{2029}c",
        "\\\"/'<>&%00",
    ];
    for (n, text) in exotic.iter().enumerate() {
        let mut item = student(&format!("ex-{n}"));
        item["lastName"] = json!(text);
        item["tags"] = json!([text]);
        items.push(item);
    }
    // Longest values of astral characters (4 bytes each): lengths count characters.
    let mut long = student(&"\u{1f600}".repeat(64));
    long["firstName"] = json!("\u{1f600}".repeat(100));
    long["email"] = json!(format!("{}@example.org", "a".repeat(64)));
    long["curriculumName"] = json!("\u{10ffff}".repeat(160));
    long["tags"] = json!(
        (0..15)
            .map(|n| format!("{n:02}{}", "\u{1f600}".repeat(33)))
            .collect::<Vec<_>>()
    );
    items.push(long.clone());

    let job = app.upsert_ok(&batch(items)).await;
    let results = results_of(&job);
    for code in 0u32..0x20 {
        let index = code as usize;
        if matches!(code, 0x09 | 0x0a | 0x0d) {
            assert_eq!(results[index]["status"], "created", "{}", results[index]);
            let stored = app.student_by_ref(&format!("c0-{code:02x}")).await.unwrap();
            let expected = format!("a{}b", char::from_u32(code).unwrap());
            assert_eq!(stored["lastName"], expected.as_str());
        } else {
            assert_item_errors(
                &job,
                index,
                &[("invalid_characters", &format!("/students/{index}/lastName"))],
            );
        }
    }
    for (n, text) in exotic.iter().enumerate() {
        let index = 0x20 + n;
        assert_eq!(results[index]["status"], "created", "{}", results[index]);
        let stored = app.student_by_ref(&format!("ex-{n}")).await.unwrap();
        assert_eq!(stored["lastName"], *text);
        assert_eq!(stored["tags"], json!([text]));
    }
    let last = results.last().unwrap();
    assert_eq!(last["status"], "created", "{last}");
    let stored = app.student_by_ref(&"\u{1f600}".repeat(64)).await.unwrap();
    for field in ["firstName", "email", "curriculumName", "tags"] {
        assert_eq!(stored[field], long[field], "{field}");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_built_to_amplify_errors_are_capped_per_item() {
    let app = spawn_app().await;
    // ~1.4 MiB: 200k unknown fields; ~2 MiB: a million non-string tags.
    let mut unknown = serde_json::Map::new();
    unknown.insert("externalReferenceId".into(), json!("amp-1"));
    for n in 0..200_000 {
        unknown.insert(format!("u{n:06}"), json!(0));
    }
    let mut tags = student("amp-2");
    tags["tags"] = Value::Array(vec![json!(0); 1_000_000]);
    let body = batch(vec![Value::Object(unknown), tags, student("amp-3")]);
    let size = body.to_string().len();
    let started = Instant::now();
    let reply = app.upsert(&body).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let response_size = reply.body.to_string().len();
    eprintln!(
        "amplification: {:.1} MiB request answered in {took:?} with {response_size} bytes",
        size as f64 / 1048576.0
    );
    for (index, first, last) in [
        (0, "/students/0/u000000", "/students/0/u000099"),
        (1, "/students/1/tags/0", "/students/1/tags/99"),
    ] {
        let errors = reply.body["results"][index]["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 100, "item {index}");
        assert_eq!(errors[0]["pointer"], first);
        assert_eq!(errors[99]["pointer"], last);
        let detail = errors[99]["detail"].as_str().unwrap();
        assert!(detail.contains("further errors"), "{detail}");
    }
    assert_eq!(reply.body["results"][2]["status"], "created");
    assert!(response_size < 64 * 1024, "{response_size} bytes");
    // The stored job is as small as the answer.
    let stored: i32 = sqlx::query_scalar("SELECT octet_length(results::text) FROM jobs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(stored < 64 * 1024, "{stored} bytes stored");

    // Envelope errors are capped the same way (a 422, not megabytes of errors).
    let mut envelope = serde_json::Map::new();
    envelope.insert("students".into(), json!([student("amp-4")]));
    for n in 0..100_000 {
        envelope.insert(format!("e{n:06}"), json!(0));
    }
    let reply = app.upsert(&Value::Object(envelope)).await;
    let problem = assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert_eq!(problem["errors"].as_array().unwrap().len(), 100);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_headers_and_paths_never_cause_a_server_error() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("known")])).await;
    let long = "x".repeat(60_000);
    let many: String = (0..5_000).map(|n| format!("p{n}=v&")).collect();
    let paths = [
        // NUL and other bytes Postgres text cannot take, in a lookup.
        "/v3/students?externalReferenceId=known%00".to_string(),
        "/v3/students?externalReferenceId=%00".to_string(),
        "/v3/students?externalReferenceId=%C0%80".to_string(),
        "/v3/students?externalReferenceId=%FF%FE".to_string(),
        format!("/v3/students?externalReferenceId={long}"),
        format!("/v3/students?{many}limit=1"),
        "/v3/students?limit=%00".to_string(),
        "/v3/students?limit=99999999999999999999999".to_string(),
        "/v3/students?cursor=%00".to_string(),
        "/v3/students?cursor=////".to_string(),
        "/v3/students?archived=%00".to_string(),
        "/v3/jobs?status=%00".to_string(),
        "/v3/jobs?cursor=AAAA".to_string(),
        "/v3/jobs?cursor=MjAyNi0xMi0wM1QwMDowMDowMFp8eA".to_string(),
        "/v3/students/%00".to_string(),
        "/v3/students/00000000-0000-0000-0000-000000000000%00".to_string(),
        "/v3/jobs/..%2F..%2Fadmin".to_string(),
        format!("/v3/jobs/{long}"),
    ];
    for path in &paths {
        let reply = app.get_json(path).await;
        assert!(
            reply.status.is_success() || reply.status.is_client_error(),
            "{path}: {} {}",
            reply.status,
            reply.body
        );
        if !reply.status.is_success() {
            assert!(
                reply.content_type().starts_with("application/problem+json"),
                "{path}"
            );
        }
    }
    let lookup = app
        .get_json("/v3/students?externalReferenceId=known%00")
        .await;
    assert_eq!(lookup.status, StatusCode::OK);
    assert_eq!(lookup.body["students"], json!([]));

    // Authorization values that are not keys at all.
    for value in [
        "Bearer \u{0}".to_string(),
        format!("Bearer {}", "k".repeat(8_000)),
        "Bearer sk_\u{7f}".to_string(),
        "bearer".to_string(),
        "Bearer a b c".to_string(),
    ] {
        let Ok(header) = reqwest::header::HeaderValue::from_str(&value) else {
            continue;
        };
        let reply = send(
            app.client
                .get(app.url("/v3/students"))
                .header("Authorization", header),
        )
        .await;
        assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let raw = reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap();
    let reply = send(
        app.client
            .get(app.url("/v3/students"))
            .header("Authorization", raw),
    )
    .await;
    assert_problem(&reply, StatusCode::UNAUTHORIZED, "unauthorized");

    // Junk preferences and idempotency keys are handled, not errors.
    let reply = send(
        app.batch_request(&batch(vec![student("known")]))
            .header("Prefer", "wait=99999999999999999999999, respond-async=\"x")
            .header(
                "Idempotency-Key",
                reqwest::header::HeaderValue::from_bytes(b"k\xff").unwrap(),
            ),
    )
    .await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_school_flooding_batches_cannot_starve_the_others() {
    // 1200 students per minute: one every 50 ms, at most 1200 at once.
    let app = spawn_app_with(TestOptions::default().env("SCHOOL_STUDENTS_PER_MINUTE", 1200)).await;
    let many = |prefix: &str, count: usize| {
        batch(
            (0..count)
                .map(|n| student(&format!("{prefix}-{n}")))
                .collect(),
        )
    };
    let first = many("a", 1000);
    let reply = send(
        app.batch_request(&first)
            .header("Prefer", "wait=60")
            .header("Idempotency-Key", "flood-1"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    // 300 more do not fit (about 200 are left): refused whole, with an honest wait.
    let second = many("b", 300);
    let refused = app.upsert(&second).await;
    let problem = assert_problem(&refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("students per minute"),
        "{problem}"
    );
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry_after), "Retry-After {retry_after}");
    let policy = refused.header("ratelimit-policy").unwrap();
    assert!(policy.starts_with("\"default\";"), "{policy}");
    assert!(policy.ends_with(", \"school\";q=1200;w=60"), "{policy}");
    let state = refused.header("ratelimit").unwrap();
    assert!(state.contains(", \"school\";r=0;t="), "{state}");
    assert_eq!(app.jobs_count().await, 1, "a refused batch records nothing");

    // Another key of the same school shares the budget.
    let (_, second_key) = app.create_api_key(&app.school_id).await;
    let reply = app.upsert_as(&second_key, &second).await;
    assert_problem(&reply, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // A replay of the first batch processes nothing and is not charged.
    let replay = send(
        app.batch_request(&first)
            .header("Idempotency-Key", "flood-1"),
    )
    .await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.body);
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    // Another school is not affected at all.
    let (_, other_school) = app.create_school("Other School").await;
    let reply = app.upsert_as(&other_school, &many("c", 1000)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Reads are not charged against the student budget.
    assert_eq!(
        app.get_json("/v3/students?limit=1").await.status,
        StatusCode::OK
    );

    // Waiting as told is enough for the same batch.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(200)).await;
    let reply = send(app.batch_request(&second).header("Prefer", "wait=60")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "after Retry-After: {}",
        reply.body
    );
    assert_eq!(reply.body["summary"]["created"], 300);
    app.cleanup().await;
}

/// The `studentsync-api` binary next to the worker binary (`target/debug`).
fn api_binary() -> std::path::PathBuf {
    let worker = worker_binary();
    let api = worker.with_file_name("studentsync-api");
    assert!(
        api.exists(),
        "{} not found: run `cargo build --bins`",
        api.display()
    );
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_never_reach_the_log() {
    // The real binary at debug level, its output captured.
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let address = format!("http://127.0.0.1:{port}");
    let admin_token = format!("admin-secret-{}", uuid::Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new(api_binary())
        .envs(&app.env)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_TOKEN", &admin_token)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn studentsync-api");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let logs = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        out.extend(err);
        String::from_utf8_lossy(&out).to_string()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while app
        .client
        .get(format!("{address}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the API did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let client = &app.client;
    let created = send(
        client
            .post(format!("{address}/v3/admin/schools"))
            .bearer_auth(&admin_token)
            .json(&json!({"name": "Log School"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let key = created.body["apiKey"].as_str().unwrap().to_string();
    let school = created.body["schoolId"].as_str().unwrap().to_string();
    let second = send(
        client
            .post(format!("{address}/v3/admin/schools/{school}/api-keys"))
            .bearer_auth(&admin_token),
    )
    .await;
    let second_key = second.body["apiKey"].as_str().unwrap().to_string();
    let wrong_key = format!("sk_wrong{}", uuid::Uuid::new_v4().simple());
    let wrong_token = format!("wrong-admin-{}", uuid::Uuid::new_v4().simple());
    for token in [&key, &second_key, &wrong_key] {
        let _ = send(
            client
                .get(format!("{address}/v3/students?limit=1"))
                .bearer_auth(token),
        )
        .await;
        let _ = send(
            client
                .post(format!("{address}/v3/students/batch-upsert"))
                .bearer_auth(token)
                .header("Content-Type", "application/json")
                .header("Prefer", "respond-async")
                .body(batch(vec![student("logged?")]).to_string()),
        )
        .await;
    }
    let _ = send(
        client
            .post(format!("{address}/v3/admin/schools"))
            .bearer_auth(&wrong_token)
            .json(&json!({"name": "x"})),
    )
    .await;
    let _ = send(
        client
            .delete(format!(
                "{address}/v3/admin/api-keys/{}",
                second.body["apiKeyId"].as_str().unwrap()
            ))
            .bearer_auth(&admin_token),
    )
    .await;
    let _ = send(
        client
            .get(format!("{address}/v3/students"))
            .bearer_auth(&second_key),
    )
    .await;

    // SIGTERM: a graceful stop flushes the log.
    let pid = child.id().unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    let log = tokio::time::timeout(Duration::from_secs(10), logs)
        .await
        .unwrap()
        .unwrap();
    assert!(log.contains("studentsync-api listening"), "{log}");
    assert!(log.contains("school created"), "the log was captured");
    for secret in [&admin_token, &key, &second_key, &wrong_key, &wrong_token] {
        // Not even a recognisable half of it.
        let half = &secret[..secret.len() / 2 + 4];
        assert!(
            !log.contains(half.trim_start_matches("sk_")),
            "a secret reached the log"
        );
    }
    assert!(!log.to_ascii_lowercase().contains("authorization: bearer"));
    app.cleanup().await;
}
