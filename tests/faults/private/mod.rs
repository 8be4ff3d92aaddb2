//! Private instances of the services, for the tests that stop, restart or
//! alarm a server: each runs on free ports with its own data directory, so the
//! shared Postgres, RabbitMQ and Redis that other tests use are never disturbed.
//! Every instance is stopped and its directory removed on drop.

pub mod postgres;
pub mod rabbitmq;
pub mod redis;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh, empty directory under the system temp directory.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// Runs `command` to completion; panics with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed: {text}");
    text
}

/// The first of `candidates` (directories) that holds `program`.
pub fn find_program(program: &str, candidates: &[PathBuf]) -> PathBuf {
    candidates
        .iter()
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{program} not found in {candidates:?}: the fault tests start private servers \
                 and need the server binaries installed (see README, Testing)"
            )
        })
}

/// Removes a directory tree, ignoring errors (best-effort clean-up).
pub fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
