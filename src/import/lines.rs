//! Line numbers of CSV records, counted on the bytes as the `csv` crate reads
//! them.
//!
//! The crate's own `Position::line` is where the previous record's terminator
//! began: with CRLF line ends, or blank lines before a record, it names a line
//! before the record's first cell. Here a record starting at byte `X` (its
//! `Position::byte`) is on the line of its first byte that is not CR or LF: every
//! LF before `X`, plus those of the run of CR/LF bytes that `X` falls in, precede
//! it.
//!
//! Memory: one entry per LF between the record being numbered and the reader's
//! read-ahead (the `csv` buffer), dropped as records are numbered.

use std::collections::VecDeque;
use std::io::Read;

/// A reader that notes where its line feeds are.
pub struct LineCounter<R> {
    inner: R,
    /// Bytes read so far (the offset of the next byte).
    offset: u64,
    /// Start of the CR/LF run the last byte belongs to, if it is CR or LF.
    run_start: Option<u64>,
    /// (offset of an LF, start of its CR/LF run), not yet counted.
    feeds: VecDeque<(u64, u64)>,
    /// LFs already counted (all before the last record numbered).
    counted: u64,
}

impl<R> LineCounter<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            run_start: None,
            feeds: VecDeque::new(),
            counted: 0,
        }
    }

    /// The line (1-based) of the first byte at or after `start` that is not CR
    /// or LF. Calls must come with non-decreasing `start`, after the reader has
    /// read past that byte.
    pub fn line_at(&mut self, start: u64) -> u64 {
        while let Some(&(feed, run_start)) = self.feeds.front() {
            if feed < start || run_start <= start {
                self.counted += 1;
                self.feeds.pop_front();
            } else {
                break;
            }
        }
        self.counted + 1
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        for (index, &byte) in buf[..read].iter().enumerate() {
            let offset = self.offset + index as u64;
            match byte {
                b'\r' | b'\n' => {
                    let run_start = *self.run_start.get_or_insert(offset);
                    if byte == b'\n' {
                        self.feeds.push_back((offset, run_start));
                    }
                }
                _ => self.run_start = None,
            }
        }
        self.offset += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (first cell, line) of each record of `data`.
    fn lines(data: &str) -> Vec<(String, u64)> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(LineCounter::new(data.as_bytes()));
        let mut record = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut record).unwrap() {
            let start = record.position().unwrap().byte();
            let line = reader.get_mut().line_at(start);
            out.push((String::from_utf8(record[0].to_vec()).unwrap(), line));
        }
        out
    }

    fn expect(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs
            .iter()
            .map(|(cell, line)| (cell.to_string(), *line))
            .collect()
    }

    #[test]
    fn lf_crlf_and_cr_line_ends() {
        let wanted = expect(&[("h", 1), ("x", 2), ("y", 3)]);
        assert_eq!(lines("h,a\nx,1\ny,2\n"), wanted);
        assert_eq!(lines("h,a\r\nx,1\r\ny,2\r\n"), wanted);
        assert_eq!(lines("h,a\r\nx,1\r\ny,2"), wanted);
    }

    #[test]
    fn blank_lines_and_multiline_cells_are_counted() {
        assert_eq!(
            lines("\nh,a\n\nx,1\n\n\ny,2\n"),
            expect(&[("h", 2), ("x", 4), ("y", 7)])
        );
        assert_eq!(
            lines("h,a\r\n\r\n\"x\r\nq\",1\r\n\"y\n\n\",2\r\nz,3\r\n"),
            expect(&[("h", 1), ("x\r\nq", 3), ("y\n\n", 5), ("z", 8)])
        );
    }

    #[test]
    fn memory_is_released_as_records_are_numbered() {
        let data = "h\n".repeat(10_000);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(LineCounter::new(data.as_bytes()));
        let mut record = csv::ByteRecord::new();
        let mut most = 0;
        while reader.read_byte_record(&mut record).unwrap() {
            let start = record.position().unwrap().byte();
            let line = reader.get_mut().line_at(start);
            assert_eq!(line, record.position().unwrap().line());
            most = most.max(reader.get_ref().feeds.len());
        }
        assert!(most < 10_000, "{most}");
    }
}
