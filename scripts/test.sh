#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests, the
# end-to-end tests and the doc tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest not found: installing it (once)" >&2
    cargo install --locked cargo-nextest
fi

cargo nextest run --workspace --no-fail-fast
cargo test --workspace --doc
./scripts/fuzz-api.sh
