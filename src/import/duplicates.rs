//! The first pass: count the records and find the `externalReferenceId`s that
//! occur on more than one row of the file (`duplicate_in_file`: every one of those
//! rows fails and none is sent, whatever batches they would fall in — the file's
//! intent for that student is ambiguous).
//!
//! Memory: one 64-bit hash per distinct id (about 16 bytes a row with the table's
//! overhead: ~16 MiB for a million rows), never the ids themselves. Hashes seen
//! twice are only suspects (two ids may share a hash); when there are any, a
//! second scan collects the rows of the suspects by their real id and keeps the
//! ids that really repeat, with their lines. Ids are compared byte for byte, as
//! the API compares them.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use super::source::{Record, Source};

/// What the first pass found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Records of the file (rows to send and rows that failed locally).
    pub records: u64,
    /// Each id that occurs on more than one row, with the lines of those rows.
    pub duplicates: HashMap<String, Vec<u64>>,
}

/// Reads the file once (twice when some hash repeats).
pub fn scan(source: &Source) -> anyhow::Result<Scan> {
    let hasher = RandomState::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut suspects: HashSet<u64> = HashSet::new();
    let mut records = 0;
    for record in source.open(false)? {
        records += 1;
        if let Record::Row(row) = record?
            && let Some(id) = row.id
        {
            let hash = hasher.hash_one(&id);
            if !seen.insert(hash) {
                suspects.insert(hash);
            }
        }
    }
    drop(seen);
    let mut duplicates: HashMap<String, Vec<u64>> = HashMap::new();
    if !suspects.is_empty() {
        for record in source.open(false)? {
            if let Record::Row(row) = record?
                && let Some(id) = row.id
                && suspects.contains(&hasher.hash_one(&id))
            {
                duplicates.entry(id).or_default().push(row.line);
            }
        }
        duplicates.retain(|_, lines| lines.len() > 1);
    }
    Ok(Scan {
        records,
        duplicates,
    })
}

/// The detail of a `duplicate_in_file` error for the row on `line`.
pub fn detail(id: &str, lines: &[u64], line: u64) -> String {
    const SHOWN: usize = 10;
    let others: Vec<String> = lines
        .iter()
        .filter(|other| **other != line)
        .take(SHOWN)
        .map(u64::to_string)
        .collect();
    let more = (lines.len() - 1).saturating_sub(SHOWN);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let word = if lines.len() > 2 { "lines" } else { "line" };
    format!(
        "externalReferenceId {id:?} is also on {word} {}{tail} of the file, so none of these rows was sent",
        others.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_detail_names_the_other_lines() {
        assert_eq!(
            detail("a-1", &[2, 5, 9], 5),
            "externalReferenceId \"a-1\" is also on lines 2, 9 of the file, so none of these rows was sent"
        );
        assert!(detail("b", &[4, 3], 4).contains("also on line 3 of"));
        let many: Vec<u64> = (1..=15).collect();
        assert!(detail("x", &many, 1).ends_with("lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and 4 more of the file, so none of these rows was sent"));
    }
}
