"""otel-agent-state: shared-state coherence for multi-agent OpenTelemetry traces."""

from __future__ import annotations

from .errors import StaleReadError

__all__ = ["StaleReadError"]
__version__ = "0.1.0"
