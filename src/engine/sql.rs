//! The set-based statements of the batch write path. Each takes whole columns as
//! arrays and runs in one round trip, whatever the batch size.

use sqlx::PgConnection;
use uuid::Uuid;

use super::classify::NewStudent;
use crate::domain::StudentRow;
use crate::student_columns;

/// A stored student as the write path read it, and which version of the row that
/// was: where the tuple lies (`ctid`) and which transaction wrote it (`xmin`).
#[derive(Debug, sqlx::FromRow)]
pub struct Matched {
    #[sqlx(flatten)]
    pub row: StudentRow,
    #[sqlx(flatten)]
    pub version: RowVersion,
}

/// The version of a row that was read; [`update_students`] writes a row only if
/// it is still that version. Kept as text: Postgres parses it back (`::tid`,
/// `::xid`), and sqlx has no codec for these types.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RowVersion {
    pub tuple: String,
    pub writer: String,
}

/// Loads the students of a school matching `keys`. With `lock`, they are also
/// locked in key order (`FOR UPDATE`), so no one else can change them before the
/// transaction ends; without, the read is optimistic and [`update_students`]
/// detects rows changed since.
pub async fn load_matches(
    conn: &mut PgConnection,
    school_id: Uuid,
    keys: &[&str],
    lock: bool,
) -> Result<Vec<Matched>, sqlx::Error> {
    let query = if lock {
        concat!(
            "SELECT ",
            student_columns!(),
            ", ctid::text AS tuple, xmin::text AS writer
              FROM students WHERE school_id = $1 AND external_reference_id = ANY($2)
              ORDER BY external_reference_id FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            student_columns!(),
            ", ctid::text AS tuple, xmin::text AS writer
              FROM students WHERE school_id = $1 AND external_reference_id = ANY($2)"
        )
    };
    sqlx::query_as(query)
        .bind(school_id)
        .bind(keys)
        .fetch_all(conn)
        .await
}

/// Tags travel as one JSON text per row (`NULL` = no tags): Postgres arrays must be
/// rectangular, so an array of arrays cannot carry them.
fn tags_json(tags: &Option<Vec<String>>) -> Option<String> {
    tags.as_ref()
        .map(|tags| serde_json::to_string(tags).unwrap_or_else(|_| "[]".into()))
}

/// Inserts new students; returns `(externalReferenceId, id)` of the rows actually
/// inserted. A key missing from the answer was created concurrently by another
/// batch (it lost the race) and must be re-classified as an update.
pub async fn insert_students(
    conn: &mut PgConnection,
    school_id: Uuid,
    students: &[(Uuid, &NewStudent)],
    password_change_required: bool,
) -> Result<Vec<(String, Uuid)>, sqlx::Error> {
    if students.is_empty() {
        return Ok(Vec::new());
    }
    let column = |get: fn(&NewStudent) -> Option<&String>| -> Vec<Option<&str>> {
        students
            .iter()
            .map(|(_, student)| get(student).map(String::as_str))
            .collect()
    };
    let ids: Vec<Uuid> = students.iter().map(|(id, _)| *id).collect();
    let keys: Vec<&str> = students
        .iter()
        .map(|(_, s)| s.external_reference_id.as_str())
        .collect();
    let first: Vec<&str> = students
        .iter()
        .map(|(_, s)| s.first_name.as_str())
        .collect();
    let last: Vec<&str> = students.iter().map(|(_, s)| s.last_name.as_str()).collect();
    let tags: Vec<Option<String>> = students.iter().map(|(_, s)| tags_json(&s.tags)).collect();
    sqlx::query_as(
        "INSERT INTO students (id, school_id, external_reference_id, external_reference_type,
             first_name, last_name, email, phone, photo_url, file_number, curriculum_name,
             company, badge_id, tags, password_change_required)
         SELECT u.id, $1, u.key, u.key_type, u.first_name, u.last_name, u.email, u.phone,
             u.photo_url, u.file_number, u.curriculum_name, u.company, u.badge_id,
             CASE WHEN u.tags IS NULL THEN NULL
                  ELSE ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END,
             $15
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                     $14::text[])
              AS u(id, key, key_type, first_name, last_name, email, phone, photo_url,
                   file_number, curriculum_name, company, badge_id, tags)
         ORDER BY u.key
         ON CONFLICT (school_id, external_reference_id) DO NOTHING
         RETURNING external_reference_id, id",
    )
    .bind(school_id)
    .bind(&ids)
    .bind(&keys)
    .bind(column(|s| s.external_reference_type.as_ref()))
    .bind(&first)
    .bind(&last)
    .bind(column(|s| s.email.as_ref()))
    .bind(column(|s| s.phone.as_ref()))
    .bind(column(|s| s.photo_url.as_ref()))
    .bind(column(|s| s.file_number.as_ref()))
    .bind(column(|s| s.curriculum_name.as_ref()))
    .bind(column(|s| s.company.as_ref()))
    .bind(column(|s| s.badge_id.as_ref()))
    .bind(&tags)
    .bind(password_change_required)
    .fetch_all(conn)
    .await
}

/// Writes the merged rows of updated students and moves their `updated_at`, each
/// only if it is still the version that was read: the row is found by its `ctid`
/// (no index probe) and checked by `id` and `xmin` (after pruning, a `ctid` can be
/// reused by another tuple, even a later version of the same student; the writing
/// transaction tells them apart). Returns the ids written; a row missing from the
/// answer was changed by another transaction since it was read (also when Postgres
/// re-checks the row after waiting for a concurrent writer) and must be read again.
pub async fn update_students(
    conn: &mut PgConnection,
    rows: &[(&StudentRow, &RowVersion)],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let column = |get: fn(&StudentRow) -> Option<&String>| -> Vec<Option<&str>> {
        rows.iter()
            .map(|(row, _)| get(row).map(String::as_str))
            .collect()
    };
    let tuples: Vec<&str> = rows.iter().map(|(_, v)| v.tuple.as_str()).collect();
    let writers: Vec<&str> = rows.iter().map(|(_, v)| v.writer.as_str()).collect();
    let ids: Vec<Uuid> = rows.iter().map(|(row, _)| row.id).collect();
    let first: Vec<&str> = rows
        .iter()
        .map(|(row, _)| row.first_name.as_str())
        .collect();
    let last: Vec<&str> = rows.iter().map(|(row, _)| row.last_name.as_str()).collect();
    let tags: Vec<Option<String>> = rows.iter().map(|(row, _)| tags_json(&row.tags)).collect();
    let archived: Vec<bool> = rows.iter().map(|(row, _)| row.archived).collect();
    sqlx::query_scalar(
        "UPDATE students AS s SET
             external_reference_type = u.key_type, first_name = u.first_name,
             last_name = u.last_name, email = u.email, phone = u.phone,
             photo_url = u.photo_url, file_number = u.file_number,
             curriculum_name = u.curriculum_name, company = u.company, badge_id = u.badge_id,
             tags = CASE WHEN u.tags IS NULL THEN NULL
                         ELSE ARRAY(SELECT jsonb_array_elements_text(u.tags::jsonb)) END,
             archived = u.archived, updated_at = now()
         FROM unnest($1::text[]::tid[], $2::text[]::xid[], $3::uuid[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                     $12::text[], $13::text[], $14::text[], $15::boolean[])
              AS u(tuple, writer, id, key_type, first_name, last_name, email, phone, photo_url,
                   file_number, curriculum_name, company, badge_id, tags, archived)
         WHERE s.ctid = u.tuple AND s.xmin = u.writer AND s.id = u.id
         RETURNING s.id",
    )
    .bind(&tuples)
    .bind(&writers)
    .bind(&ids)
    .bind(column(|row| row.external_reference_type.as_ref()))
    .bind(&first)
    .bind(&last)
    .bind(column(|row| row.email.as_ref()))
    .bind(column(|row| row.phone.as_ref()))
    .bind(column(|row| row.photo_url.as_ref()))
    .bind(column(|row| row.file_number.as_ref()))
    .bind(column(|row| row.curriculum_name.as_ref()))
    .bind(column(|row| row.company.as_ref()))
    .bind(column(|row| row.badge_id.as_ref()))
    .bind(&tags)
    .bind(&archived)
    .fetch_all(conn)
    .await
}

/// Writes one credentials-email outbox row per `(student, email)`.
pub async fn insert_credential_emails(
    conn: &mut PgConnection,
    school_id: Uuid,
    job_id: Uuid,
    recipients: &[(Uuid, &str)],
    new_password_needed: bool,
) -> Result<(), sqlx::Error> {
    if recipients.is_empty() {
        return Ok(());
    }
    let students: Vec<Uuid> = recipients.iter().map(|(id, _)| *id).collect();
    let emails: Vec<&str> = recipients.iter().map(|(_, email)| *email).collect();
    sqlx::query(
        "INSERT INTO credential_emails (id, school_id, student_id, job_id, email, new_password_needed)
         SELECT gen_random_uuid(), $1, u.student_id, $2, u.email, $3
         FROM unnest($4::uuid[], $5::text[]) AS u(student_id, email)
         ON CONFLICT (student_id) DO NOTHING",
    )
    .bind(school_id)
    .bind(job_id)
    .bind(new_password_needed)
    .bind(&students)
    .bind(&emails)
    .execute(conn)
    .await?;
    Ok(())
}
