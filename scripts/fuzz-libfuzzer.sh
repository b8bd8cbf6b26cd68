#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz / libFuzzer, nightly) of the parser and
# of request decoding, each target bounded to FUZZ_SECONDS (default 60).
# Separate from the test suite; findings land in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${FUZZ_SECONDS:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
for target in parse decode_requests; do
    echo "== $target (${SECONDS_PER_TARGET}s)" >&2
    (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_PER_TARGET" -max_len=16384)
done
