#!/usr/bin/env bash
# Runs Student Sync locally: ensures Postgres/RabbitMQ/Redis, builds release
# binaries, applies migrations, then runs the API and two worker processes in the
# foreground with prefixed logs. Ctrl-C stops everything.
#
# Honours every variable of API.md: DATABASE_URL, AMQP_URL, REDIS_URL, BIND_ADDR,
# STUDENTSYNC_NAMESPACE, ADMIN_TOKEN (default here: dev-admin-token), SMTP_URL,
# RATE_LIMIT_PER_MINUTE, RATE_LIMIT_BURST (and the other knobs the binaries read,
# e.g. WORKER_CONCURRENCY, RUST_LOG). Extra: WORKERS (default 2),
# STUDENTSYNC_SKIP_SERVICES=1 to use services elsewhere without checking 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh

export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/studentsync}"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BIND_ADDR="${BIND_ADDR:-127.0.0.1:8080}"
export STUDENTSYNC_NAMESPACE="${STUDENTSYNC_NAMESPACE:-studentsync}"
export ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"
export RATE_LIMIT_PER_MINUTE="${RATE_LIMIT_PER_MINUTE:-300}"
export RATE_LIMIT_BURST="${RATE_LIMIT_BURST:-60}"
export RUST_LOG="${RUST_LOG:-info}"
# SMTP_URL is passed through only when set (unset: emails go to the log).
if [[ -n "${SMTP_URL:-}" ]]; then
    export SMTP_URL
fi
workers="${WORKERS:-2}"

log() {
    printf '[dev] %s\n' "$*" >&2
}

if [[ "${STUDENTSYNC_SKIP_SERVICES:-0}" != "1" ]]; then
    ensure_services
fi

# A wildcard bind address is reached on loopback.
host_port="$BIND_ADDR"
host_port="${host_port/#0.0.0.0:/127.0.0.1:}"
host_port="${host_port/#\[::\]:/[::1]:}"
url="http://$host_port"
port_open() {
    timeout 1 bash -c "</dev/tcp/${host_port%:*}/${host_port##*:}" 2>/dev/null
}
port_in_use() {
    if port_open; then
        log "BIND_ADDR $BIND_ADDR is already in use by another process; choose another, e.g. BIND_ADDR=127.0.0.1:8081 $0"
        exit 1
    fi
}
port_in_use

log "building release binaries"
cargo build --release --workspace --bins

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
bin="$target_dir/release"

log "applying migrations to $(sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$DATABASE_URL")"
"$bin/studentsync-api" migrate

pids=()
stopping=0

stop_all() {
    if ((stopping)); then
        return
    fi
    stopping=1
    log "stopping ${#pids[@]} processes"
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them a graceful shutdown, then insist.
    local waited=0
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((waited < 150)); do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}

on_signal() {
    trap - INT TERM
    stop_all
    exit 130
}
trap on_signal INT TERM
trap stop_all EXIT

# Starts "$@" in the background with every output line prefixed by $1.
# $! after the redirections is the program itself, not the prefixing filter.
start() {
    local name=$1
    shift
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=("$!")
}

# Checked again: the build may have taken minutes.
port_in_use
start api "$bin/studentsync-api"
for i in $(seq 1 "$workers"); do
    start "worker-$i" "$bin/studentsync-worker"
done

ready=0
for _ in $(seq 1 60); do
    if command -v curl >/dev/null 2>&1; then
        if curl -fsS -o /dev/null "$url/healthz" 2>/dev/null; then
            ready=1
            break
        fi
    elif port_open; then
        ready=1
        break
    fi
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        break
    fi
    sleep 0.5
done

# Whoever answered must be our API, not something that took the port meanwhile
# (an API that failed to bind exits at once).
if ((ready)); then
    sleep 0.5
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        ready=0
    fi
fi
if ((ready)); then
    cat >&2 <<READY
[dev] ==========================================================================
[dev] Student Sync ready at $url  (API + $workers workers, namespace $STUDENTSYNC_NAMESPACE)
[dev] ADMIN_TOKEN=$ADMIN_TOKEN
[dev] create a school and get its API key:
[dev]   curl -s -X POST $url/v3/admin/schools -H 'Authorization: Bearer $ADMIN_TOKEN' \\
[dev]        -H 'Content-Type: application/json' -d '{"name":"Dev School"}'
[dev] then: curl -s $url/v3/students -H 'Authorization: Bearer <apiKey>'
[dev] Ctrl-C stops everything.
[dev] ==========================================================================
READY
else
    log "the API did not answer on $url/healthz; see its log above"
fi

# Run until Ctrl-C or until one process exits (then stop the others).
status=0
wait -n "${pids[@]}" || status=$?
if ((!stopping)); then
    log "a process exited (status $status); stopping the rest"
    trap - INT TERM
    stop_all
    exit "$((status == 0 ? 1 : status))"
fi
