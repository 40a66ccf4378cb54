"""Shared checks of the vector-store tests (Qdrant, Chroma, LanceDB): the same memory/7
workflows run on each store, only the client calls differ."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import context
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import agent, workflow
from otel_agent_state import attributes as A

from .conftest import Telemetry

T = TypeVar("T")


def check_stale_memory(
    telemetry: Telemetry,
    write_span: str,
    read_span: str,
    versions: tuple[str, str] | None = None,
    severity: str = "error",
) -> dict[str, Any]:
    """The one stale read of memory/7: agent `responder`'s read behind agent `memory-curator`'s
    write, at the versions those spans carry (`versions`: observed, expected, when known).
    Severity `error` when the read sits inside a decision."""
    [anomaly] = telemetry.anomalies("stale_read")
    attrs = dict(anomaly.attributes or {})
    write = telemetry.span_named(write_span)
    read = telemetry.span_named(read_span)
    assert attrs[A.ANOMALY_FACT] == "memory/7"
    written: Any = (write.attributes or {})[A.WRITE_VERSIONS]
    returned: Any = (read.attributes or {})[A.READ_VERSIONS]
    assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == (returned[0], written[0])
    if versions is not None:
        assert (attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == versions
    assert attrs[A.ANOMALY_AGENTS] == ("responder", "memory-curator")
    assert attrs[A.ANOMALY_SEVERITY] == severity
    assert anomaly.parent is not None and anomaly.parent.span_id == read.context.span_id
    assert write.context.span_id in {link.context.span_id for link in anomaly.links}
    return attrs


def lost_update_in_threads(
    telemetry: Telemetry, read: Callable[[], T], write: Callable[[str, T], None]
) -> ReadableSpan:
    """Agents alice and bob, each in its own thread of one workflow, both `read` memory/7
    before either writes; then alice writes, and bob writes last (`write(name, seen)`),
    silently overwriting her. Returns the one lost_update finding, checked."""
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def rewrite(parent: Any, name: str) -> None:
        token = context.attach(parent)
        try:
            with agent(name):
                seen = read()
                barrier.wait()  # both read before either writes
                if name == "bob":
                    barrier.wait()
                write(name, seen)
                if name == "alice":
                    barrier.wait()
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)
            barrier.abort()
        finally:
            context.detach(token)

    with workflow("support-ticket"):
        parent = context.get_current()
        threads = [threading.Thread(target=rewrite, args=(parent, n)) for n in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    [lost] = telemetry.anomalies("lost_update")
    attrs = lost.attributes or {}
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_AGENTS]) == ("memory/7", ("alice", "bob"))
    return lost
