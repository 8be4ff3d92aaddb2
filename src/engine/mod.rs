//! The upsert engine: applies one batch message to Postgres in ONE transaction —
//! lock the job row, read the matching students, classify every item, insert and
//! update with set-based statements (an update writes only the row version it
//! read), write the credential-email outbox rows and the job's results, commit. A batch whose job is already finished is
//! left alone, which makes redelivery harmless.

pub mod classify;
pub mod isolate;
pub mod sql;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::error::item_pointer;
use crate::domain::{ItemError, ItemErrorCode, StudentRow, UpsertCommand};
use crate::job::{BatchItem, BatchMessage, CredentialsEmail, ItemResult, ItemStatus, JobView};
use crate::store::jobs;
use classify::{NewStudent, Plan, classify};
use isolate::Mode;
use sql::{Matched, RowVersion};

/// What became of a batch message.
#[derive(Debug)]
pub enum Outcome {
    /// Applied now; the finished job body.
    Completed(Box<JobView>),
    /// The job was already completed or failed (a redelivery): nothing done.
    AlreadyFinished,
    /// No such job row (its publish was reported as failed to the client).
    UnknownJob,
}

/// Transaction attempts when Postgres reports a deadlock or serialization failure.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Applies a batch, retrying transaction conflicts. The batch is first applied
/// without savepoints; if the database rejects some row's data, the transaction is
/// rolled back and the batch applied again isolating the rejected rows (see
/// [`isolate`]). Any other error is returned: the transaction was rolled back and
/// nothing of the batch is stored.
#[tracing::instrument(skip_all, fields(job_id = %message.job_id, items = message.items.len()))]
pub async fn apply_batch(pool: &PgPool, message: &BatchMessage) -> Result<Outcome, sqlx::Error> {
    jobs::mark_processing(pool, message.job_id).await?;
    let mut mode = Mode::Direct;
    let mut attempt = 1;
    loop {
        match apply_once(pool, message, mode).await {
            Err(error) if mode == Mode::Direct && isolate::is_data_error(&error) => {
                tracing::info!(%error, "the database rejected a row; applying the batch again, isolating it");
                mode = Mode::Isolating;
            }
            Err(error) if is_conflict(&error) && attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(%error, attempt, "transaction conflict; retrying");
                tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// Deadlock (40P01) or serialization failure (40001).
fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

async fn apply_once(
    pool: &PgPool,
    message: &BatchMessage,
    mode: Mode,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    match jobs::lock_status(&mut tx, message.job_id).await? {
        None => return Ok(Outcome::UnknownJob),
        Some(status) if status.is_terminal() => return Ok(Outcome::AlreadyFinished),
        Some(_) => {}
    }
    let results = apply_items(&mut tx, message, mode).await?;
    let view = jobs::complete(&mut tx, message.job_id, results).await?;
    tx.commit().await?;
    Ok(Outcome::Completed(Box::new(view)))
}

/// An item classified as a create: its input, the new student's id and data.
type PlannedCreate<'a> = (usize, &'a UpsertCommand, Uuid, NewStudent);

/// An item classified as an update: its input, the merged row and the version of
/// the stored row it was merged with.
type PlannedUpdate<'a> = (usize, &'a UpsertCommand, StudentRow, RowVersion);

/// The per-item work of one batch, inside the caller's transaction. Returns one
/// result per input item, in input order.
///
/// The stored rows are first read without a lock: most items of a sync are
/// unchanged, and locking them would write every one of their pages. Items are
/// classified against that read; a create can then lose a race against a
/// concurrent batch creating the same key, and an update finds its row changed by
/// another transaction since the read (`update_students` writes only the version
/// read). The losers are read again, locked this time, and classified again:
/// locked rows cannot change, so a second round settles them.
async fn apply_items(
    conn: &mut PgConnection,
    message: &BatchMessage,
    mode: Mode,
) -> Result<Vec<ItemResult>, sqlx::Error> {
    let options = message.options;
    let write = !options.dry_run;
    let mut results: Vec<Option<ItemResult>> = vec![None; message.items.len()];
    let mut pending: Vec<(usize, &UpsertCommand)> = Vec::with_capacity(message.items.len());
    // Rejected items whose key is valid: still checked against the stored data.
    let mut matchable: Vec<(usize, &str, &[String])> = Vec::new();
    for (index, item) in message.items.iter().enumerate() {
        match item {
            BatchItem::Upsert(command) => pending.push((index, command)),
            BatchItem::Rejected {
                external_reference_id,
                errors,
                lacks_on_create,
            } => {
                if let (Some(key), Some(lacks)) = (external_reference_id, lacks_on_create) {
                    matchable.push((index, key.as_str(), lacks.as_slice()));
                }
                results[index] = Some(ItemResult::failed(
                    index,
                    external_reference_id.clone(),
                    errors.clone(),
                ))
            }
        }
    }

    let keys: Vec<&str> = pending
        .iter()
        .map(|(_, command)| command.external_reference_id.as_str())
        .chain(matchable.iter().map(|(_, key, _)| *key))
        .collect();
    let mut stored: HashMap<String, Matched> =
        sql::load_matches(conn, message.school_id, &keys, false)
            .await?
            .into_iter()
            .map(|matched| (matched.row.external_reference_id.clone(), matched))
            .collect();

    for (index, key, lacks) in matchable {
        let row = stored.get(key).map(|matched| &matched.row);
        let found = classify::stored_data_errors(index, row, lacks, options.allow_unarchive);
        if let Some(Some(errors)) = results[index].as_mut().map(|r| r.errors.as_mut()) {
            errors.extend(found);
            // Hostile items may already be at the cap of reported errors.
            crate::domain::validate::cap_errors(errors);
        }
    }

    let mut recipients: Vec<(Uuid, String)> = Vec::new();
    for _round in 0..4 {
        if pending.is_empty() {
            break;
        }
        let (creates, mut updates) =
            plan_round(&pending, &stored, options.allow_unarchive, &mut results);
        let created = write_creates(conn, message, mode, &creates, &mut results).await?;
        let mut lost = settle_creates(&creates, &created, message, &mut results, &mut recipients);
        if write {
            lost.extend(write_updates(conn, &mut updates, mode, &mut results).await?);
        }
        if !lost.is_empty() {
            let lost_keys: Vec<&str> = lost
                .iter()
                .map(|(_, command)| command.external_reference_id.as_str())
                .collect();
            for matched in sql::load_matches(conn, message.school_id, &lost_keys, true).await? {
                stored.insert(matched.row.external_reference_id.clone(), matched);
            }
        }
        pending = lost;
    }

    if write {
        let recipients: Vec<(Uuid, &str)> = recipients
            .iter()
            .map(|(id, email)| (*id, email.as_str()))
            .collect();
        let new_password_needed = options.on_student_created.new_password_needed;
        sql::insert_credential_emails(
            conn,
            message.school_id,
            message.job_id,
            &recipients,
            new_password_needed,
        )
        .await?;
    }

    Ok(results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            result.unwrap_or_else(|| {
                // Only reachable if a key kept losing races for every round
                // (rows re-read in a later round are locked, so they cannot).
                ItemResult::failed(index, None, Vec::new())
            })
        })
        .collect())
}

/// Classifies the pending items against the stored rows: the result of every
/// update, unchanged or failed item goes to `results` now; creates and updates are
/// returned to be written.
fn plan_round<'a>(
    pending: &[(usize, &'a UpsertCommand)],
    stored: &HashMap<String, Matched>,
    allow_unarchive: bool,
    results: &mut [Option<ItemResult>],
) -> (Vec<PlannedCreate<'a>>, Vec<PlannedUpdate<'a>>) {
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    for &(index, command) in pending {
        let existing = stored.get(&command.external_reference_id);
        let plan = classify(
            index,
            command,
            existing.map(|matched| &matched.row),
            allow_unarchive,
        );
        let result = match plan {
            Plan::Create(student) => {
                creates.push((index, command, Uuid::new_v4(), student));
                continue;
            }
            Plan::Update {
                row,
                changed,
                unarchived,
            } => {
                let Some(matched) = existing else {
                    unreachable!("classify plans an update only for a stored row");
                };
                let result = ItemResult {
                    changed_fields: Some(changed.iter().map(|f| f.name().to_string()).collect()),
                    unarchived: unarchived.then_some(true),
                    ..success(index, command, ItemStatus::Updated, Some(row.id))
                };
                updates.push((index, command, *row, matched.version.clone()));
                result
            }
            Plan::Unchanged { row } => success(index, command, ItemStatus::Unchanged, Some(row.id)),
            Plan::Fail(errors) => {
                ItemResult::failed(index, Some(command.external_reference_id.clone()), errors)
            }
        };
        results[index] = Some(result);
    }
    (creates, updates)
}

/// Inserts the planned creates; returns key → id of the students created (in a
/// dry run, of all of them, as predicted, with nothing written). Rows the
/// database refuses fail in `results`.
async fn write_creates(
    conn: &mut PgConnection,
    message: &BatchMessage,
    mode: Mode,
    creates: &[PlannedCreate<'_>],
    results: &mut [Option<ItemResult>],
) -> Result<HashMap<String, Uuid>, sqlx::Error> {
    let options = message.options;
    if options.dry_run {
        return Ok(creates
            .iter()
            .map(|(_, _, id, student)| (student.external_reference_id.clone(), *id))
            .collect());
    }
    let rows: Vec<(Uuid, &NewStudent)> = creates
        .iter()
        .map(|(_, _, id, student)| (*id, student))
        .collect();
    let password_change = options.on_student_created.new_password_needed;
    let school_id = message.school_id;
    let inserted = isolate::isolate(conn, &rows, mode, |conn, rows| {
        Box::pin(sql::insert_students(conn, school_id, rows, password_change))
    })
    .await?;
    for position in inserted.rejected {
        let (index, command, _, _) = creates[position];
        results[index] = Some(rejected_by_database(index, command));
    }
    Ok(inserted.accepted.into_iter().collect())
}

/// Records the result of every create (and whom to send credentials); returns
/// the items whose key was created concurrently by another batch (lost the race),
/// to be read and planned again.
fn settle_creates<'a>(
    creates: &[PlannedCreate<'a>],
    created: &HashMap<String, Uuid>,
    message: &BatchMessage,
    results: &mut [Option<ItemResult>],
    recipients: &mut Vec<(Uuid, String)>,
) -> Vec<(usize, &'a UpsertCommand)> {
    let options = message.options;
    let mut lost = Vec::new();
    for &(index, command, _, ref student) in creates {
        if results[index].is_some() {
            continue; // rejected by the database
        }
        let Some(student_id) = created.get(&student.external_reference_id) else {
            lost.push((index, command));
            continue;
        };
        let mut result = success(
            index,
            command,
            ItemStatus::Created,
            (!options.dry_run).then_some(*student_id),
        );
        if options.on_student_created.send_credentials {
            result.credentials_email = Some(match &student.email {
                Some(email) => {
                    recipients.push((*student_id, email.clone()));
                    CredentialsEmail::Queued
                }
                None => CredentialsEmail::SkippedNoEmail,
            });
        }
        results[index] = Some(result);
    }
    lost
}

/// Writes the planned updates, in key order (concurrent batches then lock shared
/// rows in the same order). Rows the database refuses fail in `results`; returns
/// the items whose row changed since it was read, to be read and planned again.
async fn write_updates<'a>(
    conn: &mut PgConnection,
    updates: &mut [PlannedUpdate<'a>],
    mode: Mode,
    results: &mut [Option<ItemResult>],
) -> Result<Vec<(usize, &'a UpsertCommand)>, sqlx::Error> {
    updates.sort_unstable_by(|a, b| a.2.external_reference_id.cmp(&b.2.external_reference_id));
    let rows: Vec<(&StudentRow, &RowVersion)> = updates
        .iter()
        .map(|(_, _, row, version)| (row, version))
        .collect();
    let updated = isolate::isolate(conn, &rows, mode, |conn, rows| {
        Box::pin(sql::update_students(conn, rows))
    })
    .await?;
    let written: HashSet<Uuid> = updated.accepted.into_iter().collect();
    let rejected: HashSet<usize> = updated.rejected.into_iter().collect();
    let mut changed_since_read = Vec::new();
    for (position, (index, command, row, _)) in updates.iter().enumerate() {
        if rejected.contains(&position) {
            results[*index] = Some(rejected_by_database(*index, command));
        } else if !written.contains(&row.id) {
            // Planned as updated, but nothing was written: decided again next round.
            results[*index] = None;
            changed_since_read.push((*index, *command));
        }
    }
    Ok(changed_since_read)
}

/// The result of an item whose row the database refused (see `isolate`).
fn rejected_by_database(index: usize, command: &UpsertCommand) -> ItemResult {
    let error = ItemError::new(
        ItemErrorCode::InvalidFormat,
        item_pointer(index),
        "the database rejected this student's data",
    );
    ItemResult::failed(
        index,
        Some(command.external_reference_id.clone()),
        vec![error],
    )
}

fn success(
    index: usize,
    command: &UpsertCommand,
    status: ItemStatus,
    student_id: Option<Uuid>,
) -> ItemResult {
    ItemResult {
        input_index: index,
        external_reference_id: Some(command.external_reference_id.clone()),
        status,
        student_id,
        changed_fields: None,
        unarchived: None,
        credentials_email: None,
        errors: None,
    }
}
