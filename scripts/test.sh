#!/usr/bin/env bash
# The whole test suite on a fresh machine: set up .venv, then pytest.
# Tests that need PostgreSQL or Redis fail (never skip) when CI=true and the service is down.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
