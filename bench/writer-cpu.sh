#!/usr/bin/env bash
# Writer-thread CPU per LOW chat: chat-low (wrk, 127.0.0.1 only) against a
# release madre and vx11-stubs, reading the CPU time of madre's
# `madre-db-writer` thread and of the whole process from /proc before and
# after the run, divided by the plans the run made. With PERF=1 it also
# records a perf profile of the writer thread (DWARF call graphs) to
# bench/out/writer.perf.data.
#
#   MADRE_BIN=another/build C=64 SECS=15 PERF=1 ./bench/writer-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

C=${C:-64}
SECS=${SECS:-15}
BIN=${MADRE_BIN:-target/release/madre}
OFFSET=${BENCH_PORT_OFFSET:-17000}
bench_prepare
mkdir -p bench/out
WORK=$(mktemp -d)
export VX11_TOKEN=bench-$RANDOM-$RANDOM
cleanup() { stop "${MADRE_PID:-}"; stop "${STUBS_PID:-}"; rm -rf "$WORK"; }
trap cleanup EXIT

start_stubs
start_madre "$BIN"

wrk -t2 -c"$C" -d3s -s bench/chat_low.lua "$BASE/madre/chat" >/dev/null   # warm up
WRITER=$(grep -l "madre-db-writer" /proc/"$MADRE_PID"/task/*/comm | head -1 | cut -d/ -f5)
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "$1"; }
w0=$(ticks /proc/"$MADRE_PID"/task/"$WRITER"/stat); p0=$(ticks /proc/"$MADRE_PID"/stat); n0=$(plan_count)
if [ -n "${PERF:-}" ]; then
    perf record -F 400 --call-graph dwarf,16384 -t "$WRITER" -o bench/out/writer.perf.data \
        -- sleep $((SECS - 2)) >/dev/null 2>&1 &
    PERF_PID=$!
fi
wrk -t2 -c"$C" -d"${SECS}s" -s bench/chat_low.lua "$BASE/madre/chat" | grep RESULT
[ -n "${PERF:-}" ] && wait "$PERF_PID"
w1=$(ticks /proc/"$MADRE_PID"/task/"$WRITER"/stat); p1=$(ticks /proc/"$MADRE_PID"/stat); n1=$(plan_count)
n=$((n1 - n0))
echo "chats=$n writer_cpu_us_per_chat=$(( (w1 - w0) * 1000000 / TICK / n )) process_cpu_us_per_chat=$(( (p1 - p0) * 1000000 / TICK / n ))"
