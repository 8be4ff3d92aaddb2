//! `dryRun: true`: the same response with predicted statuses; nothing is written.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_predicts_and_writes_nothing() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![
        student("dr-upd"),
        student("dr-same"),
        student("dr-arch"),
    ]))
    .await;
    let archived = app.student_by_ref("dr-arch").await.unwrap();
    let reply = send(app.post(&format!(
        "/v3/students/{}/archive",
        archived["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let upd_before = app.db_updated_at("dr-upd").await;
    let students_before: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT external_reference_id, first_name, archived FROM students ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();

    let items = vec![
        student("dr-new"),                                              // created
        json!({"externalReferenceId": "dr-upd", "firstName": "Other"}), // updated
        student("dr-same"),                                             // unchanged
        json!({"externalReferenceId": "dr-bad", "firstName": "A", "lastName": "B", "email": "x"}), // failed
        json!({"externalReferenceId": "dr-arch", "firstName": "X"}), // archived
    ];
    let reply = send(
        app.batch_request(&batch_with(items.clone(), json!({"dryRun": true})))
            .header("Prefer", "wait=60"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let job = &reply.body;
    assert_eq!(job["dryRun"], true);
    assert_eq!(job["status"], "completed");
    let results = results_of(job);
    assert_eq!(results[0]["status"], "created");
    assert_eq!(results[1]["status"], "updated");
    assert_eq!(changed_fields(&results[1]), vec!["firstName"]);
    assert_eq!(results[2]["status"], "unchanged");
    assert_item_errors(job, 3, &[("invalid_format", "/students/3/email")]);
    assert_item_errors(job, 4, &[("archived", "/students/4/externalReferenceId")]);
    assert_eq!(
        job["summary"],
        json!({"total": 5, "created": 1, "updated": 1, "unchanged": 1, "failed": 2})
    );

    // With allowUnarchive the archived one is predicted as an unarchiving update.
    let job = app
        .upsert_ok(&batch_with(
            vec![items[4].clone()],
            json!({"dryRun": true, "allowUnarchive": true}),
        ))
        .await;
    assert_eq!(job["results"][0]["status"], "updated", "{job}");
    assert_eq!(job["results"][0]["unarchived"], true);

    // Nothing was written.
    let students_after: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT external_reference_id, first_name, archived FROM students ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(students_after, students_before);
    assert_eq!(app.db_updated_at("dr-upd").await, upd_before);
    assert!(app.student_by_ref("dr-new").await.is_none());
    assert_eq!(app.count("credential_emails").await, 0);

    // The dry-run job itself is readable.
    let job_id = reply.body["jobId"].as_str().unwrap();
    let stored = app.get_json(&format!("/v3/jobs/{job_id}")).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body["dryRun"], true);
    assert_eq!(stored.body["summary"], reply.body["summary"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_of_only_valid_new_students_is_200() {
    let app = spawn_app().await;
    let reply = send(
        app.batch_request(&batch_with(
            vec![student("a"), student("b")],
            json!({"dryRun": true}),
        ))
        .header("Prefer", "wait=60"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["summary"]["created"], 2);
    assert_eq!(app.students_count().await, 0);
    app.cleanup().await;
}
