//! POST /v3/students/batch-upsert: create, update, unchanged, null clearing,
//! changedFields, archived students, 200 vs 207, result ordering, large batches.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

fn parse_time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("time: {value}")))
        .unwrap_or_else(|error| panic!("RFC 3339 {value}: {error}"))
        .to_utc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_payload_creates_two_students() {
    let app = spawn_app().await;
    let reply = app.upsert(&example_payload()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        reply.content_type().starts_with("application/json"),
        "{:?}",
        reply.content_type()
    );
    let job = &reply.body;
    assert!(
        Uuid::parse_str(job["jobId"].as_str().unwrap()).is_ok(),
        "{job}"
    );
    assert_eq!(job["status"], "completed");
    assert_eq!(job["dryRun"], false);
    assert_eq!(
        job["summary"],
        json!({"total": 2, "created": 2, "updated": 0, "unchanged": 0, "failed": 0})
    );
    let created_at = parse_time(&job["createdAt"]);
    let completed_at = parse_time(&job["completedAt"]);
    let expires_at = parse_time(&job["expiresAt"]);
    assert!(completed_at >= created_at, "{job}");
    assert!(
        expires_at >= completed_at + chrono::Duration::days(7),
        "results kept at least 7 days: {job}"
    );

    let results = results_of(job);
    for (index, reference) in ["SIS-1001", "SIS-1002"].iter().enumerate() {
        let result = &results[index];
        assert_eq!(result["externalReferenceId"], *reference);
        assert_eq!(result["status"], "created");
        // The mailer may already have sent it (live outbox state).
        assert!(
            ["queued", "sent"].contains(&result["credentialsEmail"].as_str().unwrap_or_default()),
            "{result}"
        );
        assert!(result.get("errors").is_none(), "{result}");
        let id = result["studentId"].as_str().unwrap();
        let student = app.get_json(&format!("/v3/students/{id}")).await;
        assert_eq!(student.status, StatusCode::OK);
        assert_eq!(student.body["id"], id);
        assert_eq!(student.body["externalReferenceId"], *reference);
        assert_eq!(student.body["passwordChangeRequired"], true);
        assert_eq!(student.body["archived"], false);
    }
    let ada = app.student_by_ref("SIS-1001").await.unwrap();
    assert_eq!(ada["externalReferenceType"], "sis");
    assert_eq!(ada["firstName"], "Ada");
    assert_eq!(ada["lastName"], "Lovelace");
    assert_eq!(ada["email"], "ada@example.edu");
    assert_eq!(ada["tags"], json!(["grade-10", "robotics"]));
    assert_eq!(ada["phone"], Value::Null);
    let alan = app.student_by_ref("SIS-1002").await.unwrap();
    assert_eq!(alan["phone"], "+44 20 7946 0000");
    assert_eq!(alan["externalReferenceType"], Value::Null);
    assert_eq!(alan["tags"], Value::Null);

    assert_eq!(app.students_count().await, 2);
    assert_eq!(app.count("credential_emails").await, 2);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_round_trips() {
    let app = spawn_app().await;
    let item = json!({
        "externalReferenceId": "full-1",
        "externalReferenceType": "sis",
        "firstName": "Grace",
        "lastName": "Hopper",
        "email": "grace@example.edu",
        "phone": "+1 555 0100",
        "photoUrl": "https://example.edu/photos/grace.png",
        "fileNumber": "F-123",
        "curriculumName": "Computer Science",
        "company": "Navy",
        "badgeId": "B-42",
        "tags": ["cobol", "compilers"]
    });
    let job = app.upsert_ok(&batch(vec![item.clone()])).await;
    let id = job["results"][0]["studentId"].as_str().unwrap().to_string();
    let reply = app.get_json(&format!("/v3/students/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let student = reply.body;
    for (field, value) in item.as_object().unwrap() {
        assert_eq!(&student[field], value, "{field}");
    }
    assert_eq!(student["archived"], false);
    assert_eq!(student["passwordChangeRequired"], false);
    let created = parse_time(&student["createdAt"]);
    let updated = parse_time(&student["updatedAt"]);
    assert!(updated >= created);

    // Straight from the table as well.
    let (first, tags, school): (String, Vec<String>, Uuid) =
        sqlx::query_as("SELECT first_name, tags, school_id FROM students WHERE id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(first, "Grace");
    assert_eq!(tags, ["cobol", "compilers"]);
    assert_eq!(school.to_string(), app.school_id);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_provided_fields_and_reports_them() {
    let app = spawn_app().await;
    let mut original = student("u-1");
    original["email"] = json!("old@example.edu");
    original["tags"] = json!(["a"]);
    original["company"] = json!("Acme");
    let created = app.upsert_ok(&batch(vec![original])).await;
    let id = created["results"][0]["studentId"].clone();
    let before = app.student_by_ref("u-1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    let job = app
        .upsert_ok(&batch(vec![json!({
            "externalReferenceId": "u-1",
            "email": "new@example.edu",
            "tags": ["a", "b"],
            "firstName": "First"  // same as stored
        })]))
        .await;
    let result = &job["results"][0];
    assert_eq!(result["status"], "updated", "{result}");
    assert_eq!(result["studentId"], id, "same student");
    assert_eq!(changed_fields(result), vec!["email", "tags"]);
    assert!(
        result.get("unarchived").is_none() || result["unarchived"] == false,
        "{result}"
    );
    assert!(result.get("credentialsEmail").is_none(), "{result}");

    let after = app.student_by_ref("u-1").await.unwrap();
    assert_eq!(after["email"], "new@example.edu");
    assert_eq!(after["tags"], json!(["a", "b"]));
    assert_eq!(after["company"], "Acme", "absent fields are kept");
    assert_eq!(after["lastName"], "Last");
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert!(parse_time(&after["updatedAt"]) > parse_time(&before["updatedAt"]));
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_items_write_nothing() {
    let app = spawn_app().await;
    let mut item = student("same-1");
    item["email"] = json!("same@example.edu");
    item["tags"] = json!(["x", "y"]);
    item["phone"] = Value::Null;
    app.upsert_ok(&batch(vec![item.clone()])).await;
    let stored_before = app.db_updated_at("same-1").await;
    let api_before = app.student_by_ref("same-1").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;

    // The same values again, a subset of them, and tags that deduplicate to the
    // stored list: all unchanged.
    let mut subset = json!({"externalReferenceId": "same-1", "lastName": "Last"});
    subset["tags"] = json!(["x", "y", "x"]);
    for body in [
        batch(vec![item.clone()]),
        batch(vec![subset]),
        batch(vec![json!({"externalReferenceId": "same-1"})]),
    ] {
        let reply = app.upsert(&body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let result = &reply.body["results"][0];
        assert_eq!(result["status"], "unchanged", "{result}");
        assert!(result["studentId"].is_string(), "{result}");
        assert_eq!(
            reply.body["summary"],
            json!({"total": 1, "created": 0, "updated": 0, "unchanged": 1, "failed": 0})
        );
    }
    assert_eq!(
        app.db_updated_at("same-1").await,
        stored_before,
        "updated_at must not move"
    );
    let api_after = app.student_by_ref("same-1").await.unwrap();
    assert_eq!(api_after["updatedAt"], api_before["updatedAt"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_null_clears_nullable_fields() {
    let app = spawn_app().await;
    let full = json!({
        "externalReferenceId": "n-1", "firstName": "A", "lastName": "B",
        "email": "n@example.edu", "phone": "123", "photoUrl": "https://example.edu/p.png",
        "fileNumber": "F", "curriculumName": "C", "company": "Co", "badgeId": "B", "tags": ["t"]
    });
    app.upsert_ok(&batch(vec![full])).await;

    let clear = json!({
        "externalReferenceId": "n-1",
        "email": null, "phone": null, "photoUrl": null, "fileNumber": null,
        "curriculumName": null, "company": null, "badgeId": null, "tags": null
    });
    let job = app.upsert_ok(&batch(vec![clear.clone()])).await;
    let result = &job["results"][0];
    assert_eq!(result["status"], "updated", "{result}");
    assert_eq!(
        changed_fields(result),
        vec![
            "badgeId",
            "company",
            "curriculumName",
            "email",
            "fileNumber",
            "phone",
            "photoUrl",
            "tags"
        ]
    );
    let stored = app.student_by_ref("n-1").await.unwrap();
    for field in [
        "email",
        "phone",
        "photoUrl",
        "fileNumber",
        "curriculumName",
        "company",
        "badgeId",
        "tags",
    ] {
        assert_eq!(stored[field], Value::Null, "{field} cleared");
    }
    assert_eq!(stored["firstName"], "A");
    let (email, tags): (Option<String>, Option<Vec<String>>) =
        sqlx::query_as("SELECT email, tags FROM students WHERE external_reference_id = 'n-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((email, tags), (None, None));

    // Clearing what is already clear changes nothing.
    let job = app.upsert_ok(&batch(vec![clear])).await;
    assert_eq!(job["results"][0]["status"], "unchanged", "{job}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archived_students_fail_unless_allow_unarchive() {
    let app = spawn_app().await;
    let created = app
        .upsert_ok(&batch(vec![student("arch-1"), student("arch-2")]))
        .await;
    for index in 0..2 {
        let id = created["results"][index]["studentId"].as_str().unwrap();
        let reply = send(app.post(&format!("/v3/students/{id}/archive"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["archived"], true);
    }
    let archived_at = app.db_updated_at("arch-1").await;

    // Without allowUnarchive: failed `archived`, even with nothing to change.
    let job = app
        .upsert_ok(&batch(vec![
            json!({"externalReferenceId": "arch-1", "firstName": "Changed"}),
            student("arch-2"),
        ]))
        .await;
    assert_item_errors(&job, 0, &[("archived", "/students/0/externalReferenceId")]);
    assert_item_errors(&job, 1, &[("archived", "/students/1/externalReferenceId")]);
    assert_eq!(job["results"][0]["externalReferenceId"], "arch-1");
    let stored = app.student_by_ref("arch-1").await.unwrap();
    assert_eq!(stored["archived"], true);
    assert_eq!(stored["firstName"], "First");
    assert_eq!(app.db_updated_at("arch-1").await, archived_at);

    // With allowUnarchive: unarchived and updated, even without a data change.
    let job = app
        .upsert_ok(&batch_with(
            vec![
                json!({"externalReferenceId": "arch-1", "firstName": "Changed"}),
                student("arch-2"),
                student("never-archived"),
            ],
            json!({"allowUnarchive": true}),
        ))
        .await;
    let results = results_of(&job);
    assert_eq!(results[0]["status"], "updated", "{}", results[0]);
    assert_eq!(results[0]["unarchived"], true);
    assert_eq!(changed_fields(&results[0]), vec!["firstName"]);
    assert_eq!(
        results[1]["status"], "updated",
        "no data change still updates: {}",
        results[1]
    );
    assert_eq!(results[1]["unarchived"], true);
    assert!(changed_fields(&results[1]).is_empty(), "{}", results[1]);
    assert_eq!(results[2]["status"], "created");
    assert!(results[2].get("unarchived").is_none() || results[2]["unarchived"] == false);
    for reference in ["arch-1", "arch-2"] {
        let stored = app.student_by_ref(reference).await.unwrap();
        assert_eq!(stored["archived"], false, "{reference}");
    }
    let archived: bool =
        sqlx::query_scalar("SELECT archived FROM students WHERE external_reference_id = 'arch-2'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!archived);

    // allowUnarchive on an active student does not report an unarchive.
    let job = app
        .upsert_ok(&batch_with(
            vec![student("arch-2")],
            json!({"allowUnarchive": true}),
        ))
        .await;
    let result = &job["results"][0];
    assert_eq!(result["status"], "unchanged", "{result}");
    assert!(
        result.get("unarchived").is_none() || result["unarchived"] == false,
        "{result}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_batch_summary_and_ordering() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("m-upd"), student("m-same")]))
        .await;
    let reply = app
        .upsert(&batch(vec![
            student("m-new"),                                             // created
            json!({"externalReferenceId": "m-upd", "lastName": "Other"}), // updated
            student("m-same"),                                            // unchanged
            json!({"externalReferenceId": "m-bad", "firstName": ""}),     // failed
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let results = results_of(&reply.body);
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["created", "updated", "unchanged", "failed"]);
    assert_eq!(
        reply.body["summary"],
        json!({"total": 4, "created": 1, "updated": 1, "unchanged": 1, "failed": 1})
    );
    for (index, reference) in ["m-new", "m-upd", "m-same", "m-bad"].iter().enumerate() {
        assert_eq!(results[index]["externalReferenceId"], *reference);
    }
    assert!(results[3].get("studentId").is_none() || results[3]["studentId"].is_null());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1000_item_batch_with_scattered_failures() {
    let app = spawn_app_with(TestOptions::default().workers(2)).await;
    let failing: BTreeSet<usize> = [0, 1, 17, 256, 333, 500, 501, 777, 998, 999].into();
    let items: Vec<Value> = (0..1000)
        .map(|i| {
            let mut item = student(&format!("big-{i:04}"));
            item["email"] = json!(format!("s{i}@example.edu"));
            item["tags"] = json!(["bulk", format!("n{}", i % 7)]);
            if failing.contains(&i) {
                match i % 3 {
                    0 => item["email"] = json!("broken"),
                    1 => item["lastName"] = json!("x".repeat(101)),
                    _ => item["unexpected"] = json!(true),
                }
            }
            item
        })
        .collect();
    let reply = send(
        app.batch_request(&batch(items.clone()))
            .header("Prefer", "wait=60"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let results = results_of(&reply.body);
    assert_eq!(results.len(), 1000);
    assert_eq!(
        reply.body["summary"],
        json!({"total": 1000, "created": 990, "updated": 0, "unchanged": 0, "failed": 10})
    );
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["externalReferenceId"], format!("big-{index:04}"));
        if failing.contains(&index) {
            assert_eq!(result["status"], "failed", "{result}");
            let errors = error_pairs(result);
            assert_eq!(errors.len(), 1, "{result}");
            assert!(
                errors[0].1.starts_with(&format!("/students/{index}/")),
                "{result}"
            );
        } else {
            assert_eq!(result["status"], "created", "{result}");
        }
    }
    assert_eq!(app.students_count().await, 990);
    let ids: Vec<String> = results
        .iter()
        .filter_map(|r| r["studentId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 990);
    assert_distinct(&ids);

    // The same batch again with every even item changed: 496 updates (500 even
    // minus 4 failing), 494 unchanged (500 odd minus 6 failing).
    let items: Vec<Value> = items
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if i % 2 == 0 {
                item["company"] = json!("Changed");
            }
            item
        })
        .collect();
    let job = app.upsert_ok(&batch(items)).await;
    results_of(&job);
    assert_eq!(
        job["summary"],
        json!({"total": 1000, "created": 0, "updated": 496, "unchanged": 494, "failed": 10})
    );
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM students WHERE company = 'Changed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(changed, 496);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_request_waits_for_the_result() {
    let app = spawn_app().await;
    // No Prefer header: the default wait (30 s) is ample for one item.
    let reply = app.upsert(&batch(vec![student("wait-1")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "completed");
    assert!(reply.header("preference-applied").is_none());
    // The job is readable afterwards with the same body.
    let job_id = reply.body["jobId"].as_str().unwrap();
    let job = app.get_json(&format!("/v3/jobs/{job_id}")).await;
    assert_eq!(job.status, StatusCode::OK);
    assert_eq!(job.body["results"], reply.body["results"]);
    assert_eq!(job.body["summary"], reply.body["summary"]);
    app.cleanup().await;
}
