//! Student Sync core: configuration, domain types and validation, the upsert
//! engine (all SQL), the job messages that travel through RabbitMQ, the queue
//! topology, the Redis results store and telemetry. The `api` and `worker` crates
//! are thin shells around this library.

pub mod breaker;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod job;
pub mod json;
pub mod queue;
pub mod results;
pub mod store;
pub mod telemetry;
