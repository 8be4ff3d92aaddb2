//! Admin endpoints (behind `ADMIN_TOKEN`): create schools, issue and revoke API
//! keys. A key's plaintext appears once, in the 201 body; only its hash is
//! stored, and it is never logged.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use studentsync::domain::{ItemError, ItemErrorCode};
use studentsync::store::keys;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathId};

/// The longest school name (characters).
pub const MAX_SCHOOL_NAME_CHARS: usize = 200;

/// `POST /v3/admin/schools` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSchool {
    /// Not blank; surrounding whitespace is removed.
    #[schema(max_length = 200)]
    pub name: String,
}

/// A new school and its first API key (shown only here, once).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedSchool {
    pub school_id: Uuid,
    pub name: String,
    /// `Authorization: Bearer <apiKey>`; store it now, it cannot be shown again.
    pub api_key: String,
}

/// A new API key (shown only here, once).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKey {
    pub api_key_id: Uuid,
    pub api_key: String,
}

/// Create a school with its first API key.
#[utoipa::path(
    post,
    path = "/v3/admin/schools",
    tag = "admin",
    operation_id = "createSchool",
    request_body(content = CreateSchool, content_type = "application/json"),
    responses(
        (status = 201, description = "The school and its first key.", body = CreatedSchool),
        (status = 400, description = "`malformed_json`.", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`.", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`.", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_request`: `name` missing, not a string, blank, longer than 200 characters or with control characters, or an unknown field (see `errors`).", body = Problem, content_type = "application/problem+json"),
    ),
    security(("adminToken" = []))
)]
pub async fn create_school(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<CreatedSchool>), ApiError> {
    let name = school_name(body)?;
    let (school_id, key) = keys::create_school(&state.pool, &name).await?;
    tracing::info!(%school_id, api_key_id = %key.id, "school created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedSchool {
            school_id,
            name,
            api_key: key.plaintext,
        }),
    ))
}

/// Checks the body of `POST /v3/admin/schools`; returns the trimmed name.
fn school_name(body: Value) -> Result<String, ApiError> {
    let invalid = |errors: Vec<ItemError>| {
        ApiError::invalid_request("the school is not valid").with_errors(errors)
    };
    let Value::Object(mut fields) = body else {
        return Err(invalid(vec![ItemError::new(
            ItemErrorCode::InvalidType,
            "",
            "the body must be an object",
        )]));
    };
    let name = fields.remove("name");
    let mut errors: Vec<ItemError> = fields
        .keys()
        .map(|field| {
            ItemError::new(
                ItemErrorCode::UnknownField,
                format!(
                    "/{}",
                    studentsync::domain::error::escape_pointer_token(field)
                ),
                "unknown field",
            )
        })
        .collect();
    let name = match name {
        None => {
            errors.push(ItemError::new(
                ItemErrorCode::Required,
                "/name",
                "`name` is required",
            ));
            None
        }
        Some(Value::String(name)) => {
            let trimmed = name.trim();
            if trimmed.is_empty() {
                errors.push(ItemError::new(
                    ItemErrorCode::Blank,
                    "/name",
                    "must not be blank",
                ));
            } else if trimmed.chars().count() > MAX_SCHOOL_NAME_CHARS {
                errors.push(ItemError::new(
                    ItemErrorCode::TooLong,
                    "/name",
                    format!("at most {MAX_SCHOOL_NAME_CHARS} characters"),
                ));
            } else if trimmed.chars().any(char::is_control) {
                errors.push(ItemError::new(
                    ItemErrorCode::InvalidCharacters,
                    "/name",
                    "control characters are not allowed",
                ));
            }
            Some(trimmed.to_string())
        }
        Some(Value::Null) => {
            errors.push(ItemError::new(
                ItemErrorCode::NotNullable,
                "/name",
                "must not be null",
            ));
            None
        }
        Some(_) => {
            errors.push(ItemError::new(
                ItemErrorCode::InvalidType,
                "/name",
                "must be a string",
            ));
            None
        }
    };
    match name {
        Some(name) if errors.is_empty() => Ok(name),
        _ => Err(invalid(errors)),
    }
}

/// Issue another API key for a school.
#[utoipa::path(
    post,
    path = "/v3/admin/schools/{schoolId}/api-keys",
    tag = "admin",
    operation_id = "createApiKey",
    params(("schoolId" = String, Path, description = "The school id (a UUID).")),
    responses(
        (status = 201, description = "The new key.", body = CreatedApiKey),
        (status = 404, description = "`not_found`: no such school.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("adminToken" = []))
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    PathId(school_id): PathId,
) -> Result<(StatusCode, Json<CreatedApiKey>), ApiError> {
    let key = keys::create_key(&state.pool, school_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    tracing::info!(%school_id, api_key_id = %key.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key_id: key.id,
            api_key: key.plaintext,
        }),
    ))
}

/// Revoke an API key; it stops working at once.
#[utoipa::path(
    delete,
    path = "/v3/admin/api-keys/{apiKeyId}",
    tag = "admin",
    operation_id = "revokeApiKey",
    params(("apiKeyId" = String, Path, description = "The key id (a UUID).")),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "`not_found`: no such live key (unknown or already revoked).", body = Problem, content_type = "application/problem+json"),
    ),
    security(("adminToken" = []))
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    PathId(api_key_id): PathId,
) -> Result<StatusCode, ApiError> {
    if keys::revoke_key(&state.pool, api_key_id).await? {
        tracing::info!(%api_key_id, "API key revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn codes(body: Value) -> Vec<(String, String)> {
        let error = school_name(body).unwrap_err();
        error
            .problem()
            .errors
            .iter()
            .map(|e| {
                (
                    serde_json::to_value(e.code)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string(),
                    e.pointer.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn school_names() {
        assert_eq!(
            school_name(json!({"name": "  Lycée Victor Hugo "})).unwrap(),
            "Lycée Victor Hugo"
        );
        assert_eq!(
            school_name(json!({"name": "é".repeat(200)}))
                .unwrap()
                .chars()
                .count(),
            200
        );
        assert_eq!(codes(json!({})), [("required".into(), "/name".into())]);
        assert_eq!(
            codes(json!({"name": " "})),
            [("blank".into(), "/name".into())]
        );
        assert_eq!(
            codes(json!({"name": "x".repeat(201)})),
            [("too_long".into(), "/name".into())]
        );
        assert_eq!(
            codes(json!({"name": 3})),
            [("invalid_type".into(), "/name".into())]
        );
        assert_eq!(
            codes(json!({"name": null})),
            [("not_nullable".into(), "/name".into())]
        );
        assert_eq!(
            codes(json!({"name": "a\u{0}b"})),
            [("invalid_characters".into(), "/name".into())]
        );
        assert_eq!(
            codes(json!({"name": "ok", "a/b": 1})),
            [("unknown_field".into(), "/a~1b".into())]
        );
        assert_eq!(codes(json!([])), [("invalid_type".into(), "".into())]);
    }
}
