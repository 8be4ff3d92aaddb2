//! Errors of a whole request (API.md, "Errors of a whole request"): each is an
//! RFC 9457 problem with a stable code, and nothing is written or enqueued.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const BATCH: &str = "/v3/students/batch-upsert";
const FIVE_MIB: usize = 5 * 1024 * 1024;

async fn post_raw(
    app: &TestApp,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut request = app.post(BATCH).header("Prefer", "wait=60");
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    send(request.body(body)).await
}

/// A raw HTTP/1.1 POST of `body` to the batch endpoint with
/// `Expect: 100-continue`: the body is only sent if the server asks for it.
/// (reqwest cannot do this, and a server that answers 413 before reading a big
/// body and closes the connection leaves a client that is still writing with a
/// broken pipe instead of the answer.)
async fn post_expecting_continue(app: &TestApp, body: Vec<u8>) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let address = app.address.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {BATCH} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        app.api_key,
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();

    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut body = Some(body);
    let read_all = async {
        loop {
            let n = reader.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..n]);
            if let Some(body) = body.take_if(|_| received.starts_with(b"HTTP/1.1 100")) {
                // The server wants the body after all: send it (errors ignored).
                let _ = writer.write_all(&body).await;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read_all)
        .await
        .expect("an answer to an oversized request");
    parse_raw_response(&received)
}

/// Parses the last (non-1xx) response of a raw HTTP/1.1 exchange.
fn parse_raw_response(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).to_string();
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("an HTTP response: {text:?}"));
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {text:?}"));
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(
                    reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                    value.trim().parse().unwrap(),
                );
            }
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|value| value.to_str().unwrap_or("").contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        let json = serde_json::from_str(&body).unwrap_or(Value::String(body));
        return Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: json,
        };
    }
}

fn dechunk(mut chunked: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = chunked.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        chunked = rest[size..].trim_start_matches("\r\n");
    }
    out
}

async fn post_json_text(app: &TestApp, body: &str) -> Reply {
    post_raw(app, Some("application/json"), body.to_string()).await
}

async fn assert_nothing_written(app: &TestApp) {
    assert_eq!(app.jobs_count().await, 0, "no job may be recorded");
    assert_eq!(app.students_count().await, 0, "no student may be written");
    if let Some((messages, _)) = app.queue_counts().await {
        assert_eq!(messages, 0, "nothing may be enqueued");
    }
}

/// `{"students":[{...,"tags": <depth-k nested arrays>}]}` has depth 3 + k.
fn nested_body(total_depth: usize) -> String {
    let inner = total_depth - 3;
    format!(
        r#"{{"students":[{{"externalReferenceId":"deep","firstName":"A","lastName":"B","tags":{}{}}}]}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let cases: Vec<(&str, String)> = vec![
        ("truncated", r#"{"students":[{"externalReferenceId":"a","firstName":"A""#.into()),
        ("truncated after the value", r#"{"students":[]"#.into()),
        ("not json at all", "students: []".into()),
        ("trailing garbage", r#"{"students":[]} x"#.into()),
        ("trailing comma", r#"{"students":[{"externalReferenceId":"a",}]}"#.into()),
        ("empty body", String::new()),
        (
            "lone high surrogate",
            r#"{"students":[{"externalReferenceId":"\ud800","firstName":"A","lastName":"B"}]}"#.into(),
        ),
        (
            "lone low surrogate",
            r#"{"students":[{"externalReferenceId":"x","firstName":"\udc00","lastName":"B"}]}"#.into(),
        ),
        (
            "duplicate top-level keys",
            r#"{"students":[{"externalReferenceId":"a","firstName":"A","lastName":"B"}],"students":[]}"#.into(),
        ),
        (
            "duplicate keys in an item",
            r#"{"students":[{"externalReferenceId":"a","firstName":"A","firstName":"C","lastName":"B"}]}"#.into(),
        ),
        (
            "duplicate keys in options",
            r#"{"students":[{"externalReferenceId":"a","firstName":"A","lastName":"B"}],"options":{"dryRun":true,"dryRun":false}}"#.into(),
        ),
        ("nesting of 129 levels", nested_body(129)),
        ("very deep nesting", "[".repeat(100_000)),
    ];
    for (case, body) in cases {
        let reply = post_json_text(&app, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{case}: expected 400, got {}: {}",
            reply.status,
            reply.body
        );
        assert_problem(&reply, StatusCode::BAD_REQUEST, "malformed_json");
    }

    // Bytes that are not UTF-8 are not JSON either.
    let mut bytes = br#"{"students":[{"externalReferenceId":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#"","firstName":"A","lastName":"B"}]}"#);
    let reply = post_raw(&app, Some("application/json"), bytes).await;
    assert_problem(&reply, StatusCode::BAD_REQUEST, "malformed_json");

    assert_nothing_written(&app).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_of_128_levels_and_surrogate_pairs_are_valid_json() {
    let app = spawn_app().await;

    // 128 levels parse; the item then fails validation (a tag that is an array).
    let reply = post_json_text(&app, &nested_body(128)).await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let result = &reply.body["results"][0];
    assert_eq!(result["status"], "failed", "{result}");
    let errors = error_pairs(result);
    assert!(
        errors.iter().all(
            |(code, pointer)| code == "invalid_type" && pointer.starts_with("/students/0/tags")
        ),
        "{result}"
    );
    assert!(!errors.is_empty(), "{result}");

    // A surrogate pair is a valid escape (U+1F600) and counts as one character.
    let body = r#"{"students":[{"externalReferenceId":"smile-\ud83d\ude00","firstName":"\ud83d\ude00","lastName":"B"}]}"#;
    let reply = post_json_text(&app, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let student = app.student_by_ref("smile-\u{1F600}").await.expect("stored");
    assert_eq!(student["firstName"], "\u{1F600}");

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_content_type_is_415() {
    let app = spawn_app().await;
    let body = batch(vec![student("a")]).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        None,
    ] {
        let reply = post_raw(&app, content_type, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {}",
            reply.body
        );
        assert_problem(
            &reply,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }
    assert_nothing_written(&app).await;

    // JSON with parameters is JSON.
    let reply = post_raw(&app, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_5_mib_is_413_and_5_mib_is_accepted() {
    let app = spawn_app().await;
    let json = batch(vec![student("big-1")]).to_string();

    // Exactly 5 MiB (JSON padded with whitespace) is within the limit.
    let mut at_limit = json.clone();
    at_limit.push_str(&" ".repeat(FIVE_MIB - at_limit.len()));
    assert_eq!(at_limit.len(), FIVE_MIB);
    let reply = post_raw(&app, Some("application/json"), at_limit).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "5 MiB exactly: {}",
        reply.body
    );
    assert_eq!(app.students_count().await, 1);
    assert_eq!(app.jobs_count().await, 1);

    // One byte more is too large. Sent with `Expect: 100-continue`, as HTTP
    // clients do for big uploads, so the 413 can be read deterministically
    // (the API answers from the declared length without reading the body).
    let mut over = batch(vec![student("big-2")]).to_string();
    over.push_str(&" ".repeat(FIVE_MIB + 1 - over.len()));
    let reply = post_expecting_continue(&app, over.into_bytes()).await;
    assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // Much larger, with a realistic (non-whitespace) payload.
    let padding = "x".repeat(7 * 1024 * 1024);
    let huge = json!({"students": [{"externalReferenceId": "big-3", "firstName": padding, "lastName": "L"}]});
    let reply = post_expecting_continue(&app, huge.to_string().into_bytes()).await;
    assert_problem(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    assert_eq!(app.students_count().await, 1, "nothing written by a 413");
    assert_eq!(app.jobs_count().await, 1, "no job recorded by a 413");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_envelope_shape_is_422_invalid_request() {
    let app = spawn_app().await;
    let ok = vec![student("a")];
    let cases: Vec<(&str, Value, &str)> = vec![
        ("students missing", json!({}), "/students"),
        (
            "students missing, options present",
            json!({"options": {}}),
            "/students",
        ),
        (
            "students is an object",
            json!({"students": {}}),
            "/students",
        ),
        (
            "students is a string",
            json!({"students": "a"}),
            "/students",
        ),
        ("students is null", json!({"students": null}), "/students"),
        (
            "options is an array",
            json!({"students": ok, "options": []}),
            "/options",
        ),
        (
            "options is a string",
            json!({"students": ok, "options": "dryRun"}),
            "/options",
        ),
        (
            "dryRun not a boolean",
            json!({"students": ok, "options": {"dryRun": "yes"}}),
            "/options",
        ),
        (
            "allowUnarchive not a boolean",
            json!({"students": ok, "options": {"allowUnarchive": 1}}),
            "/options",
        ),
        (
            "onStudentCreated not an object",
            json!({"students": ok, "options": {"onStudentCreated": true}}),
            "/options",
        ),
        (
            "sendCredentials not a boolean",
            json!({"students": ok, "options": {"onStudentCreated": {"sendCredentials": "true"}}}),
            "/options",
        ),
        (
            "unknown option",
            json!({"students": ok, "options": {"dryrun": true}}),
            "/options",
        ),
        (
            "unknown top-level field",
            json!({"students": ok, "schoolId": "x"}),
            "/schoolId",
        ),
        ("body is an array", json!([student("a")]), ""),
        ("body is a string", json!("students"), ""),
    ];
    for (case, body, pointer_prefix) in cases {
        let reply = post_json_text(&app, &body.to_string()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}: {}",
            reply.body
        );
        let problem = assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
        let errors = error_pairs(&problem);
        assert!(
            !errors.is_empty(),
            "{case}: a validation problem lists errors: {problem}"
        );
        assert!(
            errors
                .iter()
                .any(|(_, pointer)| pointer.starts_with(pointer_prefix)),
            "{case}: an error points at {pointer_prefix:?}: {problem}"
        );
    }
    assert_nothing_written(&app).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_batch_is_422_batch_empty() {
    let app = spawn_app().await;
    let reply = post_json_text(&app, r#"{"students":[]}"#).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "batch_empty");
    let reply = post_json_text(&app, r#"{"students":[],"options":{"dryRun":true}}"#).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "batch_empty");
    assert_nothing_written(&app).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_1000_students_is_422_batch_too_large() {
    let app = spawn_app().await;
    let students: Vec<Value> = (0..1001).map(|i| student(&format!("s-{i}"))).collect();
    let reply = post_json_text(&app, &batch(students).to_string()).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large");

    // Invalid items do not change that: the count alone decides.
    let students: Vec<Value> = (0..1500).map(|_| json!(1)).collect();
    let reply = post_json_text(&app, &batch(students).to_string()).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "batch_too_large");
    assert_nothing_written(&app).await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_errors_win_over_item_errors() {
    let app = spawn_app().await;
    // An unknown top-level field rejects the whole request even with good items.
    let body = json!({"students": [student("a"), student("b")], "extra": true});
    let reply = post_json_text(&app, &body.to_string()).await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    assert_nothing_written(&app).await;
    app.cleanup().await;
}
