//! Batching: rows become request bodies of at most `--batch-size` students and
//! at most [`MAX_BODY`] bytes (the API refuses bodies over 5 MiB), each with an
//! Idempotency-Key derived from its bytes.
//!
//! A row that failed locally travels with the batch being filled when it was
//! read (a [`Unit`]), so outcomes can be reported in file order with only a
//! window of batches in memory.

use sha2::{Digest, Sha256};
use studentsync::job::BatchOptions;

use super::source::{Failure, Row, RowError};

/// The largest request body built (the API's limit is 5 MiB; the rest is margin).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Locally failed rows carried by one unit at most (so a file of broken rows
/// still moves through the window).
const MAX_FAILED_PER_UNIT: usize = 1000;
const HEAD: &[u8] = br#"{"students":["#;

/// A slice of the file: the rows to send in one request (and its body), plus the
/// rows that failed locally in between. `seq` orders units as in the file.
#[derive(Debug, Default)]
pub struct Unit {
    pub seq: u64,
    pub rows: Vec<Sent>,
    /// The request body; empty when there is no row to send.
    pub body: Vec<u8>,
    pub failed: Vec<Failure>,
}

impl Unit {
    /// Rows of the file this unit accounts for.
    pub fn records(&self) -> usize {
        self.rows.len() + self.failed.len()
    }
}

/// Where a sent row came from (`rows[i]` is input item `i` of the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub line: u64,
    pub id: Option<String>,
}

/// Builds units from records in file order.
pub struct Batcher {
    tail: Vec<u8>,
    batch_size: usize,
    next_seq: u64,
    current: Unit,
}

impl Batcher {
    pub fn new(options: &BatchOptions, batch_size: usize) -> Self {
        let mut tail = br#"],"options":"#.to_vec();
        serde_json::to_writer(&mut tail, options).expect("options serialise");
        tail.push(b'}');
        Self {
            tail,
            batch_size: batch_size.max(1),
            next_seq: 0,
            current: Unit::default(),
        }
    }

    /// Adds a row to send; returns the previous unit when it was full.
    pub fn push_row(&mut self, row: Row) -> Option<Unit> {
        let room = MAX_BODY - HEAD.len() - self.tail.len();
        if row.json.len() > room {
            return self.push_failed(Failure {
                line: row.line,
                id: row.id,
                errors: vec![RowError::new(
                    "row_too_large",
                    "",
                    format!(
                        "the row is {} bytes of JSON; a request holds at most {room}",
                        row.json.len()
                    ),
                )],
            });
        }
        let full = self.current.rows.len() >= self.batch_size
            || self.current.body.len() + 1 + row.json.len() + self.tail.len() > MAX_BODY;
        let flushed = if full { self.take() } else { None };
        let body = &mut self.current.body;
        if body.is_empty() {
            body.extend_from_slice(HEAD);
        } else {
            body.push(b',');
        }
        body.extend_from_slice(&row.json);
        self.current.rows.push(Sent {
            line: row.line,
            id: row.id,
        });
        flushed
    }

    /// Adds a row that failed locally; returns the previous unit when it was full.
    pub fn push_failed(&mut self, failure: Failure) -> Option<Unit> {
        let flushed = if self.current.failed.len() >= MAX_FAILED_PER_UNIT {
            self.take()
        } else {
            None
        };
        self.current.failed.push(failure);
        flushed
    }

    /// The last unit, if it holds anything.
    pub fn finish(mut self) -> Option<Unit> {
        self.take()
    }

    fn take(&mut self) -> Option<Unit> {
        if self.current.records() == 0 {
            return None;
        }
        let mut unit = std::mem::take(&mut self.current);
        if !unit.body.is_empty() {
            unit.body.extend_from_slice(&self.tail);
        }
        unit.seq = self.next_seq;
        self.next_seq += 1;
        Some(unit)
    }
}

/// The Idempotency-Key of a request body: a SHA-256 of its bytes (and of
/// `--run-id`, when given). The same batch of the same file with the same options
/// gets the same key, so rerunning an import within the API's 24 h replays the
/// batches already applied instead of applying them again.
pub fn idempotency_key(run_id: Option<&str>, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    if let Some(run_id) = run_id {
        hasher.update(run_id.as_bytes());
        hasher.update([0]);
    }
    hasher.update(body);
    format!("studentsync-import-{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn row(line: u64, id: &str) -> Row {
        Row {
            line,
            id: Some(id.to_string()),
            json: serde_json::to_vec(&json!({"externalReferenceId": id})).unwrap(),
        }
    }

    fn failed(line: u64) -> Failure {
        Failure {
            line,
            id: None,
            errors: vec![RowError::new("malformed_row", "", "x")],
        }
    }

    #[test]
    fn rows_fill_batches_of_the_size_asked_with_failures_in_between() {
        let options = BatchOptions {
            dry_run: true,
            ..BatchOptions::default()
        };
        let mut batcher = Batcher::new(&options, 2);
        let mut units = Vec::new();
        units.extend(batcher.push_row(row(2, "a")));
        units.extend(batcher.push_failed(failed(3)));
        units.extend(batcher.push_row(row(4, "b")));
        units.extend(batcher.push_row(row(5, "c")));
        units.extend(batcher.finish());
        assert_eq!(units.len(), 2);
        assert_eq!((units[0].seq, units[1].seq), (0, 1));
        assert_eq!(units[0].rows.len(), 2);
        assert_eq!(units[0].failed, vec![failed(3)]);
        let body: Value = serde_json::from_slice(&units[0].body).unwrap();
        assert_eq!(
            body,
            json!({
                "students": [{"externalReferenceId": "a"}, {"externalReferenceId": "b"}],
                "options": {"allowUnarchive": false, "dryRun": true,
                            "onStudentCreated": {"sendCredentials": false, "newPasswordNeeded": false}}
            })
        );
        assert_eq!(
            units[1].rows,
            vec![Sent {
                line: 5,
                id: Some("c".into())
            }]
        );
    }

    #[test]
    fn a_unit_of_failures_only_has_no_body() {
        let mut batcher = Batcher::new(&BatchOptions::default(), 10);
        assert!(batcher.push_failed(failed(2)).is_none());
        let unit = batcher.finish().unwrap();
        assert!(unit.body.is_empty() && unit.rows.is_empty());
        assert_eq!(unit.records(), 1);
        assert!(
            Batcher::new(&BatchOptions::default(), 10)
                .finish()
                .is_none()
        );
    }

    #[test]
    fn bodies_stay_under_the_byte_limit_and_huge_rows_fail() {
        let mut batcher = Batcher::new(&BatchOptions::default(), 1000);
        let big = |line: u64| Row {
            line,
            id: None,
            json: format!("{{\"firstName\":\"{}\"}}", "x".repeat(1024 * 1024)).into_bytes(),
        };
        let mut units = Vec::new();
        for line in 0..9 {
            units.extend(batcher.push_row(big(line)));
        }
        units.extend(batcher.push_row(Row {
            line: 99,
            id: None,
            json: vec![b' '; MAX_BODY],
        }));
        units.extend(batcher.finish());
        assert!(units.iter().all(|unit| unit.body.len() <= MAX_BODY));
        assert_eq!(units.iter().map(|unit| unit.rows.len()).sum::<usize>(), 9);
        let failures: Vec<&Failure> = units.iter().flat_map(|unit| &unit.failed).collect();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].errors[0].code, "row_too_large");
    }

    #[test]
    fn the_key_depends_on_the_body_and_the_run_id() {
        let key = idempotency_key(None, b"{}");
        assert_eq!(key, idempotency_key(None, b"{}"));
        assert!(key.len() <= 255 && key.starts_with("studentsync-import-"));
        assert_ne!(key, idempotency_key(None, b"{ }"));
        assert_ne!(key, idempotency_key(Some("2"), b"{}"));
    }
}
