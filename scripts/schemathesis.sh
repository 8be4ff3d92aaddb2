#!/usr/bin/env bash
# Property-based API testing: schemathesis against `GET /openapi.json` of a
# private stack, with the checks `not_a_server_error` (no 5xx, whatever the
# input) and `response_schema_conformance` (every answer matches the document).
# Exits non-zero on any failure. Called by scripts/test.sh as its last step.
#
# 1. Installs schemathesis (and pika, for the cleanup) from PyPI into a venv
#    under target/, at the exact versions of scripts/schemathesis-requirements.txt
#    (reused while that file is unchanged).
# 2. Starts a private stack from the debug binaries in target/debug (built if
#    missing): a fresh database, a random namespace, a random ADMIN_TOKEN, the
#    API on a free port and one worker; creates a school through the admin API.
# 3. Runs schemathesis twice: the school and operations endpoints with the
#    school's API key, the admin endpoints with the admin token.
# 4. Stops the processes it started and removes the database, the namespace's
#    queues and exchanges and its Redis keys, also on failure or Ctrl-C.
#
# Knobs: SCHEMATHESIS_MAX_EXAMPLES (default 40 per operation and phase),
# SCHEMATHESIS_SEED (default fixed, so CI is reproducible; `random` for a new
# one), SCHEMATHESIS_WORKERS (default 1: with more, Python 3.11's `ast.parse`,
# which hypothesis calls from several threads, can fail with "AST constructor
# recursion depth mismatch"), DATABASE_URL / AMQP_URL / REDIS_URL (where the
# services are; defaults 127.0.0.1).
# Logs of the stack: target/schemathesis/last-run/.
set -euo pipefail

cd "$(dirname "$0")/.."

requirements="$PWD/scripts/schemathesis-requirements.txt"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-40}"
seed="${SCHEMATHESIS_SEED:-20261203}"
workers="${SCHEMATHESIS_WORKERS:-1}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
home="$target_dir/schemathesis"
venv="$home/venv"
logs="$home/last-run"
bin="$target_dir/debug"

log() {
    printf '[schemathesis] %s\n' "$*" >&2
}

# ---- 1. the tool -------------------------------------------------------------
if ! cmp -s "$requirements" "$venv/installed-requirements.txt"; then
    log "installing schemathesis into $venv"
    rm -rf "$venv"
    mkdir -p "$home"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$venv/installed-requirements.txt"
fi
py="$venv/bin/python"

# ---- 2. the stack --------------------------------------------------------------
if [[ ! -x "$bin/studentsync-api" || ! -x "$bin/studentsync-worker" ]]; then
    log "building the debug binaries"
    cargo build --bins -p studentsync-api -p studentsync-worker
fi

rm -rf "$logs"
mkdir -p "$logs"
id="$("$py" -c 'import uuid; print(uuid.uuid4().hex)')"
namespace="st$id"
database="ss_schemathesis_$id"
base_database_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# The same server, another database name.
with_database() {
    "$py" - "$1" "$2" <<'EOF'
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(url._replace(path="/" + sys.argv[2])))
EOF
}
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
address="http://127.0.0.1:$port"

export DATABASE_URL
DATABASE_URL="$(with_database "$base_database_url" "$database")"
maintenance_database_url="$(with_database "$base_database_url" postgres)"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export BIND_ADDR="127.0.0.1:$port"
export STUDENTSYNC_NAMESPACE="$namespace"
export ADMIN_TOKEN
ADMIN_TOKEN="admin-$("$py" -c 'import secrets; print(secrets.token_hex(24))')"
# Limits are not under test here (a 429 is declared, but would starve the run).
export RATE_LIMIT_PER_MINUTE=1000000 RATE_LIMIT_BURST=1000000 SCHOOL_STUDENTS_PER_MINUTE=100000000
export DATABASE_MAX_CONNECTIONS=5 RUST_LOG="${RUST_LOG:-info}" MAIL_CONCURRENCY=0 NO_COLOR=1

pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    psql -q "$maintenance_database_url" -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" \
        >/dev/null 2>&1 || log "could not drop database $database"
    "$py" - "$AMQP_URL" "$namespace" <<'EOF' || log "could not delete the queues of $namespace"
import sys, pika
connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
ns = sys.argv[2]
for queue in (f"{ns}.batches", f"{ns}.batches.dead"):
    channel.queue_delete(queue)
for exchange in (f"{ns}.batches", f"{ns}.batches.dlx"):
    channel.exchange_delete(exchange)
connection.close()
EOF
    "$py" - "$REDIS_URL" "$namespace" <<'EOF' || log "could not delete the Redis keys of $namespace"
import subprocess, sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
cli = ["redis-cli", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
keys = subprocess.run(cli + ["--scan", "--pattern", sys.argv[2] + ":*"],
                      check=True, capture_output=True, text=True).stdout.split()
for start in range(0, len(keys), 500):
    subprocess.run(cli + ["DEL", *keys[start:start + 500]], check=True, capture_output=True)
EOF
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a private stack on $address (database $database, namespace $namespace)"
# The API creates and migrates the database; the worker starts once it is ready.
"$bin/studentsync-api" >"$logs/api.log" 2>&1 &
pids+=("$!")

ready=0
for _ in $(seq 1 120); do
    if curl -fsS "$address/readyz" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
if [[ "$ready" != 1 ]]; then
    log "the API did not become ready within 60 s; its log:"
    tail -n 40 "$logs/api.log" >&2
    exit 1
fi

"$bin/studentsync-worker" >"$logs/worker.log" 2>&1 &
pids+=("$!")

api_key="$(curl -fsS -X POST "$address/v3/admin/schools" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"name": "Schemathesis School"}' | "$py" -c 'import json, sys; print(json.load(sys.stdin)["apiKey"])')"

# ---- 3. the runs -----------------------------------------------------------------
seed_args=(--seed "$seed")
if [[ "$seed" == "random" ]]; then
    seed_args=()
fi
run() {
    local name=$1 token=$2
    shift 2
    log "run: $name (max $max_examples examples per operation, seed ${seed})"
    # From $home: schemathesis keeps its example database in ./.schemathesis.
    (cd "$home" && "$venv/bin/schemathesis" run "$address/openapi.json" \
        --checks not_a_server_error,response_schema_conformance \
        --header "Authorization: Bearer $token" \
        --max-examples "$max_examples" \
        "${seed_args[@]}" \
        --workers "$workers" \
        --request-timeout 90 \
        --report junit --report-junit-path "$logs/junit-$name.xml" \
        "$@")
}

status=0
run school "$api_key" --exclude-tag admin || status=1
run admin "$ADMIN_TOKEN" --include-tag admin || status=1

for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        log "process $pid of the stack died during the run"
        status=1
    fi
done
if grep -qiE 'panicked' "$logs/api.log" "$logs/worker.log"; then
    log "a process panicked during the run:"
    grep -iE -m 5 'panicked' "$logs/api.log" "$logs/worker.log" >&2
    status=1
fi
if [[ "$status" == 0 ]]; then
    log "no failures"
else
    log "FAILED (stack logs in $logs)"
fi
exit "$status"
