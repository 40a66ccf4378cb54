"""The span processor on the real SDK: attribution, the four report forms, raise mode,
robustness. Observations come from the public API (observe_read/observe_write)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from otel_agent_state import (
    StaleReadError,
    agent,
    configure,
    decision,
    end_transaction,
    mutation,
    observe_read,
    observe_write,
    workflow,
)
from otel_agent_state import attributes as A

from .conftest import Telemetry


def _hex(value: int) -> str:
    return format(value, "016x")


def _canonical_stale_read() -> None:
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_read("credit_score/42", "n:1")
            observe_write("credit_score/42", "n:2")
        with agent("risk-assessor"):
            observe_read("credit_score/42", "n:1", store="redis", tier="cache")
            with decision("approve-transaction") as chosen:
                chosen.outcome("approved")


def test_stale_read_is_reported_as_span_with_links_event_and_metrics(telemetry: Telemetry) -> None:
    _canonical_stale_read()

    [anomaly] = telemetry.anomalies()
    attrs = dict(anomaly.attributes or {})
    assert anomaly.name == "agentstate.anomaly stale_read"
    assert attrs[A.ANOMALY_KIND] == "stale_read"
    assert attrs[A.ANOMALY_FACT] == "credit_score/42"
    assert attrs[A.ANOMALY_OBSERVED] == "n:1"
    assert attrs[A.ANOMALY_EXPECTED] == "n:2"
    assert attrs[A.ANOMALY_AGENTS] == ("risk-assessor", "credit-scorer")
    assert attrs[A.ANOMALY_SEVERITY] == "error"  # the decision depended on it
    assert attrs[A.ANOMALY_LAG_MS] >= 0
    assert "risk-assessor read credit_score/42 at n:1" in attrs[A.ANOMALY_SUMMARY]
    assert anomaly.status.status_code == StatusCode.ERROR

    cache_read = telemetry.span_named("agentstate.read redis")
    write = telemetry.span_named("agentstate.write manual")
    assert anomaly.parent is not None
    assert anomaly.parent.span_id == cache_read.context.span_id
    assert anomaly.context.trace_id == cache_read.context.trace_id
    assert [link.context.span_id for link in anomaly.links] == [write.context.span_id]

    risk = telemetry.span_named("invoke_agent risk-assessor")
    [event] = [e for e in risk.events if e.name == "agentstate.anomaly"]
    assert dict(event.attributes or {}) == attrs

    [point] = telemetry.metric_points("agentstate.anomalies")
    assert point.value == 1
    assert dict(point.attributes) == {
        "kind": "stale_read",
        "store": "redis",
        "agent": "risk-assessor",
        "fact_rule": "unmatched",
    }
    [lag] = telemetry.metric_points("agentstate.stale_read.lag")
    assert lag.count == 1
    observations = {
        (p.attributes["op"], p.attributes["store"], p.attributes["tier"]): p.value
        for p in telemetry.metric_points("agentstate.observations")
    }
    assert observations == {
        ("read", "manual", "primary"): 1,
        ("write", "manual", "primary"): 1,
        ("read", "redis", "cache"): 1,
    }


def test_observation_spans_carry_the_agent_and_consistency(telemetry: Telemetry) -> None:
    _canonical_stale_read()
    cache_read = telemetry.span_named("agentstate.read redis")
    assert (cache_read.attributes or {})[A.GEN_AI_AGENT_NAME] == "risk-assessor"
    assert (cache_read.attributes or {})[A.CONSISTENCY] == "linearizable"


def test_correct_workflow_reports_nothing(telemetry: Telemetry) -> None:
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", "n:2")
            observe_write("credit_score/42", None, store="redis", tier="cache")  # invalidate
        with agent("risk-assessor"):
            observe_read("credit_score/42", None, store="redis", tier="cache")  # miss
            observe_read("credit_score/42", "n:2")
            with decision("approve-transaction"):
                pass
    assert telemetry.anomalies() == []
    assert telemetry.metric_points("agentstate.anomalies") == []


def test_stale_read_nobody_acted_on_is_a_warning(telemetry: Telemetry) -> None:
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", "n:2")
        with agent("auditor"):
            observe_read("credit_score/42", "n:1", tier="replica")
    [anomaly] = telemetry.anomalies("stale_read")
    assert (anomaly.attributes or {})[A.ANOMALY_SEVERITY] == "warning"
    assert anomaly.status.status_code != StatusCode.ERROR
    auditor = telemetry.span_named("invoke_agent auditor")
    assert [e.name for e in auditor.events] == ["agentstate.anomaly"]


def test_decision_records_inputs_and_outcome(telemetry: Telemetry) -> None:
    with agent("risk-assessor"), decision("approve", policy="score>=700") as chosen:
        observe_read("credit_score/42", "n:2")
        observe_read("limit/42", "n:7")
        chosen.outcome("approved")
    span = telemetry.span_named("decision approve")
    attrs = span.attributes or {}
    assert attrs[A.DECISION_INPUTS] == ("credit_score/42@n:2", "limit/42@n:7")
    assert attrs[A.DECISION_OUTCOME] == "approved"
    assert attrs[A.DECISION_POLICY] == "score>=700"


def test_orphaned_mutation_reported_when_the_workflow_closes(telemetry: Telemetry) -> None:
    with (
        workflow("transfer"),
        pytest.raises(RuntimeError),
        agent("payments"),
        mutation("transfer 100"),
    ):
        observe_read("account/a", "n:1")
        observe_write("account/a", "n:2")
        raise RuntimeError("credit of account b failed")
    [anomaly] = telemetry.anomalies()
    attrs = anomaly.attributes or {}
    assert attrs[A.ANOMALY_KIND] == "orphaned_mutation"
    assert attrs[A.ANOMALY_FACT] == "account/a"
    assert attrs[A.ANOMALY_OBSERVED] == "n:2"
    assert attrs[A.ANOMALY_EXPECTED] == "n:1"
    assert attrs[A.ANOMALY_AGENTS] == ("payments",)
    write = telemetry.span_named("agentstate.write manual")
    scope = telemetry.span_named("mutation transfer 100")
    assert anomaly.parent is not None and anomaly.parent.span_id == write.context.span_id
    assert {link.context.span_id for link in anomaly.links} == {
        scope.context.span_id,
        write.context.span_id,
    }
    root = telemetry.span_named("invoke_workflow transfer")
    assert [e.name for e in root.events] == ["agentstate.anomaly"]


def test_compensated_mutation_is_not_orphaned(telemetry: Telemetry) -> None:
    with workflow("transfer"), agent("payments"):
        with pytest.raises(RuntimeError), mutation("transfer 100"):
            observe_read("account/a", "n:1")
            observe_write("account/a", "n:2")
            raise RuntimeError("credit failed")
        observe_write("account/a", "n:1")  # compensation restores the earlier version
    assert telemetry.anomalies() == []


def test_transaction_rolled_back_is_not_orphaned(telemetry: Telemetry) -> None:
    with workflow("transfer"), pytest.raises(RuntimeError), agent("payments"):
        observe_write("account/a", "n:2", txn_id="t1", committed=False)
        end_transaction("t1", "rollback")
        raise RuntimeError("credit failed")
    assert telemetry.anomalies() == []


def test_raise_mode_halts_a_stale_read_before_the_agent_gets_it(telemetry: Telemetry) -> None:
    configure(on_anomaly="raise")
    with workflow("credit"):
        with agent("credit-scorer"):
            observe_write("credit_score/42", "n:2")
        with agent("risk-assessor"):
            with pytest.raises(StaleReadError) as caught:
                observe_read("credit_score/42", "n:1", store="redis", tier="cache")
            observe_read("credit_score/42", "n:2")  # the fresh read passes
    assert caught.value.anomaly.expected_version == "n:2"
    assert caught.value.anomaly.fact == "credit_score/42"
    assert len(telemetry.anomalies()) == 1  # reported once, not again when the span ends
    read = telemetry.span_named("agentstate.read redis")
    assert read.status.status_code == StatusCode.ERROR


def test_foreign_genai_agent_spans_attribute_observations(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("some.agent.framework")
    with tracer.start_as_current_span("workflow"):
        with tracer.start_as_current_span(
            "invoke_agent writer",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "writer"},
        ):
            observe_write("doc/1", "n:5")
        with tracer.start_as_current_span(
            "invoke_agent reader",
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "reader-7"},
        ):
            observe_read("doc/1", "n:4")
    [anomaly] = telemetry.anomalies()
    assert (anomaly.attributes or {})[A.ANOMALY_AGENTS] == ("reader-7", "writer")


def test_service_name_is_the_last_resort_agent(telemetry: Telemetry) -> None:
    observe_write("doc/1", "n:5")
    [write] = telemetry.spans()
    assert (write.attributes or {})[A.GEN_AI_AGENT_NAME] == "tests"


def test_garbage_attributes_never_raise(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("garbage")
    with tracer.start_as_current_span("x", attributes={A.STORE: "s", A.OP: "frobnicate"}):
        pass
    with tracer.start_as_current_span(
        "y",
        attributes={
            A.STORE: "s",
            A.OP: "read",
            A.READ_FACTS: ["a", "b"],
            A.READ_VERSIONS: ["not-a-version"],
            A.TIER: "moon",
            A.COMMITTED: "yes",
        },
    ):
        pass
    with tracer.start_as_current_span(
        "z", attributes={A.TXN_OUTCOME: "commit", A.TXN_ID: "never-began"}
    ):
        pass
    assert telemetry.anomalies() == []


def test_anomaly_spans_do_not_feed_detection(telemetry: Telemetry) -> None:
    _canonical_stale_read()
    ledger = telemetry.processor.ledger
    assert ledger.stats().traces == 0  # the workflow closed its trace
    assert len(telemetry.anomalies()) == 1


def test_concurrent_agents_in_threads(telemetry: Telemetry) -> None:
    tracer = telemetry.provider.get_tracer("threads")
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with tracer.start_as_current_span(f"root {index}"), agent(f"agent-{index}"):
                for step in range(50):
                    observe_write(f"fact/{index}", f"n:{step + 1}")
                    observe_read(f"fact/{index}", f"n:{step + 1}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert telemetry.anomalies() == []
    total = sum(p.value for p in telemetry.metric_points("agentstate.observations"))
    assert total == 8 * 50 * 2
    assert telemetry.processor.ledger.stats().traces == 0


def test_unset_api_tracer_uses_global_provider_without_error() -> None:
    # No SDK provider configured: the API still works (no-op spans), nothing raises.
    assert trace.get_tracer_provider() is not None
    with agent("lonely"):
        observe_read("x/1", "n:1")


def test_bad_api_input_is_a_clear_error(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match="bad version 'v2'"):
        observe_read("credit_score/42", "v2")
    with pytest.raises(ValueError, match="tier must be one of"):
        observe_read("credit_score/42", "n:1", tier="l2")
    with pytest.raises(ValueError, match="non-empty string"):
        agent("")


def test_asyncio_tasks_keep_their_own_agents(telemetry: Telemetry) -> None:
    import asyncio

    @agent("limit-setter")
    async def limit_setter(gate: asyncio.Event) -> None:
        observe_read("credit_score/42", "n:1", tier="replica")
        await gate.wait()
        with decision("set-limit"):
            pass

    @agent("fraud-checker")
    async def fraud_checker(gate: asyncio.Event) -> None:
        observe_read("credit_score/42", "n:2")
        gate.set()
        await asyncio.sleep(0)
        with decision("fraud-check"):
            pass

    async def main() -> None:
        gate = asyncio.Event()
        async with workflow("credit"):
            with agent("credit-scorer"):
                observe_write("credit_score/42", "n:2")
            await asyncio.gather(limit_setter(gate), fraud_checker(gate))

    asyncio.run(main())
    agents = {
        (s.attributes or {})[A.READ_VERSIONS][0]: (s.attributes or {})[A.GEN_AI_AGENT_NAME]
        for s in telemetry.spans()
        if A.READ_FACTS in (s.attributes or {})
    }
    assert agents == {"n:1": "limit-setter", "n:2": "fraud-checker"}
    kinds = sorted(str((s.attributes or {})[A.ANOMALY_KIND]) for s in telemetry.anomalies())
    assert kinds == ["divergent_view", "stale_read"]
    [divergent] = telemetry.anomalies("divergent_view")
    assert (divergent.attributes or {})[A.ANOMALY_AGENTS] == ("limit-setter", "fraud-checker")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["read", "write", "txn_commit", "txn_rollback", "fail"]),
            st.text(min_size=1, max_size=40),
            st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
            st.sampled_from(["primary", "replica", "cache", "index"]),
        ),
        max_size=25,
    )
)
def test_arbitrary_workflows_never_raise_from_our_code(
    telemetry: Telemetry, steps: list[tuple[str, str, int | None, str]]
) -> None:
    telemetry.exporter.clear()
    with workflow("fuzz"):
        for index, (kind, fact, version, tier) in enumerate(steps):
            try:
                with agent(f"agent-{index % 3}"):
                    if kind == "read":
                        observe_read(fact, version, tier=tier)
                    elif kind == "write":
                        observe_write(fact, version, tier=tier)
                    elif kind.startswith("txn"):
                        observe_write(fact, version, txn_id="t", committed=False)
                        end_transaction("t", kind.removeprefix("txn_"))
                    else:
                        observe_write(fact, version)
                        raise KeyError("the agent's own failure")
            except KeyError:
                pass
    for span in telemetry.anomalies():
        attrs = span.attributes or {}
        assert attrs[A.ANOMALY_KIND] in {
            "stale_read",
            "divergent_view",
            "orphaned_mutation",
            "lost_update",
        }
        assert attrs[A.ANOMALY_SEVERITY] in {"error", "warning"}
    assert telemetry.processor.ledger.stats().traces == 0


def test_attribute_fast_path_matches_the_sdk(telemetry: Telemetry) -> None:
    from otel_agent_state.processor import _plain

    span = telemetry.provider.get_tracer("x").start_span("s", attributes={"k": "v"})
    assert _plain(span) == {"k": "v"}
    # The fast path reads the SDK's backing dict; if an SDK upgrade moves it, this fails
    # loudly instead of silently falling back to the slow, locked lookups.
    assert _plain(span) is span._attributes._dict  # type: ignore[attr-defined]
    span.end()


def test_forked_child_starts_clean_even_if_a_lock_was_held(telemetry: Telemetry) -> None:
    import multiprocessing
    import os

    if not hasattr(os, "register_at_fork"):
        pytest.fail("fork handling needs os.register_at_fork (POSIX)")
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe()

    def child() -> None:
        # The parent held both locks at fork time; without the reset this would deadlock.
        # Like a pre-fork worker, the child starts outside the parent's span.
        from opentelemetry import context as otel_context

        otel_context.attach(otel_context.Context())
        with workflow("child"):
            with agent("writer"):
                observe_write("doc/1", "n:2")
            with agent("reader"):
                observe_read("doc/1", "n:1")
        kinds = [str((s.attributes or {})[A.ANOMALY_KIND]) for s in telemetry.anomalies()]
        child_end.send((kinds, telemetry.processor.ledger.stats().traces))

    with agent("parent-agent"):  # a live trace in the parent
        observe_write("doc/1", "n:5")
        with telemetry.processor._lock, telemetry.processor.ledger._lock:
            process = context.Process(target=child)
            process.start()
        assert parent_end.poll(60), "the forked child hung"
        kinds, live = parent_end.recv()
        process.join(10)
    assert process.exitcode == 0
    assert kinds == ["stale_read"]  # the child judged its own trace, not the parent's
    assert live == 0
