"""Exceptions that reach users: only the ones they asked for."""

from __future__ import annotations

from .core.model import Anomaly


class StaleReadError(RuntimeError):
    """An instrumented read returned a stale version (only with OTEL_AGENTSTATE_ON_ANOMALY=raise).

    Raised before the value reaches the agent; `anomaly` carries the finding and its evidence.
    """

    def __init__(self, anomaly: Anomaly) -> None:
        super().__init__(anomaly.summary)
        self.anomaly = anomaly
