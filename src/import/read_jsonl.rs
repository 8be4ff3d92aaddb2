//! JSON-lines input: one student object per line, sent as it is.
//!
//! Each line is parsed with the API's own strict parser (`studentsync::json`), so
//! a line the API would refuse as a whole — not JSON, a duplicate key, a lone
//! surrogate, nesting too deep — fails alone as `malformed_row` instead of
//! failing the batch it falls in. Blank lines are skipped; a leading BOM and CRLF
//! line ends are accepted. A line that is JSON but not an object is sent, and the
//! API reports it (`invalid_type`).

use std::fs::File;
use std::io::{BufRead, BufReader};

use serde_json::Value;
use studentsync::json::{MAX_DEPTH, parse_strict};

use super::source::{Record, Row};

/// Levels the request envelope adds around a student (`{"students": [ … ]}`).
const ENVELOPE_DEPTH: usize = 2;

/// The records of a JSON-lines file.
pub struct JsonlRecords {
    reader: BufReader<File>,
    line: u64,
    buffer: Vec<u8>,
    with_body: bool,
}

impl JsonlRecords {
    /// `reader` is positioned after any BOM.
    pub fn new(reader: BufReader<File>, with_body: bool) -> Self {
        Self {
            reader,
            line: 0,
            buffer: Vec::new(),
            with_body,
        }
    }
}

impl Iterator for JsonlRecords {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buffer.clear();
            match self.reader.read_until(b'\n', &mut self.buffer) {
                Ok(0) => return None,
                Ok(_) => self.line += 1,
                Err(error) => return Some(Err(anyhow::Error::new(error).context("cannot read"))),
            }
            let text = self.buffer.trim_ascii();
            if text.is_empty() {
                continue;
            }
            return Some(Ok(convert(text, self.line, self.with_body)));
        }
    }
}

/// One non-blank line as a record.
pub fn convert(text: &[u8], line: u64, with_body: bool) -> Record {
    let value = match parse_strict(text) {
        Ok(value) => value,
        Err(error) => return Record::malformed(line, None, format!("not valid JSON: {error}")),
    };
    let id = value
        .get("externalReferenceId")
        .and_then(Value::as_str)
        .map(str::to_string);
    if depth(&value) + ENVELOPE_DEPTH > MAX_DEPTH {
        return Record::malformed(
            line,
            id,
            format!("nested deeper than {} levels", MAX_DEPTH - ENVELOPE_DEPTH),
        );
    }
    let json = if with_body {
        serde_json::to_vec(&value).expect("a JSON value serialises")
    } else {
        Vec::new()
    };
    Record::Row(Row { line, id, json })
}

/// Nesting depth of arrays and objects (a scalar is 0, `[]` is 1). Bounded by
/// the parser's own limit, so the recursion is too.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::source::Failure;

    fn failure(record: Record) -> Failure {
        match record {
            Record::Failed(failure) => failure,
            Record::Row(row) => panic!("expected a failure, got {row:?}"),
        }
    }

    #[test]
    fn an_object_line_is_a_row_with_its_id() {
        let record = convert(br#"{"externalReferenceId":"a-1","tags":["x"]}"#, 3, true);
        let Record::Row(row) = record else {
            panic!("{record:?}")
        };
        assert_eq!(row.line, 3);
        assert_eq!(row.id.as_deref(), Some("a-1"));
        assert_eq!(
            serde_json::from_slice::<Value>(&row.json).unwrap(),
            serde_json::json!({"externalReferenceId": "a-1", "tags": ["x"]})
        );
    }

    #[test]
    fn lines_the_api_would_refuse_whole_are_malformed_rows() {
        for text in [
            &br#"{"externalReferenceId":"a-1""#[..],
            br#"{"externalReferenceId":"a","externalReferenceId":"b"}"#,
            br#"{"firstName":"\ud800"}"#,
        ] {
            let failure = failure(convert(text, 7, true));
            assert_eq!(failure.line, 7);
            assert_eq!(failure.errors[0].code, "malformed_row");
        }
        let deep = format!("{{\"tags\":{}{}}}", "[".repeat(126), "]".repeat(126));
        let failure = failure(convert(deep.as_bytes(), 1, true));
        assert!(failure.errors[0].detail.contains("nested"), "{failure:?}");
    }

    #[test]
    fn a_line_that_is_not_an_object_is_left_to_the_api() {
        assert!(matches!(
            convert(b"[1,2]", 1, true),
            Record::Row(Row { id: None, .. })
        ));
    }
}
