//! Feeds arbitrary bytes through what the API does with a request body:
//! strict JSON parsing, the envelope check and per-item validation. Nothing may
//! panic, and whatever validation accepts must be storable: no NUL in any
//! string (Postgres text cannot hold it), lengths within the contract's limits,
//! and at most `MAX_ITEM_ERRORS` errors per rejected item.

#![no_main]

use libfuzzer_sys::fuzz_target;
use studentsync::domain::validate::{self, MAX_ITEM_ERRORS};
use studentsync::domain::{Patch, StudentPatch};
use studentsync::job::BatchItem;

fuzz_target!(|body: &[u8]| {
    let Ok(value) = studentsync::json::parse_strict(body) else {
        return;
    };
    // Whatever parsed strictly serialises again (it is queued as JSON).
    serde_json::to_vec(&value).expect("a parsed value serialises");
    let Ok(request) = validate::parse_envelope(value) else {
        return;
    };
    let total = request.students.len();
    let items = validate::validate_items(request.students);
    assert_eq!(items.len(), total);
    for item in &items {
        match item {
            BatchItem::Upsert(command) => {
                let id = &command.external_reference_id;
                assert!(!id.contains('\0') && !id.trim().is_empty());
                assert!(id.chars().count() <= 64);
                check_patch(&command.patch);
            }
            BatchItem::Rejected { errors, .. } => {
                assert!(!errors.is_empty() && errors.len() <= MAX_ITEM_ERRORS);
            }
        }
    }
});

fn check_patch(patch: &StudentPatch) {
    let strings = [
        (&patch.external_reference_type, 30),
        (&patch.first_name, 100),
        (&patch.last_name, 100),
        (&patch.email, 255),
        (&patch.phone, 20),
        (&patch.photo_url, 255),
        (&patch.file_number, 128),
        (&patch.curriculum_name, 160),
        (&patch.company, 64),
        (&patch.badge_id, 20),
    ];
    for (field, max) in strings {
        if let Patch::Set(text) = field {
            assert!(!text.contains('\0'), "NUL accepted");
            assert!(text.chars().count() <= max, "{text:?} longer than {max}");
        }
    }
    if let Patch::Set(tags) = &patch.tags {
        assert!(tags.len() <= 15);
        for tag in tags {
            assert!(!tag.contains('\0') && !tag.trim().is_empty() && tag.chars().count() <= 35);
        }
    }
}
