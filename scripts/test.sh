#!/usr/bin/env bash
# The test suite (what .ci/run calls): services, formatting, lints, build, tests.
#
# Works unattended (CI=true, no stdin). Environment knobs:
#   NEXTEST_TEST_THREADS  parallel integration tests (default 4: they mostly wait on I/O)
#   STUDENTSYNC_SKIP_SERVICES=1  do not check/start the local Postgres/RabbitMQ/Redis
#   DATABASE_URL, AMQP_URL, REDIS_URL  where the tests find the services (defaults: 127.0.0.1)
#   STUDENTSYNC_SKIP_SCHEMATHESIS=1  skip the final schemathesis run (scripts/schemathesis.sh)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

step() {
    printf '\n==> %s\n' "$*"
}

if [[ "${STUDENTSYNC_SKIP_SERVICES:-0}" != "1" ]]; then
    step "services"
    ensure_services
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-$([[ -t 1 ]] && echo auto || echo never)}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build --workspace --bins"
cargo build --workspace --bins

# The multi-process tests spawn this binary.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
export STUDENTSYNC_WORKER_BIN="${STUDENTSYNC_WORKER_BIN:-$target_dir/debug/studentsync-worker}"
if [[ ! -x "$STUDENTSYNC_WORKER_BIN" ]]; then
    echo "worker binary not found at $STUDENTSYNC_WORKER_BIN" >&2
    exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
    export NEXTEST_TEST_THREADS="${NEXTEST_TEST_THREADS:-4}"
    step "cargo nextest run --workspace, without the fault tests (test threads: $NEXTEST_TEST_THREADS)"
    cargo nextest run --workspace --no-fail-fast --failure-output final -E 'not binary(faults)'
    # nextest does not run doctests.
    step "cargo test --workspace --doc"
    cargo test --workspace --doc
else
    step "cargo test --workspace, without the fault tests (cargo-nextest not installed)"
    cargo test --workspace --exclude studentsync --no-fail-fast -- --test-threads="${NEXTEST_TEST_THREADS:-4}"
    cargo test -p studentsync --lib --bins --test integration --no-fail-fast -- --test-threads="${NEXTEST_TEST_THREADS:-4}"
    cargo test -p studentsync --doc
fi

# ---- Fault injection (issue #4): tests/faults kills workers, stops a private
# Redis, fills queues. Serially, after the main suite, so that no other test
# shares the machine with a fault.
if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run --test faults --test-threads 1 (fault injection, serial)"
    cargo nextest run --test faults --test-threads 1 --no-fail-fast --failure-output final
else
    step "cargo test --test faults (fault injection, serial)"
    cargo test --test faults --no-fail-fast -- --test-threads=1
fi

# ---- API fuzzing (issue #5): schemathesis against /openapi.json of a private
# stack built from the debug binaries above. STUDENTSYNC_SKIP_SCHEMATHESIS=1 skips.
if [[ "${STUDENTSYNC_SKIP_SCHEMATHESIS:-0}" != "1" ]]; then
    step "schemathesis (scripts/schemathesis.sh)"
    scripts/schemathesis.sh
fi

step "all checks passed"
