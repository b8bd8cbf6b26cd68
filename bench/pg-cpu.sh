#!/usr/bin/env bash
# Where a LOW chat's CPU goes on PostgreSQL (one replica): chat-low at one
# concurrency (BENCH_CONCURRENCY, a single number, default 64) for
# BENCH_SECONDS, then the CPU time of Madre, of the PostgreSQL server's
# processes and of the stubs over the run (from /proc), per chat; and the
# writer's statements and commits per chat (/metrics). Same throw-away
# cluster as bench/postgres.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
OFFSET=${BENCH_PORT_OFFSET:-14000}
MADRE_BIN=${MADRE_BIN:-target/release/madre}
LOG_LEVEL=${BENCH_RUST_LOG:-warn}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
[[ $CONCURRENCY =~ ^[0-9]+$ ]] && [ "$CONCURRENCY" -ge 2 ] || {
    echo "bench: BENCH_CONCURRENCY is one number of connections, at least 2 (wrk's two threads)" >&2; exit 2
}

bench_prepare
bench_pg_setup
pg_create_database bench
start_stubs
start_madre "$MADRE_BIN" MADRE_DATABASE_URL="$ADMIN dbname=bench" MADRE_REPLICA_ID=bench-a

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
server_ticks() {
    local t=0 p
    for p in $(pgrep -u postgres); do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0))); done
    echo "$t"
}
metric() { curl -fsS -H "X-VX11-Token: $VX11_TOKEN" "$BASE/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

m0=$(ticks "$MADRE_PID"); s0=$(ticks "$STUBS_PID"); p0=$(server_ticks)
st0=$(metric madre_db_statements_total); c0=$(metric madre_db_commits_total)
line=$(wrk -t2 -c"$CONCURRENCY" -d"${SECONDS_PER_RUN}s" --timeout 10s -s bench/chat_low.lua "$BASE/madre/chat" | grep '^RESULT')
m1=$(ticks "$MADRE_PID"); s1=$(ticks "$STUBS_PID"); p1=$(server_ticks)
st1=$(metric madre_db_statements_total); c1=$(metric madre_db_commits_total)
chats=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
hz=$(getconf CLK_TCK)
echo "$line"
awk -v n="$chats" -v hz="$hz" -v m=$((m1 - m0)) -v p=$((p1 - p0)) -v s=$((s1 - s0)) \
    -v st=$((st1 - st0)) -v c=$((c1 - c0)) 'BEGIN {
    printf "CPU per chat: madre %.0f us, postgresql %.0f us, stubs %.0f us\n", 1e6 * m / hz / n, 1e6 * p / hz / n, 1e6 * s / hz / n
    printf "per chat: %.1f writer statements, %.2f commits (batched under load)\n", st / n, c / n }'
