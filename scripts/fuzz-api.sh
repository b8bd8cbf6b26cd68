#!/usr/bin/env bash
# Schema-driven API fuzzing: schemathesis (pinned, in its own venv) against
# /openapi.json of a real madre backed by vx11-stubs, on 127.0.0.1 only,
# bounded in examples and time. Fails on any 5xx, any answer that does not
# conform to the published schema, and any disagreement between the schema
# and what the server accepts. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${FUZZ_MAX_EXAMPLES:-40}
VENV=target/schemathesis-venv

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "fuzz-api: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p madre -p vx11-stubs

# Free ports: stubs at default ports + OFFSET, madre at 8001 + OFFSET.
for _ in $(seq 1 20); do
    OFFSET=$(( 20000 + (RANDOM % 20000) ))
    busy=0
    for p in 8000 8001 8002 8003 8004 8005 8006 8007 8008; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$((p + OFFSET))") 2>/dev/null; then busy=1; break; fi
    done
    [ "$busy" = 0 ] && break
done
WORK=$(mktemp -d)
cleanup() {
    [ -n "${MADRE_PID:-}" ] && kill "$MADRE_PID" 2>/dev/null || true
    [ -n "${STUBS_PID:-}" ] && kill "$STUBS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

target/debug/vx11-stubs --port-offset "$OFFSET" >"$WORK/stubs.log" 2>&1 &
STUBS_PID=$!
TOKEN=fuzz-$RANDOM-$RANDOM
env MADRE_BIND="127.0.0.1:$((8001 + OFFSET))" MADRE_DATA_DIR="$WORK/data" VX11_TOKEN="$TOKEN" RUST_LOG=warn \
    VX11_TENTACULO_LINK_URL="http://127.0.0.1:$((8000 + OFFSET))" \
    VX11_SWITCH_URL="http://127.0.0.1:$((8002 + OFFSET))" \
    VX11_HERMES_URL="http://127.0.0.1:$((8003 + OFFSET))" \
    VX11_HORMIGUERO_URL="http://127.0.0.1:$((8004 + OFFSET))" \
    VX11_MANIFESTATOR_URL="http://127.0.0.1:$((8005 + OFFSET))" \
    VX11_MCP_URL="http://127.0.0.1:$((8006 + OFFSET))" \
    VX11_SHUB_URL="http://127.0.0.1:$((8007 + OFFSET))" \
    VX11_SPAWNER_URL="http://127.0.0.1:$((8008 + OFFSET))" \
    target/debug/madre serve >"$WORK/madre.log" 2>&1 &
MADRE_PID=$!
BASE="http://127.0.0.1:$((8001 + OFFSET))"
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$((8001 + OFFSET))") 2>/dev/null; then break; fi
    sleep 0.1
done

status=0
timeout 600 "$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$BASE/openapi.json" \
    -H "X-VX11-Token: $TOKEN" --checks all --max-examples "$EXAMPLES" --request-timeout 20 \
    --generation-deterministic || status=$?
if grep -qi "panicked" "$WORK/madre.log"; then
    echo "fuzz-api: madre panicked during the run:" >&2
    grep -i -A3 "panicked" "$WORK/madre.log" >&2
    status=1
fi
exit "$status"
