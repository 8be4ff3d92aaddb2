//! Validation of a batch-upsert request, in two steps.
//!
//! [`parse_envelope`] checks the shape of the whole request (`students` an array of
//! 1 to [`MAX_BATCH`] items, `options` well-formed, no unknown top-level field); a
//! failure there rejects the request as a whole (422). [`validate_items`] then checks
//! every item on its own against the field table of API.md, reporting *all* of an
//! item's errors in a deterministic order (`externalReferenceId`, then the fields in
//! [`StudentField::ALL`] order, then unknown fields by key), and finally fails every
//! item whose valid `externalReferenceId` is shared with another item
//! (`duplicate_in_batch`). Values are kept as sent (no trimming); only tags are
//! de-duplicated. Strings are moved out of the JSON values, never cloned.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::error::{escape_pointer_token, field_pointer, item_pointer};
use super::{ItemError, ItemErrorCode, Patch, StudentField, StudentPatch, UpsertCommand};
use crate::job::{BatchItem, BatchOptions};

/// The most items one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// The most distinct tags one student may have.
const MAX_TAGS: usize = 15;

/// The most errors reported for one item (or for one envelope). A well-meant
/// item has far fewer (every field and 16 bad tags give about 60); only hostile
/// input (thousands of unknown fields or non-string tags) reaches it. Without
/// the cap a 5 MiB body of `[0,0,…]` tags would become ~200 MB of errors in
/// memory, in the queued message and in the stored results. Past the cap the
/// last error's detail says that further errors were left out.
pub const MAX_ITEM_ERRORS: usize = 100;

const ERRORS_LEFT_OUT: &str = "; further errors of this item are not listed";

const EXTERNAL_REFERENCE_ID: &str = "externalReferenceId";

/// A request whose envelope is valid; the items are not validated yet.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    pub students: Vec<Value>,
    pub options: BatchOptions,
}

/// Why a request is rejected as a whole. `Display` gives a human-readable detail.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// 422 `invalid_request`: body not an object, `students` missing or not an
    /// array, `options` of the wrong shape, or an unknown top-level field. `errors`
    /// point at the offending members (`/students`, `/options/dryRun`, `/foo`).
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: Vec<ItemError>,
    },
    /// 422 `batch_empty`.
    #[error("students must hold at least one item")]
    Empty,
    /// 422 `batch_too_large`.
    #[error("students holds {count} items, at most {MAX_BATCH} are allowed")]
    TooLarge { count: usize },
}

// ---------------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------------

/// Checks the request envelope and takes it apart.
pub fn parse_envelope(body: Value) -> Result<BatchRequest, EnvelopeError> {
    let Value::Object(mut body) = body else {
        return Err(EnvelopeError::Invalid {
            detail: "the request body must be a JSON object".to_string(),
            errors: vec![invalid_type(String::new(), "expected an object")],
        });
    };
    let mut errors = Vec::new();
    let students = match body.remove("students") {
        Some(Value::Array(students)) => students,
        None => {
            errors.push(required("/students".to_string()));
            Vec::new()
        }
        Some(_) => {
            errors.push(invalid_type("/students".to_string(), "expected an array"));
            Vec::new()
        }
    };
    let options = match body.remove("options") {
        None => BatchOptions::default(),
        Some(value) => parse_options(value, &mut errors),
    };
    unknown_fields(body, "", &mut errors);
    cap_errors(&mut errors);

    if !errors.is_empty() {
        let detail = errors
            .iter()
            .map(|error| format!("{}: {}", error.pointer, error.detail))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(EnvelopeError::Invalid { detail, errors });
    }
    match students.len() {
        0 => Err(EnvelopeError::Empty),
        count if count > MAX_BATCH => Err(EnvelopeError::TooLarge { count }),
        _ => Ok(BatchRequest { students, options }),
    }
}

/// `options`: an object of known keys only, booleans (no `null`) at the leaves.
fn parse_options(value: Value, errors: &mut Vec<ItemError>) -> BatchOptions {
    let mut options = BatchOptions::default();
    let Value::Object(mut map) = value else {
        errors.push(invalid_type("/options".to_string(), "expected an object"));
        return options;
    };
    option_bool(
        &mut map,
        "/options",
        "allowUnarchive",
        errors,
        &mut options.allow_unarchive,
    );
    match map.remove("onStudentCreated") {
        None => {}
        Some(Value::Object(mut nested)) => {
            let prefix = "/options/onStudentCreated";
            let created = &mut options.on_student_created;
            option_bool(
                &mut nested,
                prefix,
                "sendCredentials",
                errors,
                &mut created.send_credentials,
            );
            option_bool(
                &mut nested,
                prefix,
                "newPasswordNeeded",
                errors,
                &mut created.new_password_needed,
            );
            unknown_fields(nested, prefix, errors);
        }
        Some(_) => errors.push(invalid_type(
            "/options/onStudentCreated".to_string(),
            "expected an object",
        )),
    }
    option_bool(&mut map, "/options", "dryRun", errors, &mut options.dry_run);
    unknown_fields(map, "/options", errors);
    options
}

fn option_bool(
    map: &mut Map<String, Value>,
    prefix: &str,
    key: &str,
    errors: &mut Vec<ItemError>,
    target: &mut bool,
) {
    match map.remove(key) {
        None => {}
        Some(Value::Bool(value)) => *target = value,
        Some(_) => errors.push(invalid_type(
            format!("{prefix}/{key}"),
            "expected a boolean",
        )),
    }
}

/// One `unknown_field` error per key left in `map`, sorted by key (no more
/// than the error cap needs).
fn unknown_fields(map: Map<String, Value>, prefix: &str, errors: &mut Vec<ItemError>) {
    let mut keys: Vec<String> = map.into_iter().map(|(key, _)| key).collect();
    keys.sort_unstable();
    let room = (MAX_ITEM_ERRORS + 1).saturating_sub(errors.len());
    errors.extend(keys.into_iter().take(room).map(|key| {
        let pointer = format!("{prefix}/{}", escape_pointer_token(&key));
        ItemError::new(ItemErrorCode::UnknownField, pointer, "unknown field")
    }));
}

// ---------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------

/// Validates every item on its own, then marks duplicates. Output has exactly one
/// BatchItem per input, same order.
pub fn validate_items(students: Vec<Value>) -> Vec<BatchItem> {
    let mut checked: Vec<CheckedItem> = students
        .into_iter()
        .enumerate()
        .map(|(index, item)| check_item(index, item))
        .collect();
    mark_duplicates(&mut checked);
    for item in &mut checked {
        cap_errors(&mut item.errors);
    }
    checked
        .into_iter()
        .map(CheckedItem::into_batch_item)
        .collect()
}

/// The outcome of checking one item on its own.
struct CheckedItem {
    /// The string at `externalReferenceId`, valid or not.
    id: Option<String>,
    /// Whether `id` passed its own checks (and so takes part in duplicate detection).
    id_valid: bool,
    patch: StudentPatch,
    errors: Vec<ItemError>,
}

impl CheckedItem {
    fn into_batch_item(self) -> BatchItem {
        match self.id {
            // No errors implies the id was present and valid.
            Some(id) if self.errors.is_empty() && self.id_valid => {
                BatchItem::Upsert(UpsertCommand {
                    external_reference_id: id,
                    patch: self.patch,
                })
            }
            id => {
                let matchable = self.id_valid
                    && !self
                        .errors
                        .iter()
                        .any(|error| error.code == ItemErrorCode::DuplicateInBatch);
                let lacks_on_create = matchable.then(|| {
                    let lacks = |field: StudentField, patch: &Patch<String>| {
                        let suffix = format!("/{}", field.name());
                        let mentioned = self.errors.iter().any(|e| e.pointer.ends_with(&suffix));
                        (patch.is_keep() && !mentioned).then(|| field.name().to_string())
                    };
                    [
                        lacks(StudentField::FirstName, &self.patch.first_name),
                        lacks(StudentField::LastName, &self.patch.last_name),
                    ]
                    .into_iter()
                    .flatten()
                    .collect()
                });
                BatchItem::Rejected {
                    external_reference_id: id,
                    errors: self.errors,
                    lacks_on_create,
                }
            }
        }
    }
}

/// What a string field accepts.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// Maximum length in Unicode scalar values.
    max: usize,
    nullable: bool,
    not_blank: bool,
    format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Any,
    Email,
    HttpUrl,
}

const fn rule(max: usize, nullable: bool, not_blank: bool, format: Format) -> Rule {
    Rule {
        max,
        nullable,
        not_blank,
        format,
    }
}

const ID_RULE: Rule = rule(64, false, true, Format::Any);
const TAG_RULE: Rule = rule(35, false, true, Format::Any);

/// The slot in `patch` of a string field and its rule; `None` for `tags`.
fn string_field(
    patch: &mut StudentPatch,
    field: StudentField,
) -> Option<(&mut Patch<String>, Rule)> {
    use Format::{Any, Email, HttpUrl};
    use StudentField as F;
    Some(match field {
        F::ExternalReferenceType => (
            &mut patch.external_reference_type,
            rule(30, false, false, Any),
        ),
        F::FirstName => (&mut patch.first_name, rule(100, false, true, Any)),
        F::LastName => (&mut patch.last_name, rule(100, false, true, Any)),
        F::Email => (&mut patch.email, rule(255, true, false, Email)),
        F::Phone => (&mut patch.phone, rule(20, true, false, Any)),
        F::PhotoUrl => (&mut patch.photo_url, rule(255, true, false, HttpUrl)),
        F::FileNumber => (&mut patch.file_number, rule(128, true, false, Any)),
        F::CurriculumName => (&mut patch.curriculum_name, rule(160, true, false, Any)),
        F::Company => (&mut patch.company, rule(64, true, false, Any)),
        F::BadgeId => (&mut patch.badge_id, rule(20, true, false, Any)),
        F::Tags => return None,
    })
}

fn check_item(index: usize, item: Value) -> CheckedItem {
    let mut checked = CheckedItem {
        id: None,
        id_valid: false,
        patch: StudentPatch::default(),
        errors: Vec::new(),
    };
    let Value::Object(members) = item else {
        let error = invalid_type(item_pointer(index), "expected an object");
        checked.errors.push(error);
        return checked;
    };
    // Sort the members out in one consuming pass (cheaper than a lookup per field).
    let mut id_value = None;
    let mut values: [Option<Value>; StudentField::ALL.len()] = Default::default();
    let mut unknown = Vec::new();
    for (key, value) in members {
        if key == EXTERNAL_REFERENCE_ID {
            id_value = Some(value);
        } else if let Some(slot) = StudentField::ALL
            .iter()
            .position(|field| field.name() == key)
        {
            values[slot] = Some(value);
        } else {
            unknown.push(key);
        }
    }
    let errors = &mut checked.errors;

    let id_pointer = || field_pointer(index, EXTERNAL_REFERENCE_ID);
    match id_value {
        None => errors.push(required(id_pointer())),
        Some(Value::String(id)) => {
            checked.id_valid = check_string(&id, ID_RULE, id_pointer, errors);
            checked.id = Some(id);
        }
        Some(other) => {
            string_patch(other, ID_RULE, id_pointer, errors);
        }
    }

    for (field, value) in StudentField::ALL.into_iter().zip(values) {
        let Some(value) = value else { continue };
        let pointer = || field_pointer(index, field.name());
        match string_field(&mut checked.patch, field) {
            Some((slot, rule)) => *slot = string_patch(value, rule, pointer, errors),
            None => checked.patch.tags = tags_patch(index, value, errors),
        }
    }

    unknown.sort_unstable();
    let room = (MAX_ITEM_ERRORS + 1).saturating_sub(errors.len());
    errors.extend(unknown.iter().take(room).map(|key| {
        ItemError::new(
            ItemErrorCode::UnknownField,
            field_pointer(index, key),
            "unknown field",
        )
    }));
    checked
}

/// The patch of a present string field (`Keep` when it has errors).
fn string_patch(
    value: Value,
    rule: Rule,
    pointer: impl Fn() -> String,
    errors: &mut Vec<ItemError>,
) -> Patch<String> {
    match value {
        Value::Null if rule.nullable => Patch::Clear,
        Value::Null => {
            errors.push(ItemError::new(
                ItemErrorCode::NotNullable,
                pointer(),
                "must not be null",
            ));
            Patch::Keep
        }
        Value::String(text) => {
            if check_string(&text, rule, pointer, errors) {
                Patch::Set(text)
            } else {
                Patch::Keep
            }
        }
        _ => {
            errors.push(invalid_type(pointer(), "expected a string"));
            Patch::Keep
        }
    }
}

/// Checks one string against `rule`, pushing its errors; true when it has none.
/// Control characters are reported alongside a blank/length error; the format is
/// only checked when nothing else is wrong.
fn check_string(
    text: &str,
    rule: Rule,
    pointer: impl Fn() -> String,
    errors: &mut Vec<ItemError>,
) -> bool {
    let before = errors.len();
    if has_control_characters(text) {
        let detail = "contains control characters";
        errors.push(ItemError::new(
            ItemErrorCode::InvalidCharacters,
            pointer(),
            detail,
        ));
    }
    if rule.not_blank && is_blank(text) {
        errors.push(ItemError::new(
            ItemErrorCode::Blank,
            pointer(),
            "must not be blank",
        ));
    } else if is_too_long(text, rule.max) {
        let detail = format!("at most {} characters", rule.max);
        errors.push(ItemError::new(ItemErrorCode::TooLong, pointer(), detail));
    }
    if errors.len() == before {
        let problem = match rule.format {
            Format::Any => None,
            Format::Email => (!is_email(text)).then_some("not a valid email address"),
            Format::HttpUrl => (!is_http_url(text)).then_some("must be an absolute http(s) URL"),
        };
        if let Some(detail) = problem {
            errors.push(ItemError::new(
                ItemErrorCode::InvalidFormat,
                pointer(),
                detail,
            ));
        }
    }
    errors.len() == before
}

/// `tags`: `null` clears; an array of strings is checked one by one, de-duplicated
/// (first occurrence kept) and limited to [`MAX_TAGS`] distinct tags.
fn tags_patch(index: usize, value: Value, errors: &mut Vec<ItemError>) -> Patch<Vec<String>> {
    let items = match value {
        Value::Null => return Patch::Clear,
        Value::Array(items) => items,
        _ => {
            let pointer = field_pointer(index, "tags");
            errors.push(invalid_type(pointer, "expected an array of strings"));
            return Patch::Keep;
        }
    };
    let before = errors.len();
    let mut tags = Vec::with_capacity(items.len());
    for (position, item) in items.into_iter().enumerate() {
        if errors.len() > MAX_ITEM_ERRORS {
            // Past the cap: the patch is rejected anyway, stop collecting.
            break;
        }
        let pointer = || format!("{}/{position}", field_pointer(index, "tags"));
        match item {
            Value::String(tag) => {
                check_string(&tag, TAG_RULE, pointer, errors);
                tags.push(tag);
            }
            _ => errors.push(invalid_type(pointer(), "expected a string")),
        }
    }
    let tags = dedup(tags);
    if tags.len() > MAX_TAGS {
        let detail = format!("at most {MAX_TAGS} distinct tags");
        errors.push(ItemError::new(
            ItemErrorCode::TooMany,
            field_pointer(index, "tags"),
            detail,
        ));
    }
    if errors.len() == before {
        Patch::Set(tags)
    } else {
        Patch::Keep
    }
}

/// Removes repeated tags (byte equality), keeping the first occurrence in place.
fn dedup(tags: Vec<String>) -> Vec<String> {
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(tags.len());
        tags.iter().map(|tag| seen.insert(tag.as_str())).collect()
    };
    tags.into_iter()
        .zip(keep)
        .filter_map(|(tag, keep)| keep.then_some(tag))
        .collect()
}

/// Fails every item whose valid `externalReferenceId` another item also uses.
fn mark_duplicates(items: &mut [CheckedItem]) {
    let mut by_id: HashMap<&str, Vec<usize>> = HashMap::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        if let (true, Some(id)) = (item.id_valid, item.id.as_deref()) {
            by_id.entry(id).or_default().push(index);
        }
    }
    let mut duplicates = Vec::new();
    for group in by_id.into_values().filter(|group| group.len() > 1) {
        for &index in &group {
            let others: Vec<String> = group
                .iter()
                .filter(|&&other| other != index)
                .map(usize::to_string)
                .collect();
            let noun = if others.len() == 1 { "item" } else { "items" };
            let detail = format!(
                "{EXTERNAL_REFERENCE_ID} also used by {noun} {}",
                others.join(", ")
            );
            let pointer = field_pointer(index, EXTERNAL_REFERENCE_ID);
            duplicates.push((
                index,
                ItemError::new(ItemErrorCode::DuplicateInBatch, pointer, detail),
            ));
        }
    }
    // The id is valid, so it has no other error: its place is first.
    for (index, error) in duplicates {
        items[index].errors.insert(0, error);
    }
}

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------

/// Keeps at most [`MAX_ITEM_ERRORS`] errors; the last one kept then says that
/// more were left out. Idempotent, so errors found later (the engine adds those
/// only the stored data reveals) can be capped again.
pub fn cap_errors(errors: &mut Vec<ItemError>) {
    if errors.len() > MAX_ITEM_ERRORS {
        errors.truncate(MAX_ITEM_ERRORS);
        if let Some(last) = errors.last_mut()
            && !last.detail.ends_with(ERRORS_LEFT_OUT)
        {
            last.detail.push_str(ERRORS_LEFT_OUT);
        }
    }
}

fn required(pointer: String) -> ItemError {
    ItemError::new(ItemErrorCode::Required, pointer, "is required")
}

fn invalid_type(pointer: String, detail: &str) -> ItemError {
    ItemError::new(ItemErrorCode::InvalidType, pointer, detail)
}

/// NUL and the other C0 control characters, except tab, CR and LF.
fn has_control_characters(text: &str) -> bool {
    text.bytes()
        .any(|byte| byte < 0x20 && !matches!(byte, b'\t' | b'\n' | b'\r'))
}

/// Empty or only whitespace.
fn is_blank(text: &str) -> bool {
    text.chars().all(char::is_whitespace)
}

/// Longer than `max` Unicode scalar values.
fn is_too_long(text: &str, max: usize) -> bool {
    // A string has at most as many characters as bytes: skip counting short ones.
    text.len() > max && text.chars().count() > max
}

/// A plain address (`local@domain`): no display name, no domain literal, no
/// whitespace.
fn is_email(text: &str) -> bool {
    let options = email_address::Options::default()
        .without_display_text()
        .without_domain_literal();
    !text.chars().any(char::is_whitespace)
        && email_address::EmailAddress::parse_with_options(text, options).is_ok()
}

/// An absolute `http`/`https` URL with a host, written as `scheme://host...`.
/// The WHATWG parser of the `url` crate is lenient (it strips or encodes whitespace,
/// reads `\\` as `/`, accepts `http:///a` or `http:host`); such text would be
/// stored as sent and not be a URL, so it is refused up front.
fn is_http_url(text: &str) -> bool {
    if text.chars().any(|c| c.is_whitespace() || c == '\\') {
        return false;
    }
    let authority = ["http://", "https://"].iter().find_map(|prefix| {
        let head = text.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| &text[prefix.len()..])
    });
    if !authority.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/')) {
        return false;
    }
    url::Url::parse(text).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|host| !host.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(item: Value) -> BatchItem {
        validate_items(vec![item]).remove(0)
    }

    /// The `(code, pointer)` pairs of a rejected item.
    fn errors_of(item: &BatchItem) -> Vec<(ItemErrorCode, &str)> {
        match item {
            BatchItem::Rejected { errors, .. } => errors
                .iter()
                .map(|error| (error.code, error.pointer.as_str()))
                .collect(),
            BatchItem::Upsert(command) => panic!("expected a rejection, got {command:?}"),
        }
    }

    fn detail_of(item: &BatchItem, code: ItemErrorCode) -> String {
        match item {
            BatchItem::Rejected { errors, .. } => errors
                .iter()
                .find(|error| error.code == code)
                .map(|error| error.detail.clone())
                .unwrap_or_else(|| panic!("no {code:?} in {errors:?}")),
            BatchItem::Upsert(_) => panic!("expected a rejection"),
        }
    }

    fn command(item: BatchItem) -> UpsertCommand {
        match item {
            BatchItem::Upsert(command) => command,
            BatchItem::Rejected { errors, .. } => panic!("rejected: {errors:?}"),
        }
    }

    use ItemErrorCode as C;

    #[test]
    fn valid_item_keeps_absent_clears_null_and_sets_values_as_sent() {
        let cmd = command(one(json!({
            "externalReferenceId": " a-1 ",
            "externalReferenceType": "",
            "firstName": " Ada\t",
            "lastName": "Lovelace",
            "email": "ada@example.org",
            "phone": "  ",
            "photoUrl": null,
            "fileNumber": null,
            "company": "Analytical\r\nEngines",
            "tags": ["b", "a", "b", "c", "a"],
        })));
        assert_eq!(cmd.external_reference_id, " a-1 ");
        let patch = cmd.patch;
        assert_eq!(patch.external_reference_type, Patch::Set(String::new()));
        assert_eq!(patch.first_name, Patch::Set(" Ada\t".into()));
        assert_eq!(patch.email, Patch::Set("ada@example.org".into()));
        assert_eq!(patch.phone, Patch::Set("  ".into()));
        assert_eq!(patch.photo_url, Patch::Clear);
        assert_eq!(patch.file_number, Patch::Clear);
        assert_eq!(patch.curriculum_name, Patch::Keep);
        assert_eq!(patch.badge_id, Patch::Keep);
        assert_eq!(patch.company, Patch::Set("Analytical\r\nEngines".into()));
        let tags = ["b", "a", "c"].map(String::from).to_vec();
        assert_eq!(patch.tags, Patch::Set(tags));
    }

    #[test]
    fn null_clears_every_nullable_field() {
        let cmd = command(one(json!({
            "externalReferenceId": "a", "email": null, "phone": null, "photoUrl": null,
            "fileNumber": null, "curriculumName": null, "company": null, "badgeId": null,
            "tags": null,
        })));
        let p = cmd.patch;
        for patch in [
            &p.email,
            &p.phone,
            &p.photo_url,
            &p.file_number,
            &p.curriculum_name,
            &p.company,
            &p.badge_id,
        ] {
            assert_eq!(patch, &Patch::Clear);
        }
        assert_eq!(p.tags, Patch::Clear);
        assert_eq!(p.first_name, Patch::Keep);
    }

    #[test]
    fn external_reference_id_rules() {
        let item = one(json!({}));
        assert_eq!(
            errors_of(&item),
            [(C::Required, "/students/0/externalReferenceId")]
        );
        assert_eq!(detail_of(&item, C::Required), "is required");

        let item = one(json!({"externalReferenceId": null}));
        assert_eq!(
            errors_of(&item),
            [(C::NotNullable, "/students/0/externalReferenceId")]
        );
        assert_eq!(detail_of(&item, C::NotNullable), "must not be null");
        assert!(matches!(
            item,
            BatchItem::Rejected {
                external_reference_id: None,
                ..
            }
        ));

        let item = one(json!({"externalReferenceId": 12}));
        assert_eq!(
            errors_of(&item),
            [(C::InvalidType, "/students/0/externalReferenceId")]
        );
        assert_eq!(detail_of(&item, C::InvalidType), "expected a string");

        let item = one(json!({"externalReferenceId": " \t"}));
        assert_eq!(
            errors_of(&item),
            [(C::Blank, "/students/0/externalReferenceId")]
        );
        assert_eq!(detail_of(&item, C::Blank), "must not be blank");

        let long = "é".repeat(65);
        let item = one(json!({ "externalReferenceId": long }));
        assert_eq!(
            errors_of(&item),
            [(C::TooLong, "/students/0/externalReferenceId")]
        );
        assert_eq!(detail_of(&item, C::TooLong), "at most 64 characters");
        // The string is echoed even though it is invalid.
        assert!(
            matches!(&item, BatchItem::Rejected { external_reference_id: Some(id), .. } if *id == long)
        );
        // 64 characters (128 bytes) is fine.
        command(one(json!({ "externalReferenceId": "é".repeat(64) })));
    }

    #[test]
    fn not_nullable_fields_reject_null() {
        let item = one(json!({
            "externalReferenceId": "a", "externalReferenceType": null,
            "firstName": null, "lastName": null,
        }));
        assert_eq!(
            errors_of(&item),
            [
                (C::NotNullable, "/students/0/externalReferenceType"),
                (C::NotNullable, "/students/0/firstName"),
                (C::NotNullable, "/students/0/lastName"),
            ]
        );
    }

    #[test]
    fn maximum_lengths_count_characters() {
        let limits = [
            ("externalReferenceType", 30),
            ("firstName", 100),
            ("lastName", 100),
            ("phone", 20),
            ("fileNumber", 128),
            ("curriculumName", 160),
            ("company", 64),
            ("badgeId", 20),
        ];
        for (field, max) in limits {
            let ok = json!({"externalReferenceId": "a", field: "ß".repeat(max)});
            command(one(ok));
            let item = one(json!({"externalReferenceId": "a", field: "ß".repeat(max + 1)}));
            let pointer = format!("/students/0/{field}");
            assert_eq!(errors_of(&item), [(C::TooLong, pointer.as_str())]);
            assert_eq!(
                detail_of(&item, C::TooLong),
                format!("at most {max} characters")
            );
        }
        let email = format!("{}@example.org", "a".repeat(64));
        command(one(json!({"externalReferenceId": "a", "email": email})));
        let email = format!("{}@{}.org", "a".repeat(60), "b".repeat(191));
        assert_eq!(email.chars().count(), 256);
        let item = one(json!({"externalReferenceId": "a", "email": email}));
        assert_eq!(errors_of(&item), [(C::TooLong, "/students/0/email")]);
        let url = format!("https://example.org/{}", "p".repeat(235));
        command(one(json!({"externalReferenceId": "a", "photoUrl": url})));
        let item = one(json!({"externalReferenceId": "a", "photoUrl": format!("{url}p")}));
        assert_eq!(errors_of(&item), [(C::TooLong, "/students/0/photoUrl")]);
    }

    #[test]
    fn blank_is_rejected_only_where_required_not_blank() {
        let item =
            one(json!({"externalReferenceId": "a", "firstName": "", "lastName": "\u{3000}"}));
        assert_eq!(
            errors_of(&item),
            [
                (C::Blank, "/students/0/firstName"),
                (C::Blank, "/students/0/lastName")
            ]
        );
        let cmd = command(one(
            json!({"externalReferenceId": "a", "company": "", "badgeId": " "}),
        ));
        assert_eq!(cmd.patch.company, Patch::Set(String::new()));
        // Blank email or URL fails on format instead.
        let item = one(json!({"externalReferenceId": "a", "email": " ", "photoUrl": ""}));
        assert_eq!(
            errors_of(&item),
            [
                (C::InvalidFormat, "/students/0/email"),
                (C::InvalidFormat, "/students/0/photoUrl")
            ]
        );
    }

    #[test]
    fn wrong_json_types() {
        let item = one(json!({
            "externalReferenceId": "a", "externalReferenceType": 1, "firstName": true,
            "lastName": {}, "email": [], "phone": 1.5, "tags": "x",
        }));
        assert_eq!(
            errors_of(&item),
            [
                (C::InvalidType, "/students/0/externalReferenceType"),
                (C::InvalidType, "/students/0/firstName"),
                (C::InvalidType, "/students/0/lastName"),
                (C::InvalidType, "/students/0/email"),
                (C::InvalidType, "/students/0/phone"),
                (C::InvalidType, "/students/0/tags"),
            ]
        );
        assert_eq!(detail_of(&item, C::InvalidType), "expected a string");
    }

    #[test]
    fn item_that_is_not_an_object() {
        for value in [json!(null), json!("a"), json!(1), json!([]), json!(true)] {
            let items = validate_items(vec![json!({"externalReferenceId": "x"}), value]);
            assert_eq!(errors_of(&items[1]), [(C::InvalidType, "/students/1")]);
            assert_eq!(detail_of(&items[1], C::InvalidType), "expected an object");
            assert!(matches!(
                items[1],
                BatchItem::Rejected {
                    external_reference_id: None,
                    ..
                }
            ));
        }
    }

    #[test]
    fn control_characters() {
        let item = one(json!({
            "externalReferenceId": "a\u{0}", "firstName": "x\u{1f}", "phone": "\u{7}",
            "company": "tab\tcr\rlf\n ok", "tags": ["t\u{1b}"],
        }));
        assert_eq!(
            errors_of(&item),
            [
                (C::InvalidCharacters, "/students/0/externalReferenceId"),
                (C::InvalidCharacters, "/students/0/firstName"),
                (C::InvalidCharacters, "/students/0/phone"),
                (C::InvalidCharacters, "/students/0/tags/0"),
            ]
        );
        assert_eq!(
            detail_of(&item, C::InvalidCharacters),
            "contains control characters"
        );
        // DEL and C1 controls are not C0.
        command(one(json!({"externalReferenceId": "a\u{7f}\u{85}"})));
        // A control character and a length problem are both reported.
        let item =
            one(json!({"externalReferenceId": "a", "phone": format!("\u{0}{}", "1".repeat(20))}));
        assert_eq!(
            errors_of(&item),
            [
                (C::InvalidCharacters, "/students/0/phone"),
                (C::TooLong, "/students/0/phone")
            ]
        );
    }

    #[test]
    fn email_format() {
        for email in [
            "a@b.c",
            "first.last+tag@example.co.uk",
            "x@localhost",
            "é@exämple.org",
        ] {
            command(one(json!({"externalReferenceId": "a", "email": email})));
        }
        for email in [
            "not-an-email",
            "a@",
            "@b",
            "a@@b.c",
            "a @b.c",
            " a@b.c",
            "a@b.c ",
            "Ada <a@b.c>",
            "a@[127.0.0.1]",
            "",
        ] {
            let item = one(json!({"externalReferenceId": "a", "email": email}));
            assert_eq!(
                errors_of(&item),
                [(C::InvalidFormat, "/students/0/email")],
                "{email}"
            );
            assert_eq!(
                detail_of(&item, C::InvalidFormat),
                "not a valid email address"
            );
        }
    }

    #[test]
    fn photo_url_format() {
        for url in [
            "http://example.org",
            "https://cdn.example.org/p/1.jpg?s=2#x",
            "https://127.0.0.1:8443/a",
            "HTTPS://Example.org/A",
        ] {
            command(one(json!({"externalReferenceId": "a", "photoUrl": url})));
        }
        for url in [
            "example.org/a.jpg",
            "/a.jpg",
            "ftp://example.org/a.jpg",
            "data:image/png;base64,AAAA",
            "mailto:a@b.c",
            "https://",
            "http:///a",
            "https:example.org",
            "https:\\\\example.org\\a.jpg",
            "https://example.org\\a.jpg",
            "https://user@/a",
            "https://exa mple.org/",
            " https://example.org",
            "https://example.org/a b",
            "javascript:alert(1)",
        ] {
            let item = one(json!({"externalReferenceId": "a", "photoUrl": url}));
            assert_eq!(
                errors_of(&item),
                [(C::InvalidFormat, "/students/0/photoUrl")],
                "{url}"
            );
            assert_eq!(
                detail_of(&item, C::InvalidFormat),
                "must be an absolute http(s) URL"
            );
        }
    }

    #[test]
    fn tags_are_checked_one_by_one() {
        let long = "t".repeat(36);
        let item = one(
            json!({"externalReferenceId": "a", "tags": ["ok", 3, " ", long, null, "é".repeat(35)]}),
        );
        assert_eq!(
            errors_of(&item),
            [
                (C::InvalidType, "/students/0/tags/1"),
                (C::Blank, "/students/0/tags/2"),
                (C::TooLong, "/students/0/tags/3"),
                (C::InvalidType, "/students/0/tags/4"),
            ]
        );
        assert_eq!(detail_of(&item, C::TooLong), "at most 35 characters");
        let cmd = command(one(json!({"externalReferenceId": "a", "tags": []})));
        assert_eq!(cmd.patch.tags, Patch::Set(Vec::new()));
    }

    #[test]
    fn tag_limit_counts_distinct_tags() {
        let mut tags: Vec<String> = (0..15).map(|n| format!("tag{n}")).collect();
        tags.extend(tags.clone()); // 30 tags, 15 distinct
        tags.push("tag0".into());
        let cmd = command(one(json!({"externalReferenceId": "a", "tags": tags})));
        let expected: Vec<String> = (0..15).map(|n| format!("tag{n}")).collect();
        assert_eq!(cmd.patch.tags, Patch::Set(expected));

        tags.push("Tag0".into()); // byte equality: a 16th distinct tag
        let item = one(json!({"externalReferenceId": "a", "tags": tags}));
        assert_eq!(errors_of(&item), [(C::TooMany, "/students/0/tags")]);
        assert_eq!(detail_of(&item, C::TooMany), "at most 15 distinct tags");
    }

    #[test]
    fn unknown_fields_are_sorted_and_escaped() {
        let item = one(
            json!({"externalReferenceId": "a", "z": 1, "a/b~c": 2, "ExternalReferenceId": "x"}),
        );
        assert_eq!(
            errors_of(&item),
            [
                (C::UnknownField, "/students/0/ExternalReferenceId"),
                (C::UnknownField, "/students/0/a~1b~0c"),
                (C::UnknownField, "/students/0/z"),
            ]
        );
        assert_eq!(detail_of(&item, C::UnknownField), "unknown field");
    }

    #[test]
    fn reports_every_error_of_an_item_in_canonical_order() {
        let items = validate_items(vec![
            json!({"externalReferenceId": "ok"}),
            json!({
                "zzz": true, "tags": [""], "email": "nope", "lastName": "x".repeat(101),
                "firstName": "", "externalReferenceType": null, "photoUrl": 5,
            }),
        ]);
        assert_eq!(
            errors_of(&items[1]),
            [
                (C::Required, "/students/1/externalReferenceId"),
                (C::NotNullable, "/students/1/externalReferenceType"),
                (C::Blank, "/students/1/firstName"),
                (C::TooLong, "/students/1/lastName"),
                (C::InvalidFormat, "/students/1/email"),
                (C::InvalidType, "/students/1/photoUrl"),
                (C::Blank, "/students/1/tags/0"),
                (C::UnknownField, "/students/1/zzz"),
            ]
        );
        assert!(matches!(items[0], BatchItem::Upsert(_)));
    }

    #[test]
    fn duplicates_fail_every_member_and_name_the_others() {
        let items = validate_items(vec![
            json!({"externalReferenceId": "x"}),
            json!({"externalReferenceId": "y"}),
            json!({"externalReferenceId": "x", "email": "bad"}),
            json!({"externalReferenceId": "X"}),
            json!({"externalReferenceId": "x"}),
            json!({"externalReferenceId": "y"}),
        ]);
        assert_eq!(items.len(), 6);
        assert_eq!(
            errors_of(&items[0]),
            [(C::DuplicateInBatch, "/students/0/externalReferenceId")]
        );
        assert_eq!(
            detail_of(&items[0], C::DuplicateInBatch),
            "externalReferenceId also used by items 2, 4"
        );
        assert_eq!(
            detail_of(&items[2], C::DuplicateInBatch),
            "externalReferenceId also used by items 0, 4"
        );
        assert_eq!(
            detail_of(&items[4], C::DuplicateInBatch),
            "externalReferenceId also used by items 0, 2"
        );
        // Other errors are kept, after the duplicate error.
        assert_eq!(
            errors_of(&items[2]),
            [
                (C::DuplicateInBatch, "/students/2/externalReferenceId"),
                (C::InvalidFormat, "/students/2/email"),
            ]
        );
        assert_eq!(
            detail_of(&items[1], C::DuplicateInBatch),
            "externalReferenceId also used by item 5"
        );
        assert_eq!(
            detail_of(&items[5], C::DuplicateInBatch),
            "externalReferenceId also used by item 1"
        );
        assert!(matches!(&items[3], BatchItem::Upsert(cmd) if cmd.external_reference_id == "X"));
        assert!(
            matches!(&items[4], BatchItem::Rejected { external_reference_id: Some(id), .. } if id == "x")
        );
    }

    #[test]
    fn invalid_ids_do_not_count_as_duplicates() {
        let long = "x".repeat(65);
        let items = validate_items(vec![
            json!({"externalReferenceId": long}),
            json!({"externalReferenceId": long}),
            json!({"externalReferenceId": ""}),
            json!({"externalReferenceId": ""}),
            json!({"externalReferenceId": "a"}),
            json!({"externalReferenceId": "a\u{0}"}),
        ]);
        assert_eq!(
            errors_of(&items[0]),
            [(C::TooLong, "/students/0/externalReferenceId")]
        );
        assert_eq!(
            errors_of(&items[1]),
            [(C::TooLong, "/students/1/externalReferenceId")]
        );
        assert_eq!(
            errors_of(&items[3]),
            [(C::Blank, "/students/3/externalReferenceId")]
        );
        assert!(matches!(items[4], BatchItem::Upsert(_)));
    }

    #[test]
    fn many_items_validate_quickly() {
        let items: Vec<Value> = (0..MAX_BATCH)
            .map(|n| {
                json!({
                    "externalReferenceId": format!("id-{n}"), "firstName": "Ada",
                    "lastName": "Lovelace", "email": format!("ada{n}@example.org"),
                    "photoUrl": "https://example.org/p.jpg", "tags": ["a", "b", "a"],
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let out = validate_items(items);
        let elapsed = started.elapsed();
        assert!(out.iter().all(|item| matches!(item, BatchItem::Upsert(_))));
        // Generous: debug builds on a busy machine.
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }

    // --- envelope -----------------------------------------------------------------

    #[test]
    fn hostile_items_report_at_most_the_error_cap() {
        // 5 MiB of non-string tags would otherwise be millions of errors.
        let tags: Vec<Value> = vec![json!(0); 2_000_000];
        let started = std::time::Instant::now();
        let item = one(json!({"externalReferenceId": "a", "firstName": 1, "tags": tags}));
        let BatchItem::Rejected { errors, .. } = &item else {
            panic!("rejected")
        };
        assert_eq!(errors.len(), MAX_ITEM_ERRORS);
        assert_eq!(errors[0].pointer, "/students/0/firstName");
        assert_eq!(errors[1].pointer, "/students/0/tags/0");
        assert_eq!(errors[99].pointer, "/students/0/tags/98");
        assert!(errors[99].detail.ends_with(ERRORS_LEFT_OUT), "{errors:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        let mut many = serde_json::Map::new();
        many.insert("externalReferenceId".into(), json!("a"));
        for n in 0..100_000 {
            many.insert(format!("x{n:06}"), json!(0));
        }
        let item = one(Value::Object(many));
        let errors = errors_of(&item);
        assert_eq!(errors.len(), MAX_ITEM_ERRORS);
        assert_eq!(errors[0], (C::UnknownField, "/students/0/x000000"));
        assert_eq!(errors[99], (C::UnknownField, "/students/0/x000099"));

        // Exactly at the cap nothing is left out.
        let mut hundred = serde_json::Map::new();
        hundred.insert("externalReferenceId".into(), json!("a"));
        for n in 0..MAX_ITEM_ERRORS {
            hundred.insert(format!("y{n:03}"), json!(0));
        }
        let item = one(Value::Object(hundred));
        let BatchItem::Rejected { errors, .. } = &item else {
            panic!("rejected")
        };
        assert_eq!(errors.len(), MAX_ITEM_ERRORS);
        assert!(errors.iter().all(|e| e.detail == "unknown field"));

        // Capping again (after the engine added errors) marks the cut once.
        let mut more = errors.clone();
        more.push(ItemError::new(
            C::RequiredOnCreate,
            "/students/0/firstName",
            "x",
        ));
        cap_errors(&mut more);
        assert_eq!(more.len(), MAX_ITEM_ERRORS);
        assert!(more[99].detail.ends_with(ERRORS_LEFT_OUT));
        cap_errors(&mut more);
        more.push(ItemError::new(
            C::RequiredOnCreate,
            "/students/0/lastName",
            "x",
        ));
        cap_errors(&mut more);
        assert_eq!(more[99].detail.matches(ERRORS_LEFT_OUT).count(), 1);
    }

    #[test]
    fn envelope_errors_are_capped_too() {
        let mut body = serde_json::Map::new();
        body.insert("students".into(), json!([{}]));
        for n in 0..10_000 {
            body.insert(format!("k{n:05}"), json!(0));
        }
        let Err(EnvelopeError::Invalid { errors, .. }) = parse_envelope(Value::Object(body)) else {
            panic!("invalid")
        };
        assert_eq!(errors.len(), MAX_ITEM_ERRORS);
        assert_eq!(errors[0].pointer, "/k00000");
    }

    fn invalid(body: Value) -> (String, Vec<(ItemErrorCode, String)>) {
        match parse_envelope(body) {
            Err(EnvelopeError::Invalid { detail, errors }) => (
                detail,
                errors.into_iter().map(|e| (e.code, e.pointer)).collect(),
            ),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn pairs(expected: &[(ItemErrorCode, &str)]) -> Vec<(ItemErrorCode, String)> {
        expected
            .iter()
            .map(|(code, pointer)| (*code, pointer.to_string()))
            .collect()
    }

    #[test]
    fn envelope_accepts_students_and_options() {
        let request = parse_envelope(json!({"students": [{"a": 1}]})).unwrap();
        assert_eq!(request.students, vec![json!({"a": 1})]);
        assert_eq!(request.options, BatchOptions::default());

        let request = parse_envelope(json!({
            "students": [1, 2],
            "options": {"allowUnarchive": true, "dryRun": true,
                        "onStudentCreated": {"sendCredentials": true, "newPasswordNeeded": false}},
        }))
        .unwrap();
        assert_eq!(request.students.len(), 2);
        assert!(request.options.allow_unarchive && request.options.dry_run);
        assert!(request.options.on_student_created.send_credentials);
        assert!(!request.options.on_student_created.new_password_needed);
        parse_envelope(json!({"students": [1], "options": {"onStudentCreated": {}}})).unwrap();
    }

    #[test]
    fn envelope_students_missing_or_not_an_array() {
        let (detail, errors) = invalid(json!({}));
        assert_eq!(errors, pairs(&[(C::Required, "/students")]));
        assert_eq!(detail, "/students: is required");
        for students in [json!(null), json!({}), json!("x"), json!(3)] {
            let (_, errors) = invalid(json!({ "students": students }));
            assert_eq!(errors, pairs(&[(C::InvalidType, "/students")]));
        }
    }

    #[test]
    fn envelope_options_of_the_wrong_shape() {
        for options in [json!(null), json!([]), json!(true), json!("x")] {
            let (_, errors) = invalid(json!({"students": [1], "options": options}));
            assert_eq!(errors, pairs(&[(C::InvalidType, "/options")]));
        }
        let (detail, errors) = invalid(json!({"students": [1], "options": {
            "dryRun": "yes", "allowUnarchive": null, "onStudentCreated": {"sendCredentials": 1, "x/y": true},
            "extra": 1,
        }}));
        assert_eq!(
            errors,
            pairs(&[
                (C::InvalidType, "/options/allowUnarchive"),
                (C::InvalidType, "/options/onStudentCreated/sendCredentials"),
                (C::UnknownField, "/options/onStudentCreated/x~1y"),
                (C::InvalidType, "/options/dryRun"),
                (C::UnknownField, "/options/extra"),
            ])
        );
        assert!(
            detail.contains("/options/dryRun: expected a boolean"),
            "{detail}"
        );
        let (_, errors) = invalid(json!({"students": [1], "options": {"onStudentCreated": true}}));
        assert_eq!(
            errors,
            pairs(&[(C::InvalidType, "/options/onStudentCreated")])
        );
    }

    #[test]
    fn envelope_unknown_top_level_fields() {
        let (_, errors) = invalid(json!({"students": [1], "foo": 1, "a~b": 2}));
        assert_eq!(
            errors,
            pairs(&[(C::UnknownField, "/a~0b"), (C::UnknownField, "/foo")])
        );
        // Shape errors win over an empty batch.
        let (_, errors) = invalid(json!({"students": [], "Options": {}}));
        assert_eq!(errors, pairs(&[(C::UnknownField, "/Options")]));
    }

    #[test]
    fn envelope_body_not_an_object() {
        for body in [json!([]), json!(null), json!("students"), json!(1)] {
            let (detail, errors) = invalid(body);
            assert_eq!(errors, pairs(&[(C::InvalidType, "")]));
            assert_eq!(detail, "the request body must be a JSON object");
        }
    }

    #[test]
    fn envelope_empty_and_too_large() {
        assert_eq!(
            parse_envelope(json!({"students": []})),
            Err(EnvelopeError::Empty)
        );
        let students = vec![json!({}); MAX_BATCH];
        assert_eq!(
            parse_envelope(json!({ "students": students }))
                .unwrap()
                .students
                .len(),
            MAX_BATCH
        );
        let students = vec![json!({}); MAX_BATCH + 1];
        assert_eq!(
            parse_envelope(json!({ "students": students })),
            Err(EnvelopeError::TooLarge { count: 1001 })
        );
        assert_eq!(
            EnvelopeError::TooLarge { count: 1001 }.to_string(),
            "students holds 1001 items, at most 1000 are allowed"
        );
    }
}
