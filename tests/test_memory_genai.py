"""Other instrumentations' GenAI memory and retrieval spans (no agentstate.* attributes) as
observations of `memory:<store id>/<record id>`, judged alike live and by `check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from otel_agent_state import agent, workflow
from otel_agent_state import attributes as A
from otel_agent_state.cli import main
from otel_agent_state.genai_memory import UNVERSIONED, fact_key, observation_attributes

from .conftest import Telemetry
from .otlp_json import write_otlp_body

FACT = "memory:prefs/m-7"


def _memory_span(tracer: trace.Tracer, operation: str, **attrs: Any) -> None:
    base = {A.GEN_AI_OPERATION_NAME: operation, A.GEN_AI_MEMORY_STORE_ID: "prefs"}
    base.update(attrs)
    with tracer.start_as_current_span(f"{operation} prefs", attributes=base):
        pass


def _framework(telemetry: Telemetry) -> trace.Tracer:
    return telemetry.provider.get_tracer("some.memory.framework", "1.0")


def _observed(telemetry: Telemetry) -> list[dict[str, Any]]:
    """What the processor made of each foreign span: (op, read facts, write facts) from the
    `agentstate.observations` counter would lose the facts, so the mapping is re-applied."""
    out = []
    for span in telemetry.spans():
        mapped = observation_attributes(dict(span.attributes or {}))
        if mapped is not None:
            out.append(mapped)
    return out


def _check(tmp_path: Path, telemetry: Telemetry, capsys: pytest.CaptureFixture[str]) -> Any:
    path = write_otlp_body(telemetry.spans(), tmp_path / "trace.json")
    main(["check", str(path)])
    return json.loads(capsys.readouterr().out)


def test_mapping_of_each_operation() -> None:
    base = {A.GEN_AI_MEMORY_STORE_ID: "prefs", A.GEN_AI_MEMORY_RECORD_ID: "m-7"}
    expected = {
        "search_memory": ("read", A.READ_VERSIONS, UNVERSIONED),
        "create_memory": ("write", A.WRITE_VERSIONS, UNVERSIONED),
        "update_memory": ("write", A.WRITE_VERSIONS, UNVERSIONED),
        "upsert_memory": ("write", A.WRITE_VERSIONS, UNVERSIONED),
        "delete_memory": ("delete", A.WRITE_VERSIONS, "none"),
    }
    for operation, (op, key, version) in expected.items():
        mapped = observation_attributes({**base, A.GEN_AI_OPERATION_NAME: operation})
        assert mapped is not None
        assert (mapped[A.OP], mapped[A.STORE], list(mapped[key])) == (op, "memory", [version])
        facts = mapped[A.READ_FACTS if op == "read" else A.WRITE_FACTS]
        assert list(facts) == [FACT]
    docs = json.dumps([{"id": "d/1", "score": 0.9}, {"id": 2, "score": 0.5}, {"score": 1}])
    mapped = observation_attributes(
        {A.GEN_AI_OPERATION_NAME: "retrieval", "x": 1, A.GEN_AI_RETRIEVAL_DOCUMENTS: docs}
    )
    assert mapped is not None
    assert list(mapped[A.READ_FACTS]) == [fact_key(None, "d/1"), "memory:_/2"]
    assert fact_key(None, "d/1") == "memory:_/d%2F1"


def test_spans_that_are_not_foreign_memory_spans_are_left_alone() -> None:
    assert observation_attributes({A.GEN_AI_OPERATION_NAME: "chat"}) is None
    assert observation_attributes({A.GEN_AI_OPERATION_NAME: "search_memory"}) is None  # no id
    ours = {A.GEN_AI_OPERATION_NAME: "search_memory", A.GEN_AI_MEMORY_RECORD_ID: "m", A.OP: "read"}
    assert observation_attributes(ours) is None
    bad = {A.GEN_AI_OPERATION_NAME: "retrieval", A.GEN_AI_RETRIEVAL_DOCUMENTS: "not json"}
    assert observation_attributes(bad) is None


def test_foreign_memory_spans_are_observations_without_findings(
    telemetry: Telemetry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Create, search, update by two agents: no version is known, so no finding, live or
    offline; the spans still count as observations of memory:prefs/m-7."""
    tracer = _framework(telemetry)
    with workflow("support"):
        with agent("writer"):
            _memory_span(tracer, "create_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
        for name in ("alice", "bob"):
            with agent(name):
                _memory_span(tracer, "search_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
        for name in ("alice", "bob"):
            with agent(name):
                _memory_span(tracer, "update_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
    assert telemetry.anomalies() == []
    points = telemetry.metric_points(A.METRIC_OBSERVATIONS)
    memory = sum(p.value for p in points if p.attributes.get("store") == "memory")
    assert memory == 5
    assert _check(tmp_path, telemetry, capsys)["anomalies"] == []


@pytest.mark.parametrize("created", [True, False])
def test_a_deleted_memory_returned_by_retrieval_is_a_stale_read(
    telemetry: Telemetry, tmp_path: Path, capsys: pytest.CaptureFixture[str], created: bool
) -> None:
    """The one thing foreign spans prove: the delete. A retrieval after it that still
    returns the record (no write after the delete re-created it) read state that no longer
    exists, whether or not the trace saw the record created."""
    tracer = _framework(telemetry)
    docs = json.dumps([{"id": "m-7", "score": 0.93}])
    with workflow("support"):
        with agent("curator"):
            if created:
                _memory_span(tracer, "create_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
            _memory_span(tracer, "delete_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
        with agent("responder"):
            _memory_span(tracer, "retrieval", **{A.GEN_AI_RETRIEVAL_DOCUMENTS: docs})
    [stale] = telemetry.anomalies("stale_read")
    attrs = stale.attributes or {}
    assert (attrs[A.ANOMALY_FACT], attrs[A.ANOMALY_OBSERVED], attrs[A.ANOMALY_EXPECTED]) == (
        FACT,
        UNVERSIONED,
        "none",
    )
    assert attrs[A.ANOMALY_AGENTS] == ("responder", "curator")
    offline = _check(tmp_path, telemetry, capsys)["anomalies"]
    assert [(a["kind"], a["fact"], a["span_id"]) for a in offline] == [
        ("stale_read", FACT, format(stale.parent.span_id, "016x") if stale.parent else "")
    ]


def test_memory_recreated_after_the_delete_is_not_stale(
    telemetry: Telemetry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tracer = _framework(telemetry)
    with workflow("support"):
        with agent("curator"):
            _memory_span(tracer, "delete_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
            _memory_span(tracer, "create_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
        with agent("responder"):
            _memory_span(tracer, "search_memory", **{A.GEN_AI_MEMORY_RECORD_ID: "m-7"})
    assert telemetry.anomalies() == []
    assert _check(tmp_path, telemetry, capsys)["anomalies"] == []
    assert [m[A.OP] for m in _observed(telemetry)] == ["delete", "write", "read"]
