//! The student record: as stored (`StudentRow`), as shown (`StudentView`), and the
//! validated partial update of one input item (`UpsertCommand`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{EmailStatus, Patch};

/// A student as stored in Postgres.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StudentRow {
    pub id: Uuid,
    pub external_reference_id: String,
    pub external_reference_type: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub photo_url: Option<String>,
    pub file_number: Option<String>,
    pub curriculum_name: Option<String>,
    pub company: Option<String>,
    pub badge_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub archived: bool,
    pub password_change_required: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `credential_emails.status` of the student's credentials email, where the
    /// query selects it (the student reads do; the write path does not need it).
    #[sqlx(default)]
    pub credentials_email: Option<String>,
}

/// The columns of `StudentRow`, for `SELECT` lists built with `concat!`.
#[macro_export]
macro_rules! student_columns {
    () => {
        "id, external_reference_id, external_reference_type, first_name, last_name, email, \
         phone, photo_url, file_number, curriculum_name, company, badge_id, tags, archived, \
         password_change_required, created_at, updated_at"
    };
}

/// The student object of the API (unset values are `null`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StudentView {
    pub id: Uuid,
    pub external_reference_id: String,
    pub external_reference_type: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub curriculum_name: Option<String>,
    pub company: Option<String>,
    pub badge_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub file_number: Option<String>,
    pub photo_url: Option<String>,
    pub archived: bool,
    pub password_change_required: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The student's credentials email: `queued`, `sent` or `failed`; `null` when
    /// none was ever queued (not created with `sendCredentials`, or no email).
    pub credentials_email: Option<EmailStatus>,
}

impl From<StudentRow> for StudentView {
    fn from(row: StudentRow) -> Self {
        Self {
            id: row.id,
            external_reference_id: row.external_reference_id,
            external_reference_type: row.external_reference_type,
            first_name: row.first_name,
            last_name: row.last_name,
            email: row.email,
            phone: row.phone,
            curriculum_name: row.curriculum_name,
            company: row.company,
            badge_id: row.badge_id,
            tags: row.tags,
            file_number: row.file_number,
            photo_url: row.photo_url,
            archived: row.archived,
            password_change_required: row.password_change_required,
            created_at: row.created_at,
            updated_at: row.updated_at,
            credentials_email: row
                .credentials_email
                .as_deref()
                .and_then(EmailStatus::parse),
        }
    }
}

/// The data fields a batch item may carry besides `externalReferenceId`, in the
/// canonical order used for `changedFields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StudentField {
    ExternalReferenceType,
    FirstName,
    LastName,
    Email,
    Phone,
    PhotoUrl,
    FileNumber,
    CurriculumName,
    Company,
    BadgeId,
    Tags,
}

impl StudentField {
    pub const ALL: [StudentField; 11] = [
        StudentField::ExternalReferenceType,
        StudentField::FirstName,
        StudentField::LastName,
        StudentField::Email,
        StudentField::Phone,
        StudentField::PhotoUrl,
        StudentField::FileNumber,
        StudentField::CurriculumName,
        StudentField::Company,
        StudentField::BadgeId,
        StudentField::Tags,
    ];

    /// The camelCase name used in requests, responses and `changedFields`.
    pub fn name(self) -> &'static str {
        match self {
            StudentField::ExternalReferenceType => "externalReferenceType",
            StudentField::FirstName => "firstName",
            StudentField::LastName => "lastName",
            StudentField::Email => "email",
            StudentField::Phone => "phone",
            StudentField::PhotoUrl => "photoUrl",
            StudentField::FileNumber => "fileNumber",
            StudentField::CurriculumName => "curriculumName",
            StudentField::Company => "company",
            StudentField::BadgeId => "badgeId",
            StudentField::Tags => "tags",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|field| field.name() == name)
    }
}

/// The validated, normalised data fields of one item. `Keep` = absent from the item.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudentPatch {
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub external_reference_type: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub first_name: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub last_name: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub email: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub phone: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub photo_url: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub file_number: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub curriculum_name: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub company: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub badge_id: Patch<String>,
    #[serde(default, skip_serializing_if = "Patch::is_keep")]
    pub tags: Patch<Vec<String>>,
}

/// One valid input item: the key it is matched on and the fields it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpsertCommand {
    pub external_reference_id: String,
    #[serde(flatten)]
    pub patch: StudentPatch,
}
