#!/usr/bin/env bash
# Shared helper: make sure Postgres, RabbitMQ and Redis answer on 127.0.0.1.
#
# Source it and call `ensure_services`. For each service: if it answers, nothing
# happens; if it is down but installed, it is started (with the same commands the
# machine uses at boot) and waited for; if it is not installed, the helper says
# which one is missing and exits 1. Works without a TTY (CI=true, no stdin).

# Prints a tagged message on stderr.
services_log() {
    printf '[services] %s\n' "$*" >&2
}

# Polls "$@" once a second until it succeeds or $1 seconds pass.
services_wait_for() {
    local seconds=$1
    shift
    local waited=0
    until "$@" >/dev/null 2>&1; do
        if ((waited >= seconds)); then
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

postgres_up() {
    pg_isready -q -h 127.0.0.1 -p 5432
}

redis_up() {
    [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]
}

rabbitmq_port_open() {
    timeout 1 bash -c '</dev/tcp/127.0.0.1/5672' 2>/dev/null
}

rabbitmq_up() {
    rabbitmq_port_open || return 1
    if command -v rabbitmq-diagnostics >/dev/null 2>&1; then
        timeout 20 rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || return 1
    fi
}

ensure_postgres() {
    if command -v pg_isready >/dev/null 2>&1 && postgres_up; then
        services_log "postgres: up on 127.0.0.1:5432"
        return 0
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1 \
        || [[ ! -d /etc/postgresql ]] || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
        services_log "postgres: NOT INSTALLED (need pg_ctlcluster, pg_isready and a cluster under /etc/postgresql; apt-get install postgresql)"
        exit 1
    fi
    services_log "postgres: down, starting it"
    # shellcheck disable=SC2046 # one version directory, as on the machine
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start || true
    if ! services_wait_for 30 postgres_up; then
        services_log "postgres: did not come up within 30 s"
        exit 1
    fi
    services_log "postgres: started"
}

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis_up; then
        services_log "redis: up on 127.0.0.1:6379"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        services_log "redis: NOT INSTALLED (need redis-server and redis-cli; apt-get install redis-server)"
        exit 1
    fi
    services_log "redis: down, starting it"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    if ! services_wait_for 20 redis_up; then
        services_log "redis: did not come up within 20 s (see /var/log/redis/ci.log)"
        exit 1
    fi
    services_log "redis: started"
}

ensure_rabbitmq() {
    if rabbitmq_up; then
        services_log "rabbitmq: up on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        services_log "rabbitmq: NOT INSTALLED (need rabbitmq-server; apt-get install rabbitmq-server)"
        exit 1
    fi
    # The port may be open while the node is still booting: give it a moment
    # before starting a second node.
    if rabbitmq_port_open; then
        services_log "rabbitmq: port open but not fully running yet, waiting"
    else
        services_log "rabbitmq: down, starting it"
        rabbitmq-server -detached || true
    fi
    if ! services_wait_for 60 rabbitmq_up; then
        services_log "rabbitmq: did not come up within 60 s"
        exit 1
    fi
    services_log "rabbitmq: started"
}

# Ensures all three services; exits 1 when one is missing or will not start.
ensure_services() {
    ensure_postgres
    ensure_rabbitmq
    ensure_redis
}
