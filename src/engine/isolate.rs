//! Isolating rows the database rejects. Validation should make this dead code,
//! but if a set-based statement fails on the data itself (a constraint or data
//! exception validation did not predict), the batch must not fail as a whole:
//! the statement is retried on halves under a savepoint, recursively, so `k`
//! offending rows cost O(k · log n) statements — never one savepoint per row —
//! and every other row is still written.
//!
//! Savepoints are not free (two more round trips per statement, and a
//! subtransaction), so a batch is first applied without them ([`Mode::Direct`]);
//! only if a statement then fails on the data is the whole transaction rolled
//! back and applied again in [`Mode::Isolating`] (see `engine::apply_batch`).

use std::ops::Range;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

/// A statement's outputs for the rows it accepted, and the positions of the rows
/// it rejected.
pub struct Isolated<R> {
    pub accepted: Vec<R>,
    pub rejected: Vec<usize>,
}

/// How a batch's statements run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Once over all rows, no savepoint: a data error aborts the transaction.
    Direct,
    /// Under savepoints, bisecting on data errors.
    Isolating,
}

/// Runs `statement` over `rows` (in slices when isolating), isolating rejected
/// rows in [`Mode::Isolating`]; in [`Mode::Direct`] any error is returned.
pub async fn isolate<T, R>(
    conn: &mut PgConnection,
    rows: &[T],
    mode: Mode,
    mut statement: impl for<'c> FnMut(
        &'c mut PgConnection,
        &'c [T],
    ) -> BoxFuture<'c, Result<Vec<R>, sqlx::Error>>,
) -> Result<Isolated<R>, sqlx::Error> {
    if mode == Mode::Direct {
        let accepted = if rows.is_empty() {
            Vec::new()
        } else {
            statement(conn, rows).await?
        };
        return Ok(Isolated {
            accepted,
            rejected: Vec::new(),
        });
    }
    let mut outcome = Isolated {
        accepted: Vec::new(),
        rejected: Vec::new(),
    };
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(8);
    ranges.push(0..rows.len());
    while let Some(range) = ranges.pop() {
        if range.is_empty() {
            continue;
        }
        sqlx::query("SAVEPOINT isolate").execute(&mut *conn).await?;
        match statement(&mut *conn, &rows[range.clone()]).await {
            Ok(outputs) => {
                sqlx::query("RELEASE SAVEPOINT isolate")
                    .execute(&mut *conn)
                    .await?;
                outcome.accepted.extend(outputs);
            }
            Err(error) if is_data_error(&error) => {
                sqlx::query("ROLLBACK TO SAVEPOINT isolate")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT isolate")
                    .execute(&mut *conn)
                    .await?;
                if range.len() == 1 {
                    tracing::warn!(%error, "the database rejected one row of a batch");
                    outcome.rejected.push(range.start);
                } else {
                    let middle = range.start + range.len() / 2;
                    ranges.push(middle..range.end);
                    ranges.push(range.start..middle);
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(outcome)
}

/// Errors caused by the data of some row: data exceptions (class 22), integrity
/// violations (class 23) and program limits such as an oversized index row (54).
pub fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        })
}
