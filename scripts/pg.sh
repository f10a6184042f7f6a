#!/usr/bin/env bash
# A throw-away PostgreSQL 15 for the treaty-storage tests.
#
#   scripts/pg.sh start   start it (or reuse the one already running for this checkout) and
#                         print `export TREATY_TEST_POSTGRES_URL=...` on stdout, so
#                         `eval "$(scripts/pg.sh start)"` sets up the current shell
#   scripts/pg.sh url     print the URL of the running server (fails if none)
#   scripts/pg.sh stop    stop it and delete its data directory
#
# The cluster lives in /tmp/treaty-pg-<checksum of this checkout's path> (override with
# TREATY_PG_DIR), listens on 127.0.0.1 only, on a free port, with trust authentication for the
# `postgres` user; fsync and the other durability settings are PostgreSQL's defaults.
# Binaries come from /usr/lib/postgresql/15/bin (override with TREATY_PG_BIN). Running as
# root, the server runs as the `postgres` user. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${TREATY_PG_BIN:-/usr/lib/postgresql/15/bin}
dir=${TREATY_PG_DIR:-/tmp/treaty-pg-$(pwd | cksum | cut -d' ' -f1)}
data=$dir/data
urlfile=$dir/url

say() { echo "pg.sh: $*" >&2; }
die() { say "$*"; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

need_binaries() {
  for b in initdb pg_ctl pg_isready; do
    [ -x "$bin/$b" ] || die "PostgreSQL binary $bin/$b not found: install PostgreSQL 15 (e.g. 'apt-get install postgresql-15') or set TREATY_PG_BIN to the directory holding initdb and pg_ctl"
  done
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    die "running as root but there is no 'postgres' user to run the server as (PostgreSQL refuses to run as root)"
  fi
}

running() {
  [ -f "$urlfile" ] && [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  need_binaries
  if running; then
    say "reusing the PostgreSQL already running in $dir"
    echo "export TREATY_TEST_POSTGRES_URL=$(cat "$urlfile")"
    return
  fi
  # Anything left from a crashed run is stale.
  if [ -d "$dir" ]; then
    [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
  fi
  mkdir -p "$dir" || die "cannot create $dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  say "initialising a cluster in $data"
  as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
    die "initdb failed; see $dir/initdb.log"
  local attempt port
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    port=$((20000 + (RANDOM % 20000)))
    port_free "$port" || continue
    if as_pg "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=300" start >/dev/null 2>&1; then
      echo "postgres://postgres@127.0.0.1:$port/postgres" >"$urlfile"
      say "PostgreSQL running on 127.0.0.1:$port (log: $dir/server.log); stop it with scripts/pg.sh stop"
      echo "export TREATY_TEST_POSTGRES_URL=$(cat "$urlfile")"
      return
    fi
    say "start on port $port failed (attempt $attempt); retrying on another port"
  done
  die "could not start PostgreSQL; see $dir/server.log"
}

stop() {
  if [ -d "$data" ] && [ -x "$bin/pg_ctl" ]; then
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  say "stopped and removed $dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || die "no PostgreSQL running for this checkout (scripts/pg.sh start)"; cat "$urlfile" ;;
  *) die "usage: scripts/pg.sh start|stop|url" ;;
esac
