//! The HTTP handlers, one module per resource: batch upserts, jobs, students,
//! admin (schools and API keys) and operations (health, readiness, metrics,
//! OpenAPI). Handlers only translate between HTTP and the core library.

pub mod admin;
pub mod batch;
pub mod jobs;
pub mod ops;
pub mod students;
