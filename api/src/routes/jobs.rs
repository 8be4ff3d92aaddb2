//! `GET /v3/jobs/{jobId}` and `GET /v3/jobs`: a school's batch jobs. Finished
//! jobs may come from the Redis cache (keyed by school and job, so it cannot
//! cross tenants); Postgres is the record and answers everything else.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use studentsync::job::{JobStatus, JobView};
use studentsync::store::jobs::{self, JobCursor};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Caller, PathId, QueryParams};
use crate::wait;

/// Largest `limit` of a list.
pub const MAX_LIMIT: u32 = 500;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: u32 = 100;

/// A page of jobs, newest first, without `results`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// One job of the caller's school, with its results once completed.
///
/// `status` is `queued`, `processing`, `completed` or `failed` (the batch could
/// not be processed at all; `error` then holds a problem object). Results stay
/// readable until `expiresAt`, at least 7 days after completion.
#[utoipa::path(
    get,
    path = "/v3/jobs/{jobId}",
    tag = "jobs",
    operation_id = "getJob",
    params(("jobId" = String, Path, description = "The job id (a UUID).")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 404, description = "`not_found`: no such job in this school (also for ids that are not UUIDs).", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn get_job(
    State(state): State<AppState>,
    Caller(principal): Caller,
    PathId(job_id): PathId,
) -> Result<Json<JobView>, ApiError> {
    if let Some(view) = wait::cached(&state, principal.school_id, job_id).await {
        return Ok(Json(view));
    }
    let record = jobs::get(&state.pool, principal.school_id, job_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(record.into_view()))
}

/// The school's jobs, newest first, without `results`.
#[utoipa::path(
    get,
    path = "/v3/jobs",
    tag = "jobs",
    operation_id = "listJobs",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this state."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1 to 500 (default 100)."),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of jobs.", body = JobList),
        (status = 422, description = "`invalid_request`: unknown `status`, `limit` outside 1–500, or a cursor this service did not make.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn list_jobs(
    State(state): State<AppState>,
    Caller(principal): Caller,
    params: QueryParams,
) -> Result<Json<JobList>, ApiError> {
    let status = params
        .get("status")
        .map(|raw| {
            JobStatus::parse(raw).ok_or_else(|| {
                ApiError::invalid_request(
                    "`status` must be one of queued, processing, completed, failed",
                )
            })
        })
        .transpose()?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .get("cursor")
        .map(|raw| {
            JobCursor::decode(raw)
                .ok_or_else(|| ApiError::invalid_request("`cursor` is not a valid cursor"))
        })
        .transpose()?;
    let mut records =
        jobs::list(&state.pool, principal.school_id, status, limit + 1, after).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next_cursor = more.then(|| records.last()).flatten().map(|last| {
        JobCursor {
            created_at: last.created_at,
            id: last.id,
        }
        .encode()
    });
    Ok(Json(JobList {
        jobs: records
            .into_iter()
            .map(|record| record.into_view())
            .collect(),
        next_cursor,
    }))
}
