//! Pure classification of one valid item against the stored row it matches (if
//! any): create, update (with the changed fields), unchanged, or a failure that
//! only the stored data can reveal (`archived`, `required_on_create`).

use crate::domain::error::field_pointer;
use crate::domain::{ItemError, ItemErrorCode, Patch, StudentField, StudentRow, UpsertCommand};

/// What applying one item to the stored data amounts to.
// Plans are short-lived and nearly all are creates or updates: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Create(NewStudent),
    Update {
        row: Box<StudentRow>,
        changed: Vec<StudentField>,
        unarchived: bool,
    },
    Unchanged {
        row: Box<StudentRow>,
    },
    Fail(Vec<ItemError>),
}

/// The data of a student about to be inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStudent {
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
}

/// Classifies item `index` against `existing`.
pub fn classify(
    index: usize,
    command: &UpsertCommand,
    existing: Option<&StudentRow>,
    allow_unarchive: bool,
) -> Plan {
    match existing {
        None => plan_create(index, command),
        Some(row) => plan_update(index, command, row, allow_unarchive),
    }
}

fn plan_create(index: usize, command: &UpsertCommand) -> Plan {
    let patch = &command.patch;
    let mut errors = Vec::new();
    let mut required = |field: StudentField, value: &Patch<String>| match value {
        Patch::Set(value) => Some(value.clone()),
        Patch::Keep | Patch::Clear => {
            errors.push(required_on_create(index, field.name()));
            None
        }
    };
    let first_name = required(StudentField::FirstName, &patch.first_name);
    let last_name = required(StudentField::LastName, &patch.last_name);
    let (Some(first_name), Some(last_name)) = (first_name, last_name) else {
        return Plan::Fail(errors);
    };
    Plan::Create(NewStudent {
        external_reference_id: command.external_reference_id.clone(),
        external_reference_type: patch.external_reference_type.initial().cloned(),
        first_name,
        last_name,
        email: patch.email.initial().cloned(),
        phone: patch.phone.initial().cloned(),
        photo_url: patch.photo_url.initial().cloned(),
        file_number: patch.file_number.initial().cloned(),
        curriculum_name: patch.curriculum_name.initial().cloned(),
        company: patch.company.initial().cloned(),
        badge_id: patch.badge_id.initial().cloned(),
        tags: patch.tags.initial().cloned(),
    })
}

fn plan_update(
    index: usize,
    command: &UpsertCommand,
    stored: &StudentRow,
    allow_unarchive: bool,
) -> Plan {
    if stored.archived && !allow_unarchive {
        return Plan::Fail(vec![archived(index)]);
    }
    let patch = &command.patch;
    let mut row = stored.clone();
    let mut changed = Vec::new();
    merge_optional(
        &mut row.external_reference_type,
        &patch.external_reference_type,
        StudentField::ExternalReferenceType,
        &mut changed,
    );
    merge_required(
        &mut row.first_name,
        &patch.first_name,
        StudentField::FirstName,
        &mut changed,
    );
    merge_required(
        &mut row.last_name,
        &patch.last_name,
        StudentField::LastName,
        &mut changed,
    );
    let optional_fields = [
        (&mut row.email, &patch.email, StudentField::Email),
        (&mut row.phone, &patch.phone, StudentField::Phone),
        (&mut row.photo_url, &patch.photo_url, StudentField::PhotoUrl),
        (
            &mut row.file_number,
            &patch.file_number,
            StudentField::FileNumber,
        ),
        (
            &mut row.curriculum_name,
            &patch.curriculum_name,
            StudentField::CurriculumName,
        ),
        (&mut row.company, &patch.company, StudentField::Company),
        (&mut row.badge_id, &patch.badge_id, StudentField::BadgeId),
    ];
    for (slot, value, field) in optional_fields {
        merge_optional(slot, value, field, &mut changed);
    }
    merge_optional(&mut row.tags, &patch.tags, StudentField::Tags, &mut changed);

    let unarchived = stored.archived;
    row.archived = false;
    if changed.is_empty() && !unarchived {
        Plan::Unchanged { row: Box::new(row) }
    } else {
        Plan::Update {
            row: Box::new(row),
            changed,
            unarchived,
        }
    }
}

/// Item `index` would create a student but lacks `field`.
pub fn required_on_create(index: usize, field: &str) -> ItemError {
    ItemError::new(
        ItemErrorCode::RequiredOnCreate,
        field_pointer(index, field),
        "is required to create a student",
    )
}

/// Item `index` matches an archived student and unarchiving was not allowed.
pub fn archived(index: usize) -> ItemError {
    ItemError::new(
        ItemErrorCode::Archived,
        field_pointer(index, "externalReferenceId"),
        "the student is archived; set options.allowUnarchive to unarchive and update it",
    )
}

/// The errors only the stored data reveals, for an item that already failed
/// validation but whose key is valid: `archived`, or `required_on_create` for
/// each name in `lacks_on_create` when there is no match.
pub fn stored_data_errors(
    index: usize,
    existing: Option<&StudentRow>,
    lacks_on_create: &[String],
    allow_unarchive: bool,
) -> Vec<ItemError> {
    match existing {
        Some(row) if row.archived && !allow_unarchive => vec![archived(index)],
        Some(_) => Vec::new(),
        None => lacks_on_create
            .iter()
            .map(|field| required_on_create(index, field))
            .collect(),
    }
}

fn merge_optional<T: PartialEq + Clone>(
    slot: &mut Option<T>,
    patch: &Patch<T>,
    field: StudentField,
    changed: &mut Vec<StudentField>,
) {
    let new = match patch {
        Patch::Keep => return,
        Patch::Clear => None,
        Patch::Set(value) => Some(value),
    };
    if slot.as_ref() != new {
        *slot = new.cloned();
        changed.push(field);
    }
}

fn merge_required(
    slot: &mut String,
    patch: &Patch<String>,
    field: StudentField,
    changed: &mut Vec<StudentField>,
) {
    if let Patch::Set(value) = patch
        && slot != value
    {
        slot.clone_from(value);
        changed.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::StudentPatch;
    use chrono::Utc;
    use uuid::Uuid;

    fn stored() -> StudentRow {
        StudentRow {
            id: Uuid::new_v4(),
            external_reference_id: "a-1".into(),
            external_reference_type: None,
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            email: Some("ada@example.edu".into()),
            phone: None,
            photo_url: None,
            file_number: None,
            curriculum_name: None,
            company: None,
            badge_id: None,
            tags: Some(vec!["x".into()]),
            archived: false,
            password_change_required: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            credentials_email: None,
        }
    }

    fn command(patch: StudentPatch) -> UpsertCommand {
        UpsertCommand {
            external_reference_id: "a-1".into(),
            patch,
        }
    }

    #[test]
    fn create_needs_both_names() {
        let plan = classify(4, &command(StudentPatch::default()), None, false);
        let Plan::Fail(errors) = plan else {
            panic!("expected failure")
        };
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/students/4/firstName", "/students/4/lastName"]);
        assert!(
            errors
                .iter()
                .all(|e| e.code == ItemErrorCode::RequiredOnCreate)
        );
    }

    #[test]
    fn same_values_are_unchanged() {
        let patch = StudentPatch {
            first_name: Patch::Set("Ada".into()),
            tags: Patch::Set(vec!["x".into()]),
            ..StudentPatch::default()
        };
        let plan = classify(0, &command(patch), Some(&stored()), false);
        assert!(matches!(plan, Plan::Unchanged { .. }));
    }

    #[test]
    fn changed_fields_are_listed_in_canonical_order() {
        let patch = StudentPatch {
            tags: Patch::Clear,
            email: Patch::Set("new@example.edu".into()),
            phone: Patch::Clear, // already null: not a change
            ..StudentPatch::default()
        };
        let Plan::Update {
            row,
            changed,
            unarchived,
        } = classify(0, &command(patch), Some(&stored()), false)
        else {
            panic!("expected update")
        };
        assert_eq!(changed, [StudentField::Email, StudentField::Tags]);
        assert_eq!(row.tags, None);
        assert!(!unarchived);
    }

    #[test]
    fn archived_needs_allow_unarchive() {
        let mut row = stored();
        row.archived = true;
        let plan = classify(2, &command(StudentPatch::default()), Some(&row), false);
        assert!(
            matches!(plan, Plan::Fail(ref errors) if errors[0].code == ItemErrorCode::Archived)
        );
        let plan = classify(2, &command(StudentPatch::default()), Some(&row), true);
        assert!(
            matches!(plan, Plan::Update { ref changed, unarchived: true, .. } if changed.is_empty())
        );
    }
}
