//! What became of one unit: its counts per status and its failed rows (with
//! their file lines), from the API's answer for the rows it sent plus the rows
//! that had already failed locally.

use studentsync::job::JobSummary;

use super::batch::Unit;
use super::client::{Answer, Job};
use super::source::{Failure, RowError};

/// The settled unit.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seq: u64,
    pub summary: JobSummary,
    /// In file order.
    pub failures: Vec<Failure>,
    /// The API answered from an earlier request with the same Idempotency-Key.
    pub replayed: bool,
}

/// Settles `unit` with the API's answer (`None`: nothing was sent).
pub fn settle(unit: Unit, answer: Option<Answer>) -> Outcome {
    let mut summary = JobSummary {
        total: unit.records(),
        ..JobSummary::default()
    };
    let mut failures = unit.failed;
    let mut replayed = false;
    let every_row_fails = |failures: &mut Vec<Failure>, code: &str, detail: &str| {
        failures.extend(unit.rows.iter().map(|row| Failure {
            line: row.line,
            id: row.id.clone(),
            errors: vec![RowError::new(code, "", detail)],
        }));
    };
    match answer {
        None => {}
        Some(Answer::Refused { code, detail }) => every_row_fails(&mut failures, &code, &detail),
        Some(Answer::Job {
            job,
            replayed: again,
        }) => {
            replayed = again;
            if job.status == "failed" {
                let problem = job.error.clone().unwrap_or_default();
                let code = problem.code.unwrap_or_else(|| "job_failed".to_string());
                let detail = problem
                    .detail
                    .unwrap_or_else(|| format!("job {} could not be processed", job.job_id));
                every_row_fails(&mut failures, &code, &detail);
            } else {
                apply_results(&unit.rows, job, &mut summary, &mut failures);
            }
        }
    }
    summary.failed = failures.len();
    failures.sort_by_key(|failure| failure.line);
    Outcome {
        seq: unit.seq,
        summary,
        failures,
        replayed,
    }
}

fn apply_results(
    rows: &[super::batch::Sent],
    job: Job,
    summary: &mut JobSummary,
    failures: &mut Vec<Failure>,
) {
    let mut answered = vec![false; rows.len()];
    for result in job.results.unwrap_or_default() {
        let index = result.input_index;
        let Some(row) = rows.get(index) else { continue };
        if std::mem::replace(&mut answered[index], true) {
            continue;
        }
        match result.status.as_str() {
            "created" => summary.created += 1,
            "updated" => summary.updated += 1,
            "unchanged" => summary.unchanged += 1,
            status => {
                let mut errors: Vec<RowError> = result
                    .errors
                    .into_iter()
                    .map(|error| RowError {
                        pointer: relative_pointer(&error.pointer, index),
                        code: error.code,
                        detail: error.detail,
                    })
                    .collect();
                if status != "failed" || errors.is_empty() {
                    errors.push(RowError::new(
                        "unexpected_result",
                        "",
                        format!("the API answered status {status:?} for this row"),
                    ));
                }
                failures.push(Failure {
                    line: row.line,
                    id: row.id.clone(),
                    errors,
                });
            }
        }
    }
    for (row, _) in rows.iter().zip(answered).filter(|(_, answered)| !answered) {
        failures.push(Failure {
            line: row.line,
            id: row.id.clone(),
            errors: vec![RowError::new(
                "no_result",
                "",
                "the API's answer has no result for this row",
            )],
        });
    }
}

/// `/students/3/email` of input item 3 → `/email` (the row's own pointer).
pub fn relative_pointer(pointer: &str, index: usize) -> String {
    let prefix = format!("/students/{index}");
    match pointer.strip_prefix(&prefix) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_string(),
        _ => pointer.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::batch::Sent;
    use crate::import::client::{JobResult, Problem, ProblemError};

    fn unit() -> Unit {
        Unit {
            seq: 4,
            rows: vec![
                Sent {
                    line: 2,
                    id: Some("a".into()),
                },
                Sent {
                    line: 5,
                    id: Some("b".into()),
                },
                Sent { line: 6, id: None },
            ],
            body: b"{}".to_vec(),
            failed: vec![Failure {
                line: 3,
                id: Some("dup".into()),
                errors: vec![RowError::new(
                    "duplicate_in_file",
                    "/externalReferenceId",
                    "d",
                )],
            }],
        }
    }

    fn result(index: usize, status: &str, errors: Vec<ProblemError>) -> JobResult {
        JobResult {
            input_index: index,
            status: status.into(),
            errors,
        }
    }

    #[test]
    fn results_map_back_to_lines_in_file_order() {
        let job = Job {
            job_id: "j".into(),
            status: "completed".into(),
            results: Some(vec![
                result(0, "created", vec![]),
                result(
                    1,
                    "failed",
                    vec![ProblemError {
                        code: "too_long".into(),
                        pointer: "/students/1/lastName".into(),
                        detail: "at most 100 characters".into(),
                    }],
                ),
                result(2, "unchanged", vec![]),
            ]),
            error: None,
        };
        let outcome = settle(
            unit(),
            Some(Answer::Job {
                job,
                replayed: true,
            }),
        );
        assert_eq!(outcome.seq, 4);
        assert!(outcome.replayed);
        let summary = outcome.summary;
        assert_eq!(
            (
                summary.total,
                summary.created,
                summary.updated,
                summary.unchanged,
                summary.failed
            ),
            (4, 1, 0, 1, 2)
        );
        let lines: Vec<u64> = outcome.failures.iter().map(|f| f.line).collect();
        assert_eq!(lines, vec![3, 5]);
        assert_eq!(
            outcome.failures[1].errors,
            vec![RowError::new(
                "too_long",
                "/lastName",
                "at most 100 characters"
            )]
        );
        assert_eq!(outcome.failures[1].id.as_deref(), Some("b"));
    }

    #[test]
    fn a_refused_or_failed_batch_fails_every_row_it_sent() {
        let refused = settle(
            unit(),
            Some(Answer::Refused {
                code: "payload_too_large".into(),
                detail: "too big".into(),
            }),
        );
        assert_eq!(refused.summary.failed, 4);
        let codes: Vec<&str> = refused
            .failures
            .iter()
            .map(|failure| failure.errors[0].code.as_str())
            .collect();
        assert_eq!(
            codes,
            [
                "payload_too_large",
                "duplicate_in_file",
                "payload_too_large",
                "payload_too_large"
            ]
        );

        let job = Job {
            job_id: "j".into(),
            status: "failed".into(),
            results: None,
            error: Some(Problem {
                code: Some("job_failed".into()),
                detail: Some("dead-lettered".into()),
            }),
        };
        let failed = settle(
            unit(),
            Some(Answer::Job {
                job,
                replayed: false,
            }),
        );
        assert_eq!(failed.summary.failed, 4);
        assert_eq!(failed.failures[3].errors[0].detail, "dead-lettered");
    }

    #[test]
    fn a_row_without_a_result_fails() {
        let job = Job {
            job_id: "j".into(),
            status: "completed".into(),
            results: Some(vec![
                result(0, "updated", vec![]),
                result(9, "created", vec![]),
            ]),
            error: None,
        };
        let outcome = settle(
            unit(),
            Some(Answer::Job {
                job,
                replayed: false,
            }),
        );
        assert_eq!(outcome.summary.updated, 1);
        assert_eq!(outcome.summary.failed, 3);
        assert_eq!(outcome.failures[1].errors[0].code, "no_result");
    }

    #[test]
    fn pointers_become_relative_to_the_row() {
        assert_eq!(relative_pointer("/students/3/email", 3), "/email");
        assert_eq!(relative_pointer("/students/3/tags/2", 3), "/tags/2");
        assert_eq!(relative_pointer("/students/3", 3), "");
        assert_eq!(
            relative_pointer("/students/31/email", 3),
            "/students/31/email"
        );
    }
}
