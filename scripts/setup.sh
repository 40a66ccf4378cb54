#!/usr/bin/env bash
# The test set-up: create .venv and install otel-agent-state with its dev and test extras
# (idempotent). Also installs the Debian tools the tests drive for real (Prometheus/promtool,
# Chromium) when they are missing and we can (root with apt-get). The demo needs none of
# this: ./scripts/demo.sh installs the package alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

step() { echo "setup: $*"; }

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# mysqlclient (extra `mysql`) builds from source where PyPI has no wheel for this platform.
pkg-config --exists libmariadb 2>/dev/null || need+=(libmariadb-dev pkg-config)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    step "installing Debian packages for the tests: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" \
      || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"; }
  else
    echo "setup: missing ${need[*]} (install Debian's packages to run the tests that use them)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PY"
  "$PY" -m venv .venv
fi
step "upgrading pip"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# pip's own output is the progress: a few minutes on a fresh .venv.
step "installing otel-agent-state with its dev and test extras"
.venv/bin/python -m pip install --disable-pip-version-check -e ".[dev]"
# Contrib psycopg/psycopg2/asyncpg/pymysql/mysqlclient are published only at 0.66b1, whose metadata pins
# opentelemetry-instrumentation==0.66b1 (a conflict with our 0.66b2 pins). Their code runs
# on 0.66b2, so the coexistence tests install them without their pins.
step "installing contrib psycopg/psycopg2/asyncpg instrumentations (without their pins)"
.venv/bin/python -m pip install --disable-pip-version-check --no-deps \
  opentelemetry-instrumentation-psycopg==0.66b1 \
  opentelemetry-instrumentation-psycopg2==0.66b1 \
  opentelemetry-instrumentation-asyncpg==0.66b1 \
  opentelemetry-instrumentation-pymysql==0.66b1 \
  opentelemetry-instrumentation-mysqlclient==0.66b1
# mem0ai pins protobuf<7 (the OTLP exporters here run on 7.x); its code runs on 7.x, so the
# mem0 tests install it without its pins, after the dependencies it does use.
step "installing mem0ai (without its protobuf pin)"
.venv/bin/python -m pip install --disable-pip-version-check \
  posthog==7.91.1 pytz==2026.6 backoff==2.2.1 "openai>=1.90" "httpx>=0.28"
.venv/bin/python -m pip install --disable-pip-version-check --no-deps mem0ai==2.2.1
# CrewAI 1.15 needs openai<3, which the OpenAI Agents SDK of the frameworks extra does not
# allow (openai>=3): its end-to-end test (tests/test_frameworks_crewai.py) runs the example
# under a venv of its own.
step "installing CrewAI and OpenLLMetry's CrewAI instrumentation in .venv-crewai"
[ -x .venv-crewai/bin/python ] || "$PY" -m venv .venv-crewai
.venv-crewai/bin/python -m pip install --disable-pip-version-check --quiet -e ".[redis,postgres,crewai]"
step "done"
