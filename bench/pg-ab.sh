#!/usr/bin/env bash
# Before and after in one sitting: chat-low on PostgreSQL (one replica)
# with two builds of madre, BEFORE and AFTER (paths to release binaries),
# run one after the other in each of ROUNDS rounds (default 6), each
# against a fresh database of one throw-away cluster, SECONDS_PER_RUN
# (BENCH_SECONDS, default 6) at 16 and at 64 connections. The host's
# speed drifts over minutes, so each round compares the two builds run a
# few seconds apart: the script prints every figure and, per concurrency,
# the median of AFTER / BEFORE over the rounds and how many rounds AFTER
# won. Build BEFORE from a worktree with a target directory of its own
# (sharing this one's leaves stale artifacts behind).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

: "${BEFORE:?BEFORE=path to the madre binary to compare against}"
: "${AFTER:=target/release/madre}"
ROUNDS=${ROUNDS:-6}
SECONDS_PER_RUN=${BENCH_SECONDS:-6}
OFFSET=${BENCH_PORT_OFFSET:-15200}
LOG_LEVEL=${BENCH_RUST_LOG:-warn}

bench_prepare
bench_pg_setup
start_stubs

results="$WORK/results"
n=0
for round in $(seq 1 "$ROUNDS"); do
    for side in before after; do
        bin=$BEFORE
        [ "$side" = after ] && bin=$AFTER
        n=$((n + 1))
        pg_create_database "ab$n"
        start_madre "$bin" MADRE_DATABASE_URL="$ADMIN dbname=ab$n" MADRE_REPLICA_ID=ab
        wrk -t2 -c16 -d2s --timeout 10s -s bench/chat_low.lua "$BASE/madre/chat" >/dev/null
        for c in 16 64; do
            rps=$(wrk -t2 -c"$c" -d"${SECONDS_PER_RUN}s" --timeout 10s -s bench/chat_low.lua \
                "$BASE/madre/chat" | grep '^RESULT' | sed -E 's/.*rps=([0-9.]+).*/\1/')
            echo "round $round $side C=$c $rps requests/s"
            echo "$round $side $c $rps" >>"$results"
        done
        stop "$MADRE_PID"; MADRE_PID=
    done
done
awk '{ v[$1, $2, $3] = $4; rounds[$1] = 1; cs[$3] = 1 }
END {
    for (c in cs) {
        n = 0; won = 0
        for (r in rounds) { q[++n] = v[r, "after", c] / v[r, "before", c]; if (q[n] > 1) won++ }
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
        median = (n % 2) ? q[(n + 1) / 2] : (q[n / 2] + q[n / 2 + 1]) / 2
        printf "C=%s: after / before, median of %d rounds x%.2f; after won %d of %d\n", c, n, median, won, n
    }
}' "$results"
