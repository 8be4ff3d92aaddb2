//! Rows the database rejects although validation accepted them: the engine
//! isolates them by savepoint + bisection, fails only those items, and writes
//! every other row of the batch.

use serde_json::json;

use crate::helpers::{batch, spawn_app, student};

/// A constraint validation knows nothing about, so only Postgres can refuse it.
async fn forbid_first_name(app: &crate::helpers::TestApp, name: &str) {
    let statement = format!(
        "ALTER TABLE students ADD CONSTRAINT test_forbidden_name CHECK (first_name <> '{name}')"
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&app.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_database_rejects_fail_alone() {
    let app = spawn_app().await;
    forbid_first_name(&app, "Refused").await;
    let refused = [37, 80];
    let students: Vec<_> = (0..100)
        .map(|i| {
            let mut item = student(&format!("iso-{i}"));
            if refused.contains(&i) {
                item["firstName"] = json!("Refused");
            }
            item
        })
        .collect();
    let reply = app.upsert(&batch(students)).await;
    assert_eq!(reply.status.as_u16(), 207, "{}", reply.body);
    let job = &reply.body;
    assert_eq!(job["summary"]["created"], 98);
    assert_eq!(job["summary"]["failed"], 2);
    for index in refused {
        let result = &job["results"][index];
        assert_eq!(result["status"], "failed");
        assert_eq!(result["errors"][0]["code"], "invalid_format");
        assert_eq!(result["errors"][0]["pointer"], format!("/students/{index}"));
    }
    assert_eq!(app.students_count().await, 98);

    // Updates are isolated the same way: one refused, the rest still applied.
    let updates: Vec<_> = (0..10)
        .map(|i| {
            let name = if i == 4 { "Refused" } else { "Renamed" };
            json!({"externalReferenceId": format!("iso-{i}"), "firstName": name})
        })
        .collect();
    let reply = app.upsert(&batch(updates)).await;
    assert_eq!(reply.status.as_u16(), 207, "{}", reply.body);
    assert_eq!(reply.body["summary"]["updated"], 9);
    assert_eq!(reply.body["results"][4]["status"], "failed");
    let renamed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM students WHERE first_name = 'Renamed'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(renamed, 9);
    app.cleanup().await;
}
