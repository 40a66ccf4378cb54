#!/usr/bin/env bash
# Run the demo on a fresh clone: create .venv, install the package alone (what the demo
# needs: no test tools, no system packages), then run the demo twice: plainly, and under the
# zero-code launcher with spans printed by the console exporter.
#
#   ./scripts/demo.sh            set up and run
#   ./scripts/demo.sh --dry-run  print the steps and commands without running them
#
# The test set-up (Chromium, Prometheus, contrib instrumentations) is ./scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

step() { echo "demo.sh: $*"; }
run() {
  echo "+ $*"
  if [ "$DRY" = 0 ]; then "$@"; fi
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $PY"
  run "$PY" -m venv .venv
fi
# pip's own output is the progress: about a minute on a fresh .venv, seconds after that.
step "installing otel-agent-state and its OpenTelemetry dependencies into .venv"
run .venv/bin/python -m pip install --disable-pip-version-check -e .

echo
step "running the demo"
run .venv/bin/otel-agent-state demo
echo
step "the same under opentelemetry-instrument (every span printed by the console exporter)"
# The demo uses no SQLAlchemy. If the test set-up has run, .venv also holds contrib's
# sqlalchemy instrumentation, which logs an error about SQLAlchemy 2.1 when the launcher
# loads it: switch it off here rather than show an error that has nothing to do with the demo.
run env OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
  OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=sqlalchemy \
  .venv/bin/opentelemetry-instrument --service_name credit-demo \
  .venv/bin/otel-agent-state demo
