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


class Hooks(Protocol):
    """What a coherence processor offers instrumentations and scopes (see module doc)."""

    def guard_read(self, span: Any) -> None: ...
    def before_scope_end(self, span: Any, failed: bool) -> None: ...
    def attribute_agent(self, span: Any) -> None: ...
    def record_copies(self, span: Any) -> None: ...


_registered: list[Hooks] = []
_lock = threading.Lock()


def register(hooks: Hooks) -> None:
    with _lock:
        if hooks not in _registered:
            _registered.append(hooks)


def unregister(hooks: Hooks) -> None:
    with _lock:
        if hooks in _registered:
            _registered.remove(hooks)


def _each(method: str, *args: Any, passthrough: tuple[type[BaseException], ...] = ()) -> None:
    for hooks in tuple(_registered):
        try:
            getattr(hooks, method)(*args)
        except passthrough:
            raise
        except Exception:  # never let our own bug reach the agent
            _log.debug("%s failed", method, exc_info=True)


def guard_read(span: Any) -> None:
    """Raise StaleReadError if raise mode is on and the read recorded on `span` is stale."""
    _each("guard_read", span, passthrough=(StaleReadError,))


def before_scope_end(span: Any, failed: bool) -> None:
    """Our own scopes call this just before they end, while the span still takes events."""
    _each("before_scope_end", span, failed)


def record_copies(span: Any) -> None:
    """Instrumentations call this after they put the writes on an open span of a cache,
    index or replica tier: a processor adds `agentstate.write.copy_of` for the writes that
    copy what their agent read from another tier (SPEC §5 "Copies")."""
    _each("record_copies", span)


def attribute_agent(span: Any) -> None:
    """Put `gen_ai.agent.name` on an open span that became an observation after it started
    (e.g. a contrib database span we annotate), as the processor does at span start."""
    _each("attribute_agent", span)


def enclosing_agent(span: Any) -> tuple[str, str | None] | None:
    """The agent that work under the open `span` is attributed to (an agent scope, GenAI
    ancestor or framework hint above it) and the span id (16 hex digits) of its agent scope,
    if any; None when nothing above names an agent. Frameworks (LangGraph) use it to honour
    the SPEC §3 order. The first processor that tracks `span` answers."""
    for hooks in tuple(_registered):
        method = getattr(hooks, "enclosing_agent", None)
        if method is None:
            continue
        try:
            found = method(span)
        except Exception:  # never let our own bug reach the agent
            _log.debug("enclosing_agent failed", exc_info=True)
            continue
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


# Drivers (module names such as "sqlite3", "psycopg") whose connections our own instrumentors
# trace. Framework-level instrumentations (SQLAlchemy) consult it so a statement that a driver
# instrumentor of ours already records is not counted twice.
_drivers: set[str] = set()


def mark_driver(module: str, instrumented: bool) -> None:
    """Called by a driver instrumentor on instrument (True) and uninstrument (False)."""
    with _lock:
        if instrumented:
            _drivers.add(module)
        else:
            _drivers.discard(module)


def driver_instrumented(module: str) -> bool:
    """Whether an instrumentor of ours currently traces the driver module `module`."""
    return module in _drivers
