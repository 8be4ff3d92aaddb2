//! What the import reads: a file in one of two formats, turned into a stream of
//! [`Record`]s — a row to send (its JSON object, ready for the request body) or a
//! row that already failed locally — each with the line where it starts.
//!
//! The file is opened once per pass; every pass sees the same records in the
//! same order, because the reading is deterministic.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{read_csv, read_jsonl};

/// The UTF-8 byte order mark Excel puts at the start of "CSV UTF-8" exports.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A header row of API field names, then one student per record.
    Csv,
    /// One JSON student object per line.
    Jsonl,
}

impl Format {
    /// `.jsonl` / `.ndjson` files are JSON lines; anything else is CSV.
    pub fn of_path(path: &Path) -> Format {
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("jsonl" | "ndjson") => Format::Jsonl,
            _ => Format::Csv,
        }
    }
}

/// One problem with one row, as the report shows it. `pointer` is relative to
/// the row (`/email`, `/tags/2`; empty for the row as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub code: String,
    pub pointer: String,
    pub detail: String,
}

impl RowError {
    pub fn new(code: &str, pointer: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            pointer: pointer.to_string(),
            detail: detail.into(),
        }
    }
}

/// A row that failed, locally or in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Line of the file where the record starts (1-based).
    pub line: u64,
    pub id: Option<String>,
    pub errors: Vec<RowError>,
}

/// A row to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    /// Its `externalReferenceId` when that is a string.
    pub id: Option<String>,
    /// The student object, serialised (empty when the pass did not ask for it).
    pub json: Vec<u8>,
}

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Row(Row),
    Failed(Failure),
}

impl Record {
    pub fn malformed(line: u64, id: Option<String>, detail: impl Into<String>) -> Self {
        Record::Failed(Failure {
            line,
            id,
            errors: vec![RowError::new("malformed_row", "", detail)],
        })
    }
}

/// The records of one pass. An `Err` is fatal (the file could not be read).
pub type Records = Box<dyn Iterator<Item = anyhow::Result<Record>> + Send>;

/// A file to import and how to read it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub format: Format,
}

impl Source {
    /// Opens the file for one pass. `with_body`: build each row's JSON (the
    /// sending pass); without it only lines and ids are read. Fails on a file that
    /// cannot be read or a CSV header that is not usable.
    pub fn open(&self, with_body: bool) -> anyhow::Result<Records> {
        let mut reader = self.reader()?;
        match self.format {
            Format::Csv => Ok(Box::new(read_csv::CsvRecords::new(reader, with_body)?)),
            Format::Jsonl => {
                skip_bom(&mut reader)?;
                Ok(Box::new(read_jsonl::JsonlRecords::new(reader, with_body)))
            }
        }
    }

    /// The delimiter of a CSV file (`None` for JSON lines).
    pub fn delimiter(&self) -> anyhow::Result<Option<u8>> {
        match self.format {
            Format::Csv => Ok(Some(
                read_csv::CsvRecords::new(self.reader()?, false)?.delimiter(),
            )),
            Format::Jsonl => Ok(None),
        }
    }

    /// The file, buffered, positioned at its first byte.
    pub fn reader(&self) -> anyhow::Result<BufReader<File>> {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(BufReader::with_capacity(1 << 16, file))
    }
}

/// Consumes a leading UTF-8 byte order mark, if any.
pub fn skip_bom(reader: &mut impl BufRead) -> std::io::Result<()> {
    if reader.fill_buf()?.starts_with(BOM) {
        reader.consume(BOM.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(Format::of_path(Path::new("a/b.jsonl")), Format::Jsonl);
        assert_eq!(Format::of_path(Path::new("b.NDJSON")), Format::Jsonl);
        assert_eq!(Format::of_path(Path::new("b.csv")), Format::Csv);
        assert_eq!(Format::of_path(Path::new("export.txt")), Format::Csv);
        assert_eq!(Format::of_path(Path::new("noext")), Format::Csv);
    }

    #[test]
    fn a_bom_is_skipped_once() {
        let mut reader = std::io::Cursor::new(b"\xEF\xBB\xBFabc".to_vec());
        skip_bom(&mut reader).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
        assert_eq!(rest, "abc");
    }
}
