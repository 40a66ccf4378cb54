"""The pure core: versions, histories, version order, the detectors, the ledger and the
configuration they read.

Nothing here imports OpenTelemetry, a client library or `otel_agent_state.instrumentation`
(an import-linter contract in `.ci/run` checks it): detectors run the same on spans the
processor adapts, on OTLP files `check` reads, and on histories written by hand in tests.
"""
