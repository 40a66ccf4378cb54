"""Uninstrumenting takes out our wrapper only: another instrumentation that wrapped the same
function after us (OpenLLMetry's vector-store and LangGraph instrumentations do) keeps its
wrapper, whichever of the two sits on top."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.trace import TracerProvider

from otel_agent_state.instrumentation._wrapping import chain_of


def _qdrant() -> tuple[BaseInstrumentor, Any, str]:
    import qdrant_client

    from otel_agent_state.instrumentation.qdrant import QdrantInstrumentor

    return QdrantInstrumentor(), qdrant_client.QdrantClient, "upsert"


def _chroma() -> tuple[BaseInstrumentor, Any, str]:
    from chromadb.api.models.Collection import Collection

    from otel_agent_state.instrumentation.chromadb import ChromaInstrumentor

    return ChromaInstrumentor(), Collection, "add"


def _lancedb() -> tuple[BaseInstrumentor, Any, str]:
    from lancedb.table import LanceTable

    from otel_agent_state.instrumentation.lancedb import LanceDBInstrumentor

    return LanceDBInstrumentor(), LanceTable, "add"


def _psycopg() -> tuple[BaseInstrumentor, Any, str]:
    import psycopg

    from otel_agent_state.instrumentation.psycopg import PsycopgInstrumentor

    return PsycopgInstrumentor(), psycopg.Cursor, "execute"


def _langgraph() -> tuple[BaseInstrumentor, Any, str]:
    importlib.import_module("langgraph.pregel.main")  # the hook wraps at once when imported
    from langgraph.pregel.main import Pregel

    from otel_agent_state.instrumentation.langgraph import LangGraphInstrumentor

    return LangGraphInstrumentor(), Pregel, "stream"


CASES: dict[str, Callable[[], tuple[BaseInstrumentor, Any, str]]] = {
    "qdrant": _qdrant,
    "chromadb": _chroma,
    "lancedb": _lancedb,
    "psycopg": _psycopg,
    "langgraph": _langgraph,
}


def _theirs(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    return wrapped(*args, **kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_uninstrument_leaves_a_wrapper_added_after_ours(name: str) -> None:
    instrumentor, owner, attribute = CASES[name]()
    original = chain_of(owner, attribute)[-1]
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        ours = chain_of(owner, attribute)
        assert len(ours) == 2, "instrumenting wraps the function once"
        wrapt.wrap_function_wrapper(owner, attribute, _theirs)  # another instrumentation
    finally:
        instrumentor.uninstrument()
    chain = chain_of(owner, attribute)
    try:
        assert [getattr(link, "_self_wrapper", None) for link in chain[:-1]] == [_theirs]
        assert chain[-1] is original
    finally:
        setattr(owner, attribute, original)  # take the other wrapper out too
