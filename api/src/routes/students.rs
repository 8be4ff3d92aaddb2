//! Student reads (one, lookup by `externalReferenceId`, cursor pages in a stable
//! `externalReferenceId` order) and the archive / unarchive switches, all scoped to the caller's
//! school. Another school's student is answered exactly like a missing one.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use studentsync::domain::StudentView;
use studentsync::store::{self, students};
use utoipa::ToSchema;

use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Caller, PathId, QueryParams};
use crate::routes::jobs::{DEFAULT_LIMIT, MAX_LIMIT};

/// `GET /v3/students`: a page (with `nextCursor`), or the result of an
/// `externalReferenceId` lookup (zero or one student, no `nextCursor`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StudentList {
    Page(StudentPage),
    Lookup(StudentLookup),
}

/// A page of students, ordered by `externalReferenceId` (a stable order).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StudentPage {
    pub students: Vec<StudentView>,
    /// Pass as `cursor` for the next page; `null` on the last page. Always
    /// present in a page (that is what tells it from a lookup).
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The student with the `externalReferenceId` asked for, if any. Never has
/// `nextCursor` (documented as `additionalProperties: false`, so that a page
/// and a lookup are told apart by the `oneOf`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StudentLookup {
    /// Zero or one student.
    pub students: Vec<StudentView>,
}

/// One student of the caller's school.
#[utoipa::path(
    get,
    path = "/v3/students/{studentId}",
    tag = "students",
    operation_id = "getStudent",
    params(("studentId" = String, Path, description = "The student id (a UUID).")),
    responses(
        (status = 200, description = "The student.", body = StudentView),
        (status = 404, description = "`not_found`: no such student in this school.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn get_student(
    State(state): State<AppState>,
    Caller(principal): Caller,
    PathId(student_id): PathId,
) -> Result<Json<StudentView>, ApiError> {
    let row = students::get(&state.pool, principal.school_id, student_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(row.into()))
}

/// The school's students: a lookup by `externalReferenceId`, or pages.
///
/// With `externalReferenceId` the answer is `{"students": [...]}` with zero or
/// one student (`limit` and `cursor` are checked but do not apply). Otherwise it
/// is a page ordered by `externalReferenceId` with `nextCursor` (`null` on the last page).
/// Archived students are included unless `archived` filters them.
#[utoipa::path(
    get,
    path = "/v3/students",
    tag = "students",
    operation_id = "listStudents",
    params(
        ("externalReferenceId" = Option<String>, Query, description = "Look up the student with this key."),
        ("archived" = Option<bool>, Query, description = "`true` or `false`: only archived or only active students."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1 to 500 (default 100)."),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page (opaque, URL-safe)."),
    ),
    responses(
        (status = 200, description = "Students.", body = StudentList),
        (status = 422, description = "`invalid_request`: `limit` outside 1–500 or not a number, a cursor this service did not make, or `archived` other than true/false.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn list_students(
    State(state): State<AppState>,
    Caller(principal): Caller,
    params: QueryParams,
) -> Result<Json<StudentList>, ApiError> {
    let archived = params.archived()?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = params
        .get("cursor")
        .map(|raw| {
            store::decode_cursor(raw)
                .filter(|reference| is_reference_cursor(reference))
                .ok_or_else(|| ApiError::invalid_request("`cursor` is not a valid cursor"))
        })
        .transpose()?;
    let school_id = principal.school_id;

    if let Some(reference) = params.get("externalReferenceId") {
        let found =
            students::find_by_external_reference(&state.pool, school_id, reference, archived)
                .await?;
        return Ok(Json(StudentList::Lookup(StudentLookup {
            students: found.into_iter().map(StudentView::from).collect(),
        })));
    }

    let mut rows = students::list(
        &state.pool,
        school_id,
        archived,
        limit + 1,
        after.as_deref(),
    )
    .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last())
        .flatten()
        .map(|last| store::encode_cursor(&last.external_reference_id));
    Ok(Json(StudentList::Page(StudentPage {
        students: rows.into_iter().map(StudentView::from).collect(),
        next_cursor,
    })))
}

/// Whether a decoded cursor can be an `externalReferenceId` (what the list's
/// cursors hold): at most 64 characters, no NUL (Postgres text cannot hold it).
fn is_reference_cursor(reference: &str) -> bool {
    reference.chars().count() <= 64 && !reference.contains('\0')
}

/// Archive a student (idempotent; `updatedAt` moves only when the flag changes).
#[utoipa::path(
    post,
    path = "/v3/students/{studentId}/archive",
    tag = "students",
    operation_id = "archiveStudent",
    params(("studentId" = String, Path, description = "The student id (a UUID).")),
    responses(
        (status = 200, description = "The student, archived.", body = StudentView),
        (status = 404, description = "`not_found`: no such student in this school.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn archive_student(
    state: State<AppState>,
    caller: Caller,
    id: PathId,
) -> Result<Json<StudentView>, ApiError> {
    set_archived(state, caller, id, true).await
}

/// Unarchive a student (idempotent).
#[utoipa::path(
    post,
    path = "/v3/students/{studentId}/unarchive",
    tag = "students",
    operation_id = "unarchiveStudent",
    params(("studentId" = String, Path, description = "The student id (a UUID).")),
    responses(
        (status = 200, description = "The student, not archived.", body = StudentView),
        (status = 404, description = "`not_found`: no such student in this school.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("apiKey" = []))
)]
pub async fn unarchive_student(
    state: State<AppState>,
    caller: Caller,
    id: PathId,
) -> Result<Json<StudentView>, ApiError> {
    set_archived(state, caller, id, false).await
}

async fn set_archived(
    State(state): State<AppState>,
    Caller(principal): Caller,
    PathId(student_id): PathId,
    archived: bool,
) -> Result<Json<StudentView>, ApiError> {
    let row = students::set_archived(&state.pool, principal.school_id, student_id, archived)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(row.into()))
}
