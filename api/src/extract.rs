//! Request extractors that answer with problem+json instead of axum's plain-text
//! rejections, and the body-size middleware. [`limit_body`] caps every request
//! body of every route at 5 MiB while it streams (a declared `Content-Length`
//! over it is refused before anything is read; a chunked body is cut off at the
//! limit), so no handler can buffer more whatever it does. Extractors:
//! [`JsonBody`] (media type, size limit and strict JSON parsing, in
//! that order), [`PathId`] (a UUID path segment; anything else is a 404),
//! [`QueryParams`] (query string with repeated parameters rejected) and
//! [`Caller`] (the principal the auth middleware resolved).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use studentsync::store::keys::Principal;
use uuid::Uuid;

use crate::error::{ApiError, ProblemCode};

/// The largest request body accepted (5 MiB).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// Middleware: refuses a declared `Content-Length` over [`MAX_BODY_BYTES`] with
/// 413 `payload_too_large` (problem+json) without reading the body, and wraps
/// every other body so that reading it fails past the limit, chunked or not
/// (the body extractors turn that failure into the same 413). Unread bytes stay
/// in the socket: hyper closes the connection instead of draining it.
pub async fn limit_body(request: Request, next: Next) -> Response {
    if declared_length(request.headers()).is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return too_large().into_response();
    }
    let request = request.map(|body| Body::new(http_body_util::Limited::new(body, MAX_BODY_BYTES)));
    next.run(request).await
}

/// The `Content-Length` of a request, when it is a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
}

/// A JSON request body, parsed strictly (`studentsync::json::parse_strict`).
///
/// Checks, in order: `Content-Type` is `application/json` or `application/*+json`
/// (parameters allowed) → 415; a declared `Content-Length` over 5 MiB → 413
/// without reading; the body is streamed and reading stops at 5 MiB → 413; the
/// bytes are not acceptable JSON → 400 `malformed_json`.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, ApiError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok());
        if !content_type.is_some_and(is_json_media_type) {
            return Err(ApiError::new(
                ProblemCode::UnsupportedMediaType,
                "the request body must be JSON (Content-Type: application/json)",
            ));
        }
        if declared_length(request.headers()).is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|error| {
                if is_length_limit(&error) {
                    too_large()
                } else {
                    ApiError::new(
                        ProblemCode::MalformedJson,
                        format!("the request body could not be read: {error}"),
                    )
                }
            })?;
        studentsync::json::parse_strict(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::new(ProblemCode::MalformedJson, error.to_string()))
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        ProblemCode::PayloadTooLarge,
        format!("the request body is larger than {MAX_BODY_BYTES} bytes (5 MiB)"),
    )
}

/// Whether a body error is the 5 MiB limit (rather than a broken connection).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// `application/json` or any `application/<something>+json`, with parameters.
pub fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    subtype == "json"
        || subtype
            .strip_suffix("+json")
            .is_some_and(|prefix| !prefix.is_empty() && !prefix.contains('/'))
}

/// A UUID taken from the single path parameter of a route. A segment that is
/// not a UUID names nothing that can exist, so it is answered 404 like an
/// unknown id.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found())?;
        raw.parse().map(PathId).map_err(|_| ApiError::not_found())
    }
}

/// The query string as name → value. Unknown parameters are ignored; a
/// parameter given twice is a 422 (which one was meant is ambiguous).
#[derive(Debug, Default)]
pub struct QueryParams(pub HashMap<String, String>);

impl QueryParams {
    pub fn parse(query: &str) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if params
                .insert(name.to_string(), value.into_owned())
                .is_some()
            {
                return Err(ApiError::invalid_request(format!(
                    "query parameter `{name}` is given more than once"
                )));
            }
        }
        Ok(Self(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `limit`: an integer in 1..=max, `default` when absent.
    pub fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=max).contains(limit))
                .ok_or_else(|| {
                    ApiError::invalid_request(format!("`limit` must be an integer from 1 to {max}"))
                }),
        }
    }

    /// `archived`: `true` or `false`, absent = no filter.
    pub fn archived(&self) -> Result<Option<bool>, ApiError> {
        match self.get("archived") {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(ApiError::invalid_request(
                "`archived` must be `true` or `false`",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Self::parse(parts.uri.query().unwrap_or(""))
    }
}

/// The authenticated caller (put into the request by `auth::require_api_key`).
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .copied()
            .map(Caller)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("route is missing the auth layer")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn json_media_types() {
        for accepted in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
            "application/vnd.studentsync.v3+json ; q=1",
        ] {
            assert!(is_json_media_type(accepted), "{accepted}");
        }
        for refused in [
            "text/plain",
            "application/xml",
            "text/json",
            "application/+json",
            "json",
            "",
        ] {
            assert!(!is_json_media_type(refused), "{refused}");
        }
    }

    async fn extract(request: Request) -> Result<Value, StatusCode> {
        JsonBody::from_request(request, &())
            .await
            .map(|JsonBody(value)| value)
            .map_err(|error| error.into_response().status())
    }

    fn post(content_type: &str, body: impl Into<Body>) -> Request {
        Request::post("/")
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap()
    }

    #[tokio::test]
    async fn body_checks_in_order() {
        assert_eq!(
            extract(post("application/json", "{\"a\":1}")).await,
            Ok(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            extract(post("text/plain", "{}")).await,
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        assert_eq!(
            extract(post("application/json", "{\"a\":1,\"a\":2}")).await,
            Err(StatusCode::BAD_REQUEST)
        );
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            extract(post("application/json", huge)).await,
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        );
        // A streamed body without Content-Length is cut off at the limit too.
        let chunks = futures_util::stream::iter(
            (0..6).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])),
        );
        let streamed = post("application/json", Body::from_stream(chunks));
        assert_eq!(extract(streamed).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
        let declared = Request::post("/")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "99999999")
            .body(Body::empty())
            .unwrap();
        assert_eq!(extract(declared).await, Err(StatusCode::PAYLOAD_TOO_LARGE));
    }

    #[test]
    fn query_parameters() {
        let params = QueryParams::parse("limit=5&archived=true&x=%20y").unwrap();
        assert_eq!(params.limit(100, 500).unwrap(), 5);
        assert_eq!(params.archived().unwrap(), Some(true));
        assert_eq!(params.get("x"), Some(" y"));
        assert!(QueryParams::parse("limit=1&limit=2").is_err());
        for bad in ["limit=0", "limit=501", "limit=ten", "limit=", "limit=-1"] {
            assert!(
                QueryParams::parse(bad).unwrap().limit(100, 500).is_err(),
                "{bad}"
            );
        }
        assert!(
            QueryParams::parse("archived=yes")
                .unwrap()
                .archived()
                .is_err()
        );
        assert_eq!(
            QueryParams::parse("").unwrap().limit(100, 500).unwrap(),
            100
        );
    }

    /// A route that reads its body raw (no extractor limit) behind the layer.
    async fn raw_length(request: Request) -> Response {
        let outcome = axum::body::to_bytes(request.into_body(), usize::MAX).await;
        match outcome {
            Ok(bytes) => bytes.len().to_string().into_response(),
            Err(error) if is_length_limit(&error) => too_large().into_response(),
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        }
    }

    #[tokio::test]
    async fn the_layer_limits_bodies_no_extractor_limits() {
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/", axum::routing::post(raw_length))
            .layer(axum::middleware::from_fn(limit_body));
        let call = |body: Body, length: Option<&str>| {
            let mut request = Request::post("/");
            if let Some(length) = length {
                request = request.header(header::CONTENT_LENGTH, length);
            }
            app.clone().oneshot(request.body(body).unwrap())
        };
        let response = call(Body::from(vec![b'x'; MAX_BODY_BYTES]), None)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let chunks = futures_util::stream::iter(
            (0..6).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024 * 1024])),
        );
        let response = call(Body::from_stream(chunks), None).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            crate::error::PROBLEM_JSON
        );
        // Refused on the declaration alone: the body is never polled.
        let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        let response = call(Body::from_stream(never), Some("5242881"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
