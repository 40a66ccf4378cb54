#!/usr/bin/env bash
# Create .venv and install otel-agent-state with its dev and test extras (idempotent).
# Also installs the Debian tools the tests drive for real (Prometheus/promtool, Chromium)
# when they are missing and we can (root with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; }
  else
    echo "setup: missing ${need[*]} (install Debian's packages to run the tests that use them)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
# Contrib psycopg/psycopg2/asyncpg are published only at 0.66b1, whose metadata pins
# opentelemetry-instrumentation==0.66b1 (a conflict with our 0.66b2 pins). Their code runs
# on 0.66b2, so the coexistence tests install them without their pins.
.venv/bin/python -m pip install --quiet --no-deps \
  opentelemetry-instrumentation-psycopg==0.66b1 \
  opentelemetry-instrumentation-psycopg2==0.66b1 \
  opentelemetry-instrumentation-asyncpg==0.66b1
