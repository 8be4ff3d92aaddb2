//! Tenancy: every read and write is scoped to the key's school; another school's
//! data answers exactly like data that does not exist.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schools_never_see_each_other() {
    let app = spawn_app().await;
    let (school_b, key_b) = app.create_school("School B").await;
    assert_ne!(school_b, app.school_id);

    let job_a = app
        .upsert_ok(&batch(vec![student("shared-ref"), student("only-a")]))
        .await;
    let student_a = job_a["results"][0]["studentId"]
        .as_str()
        .unwrap()
        .to_string();
    let job_a_id = job_a["jobId"].as_str().unwrap().to_string();

    let as_b = |method: reqwest::Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(&key_b)
    };

    // B cannot read, archive or see A's student or job: 404 like a missing one.
    let missing = Uuid::new_v4();
    for path in [
        format!("/v3/students/{student_a}"),
        format!("/v3/jobs/{job_a_id}"),
    ] {
        let theirs = send(as_b(reqwest::Method::GET, &path)).await;
        assert_eq!(
            theirs.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            theirs.body
        );
        let kind = path.rsplit_once('/').unwrap().0;
        let nothing = send(as_b(reqwest::Method::GET, &format!("{kind}/{missing}"))).await;
        assert_eq!(nothing.status, StatusCode::NOT_FOUND);
        assert_eq!(
            theirs.body["code"], nothing.body["code"],
            "indistinguishable"
        );
        assert_eq!(theirs.body["title"], nothing.body["title"]);
    }
    for action in ["archive", "unarchive"] {
        let reply = send(as_b(
            reqwest::Method::POST,
            &format!("/v3/students/{student_a}/{action}"),
        ))
        .await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{action}: {}",
            reply.body
        );
    }
    let still_active = app.get_json(&format!("/v3/students/{student_a}")).await;
    assert_eq!(still_active.body["archived"], false);

    // B's lists and lookups show nothing of A.
    let list = send(as_b(reqwest::Method::GET, "/v3/students")).await;
    assert_eq!(list.body["students"], json!([]), "{}", list.body);
    let lookup = send(as_b(
        reqwest::Method::GET,
        "/v3/students?externalReferenceId=shared-ref",
    ))
    .await;
    assert_eq!(lookup.body["students"], json!([]));
    let jobs = send(as_b(reqwest::Method::GET, "/v3/jobs")).await;
    assert_eq!(jobs.body["jobs"], json!([]), "{}", jobs.body);

    // The same external reference in B creates B's own student.
    let job_b = app
        .upsert_as(&key_b, &batch(vec![student("shared-ref")]))
        .await;
    assert_eq!(job_b.status, StatusCode::OK, "{}", job_b.body);
    assert_eq!(job_b.body["results"][0]["status"], "created");
    let student_b = job_b.body["results"][0]["studentId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(student_b, student_a);
    let owner: Uuid = sqlx::query_scalar("SELECT school_id FROM students WHERE id = $1")
        .bind(Uuid::parse_str(&student_b).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(owner.to_string(), school_b);

    // A's views never include B's data.
    let list_a = app.get_json("/v3/students?limit=500").await;
    let ids: Vec<&str> = list_a.body["students"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&student_b.as_str()));
    let jobs_a = app.get_json("/v3/jobs").await;
    assert_eq!(
        jobs_a.body["jobs"].as_array().unwrap().len(),
        1,
        "{}",
        jobs_a.body
    );
    let b_job = app
        .get_json(&format!(
            "/v3/jobs/{}",
            job_b.body["jobId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(b_job.status, StatusCode::NOT_FOUND);
    let a_shared = app.student_by_ref("shared-ref").await.unwrap();
    assert_eq!(a_shared["id"], student_a);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_school_is_never_taken_from_the_body() {
    let app = spawn_app().await;
    let (school_b, _) = app.create_school("School B").await;
    let reply = app
        .upsert(&json!({"students": [student("x")], "schoolId": school_b}))
        .await;
    assert_problem(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request");
    let mut item = student("y");
    item["schoolId"] = json!(school_b);
    let job = app.upsert_ok(&batch(vec![item])).await;
    assert_item_errors(&job, 0, &[("unknown_field", "/students/0/schoolId")]);
    let in_b: i64 = sqlx::query_scalar("SELECT count(*) FROM students WHERE school_id = $1")
        .bind(Uuid::parse_str(&school_b).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(in_b, 0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_filters_archive_switches_and_idempotency_keys_stay_in_their_school() {
    let app = spawn_app().await;
    let (_, key_b) = app.create_school("School B").await;
    let as_b = |method: reqwest::Method, path: &str| {
        app.client
            .request(method, app.url(path))
            .bearer_auth(&key_b)
    };

    // School A: three students from a keyed batch, one of them archived.
    let body_a = batch(vec![student("t-1"), student("t-2"), student("t-3")]).to_string();
    let job_a = send(
        app.batch_request(&serde_json::from_str(&body_a).unwrap())
            .header("Idempotency-Key", "nightly-sync"),
    )
    .await;
    assert_eq!(job_a.status, StatusCode::OK, "{}", job_a.body);
    let a_ids: Vec<String> = job_a.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["studentId"].as_str().unwrap().to_string())
        .collect();
    let archived = app
        .post(&format!("/v3/students/{}/archive", a_ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status(), StatusCode::OK);

    // B reuses A's Idempotency-Key with A's exact body: a different key in
    // B's school, so a new job with B's own students, not a replay.
    let job_b = send(
        as_b(reqwest::Method::POST, "/v3/students/batch-upsert")
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "nightly-sync")
            .body(body_a.clone()),
    )
    .await;
    assert_eq!(job_b.status, StatusCode::OK, "{}", job_b.body);
    assert_ne!(job_b.body["jobId"], job_a.body["jobId"]);
    assert_eq!(job_b.header("idempotent-replayed"), None);
    assert_eq!(job_b.body["summary"]["created"], 3, "{}", job_b.body);
    // ...and A's key still replays A's job for A.
    let replay_a = send(
        app.batch_request(&serde_json::from_str(&body_a).unwrap())
            .header("Idempotency-Key", "nightly-sync"),
    )
    .await;
    assert_eq!(replay_a.body["jobId"], job_a.body["jobId"]);
    assert_eq!(
        replay_a.header("idempotent-replayed").as_deref(),
        Some("true")
    );

    // B's archive switches do not reach A's students.
    for (action, id) in [("unarchive", &a_ids[0]), ("archive", &a_ids[1])] {
        let reply = send(as_b(
            reqwest::Method::POST,
            &format!("/v3/students/{id}/{action}"),
        ))
        .await;
        assert_problem(&reply, StatusCode::NOT_FOUND, "not_found");
    }
    let first = app.get_json(&format!("/v3/students/{}", a_ids[0])).await;
    assert_eq!(first.body["archived"], true, "still archived");
    let second = app.get_json(&format!("/v3/students/{}", a_ids[1])).await;
    assert_eq!(second.body["archived"], false, "still active");

    // A's cursors page through B's data only, when B presents them.
    let page_a = app.get_json("/v3/students?limit=1").await;
    let cursor = page_a.body["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let page_b = send(as_b(
        reqwest::Method::GET,
        &format!("/v3/students?limit=500&cursor={}", encode(&cursor)),
    ))
    .await;
    assert_eq!(page_b.status, StatusCode::OK, "{}", page_b.body);
    for student in page_b.body["students"].as_array().unwrap() {
        assert!(!a_ids.contains(&student["id"].as_str().unwrap().to_string()));
    }
    let jobs_a = app.get_json("/v3/jobs?limit=1").await;
    assert_eq!(jobs_a.body["jobs"].as_array().unwrap().len(), 1);
    let all_b = send(as_b(reqwest::Method::GET, "/v3/jobs?limit=500")).await;
    let b_jobs: Vec<&str> = all_b.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["jobId"].as_str().unwrap())
        .collect();
    assert_eq!(b_jobs, [job_b.body["jobId"].as_str().unwrap()]);
    for filter in ["status=completed", "status=queued", "limit=1"] {
        let reply = send(as_b(reqwest::Method::GET, &format!("/v3/jobs?{filter}"))).await;
        for job in reply.body["jobs"].as_array().unwrap() {
            assert_ne!(job["jobId"], job_a.body["jobId"], "{filter}");
        }
    }
    // Filters and lookups by key, archived or not, see only B's own.
    for query in [
        "archived=true",
        "archived=false",
        "externalReferenceId=t-1&archived=true",
    ] {
        let reply = send(as_b(reqwest::Method::GET, &format!("/v3/students?{query}"))).await;
        for student in reply.body["students"].as_array().unwrap() {
            assert!(
                !a_ids.contains(&student["id"].as_str().unwrap().to_string()),
                "{query}"
            );
            assert_eq!(student["archived"], false, "{query}: B archived nothing");
        }
    }
    app.cleanup().await;
}
