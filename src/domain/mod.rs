//! Domain types: the student record, the partial-update command built from one
//! input item, per-item errors, and the validation that turns raw JSON items into
//! commands. Nothing here touches I/O.

pub mod credentials;
pub mod error;
pub mod patch;
pub mod student;
pub mod validate;

pub use credentials::EmailStatus;
pub use error::{ItemError, ItemErrorCode};
pub use patch::Patch;
pub use student::{StudentField, StudentPatch, StudentRow, StudentView, UpsertCommand};
