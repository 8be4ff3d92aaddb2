//! `POST /v3/students/batch-upsert`: check the envelope, validate every item,
//! record the job (idempotently), publish the batch with broker confirms, then
//! either answer 202 at once or wait for the worker's result.
//!
//! Nothing stays recorded or enqueued when a request is refused as a whole: the
//! job row is only kept once the broker confirmed the message, and is deleted
//! again when it did not.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use studentsync::domain::validate::{self, BatchRequest, EnvelopeError, MAX_BATCH};
use studentsync::job::{BatchMessage, BatchOptions, JobStatus, JobView};
use studentsync::store::jobs::{self, NewJob, Recorded};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem, ProblemCode};
use crate::extract::{Caller, JsonBody};
use crate::ratelimit;
use crate::wait::{self, PREFERENCE_APPLIED, Preferences, Waited};

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// The longest `Idempotency-Key` accepted (characters).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;
/// `Retry-After` of a 202: when polling the job is worth it.
const POLL_AFTER: Duration = Duration::from_secs(2);

/// One tag (documentation only): not blank, at most 35 characters.
#[derive(Deserialize, ToSchema)]
#[schema(
    max_length = 35,
    pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*[^\s\x00-\x1F][^\x00-\x08\x0B\x0C\x0E-\x1F]*$"
)]
#[allow(dead_code)]
pub struct Tag(String);

/// The 202 body: where to follow a job that is not finished yet.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    pub job_id: Uuid,
    /// `queued` or `processing`.
    pub status: JobStatus,
    /// `/v3/jobs/{jobId}` (also in `Location`).
    pub status_url: String,
}

/// The request body (documentation only; the body is parsed by hand so that
/// every problem is reported with a pointer).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "students": [
        {"externalReferenceId": "SIS-1001", "externalReferenceType": "sis", "firstName": "Ada",
         "lastName": "Lovelace", "email": "ada@example.edu", "tags": ["grade-10", "robotics"]},
        {"externalReferenceId": "SIS-1002", "firstName": "Alan", "lastName": "Turing",
         "email": "alan@example.edu", "phone": "+44 20 7946 0000", "photoUrl": null}
    ],
    "options": {"allowUnarchive": false, "onStudentCreated": {"sendCredentials": false, "newPasswordNeeded": true}, "dryRun": false}
}))]
#[allow(dead_code)]
pub struct BatchUpsertRequest {
    /// 1 to 1000 students, each matched on `externalReferenceId`.
    #[schema(min_items = 1, max_items = 1000)]
    students: Vec<StudentInput>,
    /// Every option defaults to false; `null` is not an object (422).
    #[serde(default)]
    options: BatchOptions,
}

/// One input item. Only the fields present change; `null` clears a nullable
/// field. Lengths count Unicode scalar values; C0 control characters other than
/// tab, CR and LF are refused (the `pattern`s say so; "not blank" means at
/// least one character that is not whitespace).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)]
pub struct StudentInput {
    /// Not blank; the key the student is matched on within the school.
    #[schema(
        max_length = 64,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*[^\s\x00-\x1F][^\x00-\x08\x0B\x0C\x0E-\x1F]*$"
    )]
    external_reference_id: String,
    #[serde(default)]
    #[schema(
        max_length = 30,
        required = false,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$"
    )]
    external_reference_type: String,
    /// Not blank; required when the student is created.
    #[serde(default)]
    #[schema(
        max_length = 100,
        required = false,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*[^\s\x00-\x1F][^\x00-\x08\x0B\x0C\x0E-\x1F]*$"
    )]
    first_name: String,
    /// Not blank; required when the student is created.
    #[serde(default)]
    #[schema(
        max_length = 100,
        required = false,
        pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*[^\s\x00-\x1F][^\x00-\x08\x0B\x0C\x0E-\x1F]*$"
    )]
    last_name: String,
    /// A valid address.
    #[schema(max_length = 255, format = "email")]
    email: Option<String>,
    #[schema(max_length = 20, pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$")]
    phone: Option<String>,
    /// An absolute http(s) URL.
    #[schema(
        max_length = 255,
        format = "uri",
        pattern = r"^[hH][tT][tT][pP][sS]?://[^\s\\/]"
    )]
    photo_url: Option<String>,
    #[schema(max_length = 128, pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$")]
    file_number: Option<String>,
    #[schema(max_length = 160, pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$")]
    curriculum_name: Option<String>,
    #[schema(max_length = 64, pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$")]
    company: Option<String>,
    #[schema(max_length = 20, pattern = r"^[^\x00-\x08\x0B\x0C\x0E-\x1F]*$")]
    badge_id: Option<String>,
    /// Non-blank strings of at most 35 characters; at most 15 distinct tags;
    /// duplicates are kept once, in first order.
    tags: Option<Vec<Tag>>,
}

/// Create or update up to 1000 students.
///
/// Each item is validated and applied on its own, and reports all of its
/// errors, up to 100 (only hostile input has more, e.g. hundreds of unknown
/// fields or non-string tags: the 100th error's `detail` then says that further
/// errors were left out). Every item counts against the school's budget of
/// students per minute (see 429). By default the request waits
/// (up to `Prefer: wait=N` seconds, default 30, at most 60) for the job and
/// answers 200 (no item failed) or 207 (some or all failed) with the job body;
/// `Prefer: respond-async` answers 202 at once. A job not finished in time is
/// answered 202 with `Location` and `Retry-After`.
///
/// With `Idempotency-Key` (at most 255 characters, scoped to the school, kept
/// 24 h) a repeated request with the same JSON value attaches to the original job
/// (`Idempotent-Replayed: true`) and a finished job's final answer is given even
/// under `respond-async`; the same key with another body is 422
/// `idempotency_key_reused`. A replay never attaches to a batch that is not yet
/// confirmed by the queue: it waits up to 5 s for the first request's publish,
/// and answers 503 `unavailable` if that batch was refused (retry: the key is
/// then free) or is still being published.
///
/// A job that could not be processed at all (e.g. its message was dead-lettered)
/// is answered 500 `job_failed`, with the job's problem `detail` and a `jobId`
/// member.
#[utoipa::path(
    post,
    path = "/v3/students/batch-upsert",
    tag = "students",
    operation_id = "batchUpsertStudents",
    request_body(content = BatchUpsertRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: at most 255 characters, scoped to the school, kept 24 h."),
        ("Prefer" = Option<String>, Header, description = "RFC 7240: `respond-async` (answer 202 at once) or `wait=N` (seconds to wait, default 30, at most 60)."),
    ),
    responses(
        (status = 200, description = "The job finished and no item failed.", body = JobView,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key."),
                    ("Preference-Applied" = String, description = "`wait=N` when a wait preference was used."))),
        (status = 207, description = "The job finished and at least one item failed (see each result's `errors`).", body = JobView,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay."),
                    ("Preference-Applied" = String, description = "`wait=N` when a wait preference was used."))),
        (status = 202, description = "The batch is durably accepted but not finished yet (or `respond-async` was asked for).", body = JobAccepted,
            headers(("Location" = String, description = "`/v3/jobs/{jobId}`"),
                    ("Retry-After" = u32, description = "Seconds before polling the job is worthwhile."),
                    ("Preference-Applied" = String, description = "`respond-async` or `wait=N`, where the client sent that preference."),
                    ("Idempotent-Replayed" = String, description = "`true` on a replay."))),
        (status = 400, description = "`malformed_json`: the body is not valid JSON (truncated, lone surrogate, nesting deeper than 128, duplicate keys).", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: the body is larger than 5 MiB.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: `Content-Type` is not JSON.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_request` (envelope problems, with `errors`; or an empty or over-long Idempotency-Key), `batch_empty`, `batch_too_large` (over 1000 students) or `idempotency_key_reused`.", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: the API key's request rate (`RateLimit-Policy` member `\"default\"`), or the school's budget of students per minute in batches (`SCHOOL_STUDENTS_PER_MINUTE`, shared by all its keys; the answer then adds a `\"school\"` member to `RateLimit-Policy` and `RateLimit`), is exhausted. Nothing was recorded; retry after `Retry-After` seconds.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds after which this request fits the limit."))),
        (status = 500, description = "`job_failed`: the batch could not be processed at all; the problem has the job's `detail` and a `jobId` member. (`internal` for unexpected errors.)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`unavailable`: the queue is unreachable, full or blocked by a broker resource alarm, or the database cannot record the job; nothing was enqueued. `Retry-After` is set.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    security(("apiKey" = []))
)]
pub async fn batch_upsert(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // Only compared on an Idempotency-Key replay: without the header the
    // canonical serialization and hash (8 % of the API's CPU) are skipped.
    let fingerprint = if headers.contains_key(&IDEMPOTENCY_KEY) {
        fingerprint(&body)
    } else {
        Vec::new()
    };
    let BatchRequest { students, options } =
        validate::parse_envelope(body).map_err(envelope_problem)?;
    let idempotency_key = idempotency_key(&headers)?;
    let preferences = Preferences::from_headers(&headers);
    let school_id = principal.school_id;
    if let Some(refused) = charge_school_budget(
        &state,
        school_id,
        idempotency_key.as_deref(),
        students.len(),
    )
    .await?
    {
        return Ok(refused);
    }

    let items = validate::validate_items(students);
    let total = items.len();
    let job_id = Uuid::new_v4();
    let new_job = NewJob {
        id: job_id,
        school_id,
        dry_run: options.dry_run,
        total,
        idempotency_key: idempotency_key.as_deref(),
        body_fingerprint: &fingerprint,
    };
    let message = BatchMessage {
        job_id,
        school_id,
        options,
        items,
    };
    let payload = serde_json::to_vec(&message).map_err(ApiError::internal)?;

    let recorded = jobs::record(&state.pool, &new_job).await.map_err(|error| {
        tracing::warn!(%error, "could not record a job");
        ApiError::unavailable(
            "the job could not be recorded; nothing was enqueued, retry later",
            state.config.retry_after(),
        )
    })?;
    match recorded {
        Recorded::Existing(existing) => {
            if existing.body_fingerprint != fingerprint {
                return Err(ApiError::new(
                    ProblemCode::IdempotencyKeyReused,
                    "this Idempotency-Key was used with a different request body",
                ));
            }
            let mut response = replay(&state, school_id, *existing, &preferences).await;
            response.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        Recorded::New => {
            if let Err(error) = state.publisher.publish(&payload, &job_id.to_string()).await {
                tracing::warn!(%error, %job_id, "the broker did not accept a batch");
                match jobs::forget(&state.pool, job_id).await {
                    Ok(true) => return Err(refused_by_broker(&state)),
                    // A worker has it: the publish went through after all.
                    Ok(false) => {
                        tracing::info!(%job_id, "the batch of a failed publish is with a worker; accepted")
                    }
                    Err(error) => {
                        tracing::warn!(%error, %job_id, "could not delete the job of a refused batch; retrying in the background");
                        forget_later(state.clone(), job_id);
                        return Err(refused_by_broker(&state));
                    }
                }
            }
            if idempotency_key.is_some()
                && let Err(error) = jobs::mark_published(&state.pool, job_id).await
            {
                // Accepted all the same: the batch is in the queue. Replays of
                // its Idempotency-Key wait until a worker takes it.
                tracing::warn!(%error, %job_id, "could not mark the job published");
            }
            crate::metrics::students_received(total);
            tracing::info!(%job_id, %school_id, total, "batch accepted");
            if preferences.respond_async {
                return Ok(accepted(
                    job_id,
                    JobStatus::Queued,
                    preferences.applied(true),
                ));
            }
            Ok(wait_and_answer(&state, school_id, job_id, &preferences).await)
        }
    }
}

/// Keeps trying to delete the job of a refused batch while Postgres is away
/// (for a few minutes), so that a retry with the same Idempotency-Key does not
/// attach to a job that will never run.
fn forget_later(state: AppState, job_id: Uuid) {
    tokio::spawn(async move {
        for attempt in 1..=60 {
            tokio::time::sleep(Duration::from_secs(attempt.min(5))).await;
            match jobs::forget(&state.pool, job_id).await {
                Ok(_) => return,
                Err(error) if attempt == 60 => {
                    tracing::error!(%error, %job_id, "gave up deleting the job of a refused batch; it stays `queued`");
                }
                Err(_) => {}
            }
        }
    });
}

fn refused_by_broker(state: &AppState) -> ApiError {
    ApiError::unavailable(
        "the queue did not accept the batch (unreachable or full); nothing was enqueued, retry later",
        state.config.retry_after(),
    )
}

/// Takes the batch's items from the school's students-per-minute budget; the
/// 429 to answer when it is exhausted. A request that replays a live job (same
/// Idempotency-Key) is not charged: it processes nothing.
async fn charge_school_budget(
    state: &AppState,
    school_id: Uuid,
    idempotency_key: Option<&str>,
    students: usize,
) -> Result<Option<Response>, ApiError> {
    if let Some(key) = idempotency_key
        && jobs::holds_idempotency_key(&state.pool, school_id, key).await?
    {
        return Ok(None);
    }
    let decision = state.limiter.charge_students(school_id, students).await;
    if decision.allowed {
        return Ok(None);
    }
    tracing::info!(%school_id, students, retry_after = decision.retry_after_secs, "school student budget exhausted");
    Ok(Some(ratelimit::school_budget_exceeded(
        state.limiter.per_school(),
        students,
        decision,
    )))
}

/// SHA-256 of the parsed body. `serde_json`'s map is ordered by key (the
/// `preserve_order` feature is off; a test guards it), so key order and
/// whitespace do not change the fingerprint.
pub fn fingerprint(body: &serde_json::Value) -> Vec<u8> {
    let canonical = serde_json::to_vec(body).unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

fn envelope_problem(error: EnvelopeError) -> ApiError {
    match error {
        EnvelopeError::Invalid { detail, errors } => {
            ApiError::invalid_request(detail).with_errors(errors)
        }
        EnvelopeError::Empty => ApiError::new(
            ProblemCode::BatchEmpty,
            "`students` must contain at least one student",
        ),
        EnvelopeError::TooLarge { count } => ApiError::new(
            ProblemCode::BatchTooLarge,
            format!("`students` has {count} entries; at most {MAX_BATCH} are accepted"),
        ),
    }
}

/// The `Idempotency-Key`, if sent: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::invalid_request(
            "send at most one Idempotency-Key header",
        ));
    }
    let key = value.to_str().map_err(|_| {
        ApiError::invalid_request("Idempotency-Key must be visible ASCII characters")
    })?;
    let length = key.chars().count();
    if length == 0 || length > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(ApiError::invalid_request(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters long"
        )));
    }
    Ok(Some(key.to_string()))
}

/// Answers a request that attached to an existing job.
async fn replay(
    state: &AppState,
    school_id: Uuid,
    existing: jobs::JobRecord,
    preferences: &Preferences,
) -> Response {
    let existing = if existing.is_accepted() {
        existing
    } else {
        match until_accepted(state, school_id, existing.id).await {
            Some(existing) => existing,
            None => {
                return ApiError::unavailable(
                    "the request that first used this Idempotency-Key was not accepted, or is still being accepted; retry",
                    state.config.retry_after(),
                )
                .into_response();
            }
        }
    };
    let status = existing.status();
    if status.is_terminal() {
        return finished(existing.into_view());
    }
    if preferences.respond_async {
        return accepted(existing.id, status, preferences.applied(true));
    }
    wait_and_answer(state, school_id, existing.id, preferences).await
}

/// How long a replay waits for the first request's publish to be confirmed.
const ACCEPTANCE_WAIT: Duration = Duration::from_secs(5);

/// Waits (briefly) until the job's batch is confirmed by the broker; `None`
/// when the job disappears (its publish failed) or the wait runs out.
async fn until_accepted(
    state: &AppState,
    school_id: Uuid,
    job_id: Uuid,
) -> Option<jobs::JobRecord> {
    let deadline = tokio::time::Instant::now() + ACCEPTANCE_WAIT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match jobs::get(&state.pool, school_id, job_id).await {
            Ok(Some(record)) if record.is_accepted() => return Some(record),
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => return None,
        }
    }
    None
}

async fn wait_and_answer(
    state: &AppState,
    school_id: Uuid,
    job_id: Uuid,
    preferences: &Preferences,
) -> Response {
    let timeout = Duration::from_secs(preferences.wait_secs());
    let applied = preferences.applied(false);
    let mut response = match wait::wait_for_job(state, school_id, job_id, timeout).await {
        Waited::Finished(view) => finished(*view),
        Waited::Pending(status) => return accepted(job_id, status, applied),
        Waited::Gone => {
            return ApiError::unavailable(
                "the request that created this job was not accepted; retry",
                state.config.retry_after(),
            )
            .into_response();
        }
    };
    if let Some(applied) = applied.and_then(|value| HeaderValue::from_str(&value).ok()) {
        response
            .headers_mut()
            .insert(PREFERENCE_APPLIED.clone(), applied);
    }
    response
}

/// The final answer of a terminal job: 200 / 207 with the job body, or 500
/// `job_failed` for a job that could not be processed.
pub fn finished(view: JobView) -> Response {
    if view.status == JobStatus::Failed {
        let detail = view
            .error
            .as_ref()
            .and_then(|error| error.get("detail"))
            .and_then(|detail| detail.as_str())
            .unwrap_or("the batch could not be processed")
            .to_string();
        return ApiError::new(ProblemCode::JobFailed, detail)
            .with_job_id(view.job_id)
            .into_response();
    }
    let status = if view.all_succeeded() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    (status, Json(view)).into_response()
}

/// 202 with `Location`, `Retry-After` and, where used, `Preference-Applied`.
fn accepted(job_id: Uuid, status: JobStatus, applied: Option<String>) -> Response {
    let status_url = format!("/v3/jobs/{job_id}");
    let mut response = (
        StatusCode::ACCEPTED,
        Json(JobAccepted {
            job_id,
            status,
            status_url: status_url.clone(),
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&status_url) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::RETRY_AFTER, HeaderValue::from(POLL_AFTER.as_secs()));
    if let Some(applied) = applied.and_then(|value| HeaderValue::from_str(&value).ok()) {
        headers.insert(PREFERENCE_APPLIED.clone(), applied);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> serde_json::Value {
        studentsync::json::parse_strict(text.as_bytes()).unwrap()
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        let a = parse(
            r#"{"students":[{"externalReferenceId":"a","firstName":"X"}],"options":{"dryRun":true}}"#,
        );
        let b = parse(
            "{ \"options\": {\"dryRun\": true},\n \"students\": [ {\"firstName\": \"X\", \"externalReferenceId\": \"a\"} ] }",
        );
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = parse(
            r#"{"students":[{"externalReferenceId":"b","firstName":"X"}],"options":{"dryRun":true}}"#,
        );
        assert_ne!(fingerprint(&a), fingerprint(&c));
        // Array order is significant.
        assert_ne!(fingerprint(&parse("[1,2]")), fingerprint(&parse("[2,1]")));
    }

    #[test]
    fn idempotency_keys() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert(&IDEMPOTENCY_KEY, HeaderValue::from_static("abc-123"));
        assert_eq!(
            idempotency_key(&headers).unwrap().as_deref(),
            Some("abc-123")
        );
        headers.insert(&IDEMPOTENCY_KEY, HeaderValue::from_static(""));
        assert!(idempotency_key(&headers).is_err());
        headers.insert(
            &IDEMPOTENCY_KEY,
            HeaderValue::from_str(&"k".repeat(255)).unwrap(),
        );
        assert!(idempotency_key(&headers).is_ok());
        headers.insert(
            &IDEMPOTENCY_KEY,
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&headers).is_err());
    }

    #[test]
    fn accepted_answer() {
        let id = Uuid::new_v4();
        let response = accepted(id, JobStatus::Queued, Some("respond-async".into()));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(
            response.headers()[header::LOCATION],
            format!("/v3/jobs/{id}")
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()[&PREFERENCE_APPLIED], "respond-async");
        let response = accepted(id, JobStatus::Processing, None);
        assert!(response.headers().get(&PREFERENCE_APPLIED).is_none());
    }
}
