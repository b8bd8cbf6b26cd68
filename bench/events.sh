#!/usr/bin/env bash
# The live event stream under chat load: chat-low (wrk, 127.0.0.1 only)
# against a release madre and vx11-stubs, alternating runs with no reader
# and with READERS readers of GET /madre/events (curl, every plan's events,
# each bounded by the run's length), and what the readers received.
#
#   READERS=32 C=16 SECS=8 ROUNDS=2 ./bench/events.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

READERS=${READERS:-32}
C=${C:-16}
SECS=${SECS:-8}
ROUNDS=${ROUNDS:-2}
OFFSET=${BENCH_PORT_OFFSET:-18000}
bench_prepare
WORK=$(mktemp -d)
export VX11_TOKEN=bench-$RANDOM-$RANDOM
cleanup() { stop "${MADRE_PID:-}"; stop "${STUBS_PID:-}"; rm -rf "$WORK"; }
trap cleanup EXIT

start_stubs
start_madre target/release/madre
wrk -t2 -c"$C" -d3s -s bench/chat_low.lua "$BASE/madre/chat" >/dev/null   # warm up

TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' /proc/"$MADRE_PID"/stat; }
# One wrk run; prints its RESULT line and madre's CPU per chat made.
run() {
    local c0 n0 result
    c0=$(cpu); n0=$(plan_count)
    result=$(wrk -t2 -c"$C" -d"${SECS}s" -s bench/chat_low.lua "$BASE/madre/chat" | grep RESULT)
    echo "$result madre_cpu_us_per_chat=$(( ($(cpu) - c0) * 1000000 / TICK / ($(plan_count) - n0) ))"
}
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round, no reader: $(run)"
    n0=$(plan_count)
    for i in $(seq 1 "$READERS"); do
        timeout "$((SECS + 2))" curl -sN -H "X-VX11-Token: $VX11_TOKEN" \
            "$BASE/madre/events" >"$WORK/reader.$i" 2>/dev/null &
    done
    sleep 0.5
    echo "round $round, $READERS readers: $(run)"
    n1=$(plan_count)
    wait_readers=$(jobs -p | grep -v -e "^$MADRE_PID\$" -e "^$STUBS_PID\$" || true)
    for pid in $wait_readers; do wait "$pid" 2>/dev/null || true; done
    # A LOW chat is four journal events; each reader should have all of them.
    expected=$(( (n1 - n0) * 4 ))
    fewest=$(for i in $(seq 1 "$READERS"); do grep -c '^id: ' "$WORK/reader.$i" || true; done | sort -n | head -1)
    echo "round $round: plans during the reader run $((n1 - n0)), events expected per reader $expected, fewest a reader received $fewest"
done
