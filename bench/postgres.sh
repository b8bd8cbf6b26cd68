#!/usr/bin/env bash
# chat-low and plans-read on SQLite, on PostgreSQL with one replica, and on
# PostgreSQL with two replicas (the load split evenly between them, as a
# proxy would), in one run, with the ceiling (/health) of the same run.
# Release binaries against vx11-stubs (zero added latency), wrk, 127.0.0.1
# only, every load bounded by BENCH_SECONDS. PostgreSQL is a throw-away
# cluster of Debian's server (scripts/pg-test-cluster.sh: a unix socket,
# fsync off, so a commit survives a crash of the processes but not of the
# machine: the durability of SQLite's default MADRE_SQLITE_SYNC=normal).
#
# The host's speed drifts over minutes, so the backends run side by side
# (each idle while another is loaded) and are measured in BENCH_ROUNDS
# rounds (default 3), each round loading every backend in turn, in an
# order that alternates between rounds. A ratio is taken within each
# round (a backend against SQLite or the ceiling measured a few seconds
# apart), and the tables give the median over the rounds, and the lowest.
# Writes bench/out/postgres.tsv and prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stub-urls.sh
. scripts/stub-urls.sh
# shellcheck source=bench/lib.sh
. bench/lib.sh

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
CONCURRENCIES=${BENCH_CONCURRENCY:-"16 64"}
SEED_PLANS=${BENCH_SEED_PLANS:-20000}
OFFSET=${BENCH_PORT_OFFSET:-14000}
MADRE_BIN=${MADRE_BIN:-target/release/madre}
LOG_LEVEL=${BENCH_RUST_LOG:-warn}

bench_prepare
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || {
    echo "bench: installing postgresql (Debian)" >&2
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
}

OUT=bench/out
mkdir -p "$OUT"
: >"$OUT/postgres.tsv"
bench_pg_setup
pg_create_database bench1
pg_create_database bench2
start_stubs

# The Madre processes of every backend, stopped on exit with the rest.
PIDS=()
trap 'for p in "${PIDS[@]}"; do stop "$p"; done; bench_pg_cleanup' EXIT

# Starts madre on port 8001 + OFFSET + $1 with its data in $WORK/$2 and
# the settings given as NAME=value after them, and waits until it answers
# /health.
start_instance() {
    local port=$((8001 + OFFSET + $1)) dir=$2
    shift 2
    # shellcheck disable=SC2046 # the stub URLs are separate NAME=value words.
    env MADRE_BIND="127.0.0.1:$port" MADRE_DATA_DIR="$WORK/$dir" RUST_LOG="$LOG_LEVEL" "$@" \
        $(vx11_stub_urls "$OFFSET") "$MADRE_BIN" serve >>"$WORK/$dir.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench: madre ($dir) did not start" >&2; cat "$WORK/$dir.log" >&2; exit 1
}

# The backends, side by side: SQLite; PostgreSQL with one replica on
# database bench1; two replicas (bench-a, bench-b) on database bench2.
url() { echo "http://127.0.0.1:$((8001 + OFFSET + $1))"; }
start_instance 0 sqlite
start_instance 100 pg-1 MADRE_DATABASE_URL="$ADMIN dbname=bench1" MADRE_REPLICA_ID=bench-a
start_instance 200 pg-2a MADRE_DATABASE_URL="$ADMIN dbname=bench2" MADRE_REPLICA_ID=bench-a
start_instance 300 pg-2b MADRE_DATABASE_URL="$ADMIN dbname=bench2" MADRE_REPLICA_ID=bench-b
declare -A BASES=([sqlite]="$(url 0)" [pg-1]="$(url 100)" [pg-2]="$(url 200) $(url 300)")
BACKENDS=(sqlite pg-1 pg-2)

# One wrk run of `script` on `path` at concurrency $2, split over the
# base URLs given after it (at least one connection each); prints the
# RESULT line (summed).
load() {
    local script=$1 c=$2 path=$3
    shift 3
    local n=$# share=$(( c / $# )) i=0
    [ "$share" -ge 1 ] || share=1
    # Two wrk threads in all, whichever the number of replicas, and no
    # more threads than connections (wrk refuses that).
    local threads=$(( 2 / $# ))
    [ "$threads" -ge 1 ] || threads=1
    [ "$threads" -le "$share" ] || threads=$share
    for base in "$@"; do
        wrk -t"$threads" -c"$share" -d"${SECONDS_PER_RUN}s" --timeout 10s -s "$script" "$base$path" \
            | grep '^RESULT' >"$WORK/load.$i" &
        i=$((i + 1))
    done
    wait_loads "$n"
    awk '{ for (f = 2; f <= NF; f++) { split($f, kv, "="); v[kv[1]] += kv[2]; m[kv[1]] = (m[kv[1]] > kv[2] ? m[kv[1]] : kv[2]) } }
         END { printf "RESULT requests=%d rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d\n",
               v["requests"], v["rps"], m["p50_ms"], m["p99_ms"], m["p999_ms"], v["errors"] }' "$WORK"/load.*
    rm -f "$WORK"/load.*
}

# Waits for the $1 wrk runs `load` started (not for the servers).
wait_loads() {
    local deadline=$((SECONDS + SECONDS_PER_RUN + 30))
    while [ "$(ls "$WORK"/load.* 2>/dev/null | xargs -r grep -l RESULT | wc -l)" -lt "$1" ]; do
        [ $SECONDS -lt $deadline ] || { echo "bench: wrk did not finish" >&2; exit 1; }
        sleep 0.2
    done
}

# Records figure $2 at concurrency $3 of round $1.
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" | tee -a "$OUT/postgres.tsv"; }

# Plans in the database of backend $1.
plans_of() {
    case $1 in
    sqlite) sqlite3 "$WORK/sqlite/vx11.db" "SELECT count(*) FROM plans" ;;
    pg-1) psql_as_server "$ADMIN dbname=bench1" -tAc "SELECT count(*) FROM plans" ;;
    pg-2) psql_as_server "$ADMIN dbname=bench2" -tAc "SELECT count(*) FROM plans" ;;
    esac
}

# The backends in round $1's order: as listed, then reversed, and so on.
order() {
    if [ $(($1 % 2)) = 1 ]; then echo "${BACKENDS[@]}"; else printf '%s\n' "${BACKENDS[@]}" | tac | xargs; fi
}

# Every round of `scenario` ($1, also the name of its script) on `path`.
rounds() {
    local scenario=$1 script=$2 path=$3 round c backend
    for round in $(seq 1 "$ROUNDS"); do
        for c in $CONCURRENCIES; do
            record "$round" "$scenario ceiling" "$c" "$(load bench/ceiling.lua "$c" /health "${BASES[sqlite]}")"
            for backend in $(order "$round"); do
                # shellcheck disable=SC2086 # BASES holds one or two URLs.
                record "$round" "$scenario $backend" "$c" "$(load "$script" "$c" "$path" ${BASES[$backend]})"
            done
        done
    done
}

# A short warm-up of each backend, then the rounds of chat-low.
for backend in "${BACKENDS[@]}"; do
    for base in ${BASES[$backend]}; do
        wrk -t1 -c8 -d2s --timeout 10s -s bench/chat_low.lua "$base/madre/chat" >/dev/null
    done
done
rounds chat-low bench/chat_low.lua /madre/chat

# plans-read reads the newest page of a table of at least SEED_PLANS plans,
# seeded 10 s at a time, at most 60 times a backend.
for backend in "${BACKENDS[@]}"; do
    read -r first _ <<<"${BASES[$backend]}"
    for seeding in $(seq 0 60); do
        plans=$(plans_of "$backend")
        [[ $plans =~ ^[0-9]+$ ]] || { echo "bench: cannot count the plans of $backend" >&2; exit 1; }
        [ "$plans" -lt "$SEED_PLANS" ] || break
        [ "$seeding" -lt 60 ] || { echo "bench: $backend has $plans plans after 60 seedings" >&2; exit 1; }
        wrk -t2 -c64 -d10s --timeout 10s -s bench/seed.lua "$first/madre/chat" >/dev/null
    done
done
rounds plans-read bench/plans_read.lua "/madre/plans?limit=20"

# The tables: per scenario, backend and concurrency, the median over the
# rounds of requests/s, of p99, and of the ratios to the same round's
# ceiling and SQLite figure, with the lowest ratio to SQLite of a round.
echo
echo "| scenario | backend | concurrency | requests/s | p99 ms | / ceiling | / SQLite | / SQLite, lowest round |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'\t' -v concurrencies="$CONCURRENCIES" '
function field(line, key,    v) { v = line; sub(".*" key "=", "", v); sub(/ .*/, "", v); return v + 0 }
function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function lowest(list,    a, n, i, m) { n = split(list, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] < m) m = a[i]; return m }
{ rps[$1, $2, $3] = field($4, "rps"); p99[$1, $2, $3] = field($4, "p99_ms"); rounds[$1] = 1 }
END {
    nc = split(concurrencies, cs, " ")
    split("chat-low plans-read", scenarios, " "); split("ceiling sqlite pg-1 pg-2", backends, " ")
    for (s = 1; s <= 2; s++) for (b = 1; b <= 4; b++) for (k = 1; k <= nc; k++) {
        name = scenarios[s] " " backends[b]; c = cs[k]; r = ""; p = ""; top = ""; lite = ""
        for (round in rounds) {
            if (!((round, name, c) in rps)) continue
            r = r " " rps[round, name, c]; p = p " " p99[round, name, c]
            top = top " " 100 * rps[round, name, c] / rps[round, scenarios[s] " ceiling", c]
            lite = lite " " 100 * rps[round, name, c] / rps[round, scenarios[s] " sqlite", c]
        }
        if (r == "") continue
        if (backends[b] == "ceiling") {
            printf "| %s | ceiling (/health) | %s | %.0f | %.1f | 100 %% | - | - |\n", scenarios[s], c, median(r), median(p)
            continue
        }
        printf "| %s | %s | %s | %.0f | %.1f | %.1f %% | %.0f %% | %.0f %% |\n", scenarios[s], backends[b], c,
            median(r), median(p), median(top), median(lite), lowest(lite)
    }
}' "$OUT/postgres.tsv"
echo
echo "Every round (requests/s; PostgreSQL / SQLite of the same round):"
echo
echo "| round | scenario | concurrency | sqlite | pg-1 | pg-2 | pg-1 / SQLite | pg-2 / SQLite |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'\t' '
function field(line, key,    v) { v = line; sub(".*" key "=", "", v); sub(/ .*/, "", v); return v + 0 }
$2 !~ / ceiling$/ { split($2, nb, " "); rps[$1, nb[1], $3, nb[2]] = field($4, "rps"); if (!(($1, nb[1], $3) in seen)) { seen[$1, nb[1], $3] = 1; keys[++n] = $1 SUBSEP nb[1] SUBSEP $3 } }
END {
    for (i = 1; i <= n; i++) {
        split(keys[i], k, SUBSEP); l = rps[k[1], k[2], k[3], "sqlite"]; a = rps[k[1], k[2], k[3], "pg-1"]; b = rps[k[1], k[2], k[3], "pg-2"]
        printf "| %s | %s | %s | %.0f | %.0f | %.0f | %.0f %% | %.0f %% |\n", k[1], k[2], k[3], l, a, b, 100 * a / l, 100 * b / l
    }
}' "$OUT/postgres.tsv"
