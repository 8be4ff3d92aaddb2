//! The students API: get, lookup by external reference, cursor pagination,
//! archive/unarchive and the `archived` filter.

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const FIELDS: [&str; 17] = [
    "id",
    "externalReferenceId",
    "externalReferenceType",
    "firstName",
    "lastName",
    "email",
    "phone",
    "curriculumName",
    "company",
    "badgeId",
    "tags",
    "fileNumber",
    "photoUrl",
    "archived",
    "passwordChangeRequired",
    "createdAt",
    "updatedAt",
];

fn ids_of(body: &Value) -> Vec<String> {
    body["students"]
        .as_array()
        .unwrap_or_else(|| panic!("students array: {body}"))
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Walks every page; returns the ids in order and the number of pages.
async fn walk(app: &TestApp, query: &str, limit: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v3/students?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get_json(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let page_ids = ids_of(&page.body);
        assert!(page_ids.len() <= limit);
        ids.extend(page_ids);
        pages += 1;
        assert!(
            page.body.get("nextCursor").is_some(),
            "nextCursor is always present"
        );
        match page.body["nextCursor"].as_str() {
            Some(next) => {
                assert!(
                    next.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)),
                    "URL-safe cursor: {next}"
                );
                cursor = Some(next.to_string());
            }
            None => return (ids, pages),
        }
        assert!(pages < 100, "pagination does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_a_student_by_id() {
    let app = spawn_app().await;
    let job = app.upsert_ok(&batch(vec![student("g-1")])).await;
    let id = job["results"][0]["studentId"].as_str().unwrap();
    let reply = app.get_json(&format!("/v3/students/{id}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let object = reply.body.as_object().unwrap();
    for field in FIELDS {
        assert!(
            object.contains_key(field),
            "student has {field}: {}",
            reply.body
        );
    }
    assert_eq!(reply.body["id"], id);
    assert_eq!(reply.body["email"], Value::Null, "unset values are null");
    assert_eq!(reply.body["tags"], Value::Null);
    assert_eq!(reply.body["archived"], false);
    for field in ["createdAt", "updatedAt"] {
        let text = reply.body[field].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            "{field}: {text}"
        );
    }

    for path in [
        format!("/v3/students/{}", Uuid::new_v4()),
        "/v3/students/not-a-uuid".to_string(),
        "/v3/students/00000000-0000-0000-0000-000000000000".to_string(),
    ] {
        let reply = app.get_json(&path).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            reply.body
        );
        assert!(reply.content_type().starts_with("application/problem+json"));
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_by_external_reference_id() {
    let app = spawn_app().await;
    app.upsert_ok(&batch(vec![student("look up/1?&="), student("other")]))
        .await;
    let reply = app
        .get_json(&format!(
            "/v3/students?externalReferenceId={}",
            encode("look up/1?&=")
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let students = reply.body["students"].as_array().unwrap();
    assert_eq!(students.len(), 1, "{}", reply.body);
    assert_eq!(students[0]["externalReferenceId"], "look up/1?&=");

    let reply = app
        .get_json("/v3/students?externalReferenceId=missing")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["students"], json!([]));
    // Exact match only.
    let reply = app.get_json("/v3/students?externalReferenceId=OTHER").await;
    assert_eq!(reply.body["students"], json!([]));
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_complete_and_stable() {
    let app = spawn_app().await;
    let items: Vec<Value> = (0..250).map(|i| student(&format!("p-{i:03}"))).collect();
    let job = app.upsert_ok(&batch(items)).await;
    assert_eq!(job["summary"]["created"], 250);

    let (ids, pages) = walk(&app, "", 100).await;
    assert_eq!(pages, 3);
    assert_eq!(ids.len(), 250);
    assert_distinct(&ids);
    let mut expected: Vec<String> = job["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["studentId"].as_str().unwrap().to_string())
        .collect();
    // Results come in input order, and the references p-000 … p-249 sort the
    // same way: pages are ordered by externalReferenceId.
    assert_eq!(ids, expected, "ordered by externalReferenceId");
    let mut sorted = ids.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected, "every student exactly once");

    let (again, _) = walk(&app, "", 100).await;
    assert_eq!(again, ids, "the same order every time");

    // Other page sizes see the same order.
    let (small, pages) = walk(&app, "", 7).await;
    assert_eq!(small, ids);
    assert_eq!(pages, 36);
    let (whole, pages) = walk(&app, "", 500).await;
    assert_eq!(whole, ids);
    assert_eq!(pages, 1);

    // Default limit is 100.
    let first = app.get_json("/v3/students").await;
    assert_eq!(ids_of(&first.body).len(), 100);
    assert!(first.body["nextCursor"].is_string());

    // Students created during a walk never cause duplicates or skips of old ones.
    let first = app.get_json("/v3/students?limit=100").await;
    let mut seen = ids_of(&first.body);
    let mut cursor = first.body["nextCursor"].as_str().unwrap().to_string();
    let more: Vec<Value> = (0..50).map(|i| student(&format!("late-{i:02}"))).collect();
    app.upsert_ok(&batch(more)).await;
    loop {
        let page = app
            .get_json(&format!("/v3/students?limit=100&cursor={cursor}"))
            .await;
        seen.extend(ids_of(&page.body));
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_distinct(&seen);
    for id in &ids {
        assert!(seen.contains(id), "student {id} skipped");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_outside_1_to_500_are_422() {
    let app = spawn_app().await;
    for limit in ["0", "501", "-1", "100000"] {
        let reply = app.get_json(&format!("/v3/students?limit={limit}")).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit={limit}: {}",
            reply.body
        );
        assert!(reply.content_type().starts_with("application/problem+json"));
    }
    for limit in ["1", "500"] {
        let reply = app.get_json(&format!("/v3/students?limit={limit}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "limit={limit}: {}",
            reply.body
        );
    }
    for bad in [
        "/v3/students?limit=abc",
        "/v3/students?cursor=%%%garbage",
        "/v3/students?archived=maybe",
    ] {
        let reply = app.get_json(bad).await;
        assert!(
            reply.status == StatusCode::BAD_REQUEST
                || reply.status == StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {} {}",
            reply.status,
            reply.body
        );
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_unarchive_and_the_archived_filter() {
    let app = spawn_app().await;
    let job = app
        .upsert_ok(&batch(vec![student("a-1"), student("a-2"), student("a-3")]))
        .await;
    let id = job["results"][1]["studentId"].as_str().unwrap().to_string();

    let reply = send(app.post(&format!("/v3/students/{id}/archive"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["id"], id);
    assert_eq!(reply.body["archived"], true);
    let archived: bool = sqlx::query_scalar("SELECT archived FROM students WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(archived);
    // Archiving twice is harmless.
    let reply = send(app.post(&format!("/v3/students/{id}/archive"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["archived"], true);

    let only_archived = app.get_json("/v3/students?archived=true").await;
    assert_eq!(ids_of(&only_archived.body), vec![id.clone()]);
    let active = app.get_json("/v3/students?archived=false").await;
    assert_eq!(ids_of(&active.body).len(), 2);
    assert!(!ids_of(&active.body).contains(&id));
    let all = app.get_json("/v3/students").await;
    assert_eq!(
        ids_of(&all.body).len(),
        3,
        "lists include archived students"
    );
    let looked_up = app.student_by_ref("a-2").await.unwrap();
    assert_eq!(looked_up["archived"], true);
    let by_id = app.get_json(&format!("/v3/students/{id}")).await;
    assert_eq!(by_id.body["archived"], true);

    let reply = send(app.post(&format!("/v3/students/{id}/unarchive"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["archived"], false);
    let only_archived = app.get_json("/v3/students?archived=true").await;
    assert!(ids_of(&only_archived.body).is_empty());

    for action in ["archive", "unarchive"] {
        let reply = send(app.post(&format!("/v3/students/{}/{action}", Uuid::new_v4()))).await;
        assert_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{action}: {}",
            reply.body
        );
    }
    app.cleanup().await;
}
