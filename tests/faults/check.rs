//! The Jepsen-style count: what clients were told was accepted, against what the
//! database holds.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::helpers::{TestApp, batch_with, student};

/// `count` new students `{prefix}-{i}`, each with an email, sending credentials.
pub fn new_students_batch(prefix: &str, count: usize) -> (Value, Vec<String>) {
    let refs: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:04}")).collect();
    let items = refs
        .iter()
        .map(|reference| {
            let mut item = student(reference);
            item["email"] = json!(format!("{reference}@example.edu").to_lowercase());
            item
        })
        .collect();
    (
        batch_with(
            items,
            json!({"onStudentCreated": {"sendCredentials": true}}),
        ),
        refs,
    )
}

/// The batches the API accepted (job id → the new references it carried).
#[derive(Default)]
pub struct History {
    pub accepted: BTreeMap<String, Vec<String>>,
    /// Requests answered 503 (not accepted: nothing of them may be stored).
    pub refused: Vec<Vec<String>>,
}

impl History {
    pub fn accept(&mut self, job_id: String, refs: Vec<String>) {
        assert!(
            self.accepted.insert(job_id, refs).is_none(),
            "job ids are unique"
        );
    }

    /// Waits for every accepted job and asserts: all `completed`; lost = 0,
    /// duplicated = 0; nothing of a refused request stored; one outbox row per
    /// created student; the results' student ids are the stored ones.
    pub async fn check(&self, app: &TestApp) {
        let mut expected: BTreeSet<String> = BTreeSet::new();
        let mut result_ids: BTreeMap<String, String> = BTreeMap::new();
        for (job_id, refs) in &self.accepted {
            let job = app.wait_for_job(job_id).await;
            assert_eq!(job["status"], "completed", "job {job_id}: {job}");
            let results = job["results"].as_array().expect("results");
            assert_eq!(results.len(), refs.len(), "{job_id}");
            for (result, reference) in results.iter().zip(refs) {
                assert_eq!(
                    result["externalReferenceId"],
                    reference.as_str(),
                    "{result}"
                );
                // A redelivered batch (already committed) must not turn
                // `created` into `unchanged`: results are those of the one
                // application.
                assert_eq!(result["status"], "created", "{job_id}: {result}");
                let id = result["studentId"].as_str().expect("studentId").to_string();
                assert!(
                    result_ids.insert(reference.clone(), id).is_none(),
                    "{reference} reported twice"
                );
                expected.insert(reference.clone());
            }
        }
        let stored: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT external_reference_id, id::text, count(*) OVER (PARTITION BY external_reference_id)
               FROM students",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let stored_refs: BTreeSet<String> = stored.iter().map(|(r, _, _)| r.clone()).collect();
        let lost: Vec<&String> = expected.difference(&stored_refs).collect();
        let duplicated: Vec<&String> = stored
            .iter()
            .filter(|(_, _, copies)| *copies > 1)
            .map(|(r, _, _)| r)
            .collect();
        let unexpected: Vec<&String> = stored_refs.difference(&expected).collect();
        assert!(lost.is_empty(), "lost {} students: {lost:?}", lost.len());
        assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
        assert!(
            unexpected.is_empty(),
            "stored but never accepted (a 503 must record nothing): {unexpected:?}"
        );
        for refs in &self.refused {
            for reference in refs {
                assert!(
                    !stored_refs.contains(reference),
                    "refused {reference} stored"
                );
            }
        }
        for (reference, id, _) in &stored {
            assert_eq!(
                result_ids.get(reference),
                Some(id),
                "job result and database disagree on {reference}"
            );
        }
        // One outbox row per created student (all have an email), none twice.
        let outbox: Vec<(String, i64)> = sqlx::query_as(
            "SELECT s.external_reference_id, count(c.*)
               FROM students s LEFT JOIN credential_emails c ON c.student_id = s.id
              GROUP BY s.external_reference_id",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let wrong: Vec<&(String, i64)> = outbox.iter().filter(|(_, n)| *n != 1).collect();
        assert!(wrong.is_empty(), "outbox rows per student != 1: {wrong:?}");
        assert_eq!(outbox.len(), expected.len());
        // Every job terminal, in the database too.
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE status NOT IN ('completed', 'failed')",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(open, 0, "jobs left open");
    }
}
