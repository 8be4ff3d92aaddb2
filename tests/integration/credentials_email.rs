//! Credentials emails delivered for real, to the SMTP server of `smtp.rs`:
//! exactly one per created student with an email (none on update, dry run or
//! replay), delivered once across an SMTP outage, at most one duplicate with the
//! same Message-ID when a worker dies mid-send, refused and failing recipients
//! end `failed`, the per-school hourly cap holds, and without `SMTP_URL` the
//! email goes to the log with the password masked. Only an argon2 hash of the
//! temporary password is stored, and it matches the password that was mailed.

use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;
use crate::smtp::{Hold, Received, SmtpServer, free_port};

/// One outbox row as the tests look at it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    student_id: Uuid,
    email: String,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    /// `next_attempt_at` is at least 50 minutes away.
    deferred: bool,
}

async fn outbox(app: &TestApp) -> Vec<Row> {
    sqlx::query_as(
        "SELECT id, student_id, email, status, attempts, last_error,
                next_attempt_at > now() + interval '50 minutes' AS deferred
         FROM credential_emails ORDER BY email",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Polls the outbox until `done` holds.
async fn wait_for_outbox(
    app: &TestApp,
    limit: Duration,
    done: impl Fn(&[Row]) -> bool,
) -> Vec<Row> {
    let deadline = Instant::now() + limit;
    loop {
        let rows = outbox(app).await;
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "outbox never got there: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn all_settled(rows: &[Row]) -> bool {
    !rows.is_empty() && rows.iter().all(|row| row.status != "queued")
}

/// Fast polling and retries, mail to `smtp_url`.
fn mail_options(smtp_url: &str) -> TestOptions {
    TestOptions::default()
        .env("SMTP_URL", smtp_url)
        .env("MAIL_POLL_MS", 100)
        .env("MAIL_RETRY_BASE_MS", 300)
}

fn send_credentials() -> Value {
    json!({"onStudentCreated": {"sendCredentials": true, "newPasswordNeeded": true}})
}

fn with_email(reference: &str, email: &str) -> Value {
    let mut item = student(reference);
    item["email"] = json!(email);
    item
}

async fn password_hash(app: &TestApp, student_id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT password_hash FROM students WHERE id = $1")
        .bind(student_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

fn verifies(hash: &str, password: &str) -> bool {
    let parsed = PasswordHash::new(hash).expect("a PHC string");
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

fn expected_message_id(row: &Row) -> String {
    format!("<credentials-{}@studentsync>", row.id)
}

/// Asserts a credentials email's content: addressed to `row.email`, from the
/// school, with login, password and the new-password line, in both parts.
fn assert_credentials_email(message: &Received, row: &Row, school: &str) {
    assert_eq!(message.rcpt_to, vec![row.email.clone()], "{}", message.data);
    assert_eq!(message.mail_from, "no-reply@studentsync.invalid");
    assert_eq!(message.message_id(), expected_message_id(row));
    let from = message.header("From").unwrap();
    assert!(from.contains(school), "sent in the school's name: {from}");
    let subject = message.header("Subject").unwrap();
    assert!(subject.contains(school), "{subject}");
    let text = message.part("text/plain").expect("a text part");
    let html = message.part("text/html").expect("an HTML part");
    let password = message.password();
    assert!(password.chars().count() >= 12, "{password}");
    assert!(text.contains(&format!("Login: {}", row.email)), "{text}");
    assert!(
        html.contains(&row.email) && html.contains(&password),
        "{html}"
    );
    assert!(text.contains("choose a new password"), "{text}");
    assert!(html.contains("choose a new password"), "{html}");
}

/// The plaintext appears nowhere in the database.
async fn assert_not_stored(app: &TestApp, password: &str) {
    for table in ["students", "credential_emails", "jobs"] {
        let hits: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'"
        )))
        .bind(password)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(hits, 0, "the password is stored in {table}");
    }
}

fn credentials_email_of(job: &Value, index: usize) -> Value {
    job["results"][index]
        .get("credentialsEmail")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_per_created_student_with_an_email_and_none_otherwise() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(mail_options(&smtp.url())).await;
    app.upsert_ok(&batch(vec![with_email("m-old", "old@example.edu")]))
        .await;

    let body = batch_with(
        vec![
            with_email("m-1", "one@example.edu"),
            student("m-2"),
            with_email("m-3", "three@example.edu"),
            json!({"externalReferenceId": "m-old", "firstName": "Changed", "email": "old2@example.edu"}),
            json!({"externalReferenceId": "m-4", "email": "not-an-address"}),
        ],
        send_credentials(),
    );
    let first = send(
        app.batch_request(&body)
            .header("Idempotency-Key", "mail-once")
            .header("Prefer", "wait=60"),
    )
    .await;
    assert_eq!(first.status, StatusCode::MULTI_STATUS, "{}", first.body);
    let job_id = first.body["jobId"].as_str().unwrap().to_string();
    // A dry run predicts but sends nothing.
    let dry = app
        .upsert_ok(&batch_with(
            vec![with_email("m-dry", "dry@example.edu")],
            json!({"dryRun": true, "onStudentCreated": {"sendCredentials": true}}),
        ))
        .await;
    assert_eq!(credentials_email_of(&dry, 0), "queued");

    let rows = wait_for_outbox(&app, Duration::from_secs(60), all_settled).await;
    // Replays attach to the job: nothing is sent again.
    for _ in 0..2 {
        let replay = send(
            app.batch_request(&body)
                .header("Idempotency-Key", "mail-once")
                .header("Prefer", "wait=60"),
        )
        .await;
        assert_eq!(replay.status, StatusCode::MULTI_STATUS, "{}", replay.body);
        assert_eq!(
            replay.header("idempotent-replayed").as_deref(),
            Some("true")
        );
        assert_eq!(
            credentials_email_of(&replay.body, 0),
            "sent",
            "{}",
            replay.body
        );
    }
    // Give a wrong extra email every chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert_eq!(rows.len(), 2, "{rows:#?}");
    assert!(
        rows.iter()
            .all(|row| row.status == "sent" && row.attempts == 1),
        "{rows:#?}"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 2, "exactly one email each: {messages:#?}");
    for row in &rows {
        let copies: Vec<&Received> = messages
            .iter()
            .filter(|message| message.rcpt_to == [row.email.clone()])
            .collect();
        assert_eq!(copies.len(), 1, "{}: {messages:#?}", row.email);
        assert_credentials_email(copies[0], row, "Test School");
        let password = copies[0].password();
        let hash = password_hash(&app, row.student_id).await.expect("a hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(
            verifies(&hash, &password),
            "the stored hash matches the mailed password"
        );
        assert_not_stored(&app, &password).await;
    }

    // The job and the students show the live state.
    let job = app.get_json(&format!("/v3/jobs/{job_id}")).await.body;
    assert_eq!(credentials_email_of(&job, 0), "sent", "{job}");
    assert_eq!(credentials_email_of(&job, 1), "skipped_no_email");
    assert_eq!(credentials_email_of(&job, 2), "sent");
    assert_eq!(job["results"][3]["status"], "updated");
    assert_eq!(credentials_email_of(&job, 3), Value::Null);
    assert_eq!(credentials_email_of(&job, 4), Value::Null);
    for (reference, expected) in [
        ("m-1", json!("sent")),
        ("m-2", Value::Null),
        ("m-3", json!("sent")),
        ("m-old", Value::Null),
    ] {
        let student = app.student_by_ref(reference).await.unwrap();
        assert_eq!(student["credentialsEmail"], expected, "{student}");
        let id = student["id"].as_str().unwrap();
        let one = app.get_json(&format!("/v3/students/{id}")).await.body;
        assert_eq!(one["credentialsEmail"], expected, "{one}");
    }
    let page = app.get_json("/v3/students?limit=10").await.body;
    let shown: Vec<&Value> = page["students"]
        .as_array()
        .unwrap()
        .iter()
        .map(|student| &student["credentialsEmail"])
        .collect();
    assert_eq!(
        shown.iter().filter(|state| **state == "sent").count(),
        2,
        "{page}"
    );
    assert!(
        password_hash(
            &app,
            Uuid::parse_str(job["results"][1]["studentId"].as_str().unwrap()).unwrap()
        )
        .await
        .is_none()
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_then_back_delivers_each_email_once() {
    let port = free_port().await;
    let app = spawn_app_with(mail_options(&format!("smtp://127.0.0.1:{port}"))).await;
    let job = app
        .upsert_ok(&batch_with(
            vec![
                with_email("d-1", "d1@example.edu"),
                with_email("d-2", "d2@example.edu"),
            ],
            send_credentials(),
        ))
        .await;
    let job_id = job["jobId"].as_str().unwrap();

    // Down: attempts fail and are retried later.
    let rows = wait_for_outbox(&app, Duration::from_secs(30), |rows| {
        rows.len() == 2
            && rows
                .iter()
                .all(|row| row.status == "queued" && row.attempts >= 1 && row.last_error.is_some())
    })
    .await;
    let student = app.student_by_ref("d-1").await.unwrap();
    assert_eq!(student["credentialsEmail"], "queued", "{student}");
    let pending = app.get_json(&format!("/v3/jobs/{job_id}")).await.body;
    assert_eq!(credentials_email_of(&pending, 0), "queued", "{pending}");
    assert!(password_hash(&app, rows[0].student_id).await.is_none());

    // Back: each is delivered exactly once.
    let smtp = SmtpServer::start_on(port).await;
    smtp.wait_for_messages(2, Duration::from_secs(60)).await;
    let rows = wait_for_outbox(&app, Duration::from_secs(60), all_settled).await;
    assert!(rows.iter().all(|row| row.status == "sent"), "{rows:#?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    for row in &rows {
        let copies: Vec<&Received> = messages
            .iter()
            .filter(|message| message.message_id() == expected_message_id(row))
            .collect();
        assert_eq!(copies.len(), 1, "{row:?}");
        assert_credentials_email(copies[0], row, "Test School");
        let hash = password_hash(&app, row.student_id).await.unwrap();
        assert!(verifies(&hash, &copies[0].password()));
    }
    let done = app.get_json(&format!("/v3/jobs/{job_id}")).await.body;
    assert_eq!(credentials_email_of(&done, 0), "sent", "{done}");
    assert_eq!(credentials_email_of(&done, 1), "sent", "{done}");
    app.cleanup().await;
}

/// A worker process is SIGKILLed while the SMTP server holds its message;
/// another worker takes over. Returns the messages and the settled row.
async fn kill_while_sending(hold: Hold) -> (Vec<Received>, Row, Option<String>) {
    let smtp = SmtpServer::start().await;
    smtp.hold_next(hold);
    let mut app = spawn_app_with(mail_options(&smtp.url()).workers(0)).await;
    let mut victim = app.spawn_worker_process();
    let job_id = app
        .upsert_async(&batch_with(
            vec![with_email("k-1", "k1@example.edu")],
            send_credentials(),
        ))
        .await;
    smtp.wait_for_held(Duration::from_secs(60)).await;
    victim.kill().await;

    // The victim's transaction died with it: nothing was recorded.
    let rows = outbox(&app).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].status, "queued", "{rows:#?}");
    assert_eq!(rows[0].attempts, 0, "{rows:#?}");
    assert!(password_hash(&app, rows[0].student_id).await.is_none());

    app.start_worker();
    let rows = wait_for_outbox(&app, Duration::from_secs(60), all_settled).await;
    let job = app.wait_for_job(&job_id).await;
    assert_eq!(credentials_email_of(&job, 0), "sent", "{job}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let row = rows[0].clone();
    assert_eq!(row.status, "sent");
    assert_eq!(row.attempts, 1, "the killed attempt left no trace: {row:?}");
    let hash = password_hash(&app, row.student_id).await;
    let messages = smtp.messages();
    app.cleanup().await;
    (messages, row, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_before_the_server_accepted_sends_once() {
    let (messages, row, hash) = kill_while_sending(Hold::BeforeData).await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_credentials_email(&messages[0], &row, "Test School");
    assert!(verifies(&hash.unwrap(), &messages[0].password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_after_the_server_accepted_sends_one_duplicate_with_the_same_message_id() {
    let (messages, row, hash) = kill_while_sending(Hold::AfterData).await;
    // At-least-once at the SMTP boundary: the server accepted the first copy,
    // the worker died before it could record that, the next worker sent again.
    assert_eq!(messages.len(), 2, "{messages:#?}");
    for message in &messages {
        assert_credentials_email(message, &row, "Test School");
    }
    assert_eq!(messages[0].message_id(), messages[1].message_id());
    // The stored hash belongs to the copy that was recorded: the last one.
    let hash = hash.unwrap();
    assert!(verifies(&hash, &messages[1].password()));
    assert!(!verifies(&hash, &messages[0].password()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_cap_holds_per_school() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(mail_options(&smtp.url()).env("MAIL_PER_SCHOOL_PER_HOUR", 3)).await;
    let (_, other_key) = app.create_school("Other School").await;
    let items = |prefix: &str, count: usize| -> Vec<Value> {
        (0..count)
            .map(|i| {
                with_email(
                    &format!("{prefix}-{i}"),
                    &format!("{prefix}{i}@example.edu"),
                )
            })
            .collect()
    };
    app.upsert_ok(&batch_with(items("cap", 5), send_credentials()))
        .await;
    let other = app
        .upsert_as(&other_key, &batch_with(items("oth", 2), send_credentials()))
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);

    let rows = wait_for_outbox(&app, Duration::from_secs(60), |rows| {
        rows.len() == 7
            && rows.iter().filter(|row| row.status == "sent").count() == 5
            && rows.iter().filter(|row| row.deferred).count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 5, "{messages:#?}");
    let capped: Vec<&Row> = rows
        .iter()
        .filter(|row| row.email.starts_with("cap"))
        .collect();
    assert_eq!(
        capped.iter().filter(|row| row.status == "sent").count(),
        3,
        "{rows:#?}"
    );
    for row in capped.iter().filter(|row| row.status == "queued") {
        assert!(row.deferred, "pushed to when a slot frees: {row:?}");
        assert_eq!(row.attempts, 0, "deferring is not an attempt: {row:?}");
    }
    assert!(
        rows.iter()
            .filter(|row| row.email.starts_with("oth"))
            .all(|row| row.status == "sent"),
        "another school is not held back: {rows:#?}"
    );
    let mut states: Vec<String> = Vec::new();
    for i in 0..5 {
        let student = app.student_by_ref(&format!("cap-{i}")).await.unwrap();
        states.push(student["credentialsEmail"].as_str().unwrap().to_string());
    }
    states.sort();
    assert_eq!(states, ["queued", "queued", "sent", "sent", "sent"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipients_fail_after_bounded_tries() {
    let smtp = SmtpServer::start().await;
    smtp.refuse("gone@example.edu", "550 5.1.1 no such mailbox");
    smtp.refuse("busy@example.edu", "451 4.3.0 try again later");
    let app = spawn_app_with(
        mail_options(&smtp.url())
            .env("MAIL_MAX_ATTEMPTS", 3)
            .env("MAIL_RETRY_BASE_MS", 100),
    )
    .await;
    let job = app
        .upsert_ok(&batch_with(
            vec![
                with_email("f-1", "gone@example.edu"),
                with_email("f-2", "busy@example.edu"),
                with_email("f-3", "fine@example.edu"),
            ],
            send_credentials(),
        ))
        .await;
    let rows = wait_for_outbox(&app, Duration::from_secs(60), all_settled).await;
    let by_email = |email: &str| rows.iter().find(|row| row.email == email).unwrap();
    let gone = by_email("gone@example.edu");
    assert_eq!(
        (gone.status.as_str(), gone.attempts),
        ("failed", 1),
        "permanent: {gone:?}"
    );
    assert!(
        gone.last_error.as_deref().unwrap().contains("550"),
        "{gone:?}"
    );
    let busy = by_email("busy@example.edu");
    assert_eq!(
        (busy.status.as_str(), busy.attempts),
        ("failed", 3),
        "bounded: {busy:?}"
    );
    assert_eq!(by_email("fine@example.edu").status, "sent");
    for row in [gone, busy] {
        assert!(
            password_hash(&app, row.student_id).await.is_none(),
            "{row:?}"
        );
    }
    assert_eq!(smtp.messages().len(), 1);

    let job = app
        .get_json(&format!("/v3/jobs/{}", job["jobId"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(credentials_email_of(&job, 0), "failed", "{job}");
    assert_eq!(credentials_email_of(&job, 1), "failed", "{job}");
    assert_eq!(credentials_email_of(&job, 2), "sent", "{job}");
    let student = app.student_by_ref("f-1").await.unwrap();
    assert_eq!(student["credentialsEmail"], "failed", "{student}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_url_the_email_is_logged_with_the_password_masked() {
    let app = spawn_app_with(TestOptions::default().workers(0).env("MAIL_POLL_MS", 100)).await;
    assert!(!app.env.contains_key("SMTP_URL"));
    let worker = app.spawn_worker_process();
    app.upsert_ok(&batch_with(
        vec![with_email("l-1", "logged@example.edu")],
        send_credentials(),
    ))
    .await;
    let rows = wait_for_outbox(&app, Duration::from_secs(60), all_settled).await;
    assert_eq!(rows[0].status, "sent", "{rows:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !worker.log().contains(&rows[0].id.to_string()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = worker.log();
    assert!(log.contains(&expected_message_id(&rows[0])), "{log}");
    assert!(log.contains("logged@example.edu"), "{log}");
    assert!(log.contains("Temporary password: ********"), "{log}");
    // No word of the log is the password whose hash was stored.
    let hash = password_hash(&app, rows[0].student_id).await.unwrap();
    let words: std::collections::HashSet<&str> = log
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| (12..=64).contains(&word.len()))
        .collect();
    for word in words {
        assert!(!verifies(&hash, word), "the password is in the log");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_mailers_in_several_processes_send_each_email_once() {
    let smtp = SmtpServer::start().await;
    let app = spawn_app_with(
        mail_options(&smtp.url())
            .workers(2)
            .env("MAIL_CONCURRENCY", 3),
    )
    .await;
    let _other_process = app.spawn_worker_process();
    let mut keys = vec![app.api_key.clone()];
    for name in ["Second School", "Third School"] {
        keys.push(app.create_school(name).await.1);
    }
    let started = Instant::now();
    for (school, key) in keys.iter().enumerate() {
        let items: Vec<Value> = (0..12)
            .map(|i| {
                with_email(
                    &format!("s{school}-{i}"),
                    &format!("s{school}-{i}@example.edu"),
                )
            })
            .collect();
        let reply = app
            .upsert_as(key, &batch_with(items, send_credentials()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    }
    let rows = wait_for_outbox(&app, Duration::from_secs(90), |rows| {
        rows.len() == 36 && all_settled(rows)
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!("36 credentials emails, 3 schools, 7 mailers in 2 processes: {elapsed:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rows.iter()
            .all(|row| row.status == "sent" && row.attempts == 1),
        "{rows:#?}"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 36);
    let mut ids: Vec<String> = messages.iter().map(Received::message_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 36, "no Message-ID twice");
    app.cleanup().await;
}
