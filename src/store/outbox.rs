//! The credentials-email outbox (`credential_emails`). The batch transaction
//! writes one `queued` row per created student with an email
//! (`engine::sql::insert_credential_emails`); the mailer claims rows here, one per
//! transaction, and settles them as `sent`, retried (still `queued`, later
//! `next_attempt_at`) or `failed`; readers overlay the live state on job results.
//!
//! The mailer's transaction stays open while it talks to the SMTP server, so the
//! row lock (`FOR UPDATE SKIP LOCKED`) and the school's advisory lock are what
//! keep two mailers from sending the same email or overrunning a school's cap.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::EmailStatus;
use crate::job::{CredentialsEmail, ItemResult};

/// First key of the advisory locks that serialise one school's sends (the
/// second is a hash of the school id). Spells "SSML".
const SCHOOL_LOCK_SPACE: i32 = 0x5353_4d4c;

/// A claimed outbox row with what its email needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub school_id: Uuid,
    pub student_id: Uuid,
    pub job_id: Uuid,
    /// Attempts made before this one.
    pub attempts: i32,
    pub new_password_needed: bool,
    /// The student's email address now (the login), which may differ from the
    /// one the row was queued with if an update changed it since.
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub school_name: String,
}

/// Bounds how long the claiming transaction may sit idle (waiting on SMTP)
/// before Postgres ends it: a mailer host that vanished must not hold its row
/// and its school's lock for the life of a half-open TCP connection.
pub async fn limit_idle(conn: &mut PgConnection, limit: Duration) -> Result<(), sqlx::Error> {
    let statement = format!(
        "SET LOCAL idle_in_transaction_session_timeout = {}",
        limit.as_millis().max(1)
    );
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the most overdue `queued` row that no other mailer holds, skipping the
/// schools in `skip` (their lock is taken elsewhere). `None`: nothing is due.
pub async fn claim(conn: &mut PgConnection, skip: &[Uuid]) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.id, e.school_id, e.student_id, e.job_id, e.attempts, e.new_password_needed,
                s.email, s.first_name, s.last_name, sc.name AS school_name
         FROM credential_emails e
         JOIN students s ON s.id = e.student_id
         JOIN schools sc ON sc.id = e.school_id
         WHERE e.status = 'queued' AND e.next_attempt_at <= now()
           AND e.school_id <> ALL($1::uuid[])
         ORDER BY e.next_attempt_at
         LIMIT 1
         FOR UPDATE OF e SKIP LOCKED",
    )
    .bind(skip)
    .fetch_optional(conn)
    .await
}

/// Takes the school's send lock for the rest of the transaction, without
/// waiting: `false` when another mailer is sending for this school right now.
pub async fn try_lock_school(
    conn: &mut PgConnection,
    school_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2::text))")
        .bind(SCHOOL_LOCK_SPACE)
        .bind(school_id)
        .fetch_one(conn)
        .await
}

/// With the school's lock held: `None` when the school may be sent one more
/// email now, else when it may next (the moment enough of the emails sent in
/// the last hour age out of the window to bring it under `cap`).
pub async fn capped_until(
    conn: &mut PgConnection,
    school_id: Uuid,
    cap: u32,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credential_emails
         WHERE school_id = $1 AND status = 'sent' AND sent_at > now() - interval '1 hour'",
    )
    .bind(school_id)
    .fetch_one(&mut *conn)
    .await?;
    if sent < i64::from(cap) {
        return Ok(None);
    }
    let frees_at: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT sent_at + interval '1 hour' FROM credential_emails
         WHERE school_id = $1 AND status = 'sent' AND sent_at > now() - interval '1 hour'
         ORDER BY sent_at OFFSET $2 LIMIT 1",
    )
    .bind(school_id)
    .bind(sent - i64::from(cap))
    .fetch_optional(&mut *conn)
    .await?;
    match frees_at {
        Some(at) => Ok(Some(at)),
        // A cap of 0 (sending switched off): look again in an hour.
        None => sqlx::query_scalar("SELECT now() + interval '1 hour'")
            .fetch_one(conn)
            .await
            .map(Some),
    }
}

/// Moves every due `queued` row of a school (that no other mailer holds) to
/// `until`; returns how many.
pub async fn defer_school(
    conn: &mut PgConnection,
    school_id: Uuid,
    until: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE credential_emails SET next_attempt_at = $2
         WHERE id IN (SELECT id FROM credential_emails
                      WHERE school_id = $1 AND status = 'queued' AND next_attempt_at < $2
                      FOR UPDATE SKIP LOCKED)",
    )
    .bind(school_id)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Records a delivered email: the student's temporary password hash (only a
/// hash is ever stored) and the row as `sent` to `email`.
pub async fn mark_sent(
    conn: &mut PgConnection,
    claimed: &Claimed,
    email: &str,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE students SET password_hash = $2 WHERE id = $1")
        .bind(claimed.student_id)
        .bind(password_hash)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE credential_emails SET status = 'sent', email = $2, sent_at = now(),
                attempts = attempts + 1, last_attempt_at = now(), last_error = NULL
         WHERE id = $1",
    )
    .bind(claimed.id)
    .bind(email)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a failed attempt: retried `retry_in` from now, or `failed` for good
/// when `retry_in` is `None`.
pub async fn record_failure(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE credential_emails SET attempts = attempts + 1, last_attempt_at = now(),
                last_error = left($2, 1000),
                status = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE 'queued' END,
                next_attempt_at = CASE WHEN $3::float8 IS NULL THEN next_attempt_at
                                       ELSE now() + make_interval(secs => $3) END
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(retry_in.map(|delay| delay.as_secs_f64()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether every credentials email of a job is settled (`sent` or `failed`).
pub async fn job_settled<'c>(
    executor: impl PgExecutor<'c>,
    job_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM credential_emails
                            WHERE job_id = $1 AND status = 'queued')",
    )
    .bind(job_id)
    .fetch_one(executor)
    .await
}

/// The live state of every credentials email a job queued, by student.
pub async fn job_statuses<'c>(
    executor: impl PgExecutor<'c>,
    job_id: Uuid,
) -> Result<HashMap<Uuid, EmailStatus>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT student_id, status FROM credential_emails WHERE job_id = $1")
            .bind(job_id)
            .fetch_all(executor)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(student, status)| Some((student, EmailStatus::parse(&status)?)))
        .collect())
}

/// Replaces the `queued` written at completion with the live state of each
/// result's outbox row (results without a row keep what they have).
pub fn overlay(results: &mut [ItemResult], statuses: &HashMap<Uuid, EmailStatus>) {
    for result in results {
        if result.credentials_email != Some(CredentialsEmail::Queued) {
            continue;
        }
        if let Some(status) = result.student_id.and_then(|id| statuses.get(&id)) {
            result.credentials_email = Some((*status).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ItemStatus;

    fn created(index: usize, email: Option<CredentialsEmail>) -> ItemResult {
        ItemResult {
            input_index: index,
            external_reference_id: Some(format!("k-{index}")),
            status: ItemStatus::Created,
            student_id: Some(Uuid::new_v4()),
            changed_fields: None,
            unarchived: None,
            credentials_email: email,
            errors: None,
        }
    }

    #[test]
    fn overlay_replaces_queued_with_the_live_state_only() {
        let mut results = vec![
            created(0, Some(CredentialsEmail::Queued)),
            created(1, Some(CredentialsEmail::Queued)),
            created(2, Some(CredentialsEmail::SkippedNoEmail)),
            created(3, None),
            created(4, Some(CredentialsEmail::Queued)),
        ];
        let statuses = HashMap::from([
            (results[0].student_id.unwrap(), EmailStatus::Sent),
            (results[1].student_id.unwrap(), EmailStatus::Failed),
            (results[2].student_id.unwrap(), EmailStatus::Sent),
            (results[3].student_id.unwrap(), EmailStatus::Sent),
        ]);
        overlay(&mut results, &statuses);
        let shown: Vec<_> = results.iter().map(|r| r.credentials_email).collect();
        assert_eq!(
            shown,
            [
                Some(CredentialsEmail::Sent),
                Some(CredentialsEmail::Failed),
                Some(CredentialsEmail::SkippedNoEmail),
                None,
                Some(CredentialsEmail::Queued),
            ]
        );
    }
}
