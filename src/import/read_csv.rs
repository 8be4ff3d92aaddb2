//! CSV input, as SIS exports and Excel write it.
//!
//! - The first record is a header of API field names (matched without regard to
//!   case or surrounding spaces). An unknown, repeated or missing
//!   `externalReferenceId` column is fatal: every row would fail.
//! - The delimiter is the one of `,` `;` tab that occurs most often outside
//!   quotes in the header line (`,` when none does).
//! - UTF-8 with or without a byte order mark; quoted cells may hold delimiters,
//!   doubled quotes and line breaks (the `csv` crate's RFC 4180 reading).
//! - Cells: empty leaves the field unchanged (it is not sent), `#N/A` clears it
//!   (`null`), `tags` is split on `|`; anything else is sent as a string, as is.
//! - A record with another number of cells than the header, or a cell that is not
//!   UTF-8, fails as `malformed_row` and is not sent. A record whose cells are all
//!   empty (a blank line, or Excel's `;;;`) is skipped.

use std::io::BufRead;

use anyhow::{Context, bail};
use csv::ByteRecord;
use serde_json::{Map, Value};

use super::lines::LineCounter;
use super::source::{Record, Row, skip_bom};

/// The student fields of the API, as the header names them.
pub const FIELDS: [&str; 12] = [
    "externalReferenceId",
    "externalReferenceType",
    "firstName",
    "lastName",
    "email",
    "phone",
    "photoUrl",
    "fileNumber",
    "curriculumName",
    "company",
    "badgeId",
    "tags",
];
const ID_FIELD: &str = "externalReferenceId";
const TAGS_FIELD: &str = "tags";
/// The cell that clears a field (what Excel shows for a missing lookup value).
pub const CLEAR: &str = "#N/A";
/// Separates the values of a `tags` cell.
pub const TAG_SEPARATOR: char = '|';

/// The records of a CSV file, after its header.
pub struct CsvRecords<R> {
    reader: csv::Reader<LineCounter<R>>,
    columns: Vec<&'static str>,
    id_column: usize,
    record: ByteRecord,
    with_body: bool,
    delimiter: u8,
}

impl<R: BufRead> CsvRecords<R> {
    /// Reads the header (skipping a BOM, sniffing the delimiter).
    pub fn new(mut file: R, with_body: bool) -> anyhow::Result<Self> {
        skip_bom(&mut file).context("cannot read the file")?;
        let delimiter = sniff_delimiter(file.fill_buf().context("cannot read the file")?);
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .from_reader(LineCounter::new(file));
        let mut header = ByteRecord::new();
        if !reader
            .read_byte_record(&mut header)
            .context("cannot read the header row")?
        {
            bail!("the file is empty: a CSV file starts with a header row of field names");
        }
        let columns = columns(&header)?;
        let id_column = columns
            .iter()
            .position(|column| *column == ID_FIELD)
            .context("the header has no `externalReferenceId` column")?;
        Ok(Self {
            reader,
            columns,
            id_column,
            record: ByteRecord::new(),
            with_body,
            delimiter,
        })
    }

    /// The delimiter found in the header.
    pub fn delimiter(&self) -> u8 {
        self.delimiter
    }

    fn convert(&self, line: u64) -> Record {
        let record = &self.record;
        let id = record
            .get(self.id_column)
            .and_then(|cell| std::str::from_utf8(cell).ok())
            .filter(|cell| !cell.is_empty() && *cell != CLEAR)
            .map(str::to_string);
        if record.len() != self.columns.len() {
            return Record::malformed(
                line,
                id,
                format!(
                    "expected {} cells (as in the header), found {}",
                    self.columns.len(),
                    record.len()
                ),
            );
        }
        let mut object = Map::new();
        for (cell, column) in record.iter().zip(&self.columns) {
            let Ok(cell) = std::str::from_utf8(cell) else {
                return Record::malformed(
                    line,
                    id,
                    format!("the `{column}` cell is not valid UTF-8 (save the file as UTF-8)"),
                );
            };
            if self.with_body
                && let Some(value) = cell_value(column, cell)
            {
                object.insert(column.to_string(), value);
            }
        }
        let json = if self.with_body {
            serde_json::to_vec(&Value::Object(object)).expect("a JSON object serialises")
        } else {
            Vec::new()
        };
        Record::Row(Row { line, id, json })
    }
}

impl<R: BufRead> Iterator for CsvRecords<R> {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Err(error) => return Some(Err(anyhow::Error::new(error).context("cannot read"))),
                Ok(true) => {
                    if self.record.iter().all(<[u8]>::is_empty) {
                        continue;
                    }
                    let start = self.record.position().map_or(0, csv::Position::byte);
                    let line = self.reader.get_mut().line_at(start);
                    return Some(Ok(self.convert(line)));
                }
            }
        }
    }
}

/// The JSON value of one cell, or `None` for an empty cell (field not sent).
pub fn cell_value(column: &str, cell: &str) -> Option<Value> {
    match cell {
        "" => None,
        CLEAR => Some(Value::Null),
        _ if column == TAGS_FIELD => Some(Value::Array(
            cell.split(TAG_SEPARATOR)
                .map(|tag| Value::String(tag.to_string()))
                .collect(),
        )),
        _ => Some(Value::String(cell.to_string())),
    }
}

/// The most frequent of `,` `;` tab outside quotes in the first line of `head`;
/// `,` when there is none (a one-column file).
pub fn sniff_delimiter(head: &[u8]) -> u8 {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &byte in head {
        match byte {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => break,
            _ if !quoted => {
                if let Some(count) = counts.iter_mut().find(|(delimiter, _)| *delimiter == byte) {
                    count.1 += 1;
                }
            }
            _ => {}
        }
    }
    // The first maximum wins, so `,` on a tie.
    counts
        .iter()
        .fold((b',', 0), |best, &candidate| {
            if candidate.1 > best.1 {
                candidate
            } else {
                best
            }
        })
        .0
}

/// Maps header cells to field names.
fn columns(header: &ByteRecord) -> anyhow::Result<Vec<&'static str>> {
    let mut columns: Vec<&'static str> = Vec::with_capacity(header.len());
    for (index, cell) in header.iter().enumerate() {
        let name = std::str::from_utf8(cell)
            .with_context(|| format!("header cell {} is not valid UTF-8", index + 1))?
            .trim();
        let Some(field) = FIELDS.iter().find(|field| field.eq_ignore_ascii_case(name)) else {
            bail!(
                "unknown column {name:?} in the header (cell {}); the columns are API field names: {}",
                index + 1,
                FIELDS.join(", ")
            );
        };
        if columns.contains(field) {
            bail!("the header names `{field}` twice");
        }
        columns.push(field);
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delimiter_is_sniffed_from_the_header_line() {
        assert_eq!(sniff_delimiter(b"a,b,c\n1;2;3;4;5"), b',');
        assert_eq!(sniff_delimiter(b"a;b;c\r\n1,2"), b';');
        assert_eq!(sniff_delimiter(b"a\tb\tc"), b'\t');
        assert_eq!(sniff_delimiter(b"\"a;x,y,z\";b;c\n"), b';');
        assert_eq!(sniff_delimiter(b"externalReferenceId\n1,2,3"), b',');
        assert_eq!(sniff_delimiter(b""), b',');
    }

    #[test]
    fn cells_map_to_absent_null_tags_or_text() {
        assert_eq!(cell_value("email", ""), None);
        assert_eq!(cell_value("email", "#N/A"), Some(Value::Null));
        assert_eq!(cell_value("tags", "#N/A"), Some(Value::Null));
        assert_eq!(
            cell_value("tags", "a|b c|"),
            Some(serde_json::json!(["a", "b c", ""]))
        );
        assert_eq!(
            cell_value("firstName", " Ada "),
            Some(Value::String(" Ada ".into()))
        );
    }

    /// (line, id, JSON or failure code) of every record of `data`.
    fn read(data: &[u8]) -> Vec<(u64, Option<String>, String)> {
        let records = CsvRecords::new(std::io::Cursor::new(data.to_vec()), true).unwrap();
        records
            .map(|record| match record.unwrap() {
                Record::Row(row) => (row.line, row.id, String::from_utf8(row.json).unwrap()),
                Record::Failed(failure) => {
                    (failure.line, failure.id, failure.errors[0].code.clone())
                }
            })
            .collect()
    }

    #[test]
    fn an_excel_export_reads_row_by_row_with_the_lines_where_records_start() {
        let data = b"\xEF\xBB\xBFexternalReferenceId;firstName;tags\r\n\
            a-1;\"Ada\r\nLovelace\";x|y\r\n\
            \r\n\
            a-2;\"Alan; \"\"M\"\"\";#N/A\r\n\
            ;;\r\n\
            a-3;short\r\n\
            a-4;\xFF;\r\n\
            a-5;;\r\n";
        assert_eq!(
            read(data),
            vec![
                (
                    2,
                    Some("a-1".into()),
                    r#"{"externalReferenceId":"a-1","firstName":"Ada\r\nLovelace","tags":["x","y"]}"#.into()
                ),
                (
                    5,
                    Some("a-2".into()),
                    r#"{"externalReferenceId":"a-2","firstName":"Alan; \"M\"","tags":null}"#.into()
                ),
                (7, Some("a-3".into()), "malformed_row".into()),
                (8, Some("a-4".into()), "malformed_row".into()),
                (9, Some("a-5".into()), r#"{"externalReferenceId":"a-5"}"#.into()),
            ]
        );
    }

    #[test]
    fn a_file_without_a_usable_header_is_refused() {
        let open =
            |data: &[u8]| CsvRecords::new(std::io::Cursor::new(data.to_vec()), true).map(|_| ());
        assert!(open(b"").unwrap_err().to_string().contains("empty"));
        assert!(
            open(b"\xEF\xBB\xBF")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        assert!(
            open(b"firstName,lastName\nA,B\n")
                .unwrap_err()
                .to_string()
                .contains("externalReferenceId")
        );
        assert!(open(b"externalReferenceId\n").is_ok());
    }

    #[test]
    fn header_names_are_matched_loosely_but_must_be_known_and_unique() {
        let header = ByteRecord::from(vec![" ExternalReferenceId", "EMAIL ", "tags"]);
        assert_eq!(
            columns(&header).unwrap(),
            vec!["externalReferenceId", "email", "tags"]
        );
        let unknown = ByteRecord::from(vec!["externalReferenceId", "mail"]);
        assert!(
            columns(&unknown)
                .unwrap_err()
                .to_string()
                .contains("\"mail\"")
        );
        let twice = ByteRecord::from(vec!["email", "Email"]);
        assert!(columns(&twice).unwrap_err().to_string().contains("twice"));
    }
}
