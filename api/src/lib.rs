//! `studentsync-api`: the HTTP front end of Student Sync. It authenticates and
//! rate-limits school requests, validates batch upserts, records and publishes
//! them to RabbitMQ, waits for (or points to) their results, and serves jobs and
//! students. All SQL, validation and queue logic lives in the `studentsync` core;
//! this crate only knows HTTP.
//!
//! Entry points: [`run`] (connect everything and serve until `shutdown`),
//! [`router`] (the axum app over an [`AppState`]) and [`openapi`].

pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod wait;

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use studentsync::config::Config;
use studentsync::queue::{Publisher, Topology};
use studentsync::results::{self, ResultKeys, ResultsStore};
use tokio::sync::{broadcast, watch};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use uuid::Uuid;

use crate::error::{ApiError, ProblemCode};
use crate::ratelimit::{Policy, RateLimiter};
use crate::routes::{admin, batch, jobs, ops, students};

pub use crate::openapi::openapi;

/// Longest time one request may take (above the 60 s maximum wait).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    pub config: Config,
    pub pool: PgPool,
    pub results: ResultsStore,
    pub publisher: Publisher,
    /// Ids of completed jobs, from `results::spawn_completion_listener`.
    pub completions: broadcast::Sender<Uuid>,
    pub limiter: RateLimiter,
    shutdown: watch::Sender<bool>,
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Assembles a state from connections made by the caller.
    pub fn new(
        config: Config,
        pool: PgPool,
        redis: ConnectionManager,
        publisher: Publisher,
        completions: broadcast::Sender<Uuid>,
    ) -> Self {
        let results = ResultsStore::new(redis.clone(), &config.namespace);
        let limiter = RateLimiter::new(
            redis,
            results.breaker(),
            &config.namespace,
            Policy::per_key(config.rate_limit_per_minute, config.rate_limit_burst),
            Policy::per_school(config.school_students_per_minute),
        );
        let (shutdown, _) = watch::channel(false);
        Self(Arc::new(Shared {
            config,
            pool,
            results,
            publisher,
            completions,
            limiter,
            shutdown,
        }))
    }

    /// Connects Postgres (no migrations: see `db::prepare`) and Redis, prepares
    /// the publisher (it connects to RabbitMQ on first use) and starts the
    /// completion listener.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let pool =
            studentsync::db::connect(&config.database_url, config.database_max_connections).await?;
        let redis = results::connect(&config.redis_url)?;
        let publisher = Publisher::new(config.amqp_url.clone(), Topology::from_config(&config));
        let completions = results::spawn_completion_listener(
            config.redis_url.clone(),
            ResultKeys::new(&config.namespace),
        );
        Ok(Self::new(config, pool, redis, publisher, completions))
    }

    /// Tells waiting requests to stop waiting and answer 202 now.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes `true` once [`AppState::begin_shutdown`] was called.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Connects everything `config` names and serves `listener` until `shutdown`
/// completes, then lets in-flight requests finish (waiting ones answer 202 at once).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(config).await?;
    let app = router(state.clone());
    let draining = state.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down");
        draining.begin_shutdown();
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await?;
    state.publisher.close().await;
    state.pool.close().await;
    Ok(())
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    // Force the metrics recorder in before the first request.
    metrics::handle();

    let school = Router::new()
        .route("/v3/students/batch-upsert", post(batch::batch_upsert))
        .route("/v3/students", get(students::list_students))
        .route("/v3/students/{studentId}", get(students::get_student))
        .route(
            "/v3/students/{studentId}/archive",
            post(students::archive_student),
        )
        .route(
            "/v3/students/{studentId}/unarchive",
            post(students::unarchive_student),
        )
        .route("/v3/jobs", get(jobs::list_jobs))
        .route("/v3/jobs/{jobId}", get(jobs::get_job))
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::enforce,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));

    let admin = Router::new()
        .route("/v3/admin/schools", post(admin::create_school))
        .route(
            "/v3/admin/schools/{schoolId}/api-keys",
            post(admin::create_api_key),
        )
        .route(
            "/v3/admin/api-keys/{apiKeyId}",
            delete(admin::revoke_api_key),
        )
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));

    let operations = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));

    Router::new()
        .merge(school)
        .merge(admin)
        .merge(operations)
        .fallback(error::route_not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Every body is capped at 5 MiB while it streams (the JSON extractor
        // checks the same limit itself; axum's default 2 MiB is lifted).
        .layer(middleware::from_fn(extract::limit_body))
        .layer(DefaultBodyLimit::disable())
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(middleware::from_fn(request_timeout))
        .layer(middleware::from_fn(metrics::track))
        // Spans carry method, path (no query) and request id, never headers.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                // Failures are logged once, where they are handled (ApiError).
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Cuts off a request that takes longer than [`REQUEST_TIMEOUT`].
async fn request_timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(ProblemCode::Unavailable, "the request took too long")
            .with_retry_after(Duration::from_secs(5))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{StatusCode, header};
    use tower::ServiceExt;

    /// A state whose connections are never opened (nothing here reaches them).
    fn offline_state(admin_token: Option<&str>) -> AppState {
        let token = admin_token.map(str::to_string);
        let config = Config::from_lookup(|name| match name {
            "ADMIN_TOKEN" => token.clone(),
            _ => None,
        })
        .unwrap();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let redis = redis::Client::open("redis://127.0.0.1:1")
            .unwrap()
            .get_connection_manager_lazy(Default::default())
            .unwrap();
        let publisher = Publisher::new(config.amqp_url.clone(), Topology::from_config(&config));
        let (completions, _) = broadcast::channel(8);
        AppState::new(config, pool, redis, publisher, completions)
    }

    async fn call(
        admin_token: Option<&str>,
        request: axum::http::Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = router(offline_state(admin_token))
            .oneshot(request)
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 22).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    fn get(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_problems() {
        let (status, headers, body) = call(None, get("/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[header::CONTENT_TYPE], error::PROBLEM_JSON);
        assert_eq!(body["code"], "not_found");

        let request = axum::http::Request::put("/healthz")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = call(None, request).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], "method_not_allowed");
        assert!(headers.contains_key(header::ALLOW));
    }

    #[tokio::test]
    async fn school_routes_need_a_key() {
        let (status, headers, body) = call(None, get("/v3/jobs")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["code"], "unauthorized");
    }

    #[tokio::test]
    async fn admin_routes_hide_without_a_token_and_check_it_otherwise() {
        let post = || {
            axum::http::Request::post("/v3/admin/schools")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"name":"x"}"#))
                .unwrap()
        };
        let (status, _, body) = call(None, post()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found");
        let (status, _, _) = call(Some("secret"), post()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let mut wrong = post();
        wrong
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer secreT".parse().unwrap());
        let (status, _, _) = call(Some("secret"), wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn operations_endpoints() {
        let (status, _, body) = call(None, get("/healthz")).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, serde_json::json!({"status": "ok"}))
        );
        let (status, _, body) = call(None, get("/openapi.json")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["openapi"], "3.1.0");
        let (status, headers, _) = call(None, get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
    }

    #[tokio::test]
    async fn responses_carry_a_request_id() {
        let (_, headers, _) = call(None, get("/healthz")).await;
        assert!(headers.contains_key("x-request-id"));
    }
}
