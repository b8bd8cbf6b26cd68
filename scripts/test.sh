#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests, the
# end-to-end tests and the doc tests. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "cargo-nextest not found: installing it (once)" >&2
    cargo install --locked cargo-nextest
fi

# The approval page's browser test (bins/madre/tests/browser.rs) drives
# Debian's chromium with playwright-core from npm (Playwright's own browser
# download is not used).
PLAYWRIGHT_CORE_VERSION=1.65.2
# Only what is missing: a Node.js from elsewhere (with its own npm) stays,
# since Debian's npm would ask for Debian's nodejs in its place.
# The PostgreSQL tests (crates/db/tests/pg_schema.rs) start a throw-away
# cluster of Debian's postgresql server, as the `postgres` user when run
# as root.
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian) for the PostgreSQL and browser tests" >&2
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! grep -qs "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" \
    target/browser-test/node_modules/playwright-core/package.json; then
    echo "installing playwright-core $PLAYWRIGHT_CORE_VERSION (npm) into target/browser-test" >&2
    mkdir -p target/browser-test
    npm install --prefix target/browser-test --no-audit --no-fund --silent \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION"
fi

cargo nextest run --workspace --no-fail-fast

# madre-db's suite and the end-to-end tests again, on PostgreSQL: a
# throw-away cluster for the run, a fresh database per test (see
# crates/db/tests/support/backend.rs and tests/api/helpers.rs).
pg_dir=$(mktemp -d /tmp/madre-pg-suite-XXXXXX)
trap './scripts/pg-test-cluster.sh stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
MADRE_TEST_POSTGRES=$(./scripts/pg-test-cluster.sh start "$pg_dir")
export MADRE_TEST_POSTGRES
cargo nextest run -p madre-db -p madre-e2e --no-fail-fast
# Two real replicas on one database, one killed mid-flight: three runs in
# a row must pass (bins/madre/tests/replicas.rs).
for run in 1 2 3; do
    echo "two-replica test, run $run of 3" >&2
    cargo nextest run -p madre --test replicas
done
unset MADRE_TEST_POSTGRES
cargo test --workspace --doc
./scripts/fuzz-api.sh
