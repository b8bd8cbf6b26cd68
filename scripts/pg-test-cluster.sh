#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the test suite, from Debian's server
# binaries: `start DIR` makes and starts one in DIR (a unix socket there,
# no TCP port, fsync off) and prints its connection string; `stop DIR`
# stops it. PostgreSQL refuses to run as root: as root the cluster runs as
# the `postgres` user.
set -euo pipefail
action=${1:?usage: pg-test-cluster.sh start|stop DIR}
dir=${2:?usage: pg-test-cluster.sh start|stop DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $action in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_server "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log"
    as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
        -o "-k $dir -c listen_addresses='' -c fsync=off -c max_connections=400" >/dev/null
    echo "host=$dir user=postgres dbname=postgres"
    ;;
stop)
    as_server "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null || true
    ;;
esac
