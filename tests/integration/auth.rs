//! Authentication: API keys (401 when missing, unknown or revoked), keys stored
//! only as hashes, and the admin token (401 when wrong, 404 when unset).

use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

fn protected() -> Vec<(Method, String)> {
    let id = Uuid::new_v4();
    vec![
        (Method::POST, "/v3/students/batch-upsert".to_string()),
        (Method::GET, "/v3/students".to_string()),
        (Method::GET, format!("/v3/students/{id}")),
        (Method::POST, format!("/v3/students/{id}/archive")),
        (Method::POST, format!("/v3/students/{id}/unarchive")),
        (Method::GET, "/v3/jobs".to_string()),
        (Method::GET, format!("/v3/jobs/{id}")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_key_are_401() {
    let app = spawn_app().await;
    let body = batch(vec![student("auth-1")]).to_string();
    let unknown_key = format!("{}x", app.api_key);
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer not-a-key".to_string()),
        Some(format!("Bearer {unknown_key}")),
        Some(format!("Basic {}", app.api_key)),
        Some(app.api_key.clone()),
        Some(format!("Bearer {}", app.admin_token)),
    ];
    for (method, path) in protected() {
        for authorization in &authorizations {
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .header("Content-Type", "application/json")
                .body(body.clone());
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let reply = send(request).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}: {}",
                reply.body
            );
            assert!(
                reply.content_type().starts_with("application/problem+json"),
                "{path}"
            );
            assert_eq!(reply.body["status"], 401);
        }
    }
    assert_eq!(app.jobs_count().await, 0);
    assert_eq!(app.students_count().await, 0);

    // The valid key works (sanity).
    let reply = app.get_json("/v3/students").await;
    assert_eq!(reply.status, StatusCode::OK);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_at_once() {
    let app = spawn_app().await;
    let (key_id, key) = app.create_api_key(&app.school_id).await;
    assert_ne!(key, app.api_key);
    let with_key = |key: &str| {
        app.client
            .get(app.url("/v3/students"))
            .bearer_auth(key.to_string())
    };
    // Use it (and let any cache warm up).
    for _ in 0..3 {
        assert_eq!(send(with_key(&key)).await.status, StatusCode::OK);
    }
    // Both keys act for the same school.
    let job = app
        .upsert_as(&key, &batch(vec![student("by-second-key")]))
        .await;
    assert_eq!(job.status, StatusCode::OK, "{}", job.body);
    assert!(app.student_by_ref("by-second-key").await.is_some());

    let reply = send(
        app.client
            .delete(app.url(&format!("/v3/admin/api-keys/{key_id}")))
            .bearer_auth(&app.admin_token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);

    let reply = send(with_key(&key)).await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "revoked at once: {}",
        reply.body
    );
    let reply = app
        .upsert_as(&key, &batch(vec![student("after-revoke")]))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(with_key(&app.api_key)).await.status,
        StatusCode::OK,
        "other keys unaffected"
    );

    let revoked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1")
            .bind(Uuid::parse_str(&key_id).unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(revoked.is_some());
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (_, second) = app.create_api_key(&app.school_id).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for key in [&app.api_key, &second] {
        assert!(key.len() >= 32, "keys are long random strings: {key}");
        for row in &rows {
            assert!(!row.contains(key.as_str()), "plaintext key stored: {row}");
        }
        for hash in &hashes {
            assert_ne!(hash.as_slice(), key.as_bytes());
        }
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_require_the_admin_token() {
    let app = spawn_app().await;
    let school_path = format!("/v3/admin/schools/{}/api-keys", app.school_id);
    let key_path = format!("/v3/admin/api-keys/{}", Uuid::new_v4());
    let attempts: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {}x", app.admin_token)),
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {}", app.api_key)),
        Some(app.admin_token.clone()),
    ];
    for authorization in &attempts {
        for (method, path) in [
            (Method::POST, "/v3/admin/schools".to_string()),
            (Method::POST, school_path.clone()),
            (Method::DELETE, key_path.clone()),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .json(&json!({"name": "Sneaky"}));
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let reply = send(request).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}: {}",
                reply.body
            );
        }
    }
    let schools: i64 = app.count("schools").await;
    assert_eq!(schools, 1, "no school created by a rejected request");

    // Unknown ids with the right token.
    let reply = send(
        app.client
            .post(app.url(&format!("/v3/admin/schools/{}/api-keys", Uuid::new_v4())))
            .bearer_auth(&app.admin_token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    let reply = send(
        app.client
            .delete(app.url(&key_path))
            .bearer_auth(&app.admin_token),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_are_404_without_admin_token() {
    let app = spawn_app_with(TestOptions {
        admin_enabled: false,
        create_school: false,
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    for authorization in [None, Some("Bearer anything"), Some("Bearer ")] {
        for (method, path) in [
            (Method::POST, "/v3/admin/schools".to_string()),
            (
                Method::POST,
                format!("/v3/admin/schools/{}/api-keys", Uuid::new_v4()),
            ),
            (
                Method::DELETE,
                format!("/v3/admin/api-keys/{}", Uuid::new_v4()),
            ),
        ] {
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .json(&json!({"name": "Nope"}));
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let reply = send(request).await;
            assert_eq!(
                reply.status,
                StatusCode::NOT_FOUND,
                "{method} {path} with {authorization:?}: {}",
                reply.body
            );
        }
    }
    assert_eq!(app.count("schools").await, 0);
    app.cleanup().await;
}
