//! Authentication middleware. School routes take `Authorization: Bearer <apiKey>`,
//! looked up (by its SHA-256) in Postgres on every request (no cache, so a
//! revoked key stops working at once on every instance) and put into the
//! request as a [`Principal`]; a value that does not have the shape of a key
//! (`sk_` + 43 base64url characters) is refused without a query. Admin routes
//! take `Bearer $ADMIN_TOKEN`, compared in constant time; while no admin token is
//! configured they answer 404 as if they did not exist. Keys and tokens are never
//! logged.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use studentsync::store::keys;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Requires a live API key; stores its [`keys::Principal`] in the request extensions.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(presented) = bearer_token(request.headers()) else {
        return Err(ApiError::unauthorized(
            "an API key is required: `Authorization: Bearer <apiKey>`",
        ));
    };
    match keys::authenticate(&state.pool, presented).await? {
        Some(principal) => {
            request.extensions_mut().insert(principal);
            Ok(next.run(request).await)
        }
        None => Err(ApiError::unauthorized("the API key is unknown or revoked")),
    }
}

/// Guards the admin routes with `ADMIN_TOKEN`.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.config.admin_token.as_deref() else {
        return Err(ApiError::not_found());
    };
    match bearer_token(request.headers()) {
        Some(presented) if tokens_match(presented, expected) => Ok(next.run(request).await),
        _ => Err(ApiError::unauthorized(
            "the admin token is missing or wrong",
        )),
    }
}

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares the SHA-256 of both tokens in constant time, so neither the
/// content nor the length of the expected token leaks through timing.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    presented[..].ct_eq(&expected[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token(&headers("Bearer sk_abc")), Some("sk_abc"));
        assert_eq!(bearer_token(&headers("bearer   sk_abc ")), Some("sk_abc"));
        assert_eq!(bearer_token(&headers("Basic dXNlcg==")), None);
        assert_eq!(bearer_token(&headers("Bearer")), None);
        assert_eq!(bearer_token(&headers("Bearer  ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_match("t", "t"));
        assert!(!tokens_match("t", "tt"));
        assert!(!tokens_match("", "t"));
    }
}
