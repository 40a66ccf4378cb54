"""`otel-agent-state report`: the HTML timeline, rendered by real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import attributes as A
from otel_agent_state.cli import main
from tests.otlp_json import write_collector_lines, write_console
from tests.scenarios import Env, all_scenarios, run_scenario

FAULTY = (
    "sqlite/stale_cache_not_invalidated",
    "sqlite/divergent_view_concurrent_deciders",
    "sqlite/lost_update_concurrent_agents",
    "sqlite/half_applied_transfer_autocommit",
)
CORRECT = ("sqlite/cache_invalidated_after_write",)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def spans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ReadableSpan, ...]]:
    wanted = {s.name: s for s in all_scenarios() if s.name in FAULTY + CORRECT}
    return {
        name: run_scenario(s, Env(tmp_path_factory.mktemp("report"))).spans
        for name, s in wanted.items()
    }


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _anomaly_parents(spans: tuple[ReadableSpan, ...]) -> set[str]:
    return {
        format(s.parent.span_id, "016x")
        for s in spans
        if s.name.startswith(A.ANOMALY_SPAN_PREFIX) and s.parent is not None
    }


def test_report_renders_in_chromium_with_every_anomaly_marked(
    spans: dict[str, tuple[ReadableSpan, ...]], tmp_path: Path
) -> None:
    everything = [span for name in FAULTY + CORRECT for span in spans[name]]
    source = write_collector_lines(everything, tmp_path / "spans.jsonl")
    out = tmp_path / "report.html"
    assert main(["report", str(source), "-o", str(out)]) == 1  # error anomalies inside
    html = out.read_text()
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<link" not in html

    dom = _chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr
    page = dom.stdout
    # The inline script ran: it flips data-rendered and counts the marks it found.
    assert 'data-rendered="true"' in page
    expected: dict[str, str] = {}
    for name in FAULTY:
        for parent in _anomaly_parents(spans[name]):
            expected[parent] = name
    marks = re.findall(
        r'<circle class="anomaly-mark (error|warning)" data-kind="(\w+)" '
        r'data-span="([0-9a-f]{16})"',
        page,
    )
    assert {span_id for _, _, span_id in marks} == set(expected)
    assert {kind for _, kind, _ in marks} == {
        "stale_read",
        "divergent_view",
        "lost_update",
        "orphaned_mutation",
    }
    assert f'data-anomaly-marks="{len(marks)}"' in page
    # Every anomaly links to rows for its evidence spans, and those rows exist.
    for target in re.findall(r'href="#row-([0-9a-f]{16})"', page):
        assert f'id="row-{target}"' in page
    # Five traces, one section each, the correct one without anomalies.
    assert page.count('<section class="trace"') == 5
    assert "No anomaly in this trace." in page

    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", out.as_uri())
    assert result.returncode == 0, result.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000  # a blank 1400x900 page compresses to a few kB


def test_report_from_console_output_and_max_traces(
    spans: dict[str, tuple[ReadableSpan, ...]], tmp_path: Path, capsys: Any
) -> None:
    everything = [span for name in CORRECT + FAULTY for span in spans[name]]
    source = write_console(everything, tmp_path / "console.json")
    out = tmp_path / "one.html"
    assert main(["report", str(source), "-o", str(out), "--max-traces", "1"]) == 1
    assert "(1 of 5 traces)" in capsys.readouterr().err
    html = out.read_text()
    # The one trace drawn is one with anomalies, not the correct workflow that came first.
    assert html.count('<section class="trace"') == 1
    assert 'class="anomaly-mark' in html


def test_report_of_unreadable_input_exits_2(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 2
    assert f"{bad}:1: not JSON" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_values_are_escaped(tmp_path: Path) -> None:
    from otel_agent_state.core.model import FactVersion, Observation, Op, parse_version
    from otel_agent_state.offline import TraceView
    from otel_agent_state.report import render

    obs = Observation(
        span_id="00000000000000aa",
        trace_id="0" * 32,
        agent="<script>alert(1)</script>",
        op=Op.READ,
        start_ns=1,
        end_ns=2,
        reads=(FactVersion("</svg><b>fact", parse_version("n:1")),),
    )
    html = render([TraceView("0" * 32, 1, observations=[obs])], total_traces=1, sources=["<x>"])
    assert "<script>alert(1)</script>" not in html and "</svg><b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
