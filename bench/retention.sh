#!/usr/bin/env bash
# The file stays bounded under steady chat load when finished plans are
# archived (issue 25): madre with MADRE_PLAN_RETENTION_DAYS set to about a
# minute, chat-low (wrk, 127.0.0.1 only) for RETENTION_SECONDS, and every
# SAMPLE_S the database's size (file + WAL), its plans and the archives'
# size. Writes bench/out/retention.tsv.
#
#   RETENTION_SECONDS=600 SAMPLE_S=30 C=16 ./bench/retention.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

TOTAL=${RETENTION_SECONDS:-600}
SAMPLE=${SAMPLE_S:-30}
C=${C:-16}
DAYS=${RETENTION_DAYS:-0.000694}   # about 60 s
OFFSET=${BENCH_PORT_OFFSET:-18000}
bench_prepare
mkdir -p bench/out
WORK=$(mktemp -d)
export VX11_TOKEN=bench-$RANDOM-$RANDOM
cleanup() { stop "${WRK_PID:-}"; stop "${MADRE_PID:-}"; stop "${STUBS_PID:-}"; rm -rf "$WORK"; }
trap cleanup EXIT

start_stubs
start_madre target/release/madre MADRE_PLAN_RETENTION_DAYS="$DAYS"

wrk -t2 -c"$C" -d"${TOTAL}s" --timeout 10s -s bench/chat_low.lua "$BASE/madre/chat" >"$WORK/wrk.txt" &
WRK_PID=$!
size() { stat -c %s "$1" 2>/dev/null || echo 0; }
printf 'seconds\tdb_bytes\twal_bytes\tplans\tarchived_plans\tarchive_bytes\n' | tee bench/out/retention.tsv
for t in $(seq "$SAMPLE" "$SAMPLE" "$TOTAL"); do
    sleep "$SAMPLE"
    db=$(size "$WORK/data/vx11.db"); wal=$(size "$WORK/data/vx11.db-wal")
    plans=$(sqlite3 "$WORK/data/vx11.db" "SELECT count(*) FROM plans" 2>/dev/null || echo "?")
    archived=$(sqlite3 "$WORK/data/vx11.db" "SELECT count(*) FROM archived_plans" 2>/dev/null || echo "?")
    archives=$( (du -cb "$WORK/data/archive" 2>/dev/null || echo 0) | tail -1 | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$db" "$wal" "$plans" "$archived" "${archives:-0}" | tee -a bench/out/retention.tsv
done
wait "$WRK_PID" || true; WRK_PID=
grep -E "RESULT|Requests/sec" "$WORK/wrk.txt" || true
