//! Deterministic benchmark students: `generation` changes every value, so a
//! second pass over the same keys updates every field.

use serde_json::{Value, json};

/// The external key of student `index` in key space `space`.
pub fn key(space: &str, index: usize) -> String {
    format!("{space}-{index:08}")
}

/// One student as the API takes it.
pub fn student(space: &str, index: usize, generation: u32) -> Value {
    json!({
        "externalReferenceId": key(space, index),
        "externalReferenceType": "sis",
        "firstName": format!("First{index}g{generation}"),
        "lastName": format!("Last{index}g{generation}"),
        "email": format!("student{index}.g{generation}@example.edu"),
        "phone": format!("+1555{:07}", (index + generation as usize) % 10_000_000),
        "fileNumber": format!("F{index}-{generation}"),
        "curriculumName": format!("Curriculum {}", (index + generation as usize) % 40),
        "company": format!("Campus {generation}"),
        "badgeId": format!("B{index}g{generation}"),
        "tags": [format!("grade-{}", (index + generation as usize) % 12), format!("g{generation}")],
    })
}

/// A batch request body for students `range`, serialized.
pub fn batch_body(space: &str, range: std::ops::Range<usize>, generation: u32) -> Vec<u8> {
    let students: Vec<Value> = range.map(|i| student(space, i, generation)).collect();
    serde_json::to_vec(&json!({ "students": students })).expect("a JSON value serializes")
}
