#!/usr/bin/env bash
# Measures what a hanging module costs (issue 21): starts vx11-stubs and
# madre on 127.0.0.1 (ports offset by OFFSET), makes MODULE accept calls and
# never answer, then sends CHATS LOW chats at once and prints the wall time
# and the slowest chat. Usage:
#   scripts/hanging-module.sh [MADRE_BINARY] [MODULE] [CHATS]
# e.g. scripts/hanging-module.sh target/debug/madre switch 50
# Defaults: target/debug/madre, switch, 50; MADRE_MAX_CONCURRENT_TASKS=10 and
# the default 5 s call timeout, as in production.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stub-urls.sh

madre_bin=${1:-target/debug/madre}
module=${2:-switch}
chats=${3:-50}
offset=${OFFSET:-21000}
stubs_bin=${STUBS_BIN:-target/debug/vx11-stubs}
port=$((8001 + offset))
token=hanging-module-token
data=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$data"
}
trap cleanup EXIT

"$stubs_bin" --port-offset "$offset" 2>"$data/stubs.log" &
pids+=($!)
env $(vx11_stub_urls "$offset") MADRE_BIND="127.0.0.1:$port" MADRE_DATA_DIR="$data" \
    VX11_TOKEN="$token" MADRE_MAX_CONCURRENT_TASKS=10 RUST_LOG=error \
    "$madre_bin" 2>"$data/madre.log" &
pids+=($!)

module_port=$(vx11_stub_urls "$offset" | grep -i "VX11_${module}_URL" | sed 's/.*://')
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null \
        && curl -sf "http://127.0.0.1:$module_port/health" >/dev/null; then
        break
    fi
    sleep 0.1
done
curl -sf -X PUT -H 'Content-Type: application/json' -d '{"hang": true}' \
    "http://127.0.0.1:$module_port/__stub/behaviour"

chat() {
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 300 \
        -H "X-VX11-Token: $token" -H 'Content-Type: application/json' \
        -d "{\"message\": \"hello number $1\"}" "http://127.0.0.1:$port/madre/chat"
}
export -f chat
export port token

started=$(date +%s.%N)
seq 1 "$chats" | xargs -P "$chats" -I{} bash -c 'chat {}' >"$data/times"
ended=$(date +%s.%N)

echo "binary: $madre_bin; $module hangs; $chats chats at once, 10 slots"
awk -v wall="$(echo "$ended - $started" | bc)" '
    { codes[$1]++; t[NR] = $2; if ($2 > max) max = $2; sum += $2 }
    END {
        for (c in codes) printf "HTTP %s: %d\n", c, codes[c]
        printf "wall time %.1f s; slowest chat %.1f s; mean %.1f s\n", wall, max, sum / NR
    }' "$data/times"
curl -s -H "X-VX11-Token: $token" "http://127.0.0.1:$port/madre/plans?limit=200" \
    | grep -o '"status":"[A-Z]*"' | sort | uniq -c
