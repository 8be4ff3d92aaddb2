//! The failure report (`--report PATH`): a CSV of the rows that failed, in file
//! order — `line` (where the record starts; the header is line 1),
//! `externalReferenceId`, `status` (`failed`), `errors` (`code pointer detail`,
//! `; `-separated; the pointer is relative to the row, e.g. `/email`, and left out
//! for errors of the row as a whole).
//!
//! Without `--report`, the first few failures are kept to be shown on stderr at
//! the end.

use std::fs::File;
use std::path::Path;

use anyhow::Context;

use super::source::{Failure, RowError};

/// Failures kept for stderr when there is no report file.
const SHOWN: usize = 10;

/// Where failures go.
pub struct Report {
    writer: Option<csv::Writer<File>>,
    /// The first failures (for stderr), when there is no report file.
    first: Vec<Failure>,
}

impl Report {
    /// Creates the report file (with its header) when `path` is given.
    pub fn create(path: Option<&Path>) -> anyhow::Result<Self> {
        let writer = match path {
            Some(path) => {
                let mut writer = csv::Writer::from_path(path)
                    .with_context(|| format!("cannot create the report {}", path.display()))?;
                writer.write_record(["line", "externalReferenceId", "status", "errors"])?;
                writer.flush()?;
                Some(writer)
            }
            None => None,
        };
        Ok(Self {
            writer,
            first: Vec::new(),
        })
    }

    /// Records failures (given in file order).
    pub fn write(&mut self, failures: &[Failure]) -> anyhow::Result<()> {
        match &mut self.writer {
            Some(writer) => {
                for failure in failures {
                    writer
                        .write_record([
                            failure.line.to_string().as_str(),
                            failure.id.as_deref().unwrap_or(""),
                            "failed",
                            &errors_cell(&failure.errors),
                        ])
                        .context("cannot write the report")?;
                }
            }
            None => {
                let room = SHOWN.saturating_sub(self.first.len());
                self.first.extend(failures.iter().take(room).cloned());
            }
        }
        Ok(())
    }

    /// Flushes the file; returns the failures kept for stderr.
    pub fn finish(self) -> anyhow::Result<Vec<Failure>> {
        if let Some(mut writer) = self.writer {
            writer.flush().context("cannot write the report")?;
        }
        Ok(self.first)
    }
}

/// The `errors` cell: `code pointer detail; code pointer detail`.
pub fn errors_cell(errors: &[RowError]) -> String {
    errors
        .iter()
        .map(|error| {
            if error.pointer.is_empty() {
                format!("{} {}", error.code, error.detail)
            } else {
                format!("{} {} {}", error.code, error.pointer, error.detail)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One failure as a line for stderr.
pub fn describe(failure: &Failure) -> String {
    let id = failure
        .id
        .as_deref()
        .map(|id| format!(" ({id})"))
        .unwrap_or_default();
    format!(
        "line {}{id}: {}",
        failure.line,
        errors_cell(&failure.errors)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_joined_with_their_pointers() {
        let errors = vec![
            RowError::new("too_long", "/lastName", "at most 100 characters"),
            RowError::new("malformed_row", "", "expected 3 cells"),
        ];
        assert_eq!(
            errors_cell(&errors),
            "too_long /lastName at most 100 characters; malformed_row expected 3 cells"
        );
    }

    #[test]
    fn the_report_is_a_csv_with_a_header() {
        let dir = std::env::temp_dir().join(format!("ss-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.csv");
        let mut report = Report::create(Some(&path)).unwrap();
        report
            .write(&[Failure {
                line: 4,
                id: Some("a;1".into()),
                errors: vec![RowError::new(
                    "blank",
                    "/firstName",
                    "must not be blank, \"ok\"",
                )],
            }])
            .unwrap();
        assert!(report.finish().unwrap().is_empty());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "line,externalReferenceId,status,errors\n4,a;1,failed,\"blank /firstName must not be blank, \"\"ok\"\"\"\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
