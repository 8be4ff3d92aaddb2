//! Job rows: created by the API before a batch is published, completed by the
//! worker in the transaction that applies the batch. Postgres is the record of every
//! job and its results; Redis only caches them. Reads of a job overlay the live
//! state of its credentials emails (`queued` → `sent` / `failed`) on its results.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::job::{
    CredentialsEmail, ItemResult, JobStatus, JobSummary, JobView, RESULT_RETENTION_DAYS,
};

/// What the API records before publishing a batch.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub id: Uuid,
    pub school_id: Uuid,
    pub dry_run: bool,
    pub total: usize,
    pub idempotency_key: Option<&'a str>,
    /// SHA-256 of the canonical request body (for Idempotency-Key replays;
    /// empty when the request has no key, as it is never compared then).
    pub body_fingerprint: &'a [u8],
}

/// A job row as read back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    pub id: Uuid,
    pub status: String,
    pub dry_run: bool,
    pub body_fingerprint: Vec<u8>,
    pub summary: Option<Json<JobSummary>>,
    pub results: Option<Json<Vec<ItemResult>>>,
    pub error: Option<Json<serde_json::Value>>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The broker confirmed its batch (or the job is already past `queued`).
    pub published: bool,
}

impl JobRecord {
    /// Whether the batch is known to be in the queue (or beyond): only then may
    /// another request be told it is accepted.
    pub fn is_accepted(&self) -> bool {
        self.published || self.status() != JobStatus::Queued
    }

    /// Whether the stored results show `queued` credentials emails, whose live
    /// state is in the outbox.
    fn awaits_credentials_emails(&self) -> bool {
        !self.dry_run
            && self.results.as_ref().is_some_and(|Json(results)| {
                results
                    .iter()
                    .any(|result| result.credentials_email == Some(CredentialsEmail::Queued))
            })
    }

    pub fn status(&self) -> JobStatus {
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Queued)
    }

    pub fn into_view(self) -> JobView {
        JobView {
            job_id: self.id,
            status: self.status(),
            dry_run: self.dry_run,
            created_at: self.created_at,
            completed_at: self.completed_at,
            expires_at: self.expires_at,
            summary: self.summary.map(|Json(summary)| summary),
            results: self.results.map(|Json(results)| results),
            error: self.error.map(|Json(error)| error),
        }
    }
}

/// Result of trying to record a new job.
#[derive(Debug)]
pub enum Recorded {
    /// The job row was inserted: publish the batch.
    New,
    /// The school already has a live job under this Idempotency-Key.
    Existing(Box<JobRecord>),
}

/// How long an Idempotency-Key stays bound to its job.
const IDEMPOTENCY_WINDOW: &str = "24 hours";
/// An unpublished job older than this was abandoned by the request that
/// recorded it (a publish gives up after at most three 4 s broker timeouts).
const ABANDONED_AFTER: &str = "30 seconds";

/// Inserts a `queued` job, or finds the live job that holds the same
/// Idempotency-Key (a key older than 24 h is released first).
pub async fn record(pool: &PgPool, job: &NewJob<'_>) -> Result<Recorded, sqlx::Error> {
    for _ in 0..3 {
        let mut tx = pool.begin().await?;
        if let Some(key) = job.idempotency_key {
            sqlx::query(
                "UPDATE jobs SET idempotency_key = NULL
                 WHERE school_id = $1 AND idempotency_key = $2
                   AND created_at < now() - $3::interval",
            )
            .bind(job.school_id)
            .bind(key)
            .bind(IDEMPOTENCY_WINDOW)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(key) = job.idempotency_key {
            // The request that recorded this job died before its publish was
            // confirmed (or refused): the key is free again. A copy the broker
            // did take is dropped by the worker as an unknown job.
            sqlx::query(
                "DELETE FROM jobs
                 WHERE school_id = $1 AND idempotency_key = $2
                   AND NOT published AND status = 'queued'
                   AND created_at < now() - $3::interval",
            )
            .bind(job.school_id)
            .bind(key)
            .bind(ABANDONED_AFTER)
            .execute(&mut *tx)
            .await?;
        }
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, school_id, status, dry_run, total, idempotency_key, body_fingerprint, published)
             VALUES ($1, $2, 'queued', $3, $4, $5, $6, $5 IS NULL)
             ON CONFLICT (school_id, idempotency_key) DO NOTHING",
        )
        .bind(job.id)
        .bind(job.school_id)
        .bind(job.dry_run)
        .bind(job.total as i32)
        .bind(job.idempotency_key)
        .bind(job.body_fingerprint)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            tx.commit().await?;
            return Ok(Recorded::New);
        }
        let existing = sqlx::query_as::<_, JobRecord>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE school_id = $1 AND idempotency_key = $2"
        ))
        .bind(job.school_id)
        .bind(job.idempotency_key)
        .fetch_optional(&mut *tx)
        .await?;
        let existing = match existing {
            Some(record) => Some(with_live_emails(&mut *tx, record).await?),
            None => None,
        };
        tx.commit().await?;
        if let Some(existing) = existing {
            return Ok(Recorded::Existing(Box::new(existing)));
        }
        // The holder vanished between the two statements (its publish failed and
        // it was deleted): try again.
    }
    Err(sqlx::Error::Protocol(
        "idempotency key kept changing hands".into(),
    ))
}

/// Marks the job's batch as confirmed by the broker. Skips a row a worker has
/// locked: the worker moves it past `queued`, which says as much. Only needed
/// for a job with an Idempotency-Key: one without is recorded as published,
/// since no other request can attach to it.
pub async fn mark_published(pool: &PgPool, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET published = true
          WHERE id = (SELECT id FROM jobs WHERE id = $1 AND NOT published FOR UPDATE SKIP LOCKED)",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes a job whose batch the broker did not accept (nothing was enqueued).
/// `false` when the job is no longer `queued`: a worker already took it, so the
/// message did reach the queue although its confirm was lost (the DELETE waits
/// for the worker's lock on the row, then sees the new status).
pub async fn forget(pool: &PgPool, job_id: Uuid) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM jobs WHERE id = $1 AND status = 'queued'")
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Whether the school has a live job (younger than 24 h) under this
/// Idempotency-Key: a request with it would be a replay, which costs nothing.
pub async fn holds_idempotency_key(
    pool: &PgPool,
    school_id: Uuid,
    key: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE school_id = $1 AND idempotency_key = $2
                          AND created_at >= now() - $3::interval)",
    )
    .bind(school_id)
    .bind(key)
    .bind(IDEMPOTENCY_WINDOW)
    .fetch_one(pool)
    .await
}

macro_rules! job_columns {
    () => {
        "id, status, dry_run, body_fingerprint, summary, results, error, created_at, \
         completed_at, expires_at, published"
    };
}
use job_columns;

/// One job of a school, with its results (credentials emails as they are now).
pub async fn get(
    pool: &PgPool,
    school_id: Uuid,
    job_id: Uuid,
) -> Result<Option<JobRecord>, sqlx::Error> {
    let record: Option<JobRecord> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1 AND school_id = $2"
    ))
    .bind(job_id)
    .bind(school_id)
    .fetch_optional(pool)
    .await?;
    match record {
        Some(record) => with_live_emails(pool, record).await.map(Some),
        None => Ok(None),
    }
}

/// Overlays the live outbox state on results that show `queued` credentials
/// emails (one indexed read, only for such jobs).
async fn with_live_emails<'c>(
    executor: impl PgExecutor<'c>,
    mut record: JobRecord,
) -> Result<JobRecord, sqlx::Error> {
    if record.awaits_credentials_emails() {
        let statuses = super::outbox::job_statuses(executor, record.id).await?;
        if let Some(Json(results)) = record.results.as_mut() {
            super::outbox::overlay(results, &statuses);
        }
    }
    Ok(record)
}

/// Position in the newest-first job list.
#[derive(Debug, Clone, Copy)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl JobCursor {
    pub fn encode(&self) -> String {
        super::encode_cursor(&format!("{}|{}", self.created_at.to_rfc3339(), self.id))
    }

    pub fn decode(cursor: &str) -> Option<Self> {
        let raw = super::decode_cursor(cursor)?;
        let (at, id) = raw.split_once('|')?;
        Some(Self {
            created_at: DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
            id: id.parse().ok()?,
        })
    }
}

/// A page of a school's jobs, newest first, without results. A job whose
/// batch is still being published (or failed to be) is not listed yet.
pub async fn list(
    pool: &PgPool,
    school_id: Uuid,
    status: Option<JobStatus>,
    limit: u32,
    after: Option<JobCursor>,
) -> Result<Vec<JobRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, dry_run, body_fingerprint, summary, NULL::json AS results, error,
                created_at, completed_at, expires_at, published
         FROM jobs
         WHERE school_id = $1
           AND (published OR status <> 'queued')
           AND ($2::text IS NULL OR status = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC
         LIMIT $5",
    )
    .bind(school_id)
    .bind(status.map(JobStatus::as_str))
    .bind(after.map(|cursor| cursor.created_at))
    .bind(after.map(|cursor| cursor.id))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
}

/// Locks a job row for the worker; `None` when it does not exist.
pub async fn lock_status(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Option<JobStatus>, sqlx::Error> {
    let status: Option<String> =
        sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1 FOR UPDATE")
            .bind(job_id)
            .fetch_optional(conn)
            .await?;
    Ok(status.map(|status| JobStatus::parse(&status).unwrap_or(JobStatus::Queued)))
}

/// Marks a queued job as being processed (its own short transaction).
pub async fn mark_processing(pool: &PgPool, job_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = 'processing', started_at = now()
         WHERE id = $1 AND status = 'queued'",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes the results and completes the job (inside the batch transaction);
/// returns the finished job body.
pub async fn complete(
    conn: &mut PgConnection,
    job_id: Uuid,
    results: Vec<ItemResult>,
) -> Result<JobView, sqlx::Error> {
    let summary = JobSummary::of(&results);
    let (dry_run, created_at, completed_at, expires_at): (
        bool,
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "UPDATE jobs SET status = 'completed', summary = $2, results = $3::json,
                completed_at = now(), expires_at = now() + make_interval(days => $4)
         WHERE id = $1
         RETURNING dry_run, created_at, completed_at, expires_at",
    )
    .bind(job_id)
    .bind(Json(summary))
    // As text, cast to `json`: a `jsonb` value could not hold `\u0000`, which
    // results may echo from the request.
    .bind(serde_json::to_string(&results).map_err(|error| sqlx::Error::Encode(error.into()))?)
    .bind(RESULT_RETENTION_DAYS as i32)
    .fetch_one(conn)
    .await?;
    Ok(JobView {
        job_id,
        status: JobStatus::Completed,
        dry_run,
        created_at,
        completed_at: Some(completed_at),
        expires_at: Some(expires_at),
        summary: Some(summary),
        results: Some(results),
        error: None,
    })
}

/// Ends a job that could not be processed at all, with a problem object.
/// Completed jobs are left as they are.
pub async fn fail(
    pool: &PgPool,
    job_id: Uuid,
    problem: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = 'failed', error = $2, completed_at = now(),
                expires_at = now() + make_interval(days => $3)
         WHERE id = $1 AND status IN ('queued', 'processing')",
    )
    .bind(job_id)
    .bind(Json(problem))
    .bind(RESULT_RETENTION_DAYS as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// Reads a job without the school filter (worker side, after it committed).
pub async fn get_any(pool: &PgPool, job_id: Uuid) -> Result<Option<JobRecord>, sqlx::Error> {
    let record: Option<JobRecord> = sqlx::query_as(concat!(
        "SELECT ",
        job_columns!(),
        " FROM jobs WHERE id = $1"
    ))
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    match record {
        Some(record) => with_live_emails(pool, record).await.map(Some),
        None => Ok(None),
    }
}

/// Deletes jobs whose results have expired; returns how many.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let result = sqlx::query("DELETE FROM jobs WHERE expires_at < now()")
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
