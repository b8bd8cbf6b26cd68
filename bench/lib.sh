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

# Stops a process this script started, if it still runs.
stop() { [ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
