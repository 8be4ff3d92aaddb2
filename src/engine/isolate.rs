//! Isolating rows the database rejects. Validation should make this dead code,
//! but if a set-based statement fails on the data itself (a constraint or data
//! exception validation did not predict), the batch must not fail as a whole:
//! the statement is retried on halves under a savepoint, recursively, so `k`
//! offending rows cost O(k · log n) statements — never one savepoint per row —
//! and every other row is still written.

use std::ops::Range;

use futures_util::future::BoxFuture;
use sqlx::PgConnection;

/// A statement's outputs for the rows it accepted, and the positions of the rows
/// it rejected.
pub struct Isolated<R> {
    pub accepted: Vec<R>,
    pub rejected: Vec<usize>,
}

/// Runs `statement` over `rows` (in slices), isolating rejected rows.
pub async fn isolate<T, R>(
    conn: &mut PgConnection,
    rows: &[T],
    mut statement: impl for<'c> FnMut(
        &'c mut PgConnection,
        &'c [T],
    ) -> BoxFuture<'c, Result<Vec<R>, sqlx::Error>>,
) -> Result<Isolated<R>, sqlx::Error> {
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
fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        })
}
