"""Zero-code set-up (SPEC §2): the `opentelemetry_post_instrument` hook.

`opentelemetry-instrument` runs the distro's configurator first (which builds the SDK
TracerProvider and its exporters), then every instrumentor, then this hook, which adds the
coherence processor to that provider. We register no configurator of our own, so
opentelemetry-distro's stays the one that runs.
"""

from __future__ import annotations

import atexit
import logging
import sys
from typing import Any

from opentelemetry import trace

from .core.config import ConfigError, get_settings

_log = logging.getLogger(__name__)
_INSTALLED_FLAG = "_otel_agent_state_processor"
# Configuration errors already printed by the hook: our own commands run under the launcher
# (`opentelemetry-instrument otel-agent-state demo`) do not print them a second time.
_reported_errors: set[str] = set()


def reported(error: Exception) -> bool:
    """Whether the launcher hook already printed this configuration error."""
    return str(error) in _reported_errors


def install_processor(tracer_provider: Any = None) -> Any:
    """Add one StateCoherenceSpanProcessor to the (global) SDK TracerProvider; idempotent.

    Returns the processor, or None when there is no SDK provider or the config is bad
    (both are reported on stderr: the application keeps running, unmonitored).
    """
    try:
        get_settings()
    except ConfigError as exc:
        # One line, on stderr whatever the application's logging set-up (a logged copy
        # too would print it twice under the launcher's default logging).
        print(f"otel-agent-state is not active: configuration error: {exc}", file=sys.stderr)
        _reported_errors.add(str(exc))
        return None
    provider = tracer_provider or trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):
        _log.warning(
            "otel-agent-state: no SDK TracerProvider is set (got %s), so no state anomalies "
            "will be reported. Install opentelemetry-distro (a dependency of otel-agent-state) "
            "or set OTEL_PYTHON_CONFIGURATOR, or build a TracerProvider and add "
            "StateCoherenceSpanProcessor yourself.",
            type(provider).__name__,
        )
        return None
    existing = getattr(provider, _INSTALLED_FLAG, None)
    if existing is not None:
        return existing
    from .processor import StateCoherenceSpanProcessor

    processor = StateCoherenceSpanProcessor(tracer_provider=provider)
    provider.add_span_processor(processor)
    setattr(provider, _INSTALLED_FLAG, processor)
    # atexit runs last-registered first: this closes live traces (reporting scopes that never
    # ended) before the provider's own exit hook shuts its exporters down.
    atexit.register(processor.close_all_traces)
    return processor
