//! Integration tests: the contract of API.md, exercised over HTTP against real
//! Postgres, RabbitMQ and Redis (plus direct SQL reads where the database is the
//! point). One binary, one module per topic; every test spawns its own app with
//! its own database and namespace (see `helpers`).

mod helpers;
mod smtp;

mod async_jobs;
mod auth;
mod concurrency;
mod credentials;
mod credentials_email;
mod dry_run;
mod envelope;
mod hostile;
mod idempotency;
mod import;
mod isolation;
mod ops;
mod properties;
mod rate_limit;
mod students;
mod tenancy;
mod upsert;
mod validation;
