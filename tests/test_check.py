"""`otel-agent-state check`: real SDK spans written by real exporters, read back and judged
offline; the findings must be the live processor's (same kind, fact, versions, span ids)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otel_agent_state import api, offline
from otel_agent_state import attributes as A
from otel_agent_state.cli import main
from otel_agent_state.core import config
from otel_agent_state.processor import StateCoherenceSpanProcessor
from tests.otlp_json import WRITERS, otlp_request, write_collector_lines
from tests.scenarios import Env, Scenario, all_scenarios, environment, run_scenario

SCENARIOS = (
    "sqlite/stale_cache_not_invalidated",
    "sqlite/stale_cache_read_without_acting",
    "sqlite/cache_invalidated_after_write",
    "sqlite/replica_lag",
    "sqlite/replica_caught_up",
    "sqlite/session_read_your_writes_violated",
    "sqlite/divergent_view_concurrent_deciders",
    "sqlite/concurrent_deciders_same_version",
    "sqlite/lost_update_concurrent_agents",
    "sqlite/sequential_read_modify_write",
    "sqlite/half_applied_transfer_autocommit",
    "sqlite/failed_transfer_rolled_back",
    "sqlite/mutation_scope_fails",
    "sqlite/mutation_scope_compensated",
)

Key = tuple[str, str, str, str, str, str]


def _settings_of(s: Scenario) -> config.Settings:
    """The settings the scenario ran with (its rules and consistency model)."""
    config.set_settings(config.Settings())
    try:
        api.configure(rules=list(s.rules), **dict(s.settings))
        return config.get_settings()
    finally:
        config.set_settings(None)


def _live(spans: tuple[ReadableSpan, ...]) -> list[Key]:
    out = []
    for span in spans:
        if not span.name.startswith(A.ANOMALY_SPAN_PREFIX):
            continue
        attrs = span.attributes or {}
        assert span.parent is not None
        out.append(
            (
                str(attrs[A.ANOMALY_KIND]),
                str(attrs[A.ANOMALY_FACT]),
                str(attrs[A.ANOMALY_OBSERVED]),
                str(attrs[A.ANOMALY_EXPECTED]),
                format(span.parent.span_id, "016x"),
                str(attrs[A.ANOMALY_SEVERITY]),
            )
        )
    return sorted(out)


def _offline(report: dict[str, Any]) -> list[Key]:
    return sorted(
        (
            a["kind"],
            a["fact"],
            a["observed_version"],
            a["expected_version"],
            a["span_id"],
            a["severity"],
        )
        for a in report["anomalies"]
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Scenario, Any]]:
    wanted = {s.name: s for s in all_scenarios() if s.name in SCENARIOS}
    assert set(wanted) == set(SCENARIOS)
    out = {}
    for name, s in wanted.items():
        out[name] = (s, run_scenario(s, Env(tmp_path_factory.mktemp("scenario"))))
    return out


def _check(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    report = json.loads(captured.out) if captured.out.strip() else None
    return code, report, captured.err


@pytest.fixture
def scenario_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield
    config.set_settings(None)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("name", SCENARIOS)
def test_check_finds_what_the_live_processor_found(
    name: str,
    fmt: str,
    runs: dict[str, tuple[Scenario, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    scenario_settings: None,
) -> None:
    s, outcome = runs[name]
    live = _live(outcome.spans)
    assert sorted(k[0] for k in live) == sorted(
        kind for kind, count in s.expect.items() for _ in range(count)
    )
    path = WRITERS[fmt](list(outcome.spans), tmp_path / f"spans.{fmt}")
    config.set_settings(_settings_of(s))
    code, report, err = _check(capsys, str(path))
    assert report is not None, err
    assert _offline(report) == live
    traces = {span.context.trace_id for span in outcome.spans}
    assert report["traces"] == len(traces)
    assert report["spans"] == len(outcome.spans)
    assert code == (1 if any(k[5] == "error" for k in live) else 0)
    for anomaly in report["anomalies"]:
        assert set(anomaly) >= {
            "kind",
            "trace_id",
            "span_id",
            "fact",
            "observed_version",
            "expected_version",
            "agents",
            "evidence_span_ids",
            "summary",
        }
        assert anomaly["evidence_span_ids"] and anomaly["agents"] and anomaly["summary"]


def test_evidence_and_attributes_match_the_live_anomaly_span(
    runs: dict[str, tuple[Scenario, Any]], scenario_settings: None
) -> None:
    s, outcome = runs["sqlite/stale_cache_not_invalidated"]
    [live] = [span for span in outcome.spans if span.name.startswith(A.ANOMALY_SPAN_PREFIX)]
    assert live.attributes is not None
    records = list(offline.spans_from_otlp_json(otlp_request(list(outcome.spans))))
    [finding] = offline.check_trace(records, _settings_of(s))
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in live.attributes.items()}
    assert offline.finding_attributes(finding) == expected
    assert list(finding.evidence_span_ids) == [
        format(link.context.span_id, "016x") for link in live.links
    ]


# ---------------------------------------------------------------- inputs and exit codes


def test_stdin(
    runs: dict[str, tuple[Scenario, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    path = WRITERS["console"](list(outcome.spans), tmp_path / "console.json")
    monkeypatch.setattr("sys.stdin", io.StringIO(path.read_text()))
    code, report, _ = _check(capsys, "-")
    assert code == 1 and report is not None
    assert [a["kind"] for a in report["anomalies"]] == ["stale_read"]


def test_corrupt_line_stops_with_file_and_line(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    path = write_collector_lines(list(outcome.spans), tmp_path / "lines.jsonl")
    lines = path.read_text().splitlines()
    lines.insert(2, '{"resourceSpans": [ truncated')
    path.write_text("\n".join(lines) + "\n")
    code, report, err = _check(capsys, str(path))
    assert code == 2 and report is None
    assert err.startswith(f"otel-agent-state check: {path}:3: not JSON")
    # --skip-bad: warned about, skipped, and the rest is judged.
    code, report, err = _check(capsys, "--skip-bad", str(path))
    assert f"{path}:3: not JSON" in err and "(skipped)" in err
    assert code == 1 and report is not None
    assert [a["kind"] for a in report["anomalies"]] == ["stale_read"]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('{"resourceSpans": 5}\n', 1, "resourceSpans is not a list"),
        ('{"hello": "world"}\n', 1, "neither an OTLP ExportTraceServiceRequest"),
        ("\n\n[1, 2]\n", 3, "a JSON array of numbers, not of spans"),
        ('[{"resourceSpans": []}, "x"]\n', 1, "a JSON array of strings, not of spans"),
        ('{"a": "bcd\n', 1, "not JSON (Invalid control character at column 11)"),
        ('{"a": "bcd', 1, "not JSON (Unterminated string starting at column 7)"),
        ("hello\n[INFO] world\n", 1, "not JSON (no JSON value in 2 lines of text)"),
        (
            '{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "x"}]}]}]}',
            1,
            "bad trace id 'zz'",
        ),
        (
            '{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": [1], "spanId": "x"}]}]}]}',
            1,
            "malformed span",
        ),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": 7}]}]}', 1, "malformed span"),
        ('{\n  "name": "a",\n  "context": {\n    "trace_id": 1\n  ', 5, "not JSON"),
        ('{\n  "name": "a",\n  "context": {}\n}\n', 1, "console span without trace_id"),
    ],
)
def test_unreadable_inputs_name_file_line_and_reason(
    content: str, line: int, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, report, err = _check(capsys, str(path))
    assert code == 2 and report is None
    assert err.startswith(f"otel-agent-state check: {path}:{line}: {reason}"), err


def test_orjson_and_the_stdlib_decoder_give_the_same_reports_and_errors(
    runs: dict[str, tuple[Scenario, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The test extra installs `speedups`: check uses orjson, falling back to the stdlib.
    assert offline.load_json is not json.loads
    _, outcome = runs["sqlite/stale_cache_not_invalidated"]
    path = write_collector_lines(list(outcome.spans), tmp_path / "lines.jsonl")
    lines = path.read_text().splitlines()
    # What orjson refuses and the stdlib reads: a lone surrogate in a span name, and NaN.
    lines.append(
        '{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "'
        + "ab" * 16
        + '", "spanId": "cdcdcdcdcdcdcdcd", "name": "\\ud800", '
        '"attributes": [{"key": "x", "value": {"doubleValue": NaN}}]}]}]}]}'
    )
    path.write_text("\n".join(lines) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + '{"resourceSpans": [1,]}\n')

    fast = _check(capsys, str(path)), _check(capsys, str(bad))
    monkeypatch.setattr(offline, "load_json", json.loads)
    slow = _check(capsys, str(path)), _check(capsys, str(bad))
    assert fast == slow
    (code, report, _), (bad_code, _, err) = fast
    assert code == 1 and report is not None
    assert [a["kind"] for a in report["anomalies"]] == ["stale_read"]
    assert bad_code == 2 and f"{bad}:2: not JSON (Expecting value at column 22)" in err


def test_missing_file_and_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _check(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl: No such file or directory" in err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    code, _, err = _check(capsys, str(binary))
    assert code == 2 and f"{binary}:1: not UTF-8 text" in err


def test_empty_input_warns_and_require_spans_fails_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    code, report, err = _check(capsys, str(path))
    assert (code, report) == (0, {"traces": 0, "spans": 0, "anomalies": []})
    assert err == f"otel-agent-state: no spans in {path}: nothing was checked\n"
    # As a CI gate: an export that came out empty fails.
    code, report, err = _check(capsys, "--require-spans", str(path))
    assert (code, report) == (2, None)
    assert err == f"otel-agent-state: no spans in {path} (--require-spans)\n"
    assert main(["report", "--require-spans", str(path), "-o", str(tmp_path / "r.html")]) == 2


def test_max_spans_judges_the_oldest_traces_early_with_a_warning(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spans: list[ReadableSpan] = []
    for name in ("sqlite/replica_lag", "sqlite/stale_cache_not_invalidated"):
        spans.extend(runs[name][1].spans)
    path = write_collector_lines(spans, tmp_path / "two.jsonl", batch=1)
    code, report, err = _check(capsys, "--max-spans", "3", str(path))
    assert "judging the oldest traces early" in err
    assert code == 1 and report is not None
    assert report["spans"] == len(spans)
    # Judged on partial traces, the stale reads may be missed, never invented.
    assert {a["kind"] for a in report["anomalies"]} <= {"stale_read"}


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["check", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for needle in ("examples:", "Collector file exporter", "console exporter", "Exit status"):
        assert needle in text


def test_serve_without_its_module_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    if importlib.util.find_spec("otel_agent_state.serve") is not None:
        with pytest.raises(SystemExit) as done:
            main(["serve", "--help"])
        assert done.value.code == 0
        return
    assert main(["serve"]) == 2
    assert "serve is not available" in capsys.readouterr().err


# ---------------------------------------------------------------- decoding


def test_any_value_decoding_and_base64_ids() -> None:
    doc = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "s"},
                        "spans": [
                            {
                                "traceId": "AAAAAAAAAAAAAAAAAAAAAQ==",
                                "spanId": "AAAAAAAAAAI=",
                                "parentSpanId": "",
                                "name": "op",
                                "startTimeUnixNano": "1000",
                                "endTimeUnixNano": 2000,
                                "status": {"code": "STATUS_CODE_ERROR"},
                                "attributes": [
                                    {"key": "i", "value": {"intValue": "42"}},
                                    {"key": "d", "value": {"doubleValue": 1.5}},
                                    {"key": "b", "value": {"boolValue": True}},
                                    {
                                        "key": "a",
                                        "value": {
                                            "arrayValue": {
                                                "values": [
                                                    {"stringValue": "x"},
                                                    {"stringValue": "y"},
                                                ]
                                            }
                                        },
                                    },
                                    {"key": "empty", "value": {"arrayValue": {}}},
                                    {
                                        "key": "kv",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [{"key": "k", "value": {"intValue": "1"}}]
                                            }
                                        },
                                    },
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    [span] = offline.spans_from_otlp_json(doc)
    assert span.trace_id == "0" * 31 + "1" and span.span_id == "0" * 15 + "2"
    assert span.parent_span_id is None and span.error
    assert (span.start_ns, span.end_ns, span.scope_name) == (1000, 2000, "s")
    assert dict(span.attributes) == {
        "i": 42,
        "d": 1.5,
        "b": True,
        "a": ["x", "y"],
        "empty": [],
        "kv": {"k": 1},
    }
    assert span.resource == {"service.name": "svc"}


def _stateful_line(span_id: str, fact: str, store: Any = "postgresql") -> str:
    """One collector line with one read span of trace 0...1, as the decoder sees it."""
    attributes = [
        {"key": A.OP, "value": {"stringValue": "read"}},
        {"key": A.STORE, "value": {"stringValue": store}},
        {"key": A.READ_FACTS, "value": {"arrayValue": {"values": [{"stringValue": fact}]}}},
        {"key": A.READ_VERSIONS, "value": {"arrayValue": {"values": [{"stringValue": "n:1"}]}}},
    ]
    span = {
        "traceId": "0" * 31 + "1",
        "spanId": span_id,
        "name": "SELECT scores",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": attributes,
    }
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


def test_held_spans_share_repeated_text_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each line is decoded on its own, so equal strings arrive as distinct objects; what the
    # grouper holds until the input ends must keep one copy (memory per span, README).
    grouper = offline.TraceGrouper()
    grouper.add(offline.load_json(_stateful_line("00000000000000a1", "score/1")))
    grouper.add(offline.load_json(_stateful_line("00000000000000a2", "score/1")))
    first, second = grouper.traces["0" * 31 + "1"].records
    assert first.attributes == second.attributes
    for key, value in first.attributes.items():
        [other_key] = [k for k in second.attributes if k == key]
        assert other_key is key
        other = second.attributes[key]
        assert (other[0] is value[0]) if isinstance(value, list) else (other is value)
    assert second.name is first.name and second.trace_id is first.trace_id
    # Bounded: the table is emptied when full and decoding stays right.
    monkeypatch.setattr(offline, "_SHARED", {})
    monkeypatch.setattr(offline, "_SHARED_MAX", 4)
    for n in range(20):
        grouper.add(offline.load_json(_stateful_line(f"{n + 16:016x}", f"score/{n}")))
        assert len(offline._SHARED) <= 4
    held = grouper.traces["0" * 31 + "1"].records
    assert [r.attributes[A.READ_FACTS] for r in held[2:]] == [[f"score/{n}"] for n in range(20)]
    # Text that is not a string is held as it came, for the adapter to refuse.
    grouper.add(offline.load_json(_stateful_line("00000000000000ff", "score/x", store=7)))
    assert grouper.traces["0" * 31 + "1"].records[-1].attributes[A.STORE] == 7


def test_concatenated_documents_across_buffer_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "_CHUNK", 7)
    docs = [{"n": i, "pad": "x" * (i * 13)} for i in range(40)]
    text = "".join(json.dumps(d, indent=2) + "\n" for d in docs)
    values = list(offline.json_values(io.StringIO(text)))
    assert [v for _, v in values] == docs
    lines = [line for line, _ in values]
    expected, at = [], 1
    for d in docs:
        expected.append(at)
        at += json.dumps(d, indent=2).count("\n") + 1
    assert lines == expected


# ---------------------------------------------------------------- across processes


def _process(name: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.instance.id": f"{name}-1"})
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(StateCoherenceSpanProcessor(tracer_provider=provider))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_a_trace_split_across_two_processes_files_is_judged_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The planner writes the score; the scorer service, called over the wire, reads it
    from its cache right after: each process alone saw nothing wrong."""
    planner, planner_spans = _process("planner")
    scorer, scorer_spans = _process("scorer")
    fact = "credit_score/42"
    with planner.get_tracer("t").start_as_current_span(
        "invoke_agent planner",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner"},
    ) as root:
        with planner.get_tracer("t").start_as_current_span(
            "UPDATE credit_scores",
            attributes={
                A.OP: "write",
                A.STORE: "postgresql",
                A.WRITE_FACTS: [fact],
                A.WRITE_VERSIONS: ["n:2"],
            },
        ):
            pass
        with planner.get_tracer("t").start_as_current_span("POST /assess") as client:
            remote = SpanContext(
                root.get_span_context().trace_id,
                client.get_span_context().span_id,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = set_span_in_context(NonRecordingSpan(remote))
            tracer = scorer.get_tracer("t")
            with tracer.start_as_current_span(
                "invoke_agent risk",
                context=context,
                attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "risk"},
            ):
                with tracer.start_as_current_span(
                    "GET credit_score:42",
                    attributes={
                        A.OP: "read",
                        A.STORE: "redis",
                        A.TIER: "cache",
                        A.READ_FACTS: [fact],
                        A.READ_VERSIONS: ["n:1"],
                    },
                ):
                    pass
                with tracer.start_as_current_span(
                    "approve", attributes={A.SCOPE: "decision", A.DECISION_INTENT: "approve"}
                ):
                    pass
    planner.shutdown()
    scorer.shutdown()
    one = planner_spans.get_finished_spans()
    two = scorer_spans.get_finished_spans()
    assert not [s for s in (*one, *two) if s.name.startswith(A.ANOMALY_SPAN_PREFIX)]
    a = write_collector_lines(list(one), tmp_path / "planner.jsonl")
    b = WRITERS["console"](list(two), tmp_path / "scorer.json")
    code, report, _ = _check(capsys, str(a), str(b))
    assert report is not None and code == 1
    assert report["traces"] == 1 and report["spans"] == len(one) + len(two)
    [anomaly] = report["anomalies"]
    [read] = [s for s in two if s.name == "GET credit_score:42"]
    [write] = [s for s in one if s.name == "UPDATE credit_scores"]
    assert (anomaly["kind"], anomaly["observed_version"], anomaly["expected_version"]) == (
        "stale_read",
        "n:1",
        "n:2",
    )
    assert anomaly["span_id"] == format(read.context.span_id, "016x")
    assert anomaly["evidence_span_ids"] == [format(write.context.span_id, "016x")]
    assert anomaly["agents"] == ["risk", "planner"] and anomaly["severity"] == "error"
    # Either file alone holds no anomaly.
    for path in (a, b):
        code, report, _ = _check(capsys, str(path))
        assert code == 0 and report is not None and report["anomalies"] == []


# ---------------------------------------------------------------- the whole corpus


@pytest.fixture
def corpus_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    with environment(request.param, tmp_path, request.getfixturevalue) as e:
        yield e


@pytest.mark.parametrize(
    "corpus_env", [pytest.param(s, id=s.name) for s in all_scenarios()], indirect=True
)
def test_check_agrees_with_the_live_processor_on_every_corpus_scenario(
    corpus_env: Env,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    scenario_settings: None,
) -> None:
    """Whatever the live processor reported (right or wrong: the corpus labels are checked
    by test_scenarios), `check` on the exported spans reports the same."""
    s: Scenario = request.node.callspec.params["corpus_env"]
    outcome = run_scenario(s, corpus_env)
    path = write_collector_lines(list(outcome.spans), tmp_path / "spans.jsonl")
    config.set_settings(_settings_of(s))
    code, report, err = _check(capsys, str(path))
    assert report is not None, err
    live = _live(outcome.spans)
    assert _offline(report) == live
    assert code == (1 if any(k[5] == "error" for k in live) else 0)


# ---------------------------------------------------------------- as people run it

CLI = Path(sys.executable).with_name("otel-agent-state")
ROOT = Path(__file__).resolve().parent.parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AGENTSTATE_"))}
    env.update(extra)
    return env


def test_the_documented_pipe_from_an_application_that_prints(tmp_path: Path) -> None:
    """`opentelemetry-instrument python app.py | otel-agent-state check -` with an app that
    prints to the same stdout as the console exporter (docs/cli.md, README)."""
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    app = ROOT / "examples" / "credit_agents_sqlite.py"
    command = (
        f"{launcher} --service_name agents {sys.executable} {app} {tmp_path / 'app.db'}"
        f" | {CLI} check -"
    )
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        env=_clean_env(
            OTEL_TRACES_EXPORTER="console",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="sqlalchemy",
            OTEL_AGENTSTATE_CONFIG=str(ROOT / "examples" / "credit_facts.toml"),
        ),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # a warning: no decision followed the read
    report = json.loads(result.stdout)
    assert [(a["kind"], a["severity"]) for a in report["anomalies"]] == [("stale_read", "warning")]
    # "risk-assessor saw score 680" came through the pipe too: skipped and counted.
    assert "<stdin>: skipped 1 line of text that is not JSON" in result.stderr


def _console_text(spans: list[ReadableSpan], tmp_path: Path) -> list[str]:
    """The console exporter's output, one string per span."""
    out = WRITERS["console"](spans, tmp_path / "console.json").read_text()
    chunks = out.split("\n{")
    return [chunks[0] + "\n"] + ["{" + c + "\n" for c in chunks[1:-1]] + ["{" + chunks[-1]]


def test_console_input_with_interleaved_text_lines(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    spans = list(outcome.spans)
    noise = ["hello from the app\n", "[INFO] 2026-12-04 started\n", "42\n", "done.\n"]
    parts = _console_text(spans, tmp_path)
    mixed = [noise[0]]
    for i, part in enumerate(parts):
        mixed.append(part)
        if i % 2 == 0:
            mixed.append(noise[1 + i // 2 % 3])
    path = tmp_path / "mixed.txt"
    path.write_text("".join(mixed))
    skipped = sum(1 for part in mixed if part in noise)
    code, report, err = _check(capsys, str(path))
    assert code == 1 and report is not None, err
    assert report["spans"] == len(spans)
    assert [a["kind"] for a in report["anomalies"]] == ["stale_read"]
    assert err == (
        f"otel-agent-state: {path}: skipped {skipped} lines of text that are not JSON (the "
        "application's own output between the console exporter's spans?)\n"
    )
    # An application that logs JSON of its own: values that hold no span are counted too.
    logged = ['{"level": "info", "event": "started"}\n', "[1, 2, 3]\n"]
    path.write_text("".join([*mixed[:3], *logged, *mixed[3:]]))
    code, report, err = _check(capsys, str(path))
    assert code == 1 and report is not None and report["spans"] == len(spans), err
    assert f"skipped {skipped} lines of text that are not JSON and 2 JSON values that hold" in err


def test_skip_bad_resumes_console_input_after_a_damaged_span(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    spans = list(outcome.spans)
    parts = _console_text(spans, tmp_path)
    # A span whose text was cut in the middle (a crash while writing, a lost buffer) and
    # that no anomaly depends on: the first one, an observation span.
    damaged = parts[0][: len(parts[0]) // 2] + "\n"
    path = tmp_path / "damaged.json"
    path.write_text(damaged + "".join(parts[1:]))
    code, report, err = _check(capsys, str(path))
    assert (code, report) == (2, None)
    assert err.startswith(f"otel-agent-state check: {path}:")
    code, report, err = _check(capsys, "--skip-bad", str(path))
    assert report is not None and report["spans"] == len(spans) - 1, err
    assert "not JSON" in err and "(skipped)" in err


def test_a_truncated_console_file_is_judged_up_to_the_damage(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    spans = list(outcome.spans)
    text = WRITERS["console"](spans, tmp_path / "whole.json").read_text()
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) - 40])  # the last span loses its end
    lines = text[: len(text) - 40].count("\n") + 1
    code, report, err = _check(capsys, str(path))
    assert (code, report) == (2, None)
    assert err.startswith(f"otel-agent-state check: {path}:{lines}: not JSON"), err
    code, report, err = _check(capsys, "--skip-bad", str(path))
    assert report is not None and report["spans"] == len(spans) - 1
    assert f"{path}:{lines}: not JSON" in err and "(skipped)" in err
    # The spans before the damage were judged like the whole file (the root span was last).
    whole = _check(capsys, str(tmp_path / "whole.json"))[1]
    assert whole is not None
    assert [a["kind"] for a in report["anomalies"]] == [a["kind"] for a in whole["anomalies"]]


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_gzip_input_is_read_transparently(
    fmt: str,
    runs: dict[str, tuple[Scenario, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, outcome = runs["sqlite/replica_lag"]
    plain = WRITERS[fmt](list(outcome.spans), tmp_path / "spans.json")
    packed = tmp_path / "spans.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    expected = _check(capsys, str(plain))
    assert expected[0] == 1
    assert _check(capsys, str(packed)) == expected
    # From standard input too (`zcat` not needed).
    monkeypatch.setattr(
        "sys.stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(packed.read_bytes())))
    )
    assert _check(capsys, "-") == expected


def test_compressed_or_binary_input_says_what_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zstd = tmp_path / "spans.json.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 20)
    code, _, err = _check(capsys, str(zstd))
    assert code == 2 and f"{zstd}: zstd-compressed: decompress it first (zstd -d)" in err
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gzip.compress(b'{"resourceSpans": []}\n' * 1000)[:60])
    code, _, err = _check(capsys, str(cut))
    assert code == 2 and err.startswith(f"otel-agent-state check: {cut}: "), err
    protobuf = tmp_path / "spans.pb"
    protobuf.write_bytes(b"\n\xff\xfe\x01\x02")
    code, _, err = _check(capsys, str(protobuf))
    assert code == 2 and "not UTF-8 text" in err and "OTLP JSON" in err


def test_an_unknown_option_shows_the_commands_own_usage(tmp_path: Path) -> None:
    for command, *rest in (("check",), ("report", "-o", str(tmp_path / "r.html"))):
        result = subprocess.run(
            [str(CLI), command, "--bogus", "x.json", *rest],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2
        assert result.stderr.startswith(f"usage: otel-agent-state {command} "), result.stderr
        assert "unrecognized arguments: --bogus" in result.stderr


def test_a_closed_pipe_ends_quietly(runs: dict[str, tuple[Scenario, Any]], tmp_path: Path) -> None:
    """`check ... | head`: no BrokenPipeError traceback, the verdict as the exit status."""
    _, outcome = runs["sqlite/stale_cache_not_invalidated"]
    one = write_collector_lines(list(outcome.spans), tmp_path / "one.jsonl").read_text()
    trace_id = format(outcome.spans[0].context.trace_id, "032x")
    # 400 copies of the trace under other ids: a report far larger than a pipe's buffer.
    many = "".join(one.replace(trace_id, f"{n:032x}") for n in range(1, 401))
    path = tmp_path / "many.jsonl"
    path.write_text(many)
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{CLI} check --indent 2 {path} | head -n 3"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1  # the check's own status (error anomalies), not a crash


def test_a_named_pipe_argument_plain_or_gzip(
    runs: dict[str, tuple[Scenario, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check <(zcat spans.gz)`, `check <(cat spans.jsonl.gz)`: input that cannot seek."""
    import threading

    _, outcome = runs["sqlite/replica_lag"]
    plain = write_collector_lines(list(outcome.spans), tmp_path / "spans.jsonl").read_bytes()
    expected = _check(capsys, str(tmp_path / "spans.jsonl"))
    for n, data in enumerate((plain, gzip.compress(plain))):
        fifo = tmp_path / f"fifo{n}"
        os.mkfifo(fifo)
        writer = threading.Thread(target=fifo.write_bytes, args=(data,))
        writer.start()
        try:
            assert _check(capsys, str(fifo)) == expected
        finally:
            writer.join(timeout=30)
