//! Operations endpoints, without authentication: liveness, readiness (Postgres,
//! RabbitMQ and Redis each asked in parallel, each bounded by 2 s), Prometheus
//! metrics and the OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem, ProblemCode};

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `{"status": "ok"}` / `{"status": "ready"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The process is running.", body = Health, example = json!({"status": "ok"}))),
    security(())
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 when Postgres, RabbitMQ and Redis all answer within 2 s.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Every dependency answers.", body = Health, example = json!({"status": "ready"})),
        (status = 503, description = "`unavailable`: `detail` names each dependency that did not answer and `failing` lists them (`postgres`, `rabbitmq`, `redis`).", body = Problem, content_type = "application/problem+json"),
    ),
    security(())
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let postgres = async {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&state.pool)
            .await
            .is_ok()
    };
    let rabbitmq = state.publisher.is_ready();
    let redis = async {
        let mut redis = state.results.connection();
        redis::cmd("PING")
            .query_async::<String>(&mut redis)
            .await
            .is_ok()
    };
    let (postgres, rabbitmq, redis) =
        tokio::join!(bounded(postgres), bounded(rabbitmq), bounded(redis));
    let failing: Vec<String> = [
        ("postgres", postgres),
        ("rabbitmq", rabbitmq),
        ("redis", redis),
    ]
    .into_iter()
    .filter(|(_, ok)| !ok)
    .map(|(name, _)| name.to_string())
    .collect();
    if failing.is_empty() {
        return Ok(Json(Health { status: "ready" }));
    }
    tracing::warn!(?failing, "not ready");
    Err(ApiError::new(
        ProblemCode::Unavailable,
        format!("not ready: {} did not answer", failing.join(", ")),
    )
    .with_failing(failing))
}

async fn bounded(check: impl Future<Output = bool>) -> bool {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or(false)
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "`http_requests_total`, `http_request_duration_seconds`, `batch_students_received_total`, …", body = String, content_type = "text/plain; version=0.0.4")),
    security(())
)]
pub async fn metrics() -> Response {
    let mut response = crate::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service.", body = Object)),
    security(())
)]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::openapi())
}
