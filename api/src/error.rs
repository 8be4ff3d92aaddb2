//! `ApiError`: every error answer of the service, rendered as an RFC 9457
//! `application/problem+json` body with a stable `code`. Each code has one HTTP
//! status and one title, and its `type` is the relative URI `/problems/<code>`. A
//! 500 logs its cause once, here, and never shows it to the client.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use studentsync::domain::ItemError;
use utoipa::ToSchema;
use uuid::Uuid;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// How long clients are asked to wait when the database is unreachable.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The stable, snake_case codes of whole-request errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    MalformedJson,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidRequest,
    BatchEmpty,
    BatchTooLarge,
    IdempotencyKeyReused,
    RateLimited,
    Internal,
    JobFailed,
    Unavailable,
}

impl ProblemCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemCode::MalformedJson => "malformed_json",
            ProblemCode::Unauthorized => "unauthorized",
            ProblemCode::NotFound => "not_found",
            ProblemCode::MethodNotAllowed => "method_not_allowed",
            ProblemCode::PayloadTooLarge => "payload_too_large",
            ProblemCode::UnsupportedMediaType => "unsupported_media_type",
            ProblemCode::InvalidRequest => "invalid_request",
            ProblemCode::BatchEmpty => "batch_empty",
            ProblemCode::BatchTooLarge => "batch_too_large",
            ProblemCode::IdempotencyKeyReused => "idempotency_key_reused",
            ProblemCode::RateLimited => "rate_limited",
            ProblemCode::Internal => "internal",
            ProblemCode::JobFailed => "job_failed",
            ProblemCode::Unavailable => "unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProblemCode::MalformedJson => StatusCode::BAD_REQUEST,
            ProblemCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemCode::NotFound => StatusCode::NOT_FOUND,
            ProblemCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::InvalidRequest
            | ProblemCode::BatchEmpty
            | ProblemCode::BatchTooLarge
            | ProblemCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProblemCode::Internal | ProblemCode::JobFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemCode::MalformedJson => "Malformed JSON",
            ProblemCode::Unauthorized => "Unauthorized",
            ProblemCode::NotFound => "Not found",
            ProblemCode::MethodNotAllowed => "Method not allowed",
            ProblemCode::PayloadTooLarge => "Payload too large",
            ProblemCode::UnsupportedMediaType => "Unsupported media type",
            ProblemCode::InvalidRequest => "Invalid request",
            ProblemCode::BatchEmpty => "Empty batch",
            ProblemCode::BatchTooLarge => "Batch too large",
            ProblemCode::IdempotencyKeyReused => "Idempotency key reused",
            ProblemCode::RateLimited => "Too many requests",
            ProblemCode::Internal => "Internal server error",
            ProblemCode::JobFailed => "Job failed",
            ProblemCode::Unavailable => "Service unavailable",
        }
    }
}

/// An RFC 9457 problem object, as every error answer carries it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "type": "/problems/batch_empty", "title": "Empty batch", "status": 422,
    "detail": "`students` must contain at least one student", "code": "batch_empty"
}))]
pub struct Problem {
    /// `/problems/<code>`: a URI reference (relative to this service) naming the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type (the same for every occurrence of a code).
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: ProblemCode,
    /// Validation problems, each with an RFC 6901 pointer into the request body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ItemError>,
    /// `job_failed` only: the job that could not be processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// `GET /readyz` only: the dependencies that did not answer
    /// (`postgres`, `rabbitmq`, `redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<Vec<String>>,
}

/// An error answer. Build one with [`ApiError::new`] and the `with_*` helpers.
/// (Boxed: it travels in every handler's `Result`.)
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    problem: Problem,
    headers: HeaderMap,
    cause: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(code: ProblemCode, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            problem: Problem {
                type_uri: format!("/problems/{}", code.as_str()),
                title: code.title().to_string(),
                status: code.status().as_u16(),
                detail: detail.into(),
                code,
                errors: Vec::new(),
                job_id: None,
                failing: None,
            },
            headers: HeaderMap::new(),
            cause: None,
        }))
    }

    /// A 500 whose cause is logged but not shown.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut error = Self::new(
            ProblemCode::Internal,
            "an unexpected error occurred; it has been logged",
        );
        error.0.cause = Some(cause.into());
        error
    }

    pub fn not_found() -> Self {
        Self::new(ProblemCode::NotFound, "no such resource")
    }

    /// 401 with the `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Unauthorized, detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::InvalidRequest, detail)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(ProblemCode::Unavailable, detail).with_retry_after(retry_after)
    }

    pub fn with_errors(mut self, errors: Vec<ItemError>) -> Self {
        self.0.problem.errors = errors;
        self
    }

    pub fn with_job_id(mut self, job_id: Uuid) -> Self {
        self.0.problem.job_id = Some(job_id);
        self
    }

    pub fn with_failing(mut self, failing: Vec<String>) -> Self {
        self.0.problem.failing = Some(failing);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    /// `Retry-After` in whole seconds (at least 1).
    pub fn with_retry_after(self, after: Duration) -> Self {
        let seconds = after.as_secs().max(1);
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    pub fn code(&self) -> ProblemCode {
        self.0.problem.code
    }

    pub fn problem(&self) -> &Problem {
        &self.0.problem
    }
}

impl From<sqlx::Error> for ApiError {
    /// A database that cannot be reached is a 503 (retry later); anything else
    /// is a bug or an unexpected state: 500.
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(%error, "database unavailable");
                ApiError::unavailable("the database is unavailable", DATABASE_RETRY_AFTER)
            }
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|code| is_unavailable_state(&code)) =>
            {
                tracing::warn!(%error, "database unavailable");
                ApiError::unavailable("the database is unavailable", DATABASE_RETRY_AFTER)
            }
            other => ApiError::internal(other),
        }
    }
}

/// SQLSTATE classes 08 (connection exception) and 57 (operator intervention,
/// e.g. the server shutting down).
fn is_unavailable_state(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Inner {
            problem,
            headers,
            cause,
        } = *self.0;
        if let Some(cause) = cause {
            tracing::error!(
                code = problem.code.as_str(),
                error = format!("{cause:#}"),
                "request failed"
            );
        }
        problem_response(&problem, headers)
    }
}

/// Serialises a problem with its content type and extra headers.
fn problem_response(problem: &Problem, headers: HeaderMap) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response.headers_mut().extend(headers);
    response
}

/// Fallback of unknown routes.
pub async fn route_not_found() -> ApiError {
    ApiError::new(ProblemCode::NotFound, "no such route")
}

/// Fallback of known routes called with another method (axum adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ProblemCode::MethodNotAllowed,
        "this route does not support the request method",
    )
}

/// The answer to a handler that panicked (caught by `CatchPanicLayer`).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("<non-string panic payload>");
    ApiError::internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use studentsync::domain::ItemErrorCode;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn problem_has_the_contract_shape() {
        let response = ApiError::invalid_request("bad envelope")
            .with_errors(vec![ItemError::new(
                ItemErrorCode::UnknownField,
                "/extra",
                "unknown field",
            )])
            .into_response();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            body_of(response).await,
            json!({
                "type": "/problems/invalid_request",
                "title": "Invalid request",
                "status": 422,
                "detail": "bad envelope",
                "code": "invalid_request",
                "errors": [{"code": "unknown_field", "pointer": "/extra", "detail": "unknown field"}]
            })
        );
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let response =
            ApiError::internal(anyhow::anyhow!("secret connection string")).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("secret"));
    }

    #[tokio::test]
    async fn extension_members_and_headers() {
        let id = Uuid::new_v4();
        let response = ApiError::new(ProblemCode::JobFailed, "poison batch")
            .with_job_id(id)
            .into_response();
        assert_eq!(body_of(response).await["jobId"], id.to_string());

        let response =
            ApiError::unavailable("queue down", Duration::from_millis(10)).into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::unauthorized("no key").into_response();
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn panics_become_internal_problems() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(response).await;
        assert_eq!(body["code"], "internal");
        assert!(!body.to_string().contains("boom"));
    }

    #[test]
    fn every_code_serialises_as_its_string() {
        for code in [
            ProblemCode::IdempotencyKeyReused,
            ProblemCode::UnsupportedMediaType,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
