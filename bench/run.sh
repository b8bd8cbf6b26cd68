#!/usr/bin/env bash
# HTTP load benchmark of madre against vx11-stubs (zero added latency), with
# wrk (installed from Debian when missing). Release binaries, a fresh data
# directory, 127.0.0.1 only, every run bounded by BENCH_SECONDS.
# Writes bench/out/results.tsv and prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONCURRENCIES=${BENCH_CONCURRENCY:-"1 16 64 256"}
SEED_PLANS=${BENCH_SEED_PLANS:-100000}
OFFSET=${BENCH_PORT_OFFSET:-14000}
SCENARIOS=${BENCH_SCENARIOS:-"ceiling chat-passthrough chat-low chat-mixed plans-read"}
MADRE_BIN=${MADRE_BIN:-target/release/madre}   # another build, to compare two versions
LOG_LEVEL=${BENCH_RUST_LOG:-warn}               # Madre's RUST_LOG (its default is info)

bench_prepare

OUT=bench/out
WORK=$(mktemp -d)
mkdir -p "$OUT"
: > "$OUT/results.tsv"
export VX11_TOKEN=bench-$RANDOM-$RANDOM

cleanup() { stop "${MADRE_PID:-}"; stop "${STUBS_PID:-}"; rm -rf "$WORK"; }
trap cleanup EXIT

start_stubs

peak_rss_mib() { awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$MADRE_PID/status"; }
hermes_peak() {
    curl -fsS "http://127.0.0.1:$((8003 + OFFSET))/__stub/stats" | sed -E 's/.*"peak_in_flight":([0-9]+).*/\1/'
}

# scenario script path; one madre process per scenario so its peak RSS is its own
run_scenario() {
    local name=$1 script=$2 path=$3
    start_madre "$MADRE_BIN"
    curl -fsS -X POST "http://127.0.0.1:$((8003 + OFFSET))/__stub/reset" >/dev/null
    for c in $CONCURRENCIES; do
        local threads=$(( c < 2 ? 1 : 2 ))
        local line
        line=$(wrk -t"$threads" -c"$c" -d"${SECONDS_PER_RUN}s" --timeout 10s -s "$script" "$BASE$path" | grep '^RESULT')
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$c" "$line" "$(peak_rss_mib)" "$(hermes_peak)" | tee -a "$OUT/results.tsv"
    done
    stop "$MADRE_PID"; MADRE_PID=
}

# The bound a chat is measured against: the same three HTTP exchanges (in,
# Switch, Hermes) made by the stubs alone, with no parsing, policy or
# database (vx11-stubs' /__bench/passthrough, on the tentaculo_link port).
run_passthrough() {
    local url="http://127.0.0.1:$((8000 + OFFSET))/__bench/passthrough"
    curl -fsS -X POST "http://127.0.0.1:$((8003 + OFFSET))/__stub/reset" >/dev/null
    for c in $CONCURRENCIES; do
        local threads=$(( c < 2 ? 1 : 2 ))
        local line
        line=$(wrk -t"$threads" -c"$c" -d"${SECONDS_PER_RUN}s" --timeout 10s -s bench/chat_low.lua "$url" | grep '^RESULT')
        printf '%s\t%s\t%s\t%s\t%s\n' chat-passthrough "$c" "$line" "-" "$(hermes_peak)" | tee -a "$OUT/results.tsv"
    done
}

wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
wants ceiling && run_scenario ceiling bench/ceiling.lua /health
wants chat-passthrough && run_passthrough
wants chat-low && run_scenario chat-low bench/chat_low.lua /madre/chat
wants chat-mixed && run_scenario chat-mixed bench/chat_mixed.lua /madre/chat
if wants plans-read; then

# plans-read needs a large table: top it up to SEED_PLANS with real chats.
start_madre "$MADRE_BIN"
have=$(plan_count)
while [ "$have" -lt "$SEED_PLANS" ]; do
    # Chats run at several hundred per second here: seed in bounded slices.
    left=$((SEED_PLANS - have))
    slice=$(( left / 400 + 1 )); [ "$slice" -gt 120 ] && slice=120
    echo "bench: seeding about $left more plans through the API (${slice}s)" >&2
    wrk -t2 -c64 -d"${slice}s" --timeout 10s -s bench/seed.lua "$BASE/madre/chat" >/dev/null
    have=$(plan_count)
done
stop "$MADRE_PID"; MADRE_PID=
PLANS=$(plan_count)
run_scenario "plans-read ($PLANS plans)" bench/plans_read.lua "/madre/plans?limit=20"
fi

echo
echo "| scenario | concurrency | requests/s | p50 ms | p99 ms | p99.9 ms | errors | madre peak RSS MiB | hermes in-flight peak |"
echo "|---|---|---|---|---|---|---|---|---|"
while IFS=$'\t' read -r name c line rss peak; do
    rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
    p50=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")
    p999=$(sed -E 's/.*p999_ms=([0-9.]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line")
    echo "| $name | $c | $rps | $p50 | $p99 | $p999 | $errors | $rss | $peak |"
done <"$OUT/results.tsv"

# chat-low as a fraction of the ceiling and of the passthrough bound, at
# each concurrency all three were run at (ratios from this one run).
rate() { awk -F'\t' -v n="$1" -v c="$2" '$1 == n && $2 == c { sub(/.*rps=/, "", $3); sub(/ .*/, "", $3); print $3 }' "$OUT/results.tsv"; }
echo
echo "| concurrency | chat-low / ceiling | chat-low / passthrough |"
echo "|---|---|---|"
for c in $CONCURRENCIES; do
    low=$(rate chat-low "$c"); top=$(rate ceiling "$c"); pass=$(rate chat-passthrough "$c")
    [ -n "$low" ] || continue
    awk -v c="$c" -v l="$low" -v t="${top:-0}" -v p="${pass:-0}" 'BEGIN {
        printf "| %s | %s | %s |\n", c, (t > 0 ? sprintf("%.2f %%", 100 * l / t) : "-"), (p > 0 ? sprintf("%.1f %%", 100 * l / p) : "-") }'
done

# The same scenarios on PostgreSQL, with one and two replicas, against
# SQLite in the same run (issue 24): with the whole set of scenarios, or
# with BENCH_POSTGRES=1; BENCH_POSTGRES=0 leaves it out.
with_postgres=1
[ -n "${BENCH_SCENARIOS:-}" ] && with_postgres=0
if [ "${BENCH_POSTGRES:-$with_postgres}" = 1 ]; then
    cleanup; MADRE_PID= STUBS_PID=
    echo
    ./bench/postgres.sh
fi
