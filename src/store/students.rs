//! Student reads and the archive/unarchive switches, always scoped to one school.
//! Every read also carries the state of the student's credentials email.

use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::StudentRow;
use crate::student_columns;

/// The student columns plus `credentials_email`, the state of the student's
/// credentials email (one outbox row at most per student: a unique index probe).
macro_rules! student_read_columns {
    () => {
        concat!(
            student_columns!(),
            ", (SELECT c.status FROM credential_emails c WHERE c.student_id = students.id) \
             AS credentials_email"
        )
    };
}

/// One student of a school.
pub async fn get(
    pool: &PgPool,
    school_id: Uuid,
    student_id: Uuid,
) -> Result<Option<StudentRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        student_read_columns!(),
        " FROM students WHERE school_id = $1 AND id = $2"
    ))
    .bind(school_id)
    .bind(student_id)
    .fetch_optional(pool)
    .await
}

/// The student with this `externalReferenceId`, if any.
pub async fn find_by_external_reference(
    pool: &PgPool,
    school_id: Uuid,
    external_reference_id: &str,
    archived: Option<bool>,
) -> Result<Option<StudentRow>, sqlx::Error> {
    // Postgres text cannot hold NUL (binding it is an error), so no stored key
    // has one: nothing to look up.
    if external_reference_id.contains('\0') {
        return Ok(None);
    }
    sqlx::query_as(concat!(
        "SELECT ",
        student_read_columns!(),
        " FROM students WHERE school_id = $1 AND external_reference_id = $2
          AND ($3::boolean IS NULL OR archived = $3)"
    ))
    .bind(school_id)
    .bind(external_reference_id)
    .bind(archived)
    .fetch_optional(pool)
    .await
}

/// A page of students in `externalReferenceId` order, after the one with
/// `after` (exclusive). Walks the `(school_id, external_reference_id)` unique
/// index, so the table needs no second index on its random ids.
pub async fn list(
    pool: &PgPool,
    school_id: Uuid,
    archived: Option<bool>,
    limit: u32,
    after: Option<&str>,
) -> Result<Vec<StudentRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        student_read_columns!(),
        " FROM students WHERE school_id = $1
          AND ($2::boolean IS NULL OR archived = $2)
          AND ($3::text IS NULL OR external_reference_id > $3)
          ORDER BY external_reference_id LIMIT $4"
    ))
    .bind(school_id)
    .bind(archived)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
}

/// Sets the archived flag; `updatedAt` moves only when the flag changes.
/// `None` when the student does not exist in this school.
pub async fn set_archived(
    pool: &PgPool,
    school_id: Uuid,
    student_id: Uuid,
    archived: bool,
) -> Result<Option<StudentRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE students SET archived = $3,
             updated_at = CASE WHEN archived = $3 THEN updated_at ELSE now() END
         WHERE school_id = $1 AND id = $2
         RETURNING ",
        student_read_columns!()
    ))
    .bind(school_id)
    .bind(student_id)
    .bind(archived)
    .fetch_optional(pool)
    .await
}
