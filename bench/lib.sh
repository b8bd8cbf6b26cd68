# Shared by the bench scripts (sourced): the tools they need, the release
# build they measure, and stopping what they started.

# Installs wrk and sqlite3 from Debian when missing, and builds madre and
# vx11-stubs in release mode.
bench_prepare() {
    if ! command -v wrk >/dev/null || ! command -v sqlite3 >/dev/null; then
        echo "bench: installing wrk and sqlite3 (Debian)" >&2
        apt-get update -qq && apt-get install -y -qq wrk sqlite3 >/dev/null
    fi
    cargo build --release --quiet -p madre -p vx11-stubs
}

# Plans stored in the database $WORK/data/vx11.db: `plans` since schema
# 7, `tasks` before it (so a script can measure an older build too).
plan_count() {
    sqlite3 "$WORK/data/vx11.db" "SELECT count(*) FROM plans" 2>/dev/null \
        || sqlite3 "$WORK/data/vx11.db" "SELECT count(*) FROM tasks" 2>/dev/null \
        || echo 0
}

# Starts vx11-stubs at the default ports + $OFFSET (127.0.0.1, logs in
# $WORK). Sets STUBS_PID. Needs scripts/stub-urls.sh sourced.
start_stubs() {
    target/release/vx11-stubs --port-offset "$OFFSET" >"$WORK/stubs.log" 2>&1 &
    STUBS_PID=$!
}

# Starts madre binary $1 on port 8001 + $OFFSET against those stubs, data
# in $WORK/data, with further settings given as NAME=value after it
# (RUST_LOG from $LOG_LEVEL, default warn), and waits until it answers
# /health. Sets MADRE_PID and BASE; exits when it does not start.
start_madre() {
    local bin=$1
    shift
    BASE="http://127.0.0.1:$((8001 + OFFSET))"
    env MADRE_BIND="127.0.0.1:$((8001 + OFFSET))" MADRE_DATA_DIR="$WORK/data" \
        RUST_LOG="${LOG_LEVEL:-warn}" "$@" $(vx11_stub_urls "$OFFSET") \
        "$bin" serve >>"$WORK/madre.log" 2>&1 &
    MADRE_PID=$!
    for _ in $(seq 1 300); do
        curl -fsS "$BASE/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: madre did not start" >&2; cat "$WORK/madre.log" >&2; exit 1
}

# Stops a process this script started, if it still runs.
stop() { [ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }

# Makes the run's work directory (WORK) and token, and a throw-away
# PostgreSQL cluster (pg_cluster_start); on exit, stops whatever the script
# started (MADRE_PID, SECOND_PID, STUBS_PID) and removes them all.
bench_pg_setup() {
    WORK=$(mktemp -d)
    export VX11_TOKEN=bench-$RANDOM-$RANDOM
    trap bench_pg_cleanup EXIT
    pg_cluster_start
}

bench_pg_cleanup() {
    stop "${MADRE_PID:-}"; stop "${SECOND_PID:-}"; stop "${STUBS_PID:-}"
    pg_cluster_stop; rm -rf "$WORK"
}

# Starts a throw-away PostgreSQL cluster (scripts/pg-test-cluster.sh) in
# a new directory, PG_DIR, and sets ADMIN to its administrator's
# connection string; pg_cluster_stop stops and removes it.
pg_cluster_start() {
    PG_DIR=$(mktemp -d /tmp/madre-pg-bench-XXXXXX)
    ADMIN=$(./scripts/pg-test-cluster.sh start "$PG_DIR")
}

pg_cluster_stop() {
    if [ -n "${PG_DIR:-}" ]; then
        ./scripts/pg-test-cluster.sh stop "$PG_DIR"
        rm -rf "$PG_DIR"
    fi
}

# Runs the cluster's psql with these arguments, as the postgres user when
# run as root (the server refuses root).
psql_as_server() {
    local psql
    psql=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/psql
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$psql" "$@"; else "$psql" "$@"; fi
}

# Creates database $1 in the cluster.
pg_create_database() {
    psql_as_server "$ADMIN" -qc "CREATE DATABASE $1" >/dev/null
}
