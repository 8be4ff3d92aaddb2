//! Prometheus metrics: one process-wide recorder (installed once, so several
//! routers in one test process share it), a middleware that counts and times
//! every request by method, matched route and status, and the counter of
//! students received in accepted batches.
//!
//! Metrics: `http_requests_total{method,route,status}`,
//! `http_request_duration_seconds{method,route}` (histogram),
//! `batch_students_received_total`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const REQUESTS_TOTAL: &str = "http_requests_total";
const REQUEST_DURATION: &str = "http_request_duration_seconds";
const STUDENTS_RECEIVED: &str = "batch_students_received_total";

/// Histogram buckets (seconds) of request durations; batch requests may wait a minute.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process-wide handle, installing the recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(REQUEST_DURATION.to_string()),
                DURATION_BUCKETS,
            )
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        metrics::describe_counter!(REQUESTS_TOTAL, "HTTP requests answered");
        metrics::describe_histogram!(
            REQUEST_DURATION,
            metrics::Unit::Seconds,
            "time to answer an HTTP request"
        );
        metrics::describe_counter!(STUDENTS_RECEIVED, "students in accepted batches");
        metrics::counter!(STUDENTS_RECEIVED).increment(0);
        // Drain histogram samples even when nobody scrapes; a thread, not a
        // task, because test runtimes come and go while this lives on.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the metrics upkeep thread");
        }
        handle
    })
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    handle().render()
}

/// Counts the students of an accepted batch.
pub fn students_received(count: usize) {
    metrics::counter!(STUDENTS_RECEIVED).increment(count as u64);
}

/// Standard methods by name; any extension method as `other`.
fn method_label(method: &axum::http::Method) -> String {
    use axum::http::Method;
    let standard = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    if standard.contains(method) {
        method.as_str().to_string()
    } else {
        "other".to_string()
    }
}

/// Middleware: records every answered request under its route template
/// (`unmatched` for unknown routes, so arbitrary paths cannot grow the label set).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
