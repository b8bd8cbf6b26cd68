#!/usr/bin/env bash
# Schema-driven API fuzzing: schemathesis (pinned, in its own venv) against
# /openapi.json of a real madre backed by vx11-stubs, on 127.0.0.1 only,
# bounded in examples and time. Fails on any 5xx, any answer that does not
# conform to the published schema, and any disagreement between the schema
# and what the server accepts. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${FUZZ_MAX_EXAMPLES:-40}
VENV=target/schemathesis-venv

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "fuzz-api: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p madre -p vx11-stubs

WORK=$(mktemp -d)
cleanup() {
    [ -n "${MADRE_PID:-}" ] && kill "$MADRE_PID" 2>/dev/null || true
    [ -n "${STUBS_PID:-}" ] && kill "$STUBS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN=fuzz-$RANDOM-$RANDOM

# Starts vx11-stubs at the default ports + OFFSET and madre at 8001 + OFFSET,
# with OFFSET chosen below the kernel's ephemeral port range (32768+) so no
# outgoing connection can take a port between the check and the bind.
start_servers() {
    OFFSET=$(( 12000 + (RANDOM % 12000) ))
    for p in 8000 8001 8002 8003 8004 8005 8006 8007 8008; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$((p + OFFSET))") 2>/dev/null; then return 1; fi
    done
    target/debug/vx11-stubs --port-offset "$OFFSET" >"$WORK/stubs.log" 2>&1 &
    STUBS_PID=$!
    # The fuzzer's own unauthenticated tries must not lock its address out
    # of the rest of the run: the per-address 401 limit is off here (it has
    # tests of its own in tests/api/auth.rs).
    env MADRE_BIND="127.0.0.1:$((8001 + OFFSET))" MADRE_DATA_DIR="$WORK/data-$OFFSET" VX11_TOKEN="$TOKEN" RUST_LOG=warn \
        MADRE_AUTH_FAILURES_PER_MIN=0 \
        $(vx11_stub_urls "$OFFSET") \
        target/debug/madre serve >"$WORK/madre.log" 2>&1 &
    MADRE_PID=$!
    BASE="http://127.0.0.1:$((8001 + OFFSET))"
    for _ in $(seq 1 300); do
        if ! kill -0 "$MADRE_PID" 2>/dev/null || ! kill -0 "$STUBS_PID" 2>/dev/null; then
            echo "fuzz-api: a server exited at start (offset $OFFSET):" >&2
            cat "$WORK/madre.log" "$WORK/stubs.log" >&2
            kill "$MADRE_PID" "$STUBS_PID" 2>/dev/null || true
            wait "$MADRE_PID" "$STUBS_PID" 2>/dev/null || true
            return 1
        fi
        if curl -fsS "$BASE/health" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "fuzz-api: madre did not answer /health within 30 s" >&2
    return 1
}

started=0
for attempt in 1 2 3; do
    if start_servers; then started=1; break; fi
    echo "fuzz-api: start attempt $attempt failed; retrying" >&2
done
[ "$started" = 1 ] || { echo "fuzz-api: could not start the servers" >&2; exit 1; }

status=0
# /openapi.json needs the token like every endpoint but /health (SPEC §9).
curl -fsS -H "X-VX11-Token: $TOKEN" "$BASE/openapi.json" >"$WORK/openapi.json"
timeout 600 "$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$WORK/openapi.json" \
    --url "$BASE" -H "X-VX11-Token: $TOKEN" --checks all --max-examples "$EXAMPLES" --request-timeout 20 \
    --generation-deterministic || status=$?
if grep -qi "panicked" "$WORK/madre.log"; then
    echo "fuzz-api: madre panicked during the run:" >&2
    grep -i -A3 "panicked" "$WORK/madre.log" >&2
    status=1
fi
exit "$status"
