//! Fault-injection tests (issue #4: "nothing lost, nothing twice"). Each test
//! causes one fault for real (SIGKILL, SIGTERM, a Redis server that goes away, a
//! batch that fails on every delivery, a full queue) while batches are in flight,
//! then checks the history Jepsen-style with [`check::History`]: every accepted
//! batch reaches a terminal state, every accepted student is stored exactly once
//! (lost = 0, duplicated = 0), one outbox row per created student with an email,
//! and the job results agree with the database.
//!
//! A separate binary so that `scripts/test.sh` runs it serially after the main
//! suite (`cargo nextest run --test faults --test-threads 1`): these tests kill
//! processes and stop servers and should not compete with parallel tests.

#[path = "../integration/helpers.rs"]
#[allow(dead_code)]
mod helpers;

mod check;
mod private;
mod submitter;

mod api_sigterm;
mod backpressure;
mod broker_alarm;
mod broker_restart;
mod poison;
mod postgres_restart;
mod redis_outage;
mod worker_kill;
mod worker_sigterm;

/// Sends SIGTERM to a process.
pub fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM {pid}");
}
