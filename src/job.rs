//! Jobs: the batch options, the message that carries one batch from the API to a
//! worker (the wire contract between them), per-item results, and the job body that
//! `POST /v3/students/batch-upsert` and `GET /v3/jobs/{jobId}` answer with.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{EmailStatus, ItemError, Patch, StudentPatch, UpsertCommand};

/// How long job results stay readable after completion.
pub const RESULT_RETENTION_DAYS: i64 = 7;

/// `options` of a batch request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchOptions {
    /// Unarchive (and update) matched students that are archived. Default false:
    /// they fail with `archived`.
    #[serde(default)]
    pub allow_unarchive: bool,
    #[serde(default)]
    pub on_student_created: OnStudentCreated,
    /// Predict the outcome against the current data; write nothing, send nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `options.onStudentCreated`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OnStudentCreated {
    /// Email each created student that has an email address its credentials.
    #[serde(default)]
    pub send_credentials: bool,
    /// Created students must choose a new password at first login.
    #[serde(default)]
    pub new_password_needed: bool,
}

/// One input item as it travels to the worker: either a valid command, or the
/// errors validation already found (so the worker can merge every result in order).
// Nearly every item is an `Upsert`: boxing it would cost an allocation per item.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BatchItem {
    Upsert(UpsertCommand),
    #[serde(rename_all = "camelCase")]
    Rejected {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        external_reference_id: Option<String>,
        errors: Vec<ItemError>,
        /// Set when the item's `externalReferenceId` is valid and unique in the
        /// batch, so that the errors only the stored data can reveal (`archived`,
        /// `required_on_create`) are still reported with the others: the names of
        /// the fields required on create that the item does not carry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lacks_on_create: Option<Vec<String>>,
    },
}

/// `BatchItem` as it is read: one flat struct instead of serde's internally
/// tagged enum with a flattened variant, which buffers every item into an
/// intermediate tree first (that was a fifth of the worker's CPU). The wire
/// format is unchanged: `{"kind": "upsert" | "rejected", ...}`; unknown members
/// are ignored, as before.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireItem {
    kind: WireKind,
    external_reference_id: Option<String>,
    #[serde(default)]
    external_reference_type: Patch<String>,
    #[serde(default)]
    first_name: Patch<String>,
    #[serde(default)]
    last_name: Patch<String>,
    #[serde(default)]
    email: Patch<String>,
    #[serde(default)]
    phone: Patch<String>,
    #[serde(default)]
    photo_url: Patch<String>,
    #[serde(default)]
    file_number: Patch<String>,
    #[serde(default)]
    curriculum_name: Patch<String>,
    #[serde(default)]
    company: Patch<String>,
    #[serde(default)]
    badge_id: Patch<String>,
    #[serde(default)]
    tags: Patch<Vec<String>>,
    errors: Option<Vec<ItemError>>,
    lacks_on_create: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum WireKind {
    Upsert,
    Rejected,
}

impl<'de> Deserialize<'de> for BatchItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let item = WireItem::deserialize(deserializer)?;
        Ok(match item.kind {
            WireKind::Upsert => BatchItem::Upsert(UpsertCommand {
                external_reference_id: item
                    .external_reference_id
                    .ok_or_else(|| D::Error::missing_field("externalReferenceId"))?,
                patch: StudentPatch {
                    external_reference_type: item.external_reference_type,
                    first_name: item.first_name,
                    last_name: item.last_name,
                    email: item.email,
                    phone: item.phone,
                    photo_url: item.photo_url,
                    file_number: item.file_number,
                    curriculum_name: item.curriculum_name,
                    company: item.company,
                    badge_id: item.badge_id,
                    tags: item.tags,
                },
            }),
            WireKind::Rejected => BatchItem::Rejected {
                external_reference_id: item.external_reference_id,
                errors: item
                    .errors
                    .ok_or_else(|| D::Error::missing_field("errors"))?,
                lacks_on_create: item.lacks_on_create,
            },
        })
    }
}

/// The message published for one accepted batch. `items[i]` is input item `i`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchMessage {
    pub job_id: Uuid,
    pub school_id: Uuid,
    pub options: BatchOptions,
    pub items: Vec<BatchItem>,
}

/// Outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Created,
    Updated,
    Unchanged,
    Failed,
}

/// State of the credentials email of a created student: `skipped_no_email`
/// (the student has no email address), else the live state of its outbox row —
/// `queued` (waiting or being retried), `sent` or `failed` (given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialsEmail {
    Queued,
    Sent,
    Failed,
    SkippedNoEmail,
}

impl From<EmailStatus> for CredentialsEmail {
    fn from(status: EmailStatus) -> Self {
        match status {
            EmailStatus::Queued => CredentialsEmail::Queued,
            EmailStatus::Sent => CredentialsEmail::Sent,
            EmailStatus::Failed => CredentialsEmail::Failed,
        }
    }
}

/// One entry of `results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    pub input_index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_reference_id: Option<String>,
    pub status: ItemStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_id: Option<Uuid>,
    /// Data fields whose value changed (`updated` only; may be empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_fields: Option<Vec<String>>,
    /// Present (true) when the student was unarchived by this item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unarchived: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_email: Option<CredentialsEmail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<ItemError>>,
}

impl ItemResult {
    pub fn failed(
        input_index: usize,
        external_reference_id: Option<String>,
        errors: Vec<ItemError>,
    ) -> Self {
        Self {
            input_index,
            external_reference_id,
            status: ItemStatus::Failed,
            student_id: None,
            changed_fields: None,
            unarchived: None,
            credentials_email: None,
            errors: Some(errors),
        }
    }
}

/// Counts per status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobSummary {
    pub total: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub failed: usize,
}

impl JobSummary {
    pub fn of(results: &[ItemResult]) -> Self {
        let mut summary = JobSummary {
            total: results.len(),
            ..JobSummary::default()
        };
        for result in results {
            match result.status {
                ItemStatus::Created => summary.created += 1,
                ItemStatus::Updated => summary.updated += 1,
                ItemStatus::Unchanged => summary.unchanged += 1,
                ItemStatus::Failed => summary.failed += 1,
            }
        }
        summary
    }
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Processing,
            JobStatus::Completed,
            JobStatus::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == value)
    }

    /// Completed or failed: nothing will change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// The job body: `GET /v3/jobs/{jobId}` and the 200/207 of a batch upsert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub dry_run: bool,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<JobSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ItemResult>>,
    /// A problem object (RFC 9457) when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
}

impl JobView {
    /// Whether every item succeeded (HTTP 200) or some failed (207).
    pub fn all_succeeded(&self) -> bool {
        self.summary.is_some_and(|summary| summary.failed == 0)
    }

    /// Whether some result still shows a `queued` credentials email: such a body
    /// goes stale as the mailer works, so it is read from Postgres (where the live
    /// outbox state is overlaid), not from a cache. (A dry run's `queued` is a
    /// prediction that never changes.)
    pub fn awaits_credentials_emails(&self) -> bool {
        !self.dry_run
            && self.results.as_ref().is_some_and(|results| {
                results
                    .iter()
                    .any(|result| result.credentials_email == Some(CredentialsEmail::Queued))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ItemErrorCode;

    /// The derived reader `BatchItem` had before the flat `WireItem`: the
    /// format both must accept alike.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Deserialize)]
    #[serde(tag = "kind", rename_all = "camelCase")]
    enum DerivedItem {
        Upsert(UpsertCommand),
        #[serde(rename_all = "camelCase")]
        Rejected {
            #[serde(default)]
            external_reference_id: Option<String>,
            errors: Vec<ItemError>,
            #[serde(default)]
            lacks_on_create: Option<Vec<String>>,
        },
    }

    impl From<DerivedItem> for BatchItem {
        fn from(item: DerivedItem) -> Self {
            match item {
                DerivedItem::Upsert(command) => BatchItem::Upsert(command),
                DerivedItem::Rejected {
                    external_reference_id,
                    errors,
                    lacks_on_create,
                } => BatchItem::Rejected {
                    external_reference_id,
                    errors,
                    lacks_on_create,
                },
            }
        }
    }

    fn items() -> Vec<BatchItem> {
        vec![
            BatchItem::Upsert(UpsertCommand {
                external_reference_id: "a-1".into(),
                patch: StudentPatch {
                    first_name: Patch::Set("Ada".into()),
                    email: Patch::Clear,
                    tags: Patch::Set(vec!["x".into(), "y".into()]),
                    ..StudentPatch::default()
                },
            }),
            BatchItem::Upsert(UpsertCommand {
                external_reference_id: "a-2".into(),
                patch: StudentPatch::default(),
            }),
            BatchItem::Rejected {
                external_reference_id: Some("a-3".into()),
                errors: vec![ItemError::new(
                    ItemErrorCode::Blank,
                    "/students/2/lastName",
                    "blank",
                )],
                lacks_on_create: Some(vec!["firstName".into()]),
            },
            BatchItem::Rejected {
                external_reference_id: None,
                errors: vec![ItemError::new(
                    ItemErrorCode::InvalidType,
                    "/students/3",
                    "no",
                )],
                lacks_on_create: None,
            },
        ]
    }

    #[test]
    fn batch_items_round_trip_and_read_like_the_derived_reader() {
        for item in items() {
            let json = serde_json::to_string(&item).unwrap();
            let read: BatchItem = serde_json::from_str(&json).unwrap();
            assert_eq!(read, item, "{json}");
            let derived: DerivedItem = serde_json::from_str(&json).unwrap();
            assert_eq!(BatchItem::from(derived), item, "{json}");
        }
        // Member order and unknown members do not matter; null clears.
        let json =
            r#"{"firstName":"A","extra":1,"email":null,"externalReferenceId":"k","kind":"upsert"}"#;
        let read: BatchItem = serde_json::from_str(json).unwrap();
        let derived: DerivedItem = serde_json::from_str(json).unwrap();
        assert_eq!(read, BatchItem::from(derived));
        // What the derived reader refused, the flat one refuses too.
        for bad in [
            r#"{"kind":"upsert"}"#,
            r#"{"kind":"rejected"}"#,
            r#"{"kind":"other","externalReferenceId":"k"}"#,
            r#"{"externalReferenceId":"k"}"#,
        ] {
            assert!(serde_json::from_str::<BatchItem>(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<DerivedItem>(bad).is_err(), "{bad}");
        }
    }
}
