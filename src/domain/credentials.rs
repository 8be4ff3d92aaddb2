//! The state of a student's credentials email, as the outbox records it:
//! `queued` (waiting, or being retried), `sent` (handed to the SMTP server, or to
//! the log when no SMTP server is configured) or `failed` (given up).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a credentials email is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    Queued,
    Sent,
    Failed,
}

impl EmailStatus {
    /// The value stored in `credential_emails.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Queued => "queued",
            EmailStatus::Sent => "sent",
            EmailStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [EmailStatus::Queued, EmailStatus::Sent, EmailStatus::Failed]
            .into_iter()
            .find(|status| status.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_column_value() {
        for status in [EmailStatus::Queued, EmailStatus::Sent, EmailStatus::Failed] {
            assert_eq!(EmailStatus::parse(status.as_str()), Some(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::from(status.as_str())
            );
        }
        assert_eq!(EmailStatus::parse("skipped_no_email"), None);
    }
}
