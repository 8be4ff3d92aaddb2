//! Per-item errors: a stable code, an RFC 6901 pointer into the request, and a
//! human-readable detail.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The stable, snake_case codes of per-item errors (see API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemErrorCode {
    InvalidType,
    Required,
    RequiredOnCreate,
    Blank,
    TooLong,
    TooMany,
    InvalidFormat,
    NotNullable,
    InvalidCharacters,
    UnknownField,
    DuplicateInBatch,
    Archived,
}

/// One problem with one input item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ItemError {
    pub code: ItemErrorCode,
    /// RFC 6901 pointer into the request body, e.g. `/students/3/email`.
    pub pointer: String,
    pub detail: String,
}

impl ItemError {
    pub fn new(code: ItemErrorCode, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code,
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape_pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The pointer of input item `index`, e.g. `/students/3`.
pub fn item_pointer(index: usize) -> String {
    format!("/students/{index}")
}

/// The pointer of field `field` of input item `index`.
pub fn field_pointer(index: usize, field: &str) -> String {
    format!("/students/{index}/{}", escape_pointer_token(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(field_pointer(2, "a/b~c"), "/students/2/a~1b~0c");
        assert_eq!(item_pointer(7), "/students/7");
    }

    #[test]
    fn codes_serialize_snake_case() {
        let json = serde_json::to_string(&ItemErrorCode::DuplicateInBatch).unwrap();
        assert_eq!(json, "\"duplicate_in_batch\"");
    }
}
