//! Postgres access for the API side: schools and API keys, job rows, and student
//! reads; and the credentials-email outbox that the mailer works through. Every
//! function that reads tenant data takes the caller's school id and filters on
//! it. (The batch write path lives in `crate::engine`.)

pub mod jobs;
pub mod keys;
pub mod outbox;
pub mod students;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Encodes a pagination position as an opaque, URL-safe cursor.
pub fn encode_cursor(raw: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a cursor made by [`encode_cursor`]; `None` when it is not one.
pub fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = encode_cursor("2026-12-03T10:00:00Z|abc");
        assert!(
            cursor
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(
            decode_cursor(&cursor).as_deref(),
            Some("2026-12-03T10:00:00Z|abc")
        );
        assert_eq!(decode_cursor("***"), None);
    }
}
