"""otel-agent-state: shared-state coherence for multi-agent OpenTelemetry traces.

    from otel_agent_state import agent, decision, mutation, observe_read, observe_write

Runs with no code change under `opentelemetry-instrument`; see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import (
    agent,
    configure,
    decision,
    end_transaction,
    mutation,
    observe_read,
    observe_write,
    workflow,
)
from .core.config import ConfigError
from .core.model import Anomaly, AnomalyKind, Severity
from .errors import StaleReadError

if TYPE_CHECKING:
    from .processor import StateCoherenceSpanProcessor

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "ConfigError",
    "Severity",
    "StaleReadError",
    "StateCoherenceSpanProcessor",
    "agent",
    "configure",
    "decision",
    "end_transaction",
    "mutation",
    "observe_read",
    "observe_write",
    "workflow",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The processor imports the SDK; load it only when asked for.
    if name == "StateCoherenceSpanProcessor":
        from .processor import StateCoherenceSpanProcessor

        return StateCoherenceSpanProcessor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
