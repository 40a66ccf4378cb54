"""The seam between instrumentations and the coherence processors of this process.

Instrumentations call `guard_read(span)` after they put the read facts and versions on an
open observation span and before they hand the value to the application. With
OTEL_AGENTSTATE_ON_ANOMALY=raise, a stale read raises `StaleReadError` there; otherwise this
returns at once. It never raises anything else.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from .errors import StaleReadError

_log = logging.getLogger(__name__)


class ReadGuard(Protocol):
    def guard_read(self, span: Any) -> None: ...


_guards: list[ReadGuard] = []
_lock = threading.Lock()


def register(guard: ReadGuard) -> None:
    with _lock:
        if guard not in _guards:
            _guards.append(guard)


def unregister(guard: ReadGuard) -> None:
    with _lock:
        if guard in _guards:
            _guards.remove(guard)


def guard_read(span: Any) -> None:
    """Raise StaleReadError if raise mode is on and the read recorded on `span` is stale."""
    for guard in tuple(_guards):
        try:
            guard.guard_read(span)
        except StaleReadError:
            raise
        except Exception:  # never let our own bug reach the agent
            _log.debug("read guard failed", exc_info=True)


class ScopeHook(Protocol):
    def before_scope_end(self, span: Any, failed: bool) -> None: ...


def before_scope_end(span: Any, failed: bool) -> None:
    """Our own scopes call this just before they end, while the span still takes events."""
    for guard in tuple(_guards):
        hook = getattr(guard, "before_scope_end", None)
        if hook is None:
            continue
        try:
            hook(span, failed)
        except Exception:
            _log.debug("scope hook failed", exc_info=True)


def attribute_agent(span: Any) -> None:
    """Put `gen_ai.agent.name` on an open span that became an observation after it started
    (e.g. a contrib database span we annotate), as the processor does at span start."""
    for guard in tuple(_guards):
        hook = getattr(guard, "attribute_agent", None)
        if hook is None:
            continue
        try:
            hook(span)
        except Exception:
            _log.debug("agent attribution failed", exc_info=True)
