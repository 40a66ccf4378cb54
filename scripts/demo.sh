#!/usr/bin/env bash
# Set up .venv, then run the demo twice: plainly, and under the zero-code launcher with
# spans and metrics printed by the console exporters.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== otel-agent-state demo =="
.venv/bin/otel-agent-state demo
echo
echo "== the same under opentelemetry-instrument (console exporters) =="
OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \
  .venv/bin/opentelemetry-instrument --service_name credit-demo \
  .venv/bin/otel-agent-state demo
