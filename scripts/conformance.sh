#!/usr/bin/env bash
# Conformance: each instrumented client library's own test suite, run as it ships, must have
# the same outcome for every test with our instrumentation on as without it (issue 19).
#
#   scripts/conformance.sh [--fast] [SUITE ...]
#   CONFORMANCE_MODES="base ours" scripts/conformance.sh redis   # fewer modes
#
# SUITE: sqlite3 psycopg2 redis sqlalchemy asyncpg contrib-redis contrib-sqlalchemy
#        contrib-psycopg2 contrib-psycopg contrib-asyncpg (default: all; --fast: the subset
#        .ci/run runs).
# Each suite runs in mode `base` (uninstrumented) and `ours` (our instrumentors on a
# hand-built TracerProvider with StateCoherenceSpanProcessor, via the pytest plugin in
# scripts/conformance/); where contrib instruments the library, also `contrib` and `both`
# (contrib's, then ours beside it). Fails on any test whose outcome differs between base
# and ours, or between contrib and both; and on an instrumented run that made no span.
# contrib-* suites are contrib's own tests (they instrument contrib themselves): `ours` adds
# ours beside it.
#
# Suites come from what the registries serve: PyPI sdists (pip download --no-binary) of the
# installed versions, CPython's own `test.test_sqlite3`. Suites that flush data get private
# servers: a Redis on its own port, a scratch PostgreSQL database, both removed at exit.
# Results (counts, differences) go to $CONFORMANCE_DIR/results.txt; see docs/conformance.md.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
WORK=${CONFORMANCE_DIR:-${TMPDIR:-/tmp}/agentstate-conformance}
REDIS_PORT=${CONFORMANCE_REDIS_PORT:-6391}
PGHOST_=${CONFORMANCE_PGHOST:-127.0.0.1}
PGUSER_=${CONFORMANCE_PGUSER:-postgres}
PGDB="agentstate_conformance_$$"
FAST=0
SUITES=()
for arg in "$@"; do
  case "$arg" in
    --fast) FAST=1 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    *) SUITES+=("$arg") ;;
  esac
done
if [ ${#SUITES[@]} -eq 0 ]; then
  if [ "$FAST" = 1 ]; then
    SUITES=(sqlite3 psycopg2 sqlalchemy contrib-sqlalchemy)
  else
    SUITES=(sqlite3 psycopg2 redis sqlalchemy asyncpg contrib-redis contrib-sqlalchemy
      contrib-psycopg2 contrib-psycopg contrib-asyncpg)
  fi
fi

mkdir -p "$WORK/sdists" "$WORK/src" "$WORK/out"
RESULTS="$WORK/results.txt"
: > "$RESULTS"
FAILED=0
REDIS_PID=""
PG_MADE=0
PRIVATE_PG_PORT=${CONFORMANCE_PRIVATE_PG_PORT:-5441}
PRIVATE_PG_CTL=()

cleanup() {
  if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; fi
  if [ "$PG_MADE" = 1 ]; then dropdb -h "$PGHOST_" -U "$PGUSER_" --if-exists "$PGDB" || true; fi
  if [ ${#PRIVATE_PG_CTL[@]} -gt 0 ]; then "${PRIVATE_PG_CTL[@]}" -m immediate stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# sdist NAME VERSION -> prints the extracted directory
sdist() {
  local name=$1 ver=$2 file dir
  file=$(ls "$WORK/sdists/" 2>/dev/null | grep -i -E "^${name//-/[-_]}-${ver}\.tar\.gz$" | head -1 || true)
  if [ -z "$file" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: "$name==$ver" -d "$WORK/sdists" >&2
    file=$(ls "$WORK/sdists/" | grep -i -E "^${name//-/[-_]}-${ver}\.tar\.gz$" | head -1)
  fi
  dir="$WORK/src/${file%.tar.gz}"
  if [ ! -d "$dir" ]; then tar -xzf "$WORK/sdists/$file" -C "$WORK/src"; fi
  echo "$dir"
}

start_redis() {
  [ -n "$REDIS_PID" ] && return
  mkdir -p "$WORK/redis"
  redis-server --port "$REDIS_PORT" --save '' --appendonly no --dir "$WORK/redis" \
    --enable-debug-command yes > "$WORK/redis/log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "private redis-server did not start" >&2; exit 2
}

# A PostgreSQL server of the script's own (initdb in $WORK/pg, port 5441), for a suite that
# makes databases and roles of its own: as the postgres user when run as root.
start_private_pg() {
  [ ${#PRIVATE_PG_CTL[@]} -gt 0 ] && return 0
  local bin dir="$WORK/pg" as=()
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && [ -x "$bin/initdb" ] || return 1
  rm -rf "$dir" && mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir" && as=(runuser -u postgres --); fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres > "$WORK/pg.log" 2>&1 || return 1
  PRIVATE_PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$dir/data")
  "${PRIVATE_PG_CTL[@]}" -w -l "$dir/log" -o "-p $PRIVATE_PG_PORT -k $dir -c listen_addresses=127.0.0.1" \
    start >> "$WORK/pg.log" 2>&1
}

start_pg() {
  [ "$PG_MADE" = 1 ] && return
  createdb -h "$PGHOST_" -U "$PGUSER_" "$PGDB"
  PG_MADE=1
}

# run LABEL DIR LIBS MODES -- PYTEST ARGS...: each mode once, then the comparisons.
run() {
  local label=$1 dir=$2 libs=$3 modes=${CONFORMANCE_MODES:-$4}; shift 5
  local mode out
  for mode in $modes; do
    out="$WORK/out/$label-$mode.json"
    rm -f "$out" "$out.spans"
    echo "== $label: $mode" >&2
    (cd "$dir" && AGENTSTATE_CONFORMANCE_MODE=$mode AGENTSTATE_CONFORMANCE_LIBS=$libs \
      AGENTSTATE_CONFORMANCE_OUT=$out PYTHONPATH="$ROOT/scripts/conformance${PYTHONPATH:+:$PYTHONPATH}" \
      "$PY" -m pytest -p agentstate_conformance -p no:cacheprovider -q -o addopts="" \
      --continue-on-collection-errors "$@" > "$WORK/out/$label-$mode.log" 2>&1) || true
    tail -1 "$WORK/out/$label-$mode.log" >&2
    if [ ! -s "$out" ]; then
      echo "$label $mode: no outcomes written (see $WORK/out/$label-$mode.log)" | tee -a "$RESULTS"
      FAILED=1
    elif [ "$mode" != base ] && [ "$(cat "$out.spans" 2>/dev/null || echo 0)" = 0 ] \
        && [[ $label != contrib-* ]]; then  # contrib's own suites mostly mock the driver
      echo "$label $mode: the instrumented run made no span" | tee -a "$RESULTS"
      FAILED=1
    fi
  done
  compare "$label" base ours
  if [[ " $modes " == *" both "* ]]; then compare "$label" contrib both; fi
}

compare() {
  local label=$1 a=$2 b=$3
  [ -s "$WORK/out/$label-$a.json" ] && [ -s "$WORK/out/$label-$b.json" ] || return 0
  if ! "$PY" "$ROOT/scripts/conformance/compare.py" "$label ($a vs $b, $VER)" \
      "$WORK/out/$label-$a.json" "$WORK/out/$label-$b.json" \
      "$ROOT/scripts/conformance/expected.txt" | tee -a "$RESULTS"; then
    FAILED=1
  fi
}

for suite in "${SUITES[@]}"; do
  case "$suite" in
    sqlite3)
      VER="CPython $("$PY" -c 'import platform; print(platform.python_version())'), SQLite $("$PY" -c 'import sqlite3; print(sqlite3.sqlite_version)')"
      tests=$("$PY" -c 'import os, test; print(os.path.join(os.path.dirname(test.__file__), "test_sqlite3"))')
      [ -d "$tests" ] || { echo "sqlite3: no $tests (CPython's test package)" | tee -a "$RESULTS"; FAILED=1; continue; }
      run sqlite3 "$WORK" sqlite3 "base ours contrib both" -- "$tests"
      ;;
    psycopg2)
      VER="psycopg2 $(version psycopg2-binary 2>/dev/null || version psycopg2)"
      dir=$(sdist psycopg2 "${VER#psycopg2 }")
      start_pg
      files=(tests)
      [ "$FAST" = 1 ] && files=(tests/test_extras_dictcursor.py tests/test_module.py
        tests/test_connection.py tests/test_cursor.py tests/test_transaction.py)
      PSYCOPG2_TESTDB=$PGDB PSYCOPG2_TESTDB_HOST=$PGHOST_ PSYCOPG2_TESTDB_USER=$PGUSER_ \
        run psycopg2 "$dir" psycopg2 "base ours contrib both" -- "${files[@]}"
      ;;
    redis)
      VER="redis $(version redis)"
      dir=$(sdist redis "${VER#redis }")
      start_redis
      # The whole suite is 9,454 tests, about 30 minutes a mode on 2 cores;
      # CONFORMANCE_REDIS_TESTS picks files (space-separated).
      files=(tests)
      [ "$FAST" = 1 ] && files=(tests/test_commands.py tests/test_pipeline.py)
      [ -n "${CONFORMANCE_REDIS_TESTS:-}" ] && read -r -a files <<< "$CONFORMANCE_REDIS_TESTS"
      run redis "$dir" redis "base ours contrib both" -- "${files[@]}" \
        --redis-url="redis://127.0.0.1:$REDIS_PORT/0" -p no:randomly
      ;;
    sqlalchemy)
      VER="SQLAlchemy $(version SQLAlchemy)"
      dir=$(sdist SQLAlchemy "${VER#SQLAlchemy }")
      # The whole suite (about 20 minutes a mode on 2 cores) with CONFORMANCE_FULL_SQLALCHEMY=1;
      # else the engine, the SQLite dialect and the ORM session/transaction tests.
      files=(test/engine test/dialect/sqlite test/orm/test_transaction.py
        test/orm/test_session.py)
      [ "${CONFORMANCE_FULL_SQLALCHEMY:-0}" = 1 ] && files=(test)
      [ "$FAST" = 1 ] && files=(test/dialect/sqlite test/engine/test_transaction.py)
      run sqlalchemy "$dir" sqlalchemy,sqlite3 "base ours contrib both" -- "${files[@]}" -p no:warnings
      ;;
    asyncpg)
      VER="asyncpg $(version asyncpg)"
      dir=$(sdist asyncpg "${VER#asyncpg }")
      # The suite makes databases and roles of its own on the server it is given: a private
      # one, never the shared one. Run from a copy of its tests: in the sdist, the uncompiled
      # `asyncpg/` would shadow the installed package.
      if ! start_private_pg; then
        echo "asyncpg: no private PostgreSQL (initdb failed: $WORK/pg.log)" | tee -a "$RESULTS"
        FAILED=1
        continue
      fi
      rm -rf "$WORK/asyncpg-tests" && mkdir -p "$WORK/asyncpg-tests"
      cp -r "$dir/tests" "$WORK/asyncpg-tests/"
      PGHOST=127.0.0.1 PGPORT=$PRIVATE_PG_PORT PGUSER=postgres \
        run asyncpg "$WORK/asyncpg-tests" asyncpg "base ours contrib both" -- tests
      ;;
    contrib-redis|contrib-sqlalchemy|contrib-psycopg2|contrib-psycopg|contrib-asyncpg)
      lib=${suite#contrib-}
      pkg="opentelemetry-instrumentation-$lib"
      VER="$pkg $(version "$pkg")"
      dir=$(sdist "$pkg" "${VER##* }")
      libs=$lib
      [ "$lib" = sqlalchemy ] && libs=sqlalchemy,sqlite3
      AGENTSTATE_CONFORMANCE_SKIP_DEP_CHECK=1 run "$suite" "$dir" "$libs" "base ours" -- tests
      ;;
    *) echo "unknown suite $suite" >&2; exit 2 ;;
  esac
done

echo
cat "$RESULTS"
exit $FAILED
