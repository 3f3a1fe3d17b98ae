#!/usr/bin/env bash
# A throw-away PostgreSQL server for the inspection-log tests (tests/test_inspection_log.py).
#
#   .ci/postgres.sh start   # prints postgresql+psycopg://postgres@127.0.0.1:PORT/vispect_test
#   .ci/postgres.sh stop
#
# Debian's server binaries (apt-get install postgresql), a cluster of its own in build/postgres
# (never the system one), listening on 127.0.0.1 only with trust authentication, on a port that
# was free when the cluster was made. Idempotent: a running cluster is reused and its URL printed.
# initdb and postgres refuse to run as root, so as root they run as the postgres user.
set -euo pipefail
cd "$(dirname "$0")/.."

data=build/postgres
database=vispect_test
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "PostgreSQL's server is not installed: apt-get install postgresql" >&2
  exit 1
fi
as_owner=()
[ "$(id -u)" -eq 0 ] && as_owner=(runuser -u postgres --)

port() { sed -n 4p "$data/postmaster.pid"; }  # the postmaster.pid layout: line 4 is the port

case "${1:-}" in
  start)
    if [ ! -f "$data/PG_VERSION" ]; then
      mkdir -p "$data"
      [ ${#as_owner[@]} -gt 0 ] && chown postgres: "$data"
      "${as_owner[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
      free_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\n" \
        "$free_port" "$(realpath "$data")" >>"$data/postgresql.conf"
    fi
    if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
      "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null
    fi
    if [ -z "$("$bin/psql" -h 127.0.0.1 -p "$(port)" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'")" ]; then
      "$bin/createdb" -h 127.0.0.1 -p "$(port)" -U postgres "$database"
    fi
    echo "postgresql+psycopg://postgres@127.0.0.1:$(port)/$database"
    ;;
  stop)
    if [ -f "$data/PG_VERSION" ]; then
      "${as_owner[@]}" "$bin/pg_ctl" -D "$data" -m fast stop >/dev/null 2>&1 || true
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
