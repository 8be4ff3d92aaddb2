//! Property test (proptest) of the request validator against the real write
//! path: arbitrary batch items — strings with control characters, unusual
//! Unicode and lengths around every limit, wrong JSON types, unknown fields,
//! items that are not objects — go through `parse_envelope` and
//! `validate_items` (no panic, bounded time, well-formed errors), and every item
//! validation accepts is applied by the real engine (`engine::apply_batch`) to
//! Postgres twice over (creates, then updates of the same keys) and must read
//! back exactly as a model of the contract predicts.
//!
//! Each case uses a fresh school, so keys never collide between cases. The case
//! count is bounded (`PROPTEST_CASES` overrides it) to keep the run well under
//! a minute.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sqlx::PgPool;
use studentsync::domain::validate::{self, MAX_ITEM_ERRORS};
use studentsync::domain::{ItemErrorCode, StudentField, StudentPatch, StudentRow};
use studentsync::engine::classify::required_on_create;
use studentsync::engine::{self, Outcome};
use studentsync::job::{BatchItem, BatchMessage, BatchOptions, ItemStatus};
use studentsync::store::{jobs, keys, students};
use uuid::Uuid;

use crate::helpers::*;

/// Cases when `PROPTEST_CASES` is not set.
const CASES: u32 = 128;
/// The most one validation of a (small) batch may take, even unoptimised.
const VALIDATION_BUDGET: Duration = Duration::from_millis(500);

// ---- generators -------------------------------------------------------------------

/// Characters that break naive code: C0 controls (NUL included), DEL and C1,
/// invisible and bidirectional marks, combining marks, astral characters,
/// JSON and pointer metacharacters, and Unicode whitespace.
fn nasty_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => proptest::char::range('a', 'z'),
        2 => Just(' '),
        2 => prop::sample::select(vec![
            '\0', '\u{1}', '\u{8}', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{1b}', '\u{1f}',
            '\u{7f}', '\u{85}', '\u{9f}', '\u{a0}', '\u{200b}', '\u{200d}', '\u{202e}',
            '\u{2028}', '\u{3000}', '\u{feff}', '\u{301}', 'é', 'ß', 'İ', '\u{1f600}',
            '\u{10ffff}', '"', '\\', '/', '~', '@', '.', ':', '%', '\'',
        ]),
        1 => any::<char>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(nasty_char(), 0..12).prop_map(String::from_iter),
        2 => "[a-z]{1,12}@[a-z]{1,8}\\.(org|edu)",
        2 => "(http|https|HTTP|ftp)://[a-z]{1,10}\\.[a-z]{2,3}(/[a-z0-9._~%-]{0,20})?",
        // Around every length limit, in 1-, 2- and 4-byte characters.
        2 => (
            prop::sample::select(vec![20usize, 30, 35, 64, 100, 128, 160, 255]),
            -1i32..=1,
            prop::sample::select(vec!["x", "é", "\u{1f600}"]),
        )
            .prop_map(|(limit, delta, unit)| unit.repeat((limit as i32 + delta) as usize)),
        1 => prop::collection::vec(nasty_char(), 0..300).prop_map(String::from_iter),
    ]
}

/// Any JSON value, a little nested.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        6 => text().prop_map(Value::String),
        2 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        1 => any::<bool>().prop_map(Value::Bool),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,4}", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Text a field accepts, Unicode and the allowed controls (tab, CR, LF) included.
fn good_text(field: StudentField) -> BoxedStrategy<String> {
    match field {
        StudentField::Email => "[a-z0-9._+-]{1,12}@[a-z]{1,8}\\.(org|edu|xn--p1ai)".boxed(),
        StudentField::PhotoUrl => {
            "(http|https|HTTPS)://[a-z0-9]{1,10}\\.[a-z]{2,3}(/[a-zA-Z0-9._~%-]{0,20})?".boxed()
        }
        _ => prop_oneof![
            "[A-Za-z][A-Za-z .'-]{0,12}",
            "[a-z\u{e9}\u{df}\u{130} \t\r\n\u{7f}\u{85}\u{200b}\u{202e}\u{1f600}\u{10ffff}]{0,3}[a-z\u{1f600}][a-z\u{e9}\u{1f600} ]{0,8}",
        ]
        .boxed(),
    }
}

/// The value of a string field: mostly one it accepts, sometimes hostile text,
/// null or anything at all.
fn field_value(field: StudentField) -> BoxedStrategy<Value> {
    prop_oneof![
        20 => good_text(field).prop_map(Value::String),
        3 => text().prop_map(Value::String),
        1 => Just(Value::Null),
        1 => value(),
    ]
    .boxed()
}

fn tags_value() -> BoxedStrategy<Value> {
    let tag = prop_oneof![
        30 => good_text(StudentField::Tags).prop_map(Value::String),
        2 => text().prop_map(Value::String),
        1 => value(),
    ];
    prop_oneof![
        8 => prop::collection::vec(tag.clone(), 0..6).prop_map(Value::Array),
        1 => prop::collection::vec(tag, 10..25).prop_map(Value::Array),
        1 => Just(Value::Null),
        1 => value(),
    ]
    .boxed()
}

fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        // A small pool, so that rounds update what earlier rounds created and
        // batches hold duplicates.
        8 => (0..8u8).prop_map(|n| Value::String(format!("id-{n}"))),
        2 => text().prop_map(Value::String),
        1 => value(),
    ]
}

fn item() -> impl Strategy<Value = Value> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = StudentField::ALL
        .into_iter()
        .map(|field| {
            let presence = match field {
                StudentField::FirstName | StudentField::LastName => 0.8,
                _ => 0.25,
            };
            let value = if field == StudentField::Tags {
                tags_value()
            } else {
                field_value(field)
            };
            prop::option::weighted(
                presence,
                value.prop_map(move |v| (field.name().to_string(), v)),
            )
            .boxed()
        })
        .collect();
    let object = (
        prop::option::weighted(0.95, id_value()),
        fields,
        prop::option::weighted(0.1, ("[a-zA-Z/~]{1,8}", value())),
    )
        .prop_map(|(id, fields, unknown)| {
            let mut map = serde_json::Map::new();
            if let Some(id) = id {
                map.insert("externalReferenceId".into(), id);
            }
            for (name, value) in fields.into_iter().flatten() {
                map.insert(name, value);
            }
            if let Some((name, value)) = unknown {
                map.entry(name).or_insert(value);
            }
            Value::Object(map)
        });
    prop_oneof![19 => object, 1 => value()]
}

/// Three batches for one school: two generated ones, then the first again
/// (which must leave what the second did not touch `unchanged`).
fn rounds() -> impl Strategy<Value = Vec<Vec<Value>>> {
    let batch = || prop::collection::vec(item(), 1..7);
    (batch(), batch()).prop_map(|(first, second)| vec![first.clone(), second, first])
}

// ---- the model ----------------------------------------------------------------------

/// The data fields of a stored student.
#[derive(Debug, Clone, Default, PartialEq)]
struct Shape {
    external_reference_type: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    photo_url: Option<String>,
    file_number: Option<String>,
    curriculum_name: Option<String>,
    company: Option<String>,
    badge_id: Option<String>,
    tags: Option<Vec<String>>,
}

impl Shape {
    fn of(row: &StudentRow) -> Self {
        Self {
            external_reference_type: row.external_reference_type.clone(),
            first_name: Some(row.first_name.clone()),
            last_name: Some(row.last_name.clone()),
            email: row.email.clone(),
            phone: row.phone.clone(),
            photo_url: row.photo_url.clone(),
            file_number: row.file_number.clone(),
            curriculum_name: row.curriculum_name.clone(),
            company: row.company.clone(),
            badge_id: row.badge_id.clone(),
            tags: row.tags.clone(),
        }
    }

    /// What the contract says a patch makes of this shape.
    fn patched(&self, patch: &StudentPatch) -> Self {
        Self {
            external_reference_type: patch
                .external_reference_type
                .apply(self.external_reference_type.as_ref())
                .cloned(),
            first_name: patch.first_name.apply(self.first_name.as_ref()).cloned(),
            last_name: patch.last_name.apply(self.last_name.as_ref()).cloned(),
            email: patch.email.apply(self.email.as_ref()).cloned(),
            phone: patch.phone.apply(self.phone.as_ref()).cloned(),
            photo_url: patch.photo_url.apply(self.photo_url.as_ref()).cloned(),
            file_number: patch.file_number.apply(self.file_number.as_ref()).cloned(),
            curriculum_name: patch
                .curriculum_name
                .apply(self.curriculum_name.as_ref())
                .cloned(),
            company: patch.company.apply(self.company.as_ref()).cloned(),
            badge_id: patch.badge_id.apply(self.badge_id.as_ref()).cloned(),
            tags: patch.tags.apply(self.tags.as_ref()).cloned(),
        }
    }
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

/// Checks what validation made of one batch; returns its items.
fn validate_batch(items: &[Value]) -> Result<Vec<BatchItem>, TestCaseError> {
    let started = Instant::now();
    let request = validate::parse_envelope(json!({ "students": items }))
        .map_err(|error| TestCaseError::fail(format!("envelope refused: {error}")))?;
    let validated = validate::validate_items(request.students);
    let took = started.elapsed();
    check(took < VALIDATION_BUDGET, || {
        format!("validation took {took:?}")
    })?;
    check(validated.len() == items.len(), || {
        "one result per item".into()
    })?;
    for (index, item) in validated.iter().enumerate() {
        match item {
            BatchItem::Upsert(command) => {
                let id = &command.external_reference_id;
                check(!id.contains('\0') && !id.trim().is_empty(), || {
                    format!("accepted id {id:?}")
                })?;
            }
            BatchItem::Rejected { errors, .. } => {
                check(
                    !errors.is_empty() && errors.len() <= MAX_ITEM_ERRORS,
                    || format!("item {index}: {errors:?}"),
                )?;
                let prefix = format!("/students/{index}");
                for error in errors {
                    check(
                        error.pointer == prefix || error.pointer.starts_with(&format!("{prefix}/")),
                        || format!("pointer {} of item {index}", error.pointer),
                    )?;
                }
            }
        }
    }
    Ok(validated)
}

/// How often each outcome was seen (to check that the generators reach them all).
#[derive(Default)]
struct Seen {
    created: AtomicUsize,
    updated: AtomicUsize,
    unchanged: AtomicUsize,
    required_on_create: AtomicUsize,
    rejected: AtomicUsize,
}

impl Seen {
    fn count(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One case: every round validated, applied by the engine, and read back.
async fn run_case(
    pool: &PgPool,
    rounds: Vec<Vec<Value>>,
    seen: &Seen,
) -> Result<(), TestCaseError> {
    let fail = |error: sqlx::Error| TestCaseError::fail(format!("database: {error}"));
    let (school_id, _) = keys::create_school(pool, "property").await.map_err(fail)?;
    let mut model: HashMap<String, Shape> = HashMap::new();
    for (round, items) in rounds.into_iter().enumerate() {
        let validated = validate_batch(&items)?;
        let job_id = Uuid::new_v4();
        let new_job = jobs::NewJob {
            id: job_id,
            school_id,
            dry_run: false,
            total: validated.len(),
            idempotency_key: None,
            body_fingerprint: &[],
        };
        jobs::record(pool, &new_job).await.map_err(fail)?;
        let message = BatchMessage {
            job_id,
            school_id,
            options: BatchOptions::default(),
            items: validated.clone(),
        };
        // The message travels as JSON: it must survive the trip.
        let wire = serde_json::to_vec(&message).expect("the message serialises");
        let message: BatchMessage = serde_json::from_slice(&wire).expect("and deserialises");
        let view = match engine::apply_batch(pool, &message).await {
            Ok(Outcome::Completed(view)) => view,
            Ok(other) => return Err(TestCaseError::fail(format!("round {round}: {other:?}"))),
            Err(error) => {
                return Err(TestCaseError::fail(format!(
                    "round {round}: accepted input could not be stored: {error}\n{items:#?}"
                )));
            }
        };
        let results = view.results.expect("a completed job has results");
        check(results.len() == validated.len(), || {
            "one result per item".into()
        })?;

        for (index, (item, result)) in validated.iter().zip(&results).enumerate() {
            check(result.input_index == index, || {
                "results in input order".into()
            })?;
            match item {
                BatchItem::Rejected {
                    external_reference_id,
                    errors,
                    lacks_on_create,
                } => {
                    // Validation's errors, then what only the stored data
                    // reveals: a valid, unique key that matches nothing and
                    // lacks a name also gets `required_on_create`.
                    let mut expected = errors.clone();
                    if let (Some(id), Some(lacks)) = (external_reference_id, lacks_on_create)
                        && !model.contains_key(id)
                    {
                        expected.extend(lacks.iter().map(|f| required_on_create(index, f)));
                    }
                    validate::cap_errors(&mut expected);
                    check(
                        result.status == ItemStatus::Failed
                            && result.errors.as_ref() == Some(&expected),
                        || format!("round {round} item {index}: expected {expected:?}: {result:?}"),
                    )?;
                    Seen::count(&seen.rejected);
                }
                BatchItem::Upsert(command) => {
                    let id = &command.external_reference_id;
                    match model.get(id) {
                        None => {
                            let created = Shape::default().patched(&command.patch);
                            if created.first_name.is_some() && created.last_name.is_some() {
                                check(result.status == ItemStatus::Created, || {
                                    format!(
                                        "round {round} item {index} should be created: {result:?}"
                                    )
                                })?;
                                model.insert(id.clone(), created);
                                Seen::count(&seen.created);
                            } else {
                                let only_required = result
                                    .errors
                                    .iter()
                                    .flatten()
                                    .all(|e| e.code == ItemErrorCode::RequiredOnCreate);
                                check(
                                    result.status == ItemStatus::Failed && only_required,
                                    || format!("round {round} item {index}: {result:?}"),
                                )?;
                                Seen::count(&seen.required_on_create);
                            }
                        }
                        Some(current) => {
                            let updated = current.patched(&command.patch);
                            let expected = if &updated == current {
                                ItemStatus::Unchanged
                            } else {
                                ItemStatus::Updated
                            };
                            check(result.status == expected, || {
                                format!(
                                    "round {round} item {index}: expected {expected:?}: {result:?}"
                                )
                            })?;
                            Seen::count(if expected == ItemStatus::Updated {
                                &seen.updated
                            } else {
                                &seen.unchanged
                            });
                            model.insert(id.clone(), updated);
                        }
                    }
                }
            }
        }

        // Everything the model holds reads back exactly.
        for (id, expected) in &model {
            let row = students::find_by_external_reference(pool, school_id, id, None)
                .await
                .map_err(fail)?;
            let Some(row) = row else {
                return Err(TestCaseError::fail(format!("{id:?} was not stored")));
            };
            check(&Shape::of(&row) == expected, || {
                format!(
                    "{id:?} reads back as {:?}, expected {expected:?}",
                    Shape::of(&row)
                )
            })?;
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM students WHERE school_id = $1")
            .bind(school_id)
            .fetch_one(pool)
            .await
            .map_err(fail)?;
        check(stored as usize == model.len(), || {
            format!("{stored} rows stored, the model has {}", model.len())
        })?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_items_are_stored_and_read_back_as_sent() {
    let app = spawn_app_with(TestOptions::default().workers(0)).await;
    let config = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default()
    } else {
        Config::with_cases(CASES)
    };
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        max_shrink_iters: 500,
        ..config
    });
    let handle = tokio::runtime::Handle::current();
    let pool = app.pool.clone();
    let seen = Seen::default();
    let started = Instant::now();
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&rounds(), |case| {
            handle.block_on(run_case(&pool, case, &seen))
        })
    });
    let counts = [
        ("created", &seen.created),
        ("updated", &seen.updated),
        ("unchanged", &seen.unchanged),
        ("required_on_create", &seen.required_on_create),
        ("rejected by validation", &seen.rejected),
    ]
    .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)));
    eprintln!(
        "property: {} cases in {:?}: {counts:?}",
        runner.config().cases,
        started.elapsed()
    );
    if let Err(error) = outcome {
        panic!("{error}");
    }
    // The generators reach every outcome (else the property says little).
    for (name, count) in counts {
        assert!(count > 0, "no item was {name}: {counts:?}");
    }
    app.cleanup().await;
}
