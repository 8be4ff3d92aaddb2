//! Per-item validation: every error code with its pointer, all errors of an item
//! reported, one failing item never blocking another.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

fn with(base: &str, field: &str, value: Value) -> Value {
    let mut item = student(base);
    item[field] = value;
    item
}

fn numbers_in(text: &str) -> BTreeSet<usize> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .filter_map(|part| part.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_are_not_objects_are_invalid_type() {
    let app = spawn_app().await;
    let body = batch(vec![
        json!(5),
        json!("SIS-1"),
        json!(null),
        json!([]),
        json!(true),
        student("ok-1"),
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    for index in 0..5 {
        assert_item_errors(
            &job,
            index,
            &[("invalid_type", &format!("/students/{index}"))],
        );
    }
    assert_eq!(
        results[1].get("externalReferenceId"),
        None,
        "only echoed from an object"
    );
    assert_eq!(results[5]["status"], "created");
    assert_eq!(job["summary"]["failed"], 5);
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_reference_id_rules() {
    let app = spawn_app().await;
    let mut missing = student("x");
    missing
        .as_object_mut()
        .unwrap()
        .remove("externalReferenceId");
    let body = batch(vec![
        missing,                                                 // 0
        with("x", "externalReferenceId", json!("")),             // 1
        with("x", "externalReferenceId", json!("   ")),          // 2
        with("x", "externalReferenceId", json!("a".repeat(65))), // 3
        with("x", "externalReferenceId", json!(42)),             // 4
        with("x", "externalReferenceId", json!("a".repeat(64))), // 5 ok
        with("x", "externalReferenceId", json!("é".repeat(64))), // 6 ok: 64 characters, 128 bytes
        with("x", "externalReferenceId", json!("é".repeat(65))), // 7
        with("x", "externalReferenceId", json!("bad\u{1}id")),   // 8
        with("x", "externalReferenceId", json!("tab\tok")),      // 9 ok
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    let pointer = |i: usize| format!("/students/{i}/externalReferenceId");
    assert_item_errors(&job, 0, &[("required", &pointer(0))]);
    assert_item_errors(&job, 1, &[("blank", &pointer(1))]);
    assert_item_errors(&job, 2, &[("blank", &pointer(2))]);
    assert_item_errors(&job, 3, &[("too_long", &pointer(3))]);
    assert_item_errors(&job, 4, &[("invalid_type", &pointer(4))]);
    assert_eq!(results[5]["status"], "created", "{}", results[5]);
    assert_eq!(results[6]["status"], "created", "{}", results[6]);
    assert_item_errors(&job, 7, &[("too_long", &pointer(7))]);
    assert_item_errors(&job, 8, &[("invalid_characters", &pointer(8))]);
    assert_eq!(results[9]["status"], "created", "{}", results[9]);

    // Echoed when it was a string, even an invalid one.
    assert_eq!(results[3]["externalReferenceId"], "a".repeat(65));
    assert_eq!(results[6]["externalReferenceId"], "é".repeat(64));
    assert!(results[0].get("externalReferenceId").is_none());
    assert!(results[4].get("externalReferenceId").is_none());
    assert_eq!(app.students_count().await, 3);

    // null is refused (the field is not nullable).
    let job = app
        .upsert_ok(&batch(vec![with("x", "externalReferenceId", Value::Null)]))
        .await;
    let errors = error_pairs(&job["results"][0]);
    assert_eq!(errors.len(), 1, "{job}");
    assert!(
        errors[0].0 == "not_nullable" || errors[0].0 == "required",
        "{job}"
    );
    assert_eq!(errors[0].1, "/students/0/externalReferenceId");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_the_external_reference_id_fails_only_that_item() {
    let app = spawn_app().await;
    // Postgres text (and jsonb) cannot hold U+0000: validation must catch it, and
    // echoing it back in the results must not break the batch.
    let body = batch(vec![
        with("x", "externalReferenceId", json!("nul\u{0}id")),
        student("neighbour"),
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    assert_item_errors(
        &job,
        0,
        &[("invalid_characters", "/students/0/externalReferenceId")],
    );
    assert_eq!(results[0]["externalReferenceId"], "nul\u{0}id");
    assert_eq!(results[1]["status"], "created");
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_errors_and_stored_data_errors_are_reported_together() {
    let app = spawn_app().await;
    let job = app
        .upsert_ok(&batch(vec![student("known"), student("archived")]))
        .await;
    let archived_id = job["results"][1]["studentId"].as_str().unwrap();
    let reply = send(app.post(&format!("/v3/students/{archived_id}/archive"))).await;
    assert_eq!(reply.status, StatusCode::OK);

    let job = app
        .upsert_ok(&batch(vec![
            json!({"externalReferenceId": "unknown", "email": "x"}),
            json!({"externalReferenceId": "known", "email": "x"}),
            json!({"externalReferenceId": "archived", "email": "x"}),
        ]))
        .await;
    // "An item reports all of its errors": what only the stored data reveals
    // (a new student's missing names, an archived match) is reported next to
    // the errors validation finds on its own.
    assert_item_errors(
        &job,
        0,
        &[
            ("invalid_format", "/students/0/email"),
            ("required_on_create", "/students/0/firstName"),
            ("required_on_create", "/students/0/lastName"),
        ],
    );
    // A matched student does not need the names.
    assert_item_errors(&job, 1, &[("invalid_format", "/students/1/email")]);
    assert_item_errors(
        &job,
        2,
        &[
            ("invalid_format", "/students/2/email"),
            ("archived", "/students/2/externalReferenceId"),
        ],
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_field_limits_count_characters() {
    let app = spawn_app().await;
    // (field, max)
    let limits = [
        ("externalReferenceType", 30),
        ("firstName", 100),
        ("lastName", 100),
        ("phone", 20),
        ("fileNumber", 128),
        ("curriculumName", 160),
        ("company", 64),
        ("badgeId", 20),
    ];
    let mut items = Vec::new();
    for (field, max) in limits {
        // At the limit in multi-byte characters: accepted.
        items.push(with(&format!("{field}-max"), field, json!("ü".repeat(max))));
        // One over (ASCII): too long.
        items.push(with(
            &format!("{field}-over"),
            field,
            json!("a".repeat(max + 1)),
        ));
    }
    let job = app.upsert_ok(&batch(items)).await;
    let results = results_of(&job);
    for (n, (field, _)) in limits.iter().enumerate() {
        let ok = 2 * n;
        let over = 2 * n + 1;
        assert_eq!(
            results[ok]["status"], "created",
            "{field} at the limit: {}",
            results[ok]
        );
        assert_item_errors(
            &job,
            over,
            &[("too_long", &format!("/students/{over}/{field}"))],
        );
    }
    let stored = app.student_by_ref("firstName-max").await.unwrap();
    assert_eq!(stored["firstName"], "ü".repeat(100));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_types_blank_and_null_rules() {
    let app = spawn_app().await;
    let body = batch(vec![
        with("t0", "firstName", json!(7)),                // 0 invalid_type
        with("t1", "lastName", json!(["Last"])),          // 1 invalid_type
        with("t2", "email", json!({"a": 1})),             // 2 invalid_type
        with("t3", "phone", json!(12345)),                // 3 invalid_type
        with("t4", "tags", json!("grade-10")),            // 4 invalid_type
        with("t5", "firstName", json!("   ")),            // 5 blank
        with("t6", "lastName", json!("")),                // 6 blank
        with("t7", "firstName", Value::Null),             // 7 not_nullable
        with("t8", "externalReferenceType", Value::Null), // 8 not_nullable
        with("t9", "photoUrl", json!(false)),             // 9 invalid_type
        with("t10", "externalReferenceType", json!(1)),   // 10 invalid_type
    ]);
    let job = app.upsert_ok(&body).await;
    results_of(&job);
    assert_item_errors(&job, 0, &[("invalid_type", "/students/0/firstName")]);
    assert_item_errors(&job, 1, &[("invalid_type", "/students/1/lastName")]);
    assert_item_errors(&job, 2, &[("invalid_type", "/students/2/email")]);
    assert_item_errors(&job, 3, &[("invalid_type", "/students/3/phone")]);
    assert_item_errors(&job, 4, &[("invalid_type", "/students/4/tags")]);
    assert_item_errors(&job, 5, &[("blank", "/students/5/firstName")]);
    assert_item_errors(&job, 6, &[("blank", "/students/6/lastName")]);
    assert_item_errors(&job, 7, &[("not_nullable", "/students/7/firstName")]);
    assert_item_errors(
        &job,
        8,
        &[("not_nullable", "/students/8/externalReferenceType")],
    );
    assert_item_errors(&job, 9, &[("invalid_type", "/students/9/photoUrl")]);
    assert_item_errors(
        &job,
        10,
        &[("invalid_type", "/students/10/externalReferenceType")],
    );
    assert_eq!(job["summary"]["failed"], 11);
    assert_eq!(app.students_count().await, 0);

    // Nullable fields accept null on create.
    let mut item = student("nulls");
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
        item[field] = Value::Null;
    }
    let job = app.upsert_ok(&batch(vec![item])).await;
    assert_eq!(job["results"][0]["status"], "created", "{job}");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_and_photo_url_formats() {
    let app = spawn_app().await;
    // A syntactically valid address of 256 characters: 64 + 1 + 191.
    let long_email = format!(
        "{}@{}.{}.{}",
        "a".repeat(64),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63)
    );
    assert_eq!(long_email.chars().count(), 256);
    let long_url = format!("https://example.com/{}", "p".repeat(236));
    assert_eq!(long_url.chars().count(), 256);
    let ok_url = format!("https://example.com/{}", "p".repeat(235));
    let body = batch(vec![
        with("e0", "email", json!("not-an-email")),     // 0
        with("e1", "email", json!("a@")),               // 1
        with("e2", "email", json!("@example.edu")),     // 2
        with("e3", "email", json!("two@@example.edu")), // 3
        with("e4", "email", json!(long_email)),         // 4 too_long
        with("e5", "email", json!("grace.hopper+1@example.edu")), // 5 ok
        with("p0", "photoUrl", json!("ftp://example.com/a.png")), // 6
        with("p1", "photoUrl", json!("/relative/a.png")), // 7
        with("p2", "photoUrl", json!("not a url")),     // 8
        with("p3", "photoUrl", json!("http://example.com/a.png")), // 9 ok
        with("p4", "photoUrl", json!(ok_url)),          // 10 ok (255)
        with("p5", "photoUrl", json!(long_url)),        // 11 too_long
        with("p6", "photoUrl", json!("mailto:a@example.com")), // 12
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    for index in 0..4 {
        assert_item_errors(
            &job,
            index,
            &[("invalid_format", &format!("/students/{index}/email"))],
        );
    }
    let email_errors = error_pairs(&results[4]);
    assert!(
        email_errors.contains(&("too_long".into(), "/students/4/email".into())),
        "{}",
        results[4]
    );
    assert_eq!(results[5]["status"], "created", "{}", results[5]);
    for index in [6, 7, 8, 12] {
        assert_item_errors(
            &job,
            index,
            &[("invalid_format", &format!("/students/{index}/photoUrl"))],
        );
    }
    assert_eq!(results[9]["status"], "created", "{}", results[9]);
    assert_eq!(results[10]["status"], "created", "{}", results[10]);
    let url_errors = error_pairs(&results[11]);
    assert!(
        url_errors.contains(&("too_long".into(), "/students/11/photoUrl".into())),
        "{}",
        results[11]
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_invalid_characters() {
    let app = spawn_app().await;
    let body = batch(vec![
        with("c0", "firstName", json!("Ada\u{0}")),        // 0 NUL
        with("c1", "lastName", json!("Love\u{7}lace")),    // 1 BEL
        with("c2", "company", json!("\u{1b}[31mred")),     // 2 ESC
        with("c3", "tags", json!(["ok", "bad\u{1}"])),     // 3 one tag
        with("c4", "firstName", json!("Tab\tCR\rLF\nok")), // 4 allowed
        with("c5", "email", json!("a\u{0}@example.edu")),  // 5
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    assert_item_errors(&job, 0, &[("invalid_characters", "/students/0/firstName")]);
    assert_item_errors(&job, 1, &[("invalid_characters", "/students/1/lastName")]);
    assert_item_errors(&job, 2, &[("invalid_characters", "/students/2/company")]);
    assert_item_errors(&job, 3, &[("invalid_characters", "/students/3/tags/1")]);
    assert_eq!(results[4]["status"], "created", "{}", results[4]);
    let email = error_pairs(&results[5]);
    assert!(
        email.contains(&("invalid_characters".into(), "/students/5/email".into())),
        "{}",
        results[5]
    );
    let stored = app.student_by_ref("c4").await.unwrap();
    assert_eq!(stored["firstName"], "Tab\tCR\rLF\nok");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_reported_per_item() {
    let app = spawn_app().await;
    let body = batch(vec![
        with("u0", "nickname", json!("Addie")),
        with("u1", "id", json!("5f0c9a42-0000-4000-8000-000000000000")),
        with("u2", "schoolId", json!("other-school")),
        with("u3", "archived", json!(false)),
        student("u4"),
    ]);
    let job = app.upsert_ok(&body).await;
    assert_item_errors(&job, 0, &[("unknown_field", "/students/0/nickname")]);
    assert_item_errors(&job, 1, &[("unknown_field", "/students/1/id")]);
    assert_item_errors(&job, 2, &[("unknown_field", "/students/2/schoolId")]);
    assert_item_errors(&job, 3, &[("unknown_field", "/students/3/archived")]);
    assert_eq!(job["results"][4]["status"], "created");
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_reports_all_of_its_errors() {
    let app = spawn_app().await;
    let item = json!({
        "externalReferenceId": "all-errors",
        "firstName": "x".repeat(101),
        "lastName": "   ",
        "email": "nope",
        "photoUrl": "ftp://x",
        "tags": ["ok", "", 5, "t".repeat(36)],
        "favouriteColour": "blue",
        "badgeId": null
    });
    let job = app.upsert_ok(&batch(vec![student("fine"), item])).await;
    assert_eq!(job["results"][0]["status"], "created");
    assert_item_errors(
        &job,
        1,
        &[
            ("too_long", "/students/1/firstName"),
            ("blank", "/students/1/lastName"),
            ("invalid_format", "/students/1/email"),
            ("invalid_format", "/students/1/photoUrl"),
            ("blank", "/students/1/tags/1"),
            ("invalid_type", "/students/1/tags/2"),
            ("too_long", "/students/1/tags/3"),
            ("unknown_field", "/students/1/favouriteColour"),
        ],
    );
    assert_eq!(job["results"][1]["externalReferenceId"], "all-errors");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_on_create_only_applies_to_new_students() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("existing")])).await;

    let body = batch(vec![
        json!({"externalReferenceId": "new-1", "firstName": "Only"}), // 0
        json!({"externalReferenceId": "new-2", "lastName": "Only"}),  // 1
        json!({"externalReferenceId": "new-3"}),                      // 2
        json!({"externalReferenceId": "existing", "firstName": "New"}), // 3 update
        json!({"externalReferenceId": "existing-2"}),                 // 4 new, nothing
    ]);
    let job = app.upsert_ok(&body).await;
    results_of(&job);
    assert_item_errors(&job, 0, &[("required_on_create", "/students/0/lastName")]);
    assert_item_errors(&job, 1, &[("required_on_create", "/students/1/firstName")]);
    assert_item_errors(
        &job,
        2,
        &[
            ("required_on_create", "/students/2/firstName"),
            ("required_on_create", "/students/2/lastName"),
        ],
    );
    assert_eq!(job["results"][3]["status"], "updated", "{job}");
    assert_eq!(changed_fields(&job["results"][3]), vec!["firstName"]);
    assert_eq!(job["summary"]["failed"], 4);
    assert_eq!(app.students_count().await, 1);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_in_a_batch_all_fail_and_name_each_other() {
    let app = spawn_app().await;
    let mut bad_email_dup = student("dup-2");
    bad_email_dup["email"] = json!("nope");
    let long = "z".repeat(65);
    let body = batch(vec![
        student("dup-1"),    // 0
        student("single-1"), // 1
        student("dup-1"),    // 2
        bad_email_dup,       // 3 dup-2 (and an invalid email)
        student("Dup-1"),    // 4 differs by case: not a duplicate
        student("dup-1"),    // 5
        student("dup-2"),    // 6
        student(&long),      // 7 invalid id shared with 8: not duplicates
        student(&long),      // 8
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    for (index, others) in [
        (0, vec![2, 5]),
        (2, vec![0, 5]),
        (5, vec![0, 2]),
        (6, vec![3]),
    ] {
        let result = &results[index];
        assert_eq!(result["status"], "failed", "{result}");
        let errors = result["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{result}");
        assert_eq!(errors[0]["code"], "duplicate_in_batch");
        assert_eq!(
            errors[0]["pointer"],
            format!("/students/{index}/externalReferenceId")
        );
        let named = numbers_in(errors[0]["detail"].as_str().unwrap());
        for other in others {
            assert!(
                named.contains(&other),
                "detail names index {other}: {result}"
            );
        }
    }
    let item3 = error_pairs(&results[3]);
    assert!(
        item3.contains(&(
            "duplicate_in_batch".into(),
            "/students/3/externalReferenceId".into()
        )),
        "{}",
        results[3]
    );
    assert!(
        item3.contains(&("invalid_format".into(), "/students/3/email".into())),
        "{}",
        results[3]
    );
    assert_eq!(results[1]["status"], "created");
    assert_eq!(
        results[4]["status"], "created",
        "case differs: {}",
        results[4]
    );
    for index in [7, 8] {
        assert_item_errors(
            &job,
            index,
            &[(
                "too_long",
                &format!("/students/{index}/externalReferenceId"),
            )],
        );
    }
    assert_eq!(app.students_count().await, 2);
    assert!(app.student_by_ref("dup-1").await.is_none());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_deduplicated_and_limited() {
    let app = spawn_app().await;
    let fifteen: Vec<String> = (0..15).map(|i| format!("tag-{i}")).collect();
    let sixteen: Vec<String> = (0..16).map(|i| format!("tag-{i}")).collect();
    let mut fifteen_with_duplicates = fifteen.clone();
    fifteen_with_duplicates.extend(fifteen.iter().take(10).cloned());
    let body = batch(vec![
        with("g0", "tags", json!(["b", "a", "b", "c", "a"])), // 0 → [b, a, c]
        with("g1", "tags", json!(fifteen_with_duplicates)),   // 1 25 given, 15 distinct: ok
        with("g2", "tags", json!(sixteen)),                   // 2 too_many
        with("g3", "tags", json!(["t".repeat(35)])),          // 3 ok at 35
        with("g4", "tags", json!(["ok", "t".repeat(36)])),    // 4 too_long on tags/1
        with("g5", "tags", json!([])),                        // 5 ok, empty
        with("g6", "tags", json!(["x", " "])),                // 6 blank tags/1
    ]);
    let job = app.upsert_ok(&body).await;
    let results = results_of(&job);
    assert_eq!(results[0]["status"], "created");
    assert_eq!(results[1]["status"], "created", "{}", results[1]);
    assert_item_errors(&job, 2, &[("too_many", "/students/2/tags")]);
    assert_eq!(results[3]["status"], "created");
    assert_item_errors(&job, 4, &[("too_long", "/students/4/tags/1")]);
    assert_eq!(results[5]["status"], "created");
    assert_item_errors(&job, 6, &[("blank", "/students/6/tags/1")]);

    assert_eq!(
        app.student_by_ref("g0").await.unwrap()["tags"],
        json!(["b", "a", "c"])
    );
    assert_eq!(
        app.student_by_ref("g1").await.unwrap()["tags"],
        json!(fifteen)
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT unnest(tags) FROM students WHERE external_reference_id = 'g0'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, ["b", "a", "c"]);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_item_never_blocks_another_and_status_is_207() {
    let app = spawn_app().await;
    let reply = app
        .upsert(&batch(vec![
            student("good-1"),
            with("bad-1", "email", json!("x")),
            student("good-2"),
        ]))
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    let summary = &reply.body["summary"];
    assert_eq!(
        summary,
        &json!({"total": 3, "created": 2, "updated": 0, "unchanged": 0, "failed": 1})
    );
    assert_eq!(app.students_count().await, 2);

    // Every item failing is still 207.
    let reply = app
        .upsert(&batch(vec![with("bad-2", "email", json!("x")), json!(3)]))
        .await;
    assert_eq!(reply.status, StatusCode::MULTI_STATUS, "{}", reply.body);
    assert_eq!(reply.body["summary"]["failed"], 2);
    app.cleanup().await;
}
