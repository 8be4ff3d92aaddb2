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
