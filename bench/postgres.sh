#!/usr/bin/env bash
# chat-low and plans-read on SQLite, on PostgreSQL with one replica, and on
# PostgreSQL with two replicas (the load split evenly between them, as a
# proxy would), in one run, with the ceiling (/health) of the same run.
# Release binaries against vx11-stubs (zero added latency), wrk, 127.0.0.1
# only, every run bounded by BENCH_SECONDS. PostgreSQL is a throw-away
# cluster of Debian's server (scripts/pg-test-cluster.sh: a unix socket,
# fsync off, so a commit survives a crash of the processes but not of the
# machine: the durability of SQLite's default MADRE_SQLITE_SYNC=normal).
# Writes bench/out/postgres.tsv and prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONCURRENCIES=${BENCH_CONCURRENCY:-"16 64"}
SEED_PLANS=${BENCH_SEED_PLANS:-20000}
OFFSET=${BENCH_PORT_OFFSET:-14000}
MADRE_BIN=${MADRE_BIN:-target/release/madre}
LOG_LEVEL=${BENCH_RUST_LOG:-warn}

bench_prepare
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "bench: installing postgresql (Debian)" >&2
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
}

OUT=bench/out
mkdir -p "$OUT"
: >"$OUT/postgres.tsv"
SECOND_PID=
bench_pg_setup
pg_create_database bench
DB_URL="$ADMIN dbname=bench"
start_stubs

# One wrk run of `script` on `path` at concurrency $2, split over the
# replicas' base URLs given after it; prints the RESULT line (summed).
load() {
    local script=$1 c=$2 path=$3
    shift 3
    local n=$# share=$(( c / $# )) i=0
    # Two wrk threads in all, whichever the number of replicas.
    local threads=$(( 2 / $# ))
    for base in "$@"; do
        wrk -t"$threads" -c"$share" -d"${SECONDS_PER_RUN}s" --timeout 10s -s "$script" "$base$path" \
            | grep '^RESULT' >"$WORK/load.$i" &
        i=$((i + 1))
    done
    wait_loads "$n"
    awk '{ for (f = 2; f <= NF; f++) { split($f, kv, "="); v[kv[1]] += kv[2]; m[kv[1]] = (m[kv[1]] > kv[2] ? m[kv[1]] : kv[2]) } }
         END { printf "RESULT requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d\n",
               v["requests"], v["rps"], m["p50_ms"], m["p99_ms"], m["p999_ms"], v["errors"] }' "$WORK"/load.*
    rm -f "$WORK"/load.*
}

# Waits for the $1 wrk runs `load` started (not for the servers).
wait_loads() {
    local deadline=$((SECONDS + SECONDS_PER_RUN + 30))
    while [ "$(ls "$WORK"/load.* 2>/dev/null | xargs -r grep -l RESULT | wc -l)" -lt "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "bench: wrk did not finish" >&2; exit 1; }
        sleep 0.2
    done
}

record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$OUT/postgres.tsv"; }

# Plans in the database of backend $1.
plans_of() {
    case $1 in
    sqlite) plan_count ;;
    *) psql_as_server "$DB_URL" -tAc "SELECT count(*) FROM plans" ;;
    esac
}

# Starts backend $1 (sqlite, pg-1 or pg-2): sets BASES to its URLs.
start_backend() {
    case $1 in
    sqlite)
        rm -rf "$WORK/data"
        start_madre "$MADRE_BIN"
        BASES=("$BASE")
        ;;
    pg-1)
        start_madre "$MADRE_BIN" MADRE_DATABASE_URL="$DB_URL" MADRE_REPLICA_ID=bench-a
        BASES=("$BASE")
        ;;
    pg-2)
        start_madre "$MADRE_BIN" MADRE_DATABASE_URL="$DB_URL" MADRE_REPLICA_ID=bench-a
        start_second
        BASES=("$BASE" "$SECOND_BASE")
        ;;
    esac
}

# Starts a second replica (bench-b) on the next port, its own data dir,
# the same stubs and database. Sets SECOND_PID and SECOND_BASE.
start_second() {
    local port=$((8001 + OFFSET + 100))
    SECOND_BASE="http://127.0.0.1:$port"
    env MADRE_BIND="127.0.0.1:$port" MADRE_DATA_DIR="$WORK/data-b" RUST_LOG="$LOG_LEVEL" \
        MADRE_DATABASE_URL="$DB_URL" MADRE_REPLICA_ID=bench-b $(vx11_stub_urls "$OFFSET") \
        "$MADRE_BIN" serve >>"$WORK/madre-b.log" 2>&1 &
    SECOND_PID=$!
    for _ in $(seq 1 300); do
        curl -fsS "$SECOND_BASE/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: the second replica did not start" >&2; cat "$WORK/madre-b.log" >&2; exit 1
}

stop_backend() { stop "$MADRE_PID"; stop "$SECOND_PID"; MADRE_PID= SECOND_PID=; }

start_backend sqlite
for c in $CONCURRENCIES; do record ceiling "$c" "$(load bench/ceiling.lua "$c" /health "$BASE")"; done
stop_backend

for backend in sqlite pg-1 pg-2; do
    start_backend "$backend"
    for c in $CONCURRENCIES; do
        record "chat-low $backend" "$c" "$(load bench/chat_low.lua "$c" /madre/chat "${BASES[@]}")"
    done
    # plans-read reads the newest page of a table of SEED_PLANS plans.
    have=$(plans_of "$backend")
    while [ "$have" -lt "$SEED_PLANS" ]; do
        wrk -t2 -c64 -d10s --timeout 10s -s bench/seed.lua "${BASES[0]}/madre/chat" >/dev/null
        have=$(plans_of "$backend")
    done
    for c in $CONCURRENCIES; do
        record "plans-read $backend" "$c" "$(load bench/plans_read.lua "$c" "/madre/plans?limit=20" "${BASES[@]}")"
    done
    stop_backend
done

rate() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n && $2 == c { sub(/.*rps=/, "", $3); sub(/ .*/, "", $3); print $3 }' "$OUT/postgres.tsv"; }
p99() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n && $2 == c { sub(/.*p99_ms=/, "", $3); sub(/ .*/, "", $3); print $3 }' "$OUT/postgres.tsv"; }
echo
echo "| scenario | backend | concurrency | requests/s | p99 ms | / ceiling | / SQLite |"
echo "|---|---|---|---|---|---|---|"
for scenario in chat-low plans-read; do
    for backend in sqlite pg-1 pg-2; do
        for c in $CONCURRENCIES; do
            r=$(rate "$scenario $backend" "$c"); top=$(rate ceiling "$c"); lite=$(rate "$scenario sqlite" "$c")
            awk -v s="$scenario" -v b="$backend" -v c="$c" -v r="$r" -v t="$top" -v l="$lite" -v p="$(p99 "$scenario $backend" "$c")" 'BEGIN {
                printf "| %s | %s | %s | %.0f | %s | %.1f %% | %.0f %% |\n", s, b, c, r, p, 100 * r / t, 100 * r / l }'
        done
    done
done
