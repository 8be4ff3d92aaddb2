//! `onStudentCreated`: credentials emails (one outbox row per created student with
//! an email, never on update, dry run or replay) and `passwordChangeRequired`.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn send_credentials(new_password_needed: bool) -> Value {
    json!({"onStudentCreated": {"sendCredentials": true, "newPasswordNeeded": new_password_needed}})
}

fn with_email(reference: &str, email: Option<&str>) -> Value {
    let mut item = student(reference);
    if let Some(email) = email {
        item["email"] = json!(email);
    }
    item
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_email_per_created_student_with_an_email() {
    let app = spawn_app().await;
    let job = app
        .upsert_ok(&batch_with(
            vec![
                with_email("c-1", Some("one@example.edu")),
                with_email("c-2", None),
                with_email("c-3", Some("three@example.edu")),
                json!({"externalReferenceId": "c-4", "firstName": "A", "lastName": "B", "email": null}),
                json!({"externalReferenceId": "c-5", "email": "broken"}),
            ],
            send_credentials(false),
        ))
        .await;
    let results = results_of(&job);
    // `queued`, or already `sent` by the mailer (live outbox state).
    let queued_or_sent = |result: &Value| {
        ["queued", "sent"].contains(&result["credentialsEmail"].as_str().unwrap_or_default())
    };
    assert!(queued_or_sent(&results[0]), "{}", results[0]);
    assert_eq!(results[1]["credentialsEmail"], "skipped_no_email");
    assert!(queued_or_sent(&results[2]), "{}", results[2]);
    assert_eq!(results[3]["credentialsEmail"], "skipped_no_email");
    assert_eq!(results[4]["status"], "failed");
    assert!(
        results[4].get("credentialsEmail").is_none(),
        "{}",
        results[4]
    );

    let rows: Vec<(Uuid, Uuid, String)> =
        sqlx::query_as("SELECT student_id, job_id, email FROM credential_emails ORDER BY email")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let job_id = Uuid::parse_str(job["jobId"].as_str().unwrap()).unwrap();
    assert_eq!(rows[0].2, "one@example.edu");
    assert_eq!(rows[1].2, "three@example.edu");
    assert_eq!(
        rows[0].0.to_string(),
        results[0]["studentId"].as_str().unwrap()
    );
    assert_eq!(
        rows[1].0.to_string(),
        results[2]["studentId"].as_str().unwrap()
    );
    assert!(rows.iter().all(|row| row.1 == job_id));

    // Updates never send credentials, even with an email added.
    let job = app
        .upsert_ok(&batch_with(
            vec![
                with_email("c-1", Some("changed@example.edu")),
                with_email("c-2", Some("two@example.edu")),
                with_email("c-3", Some("three@example.edu")),
            ],
            send_credentials(true),
        ))
        .await;
    for result in results_of(&job) {
        assert!(
            result["status"] == "updated" || result["status"] == "unchanged",
            "{result}"
        );
        assert!(result.get("credentialsEmail").is_none(), "{result}");
    }
    assert_eq!(app.count("credential_emails").await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_send_credentials_nothing_is_queued() {
    let app = spawn_app().await;
    let job = app
        .upsert_ok(&batch(vec![with_email("q-1", Some("q@example.edu"))]))
        .await;
    assert!(job["results"][0].get("credentialsEmail").is_none(), "{job}");
    let job = app
        .upsert_ok(&batch_with(
            vec![with_email("q-2", Some("q2@example.edu"))],
            json!({"onStudentCreated": {"sendCredentials": false, "newPasswordNeeded": true}}),
        ))
        .await;
    assert!(job["results"][0].get("credentialsEmail").is_none(), "{job}");
    assert_eq!(app.count("credential_emails").await, 0);
    let q2 = app.student_by_ref("q-2").await.unwrap();
    assert_eq!(q2["passwordChangeRequired"], true);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_replay_queue_no_email() {
    let app = spawn_app().await;
    let body = batch_with(
        vec![
            with_email("d-1", Some("d1@example.edu")),
            with_email("d-2", None),
        ],
        json!({"dryRun": true, "onStudentCreated": {"sendCredentials": true}}),
    );
    let job = app.upsert_ok(&body).await;
    assert_eq!(job["dryRun"], true);
    assert_eq!(
        job["results"][0]["credentialsEmail"], "queued",
        "predicted: {job}"
    );
    assert_eq!(job["results"][1]["credentialsEmail"], "skipped_no_email");
    assert_eq!(app.count("credential_emails").await, 0);
    assert_eq!(app.students_count().await, 0);

    // An idempotent replay does not send again.
    let body = batch_with(
        vec![with_email("r-1", Some("r1@example.edu"))],
        send_credentials(false),
    );
    for _ in 0..3 {
        let reply = send(
            app.batch_request(&body)
                .header("Idempotency-Key", "credentials-replay")
                .header("Prefer", "wait=60"),
        )
        .await;
        assert_eq!(reply.status, reqwest::StatusCode::OK, "{}", reply.body);
        // `queued`, or already `sent` by the mailer (live outbox state).
        assert!(
            ["queued", "sent"].contains(
                &reply.body["results"][0]["credentialsEmail"]
                    .as_str()
                    .unwrap_or_default()
            ),
            "{}",
            reply.body
        );
    }
    assert_eq!(app.count("credential_emails").await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_password_needed_marks_created_students_only() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("pw-existing")])).await;
    let job = app
        .upsert_ok(&batch_with(
            vec![
                with_email("pw-new", Some("pw@example.edu")),
                json!({"externalReferenceId": "pw-existing", "firstName": "Changed"}),
            ],
            send_credentials(true),
        ))
        .await;
    assert_eq!(job["results"][0]["status"], "created");
    assert_eq!(job["results"][1]["status"], "updated");
    assert_eq!(
        app.student_by_ref("pw-new").await.unwrap()["passwordChangeRequired"],
        true
    );
    assert_eq!(
        app.student_by_ref("pw-existing").await.unwrap()["passwordChangeRequired"],
        false,
        "never changed on update"
    );
    let flag: bool = sqlx::query_scalar(
        "SELECT password_change_required FROM students WHERE external_reference_id = 'pw-new'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(flag);

    // Only a hash of the temporary password is stored: nothing in the outbox or
    // the student row may look like a short plaintext password next to the email.
    let hash: Option<String> = sqlx::query_scalar(
        "SELECT password_hash FROM students WHERE external_reference_id = 'pw-new'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    if let Some(hash) = hash {
        assert!(
            hash.starts_with('$') || hash.len() >= 40,
            "looks hashed: {hash}"
        );
    }
    app.cleanup().await;
}
