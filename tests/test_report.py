"""`otel-agent-state report`: the HTML timeline, rendered by real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from otel_agent_state import attributes as A
from otel_agent_state.cli import main
from tests.otlp_json import otlp_request, write_collector_lines, write_console
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


# ---------------------------------------------------------------- layout, measured in Chromium

_MEASURE = """<script>
(function () {
  var vw = document.documentElement.clientWidth;
  var out = {viewport: vw, scrollWidth: document.documentElement.scrollWidth, labels: 0,
             clipped: [], overlaps: [], onBars: []};
  function box(el) {
    var b = el.getBoundingClientRect();
    return {l: b.left, r: b.right, t: b.top, b: b.bottom};
  }
  function meet(a, c) { return a.l < c.r && c.l < a.r && a.t < c.b && c.t < a.b; }
  document.querySelectorAll('section.trace svg').forEach(function (svg) {
    var frame = box(svg);
    var bars = Array.prototype.map.call(svg.querySelectorAll(
      'rect.scope[data-kind="decision"], rect.scope[data-kind="mutation"]'), box);
    var texts = Array.prototype.slice.call(svg.querySelectorAll('text'));
    texts.forEach(function (t) {
      var b = box(t);
      out.labels += 1;
      if (b.l < frame.l - 0.5 || b.r > frame.r + 0.5 || b.l < 0 || b.r > vw + 0.5) {
        out.clipped.push(t.textContent);
      }
    });
    var labels = Array.prototype.slice.call(svg.querySelectorAll('g.obs text, text.lane-label'));
    labels.forEach(function (t, i) {
      var a = box(t);
      bars.forEach(function (bar) { if (meet(a, bar)) out.onBars.push(t.textContent); });
      for (var j = i + 1; j < labels.length; j++) {
        if (meet(a, box(labels[j]))) out.overlaps.push([t.textContent, labels[j].textContent]);
      }
    });
  });
  document.querySelectorAll('td, li, h2, .meta').forEach(function (el) {
    if (box(el).r > vw + 0.5) out.clipped.push(el.textContent.slice(0, 80));
  });
  document.body.setAttribute('data-layout', JSON.stringify(out));
})();
</script>"""


def _long_keys_view() -> Any:
    """One trace of three agents with long fact keys: marks packed close in time, at the
    right edge (the last write), under decision and mutation scopes."""
    from otel_agent_state.core.model import FactVersion, Observation, Op, Scope, ScopeKind
    from otel_agent_state.core.model import parse_version as v
    from otel_agent_state.offline import TraceView

    trace_id = "ab" * 16
    agents = ("credit-scoring-agent-number-one", "risk", "payments-orchestrator")
    observations, scopes = [], []
    n = 0
    for lane, agent in enumerate(agents):
        scopes.append(Scope(f"{lane + 1:016x}", trace_id, ScopeKind.AGENT, agent, 0, 10_000_000))
        scopes.append(
            Scope(f"{lane + 11:016x}", trace_id, ScopeKind.DECISION, agent, 1_000_000, 9_000_000)
        )
        scopes.append(
            Scope(f"{lane + 21:016x}", trace_id, ScopeKind.MUTATION, agent, 2_000_000, 9_500_000)
        )
        for i in range(9):
            n += 1
            at = 100_000 + i * 400_000 + lane * 50_000
            fact = f"redis:0/ncapp7731:decision-context:customer-{i}/{agent}/long/suffix"
            observations.append(
                Observation(
                    span_id=f"{n + 100:016x}",
                    trace_id=trace_id,
                    agent=agent,
                    op=Op.READ if i % 2 else Op.WRITE,
                    start_ns=at,
                    end_ns=at + 200_000,
                    reads=(FactVersion(fact, v("n:1")),) if i % 2 else (),
                    writes=() if i % 2 else (FactVersion(fact, v(f"h:{'c0ffee' * 8}")),),
                    store="redis",
                )
            )
        n += 1
        observations.append(  # at the very end of the trace: its label must go left
            Observation(
                span_id=f"{n + 100:016x}",
                trace_id=trace_id,
                agent=agent,
                op=Op.WRITE,
                start_ns=9_990_000,
                end_ns=10_000_000,
                writes=(FactVersion(f"postgresql:app/credit_scores/{'9' * 30}", v("n:7")),),
                store="postgresql",
            )
        )
    return TraceView(trace_id, 1, observations=observations, scopes=scopes)


@pytest.mark.parametrize("width", [1400, 760])
def test_report_labels_stay_inside_the_page_and_apart(
    width: int, spans: dict[str, tuple[ReadableSpan, ...]], tmp_path: Path
) -> None:
    from otel_agent_state.offline import TraceView, judge
    from otel_agent_state.report import render

    views: list[TraceView] = [_long_keys_view()]
    for name in FAULTY:  # and the real findings, as check groups them
        records = [
            r for r in offline_records(spans[name]) if not r.name.startswith(A.ANOMALY_SPAN_PREFIX)
        ]
        parents = {r.span_id: (r.parent_span_id, r.process) for r in records}
        views.append(judge(records[0].trace_id, records, parents))
    html = render(views, total_traces=len(views), sources=["long.jsonl"])
    page = tmp_path / "report.html"
    page.write_text(html.replace("</body>", _MEASURE + "</body>"))
    dom = _chromium(tmp_path, f"--window-size={width},900", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    found = re.search(r'data-layout="([^"]*)"', dom.stdout)
    assert found, "the measuring script ran"
    layout = json.loads(html_unescape(found.group(1)))
    assert layout["viewport"] <= width and layout["viewport"] > width - 40
    assert layout["labels"] > 40
    assert layout["clipped"] == []
    assert layout["overlaps"] == []
    assert layout["onBars"] == []
    assert layout["scrollWidth"] <= layout["viewport"]  # nothing runs off to the right
    shot = tmp_path / f"shot-{width}.png"
    result = _chromium(
        tmp_path, f"--screenshot={shot}", f"--window-size={width},900", page.as_uri()
    )
    assert result.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_counts_are_in_good_english() -> None:
    from otel_agent_state.core.model import FactVersion, Observation, Op
    from otel_agent_state.core.model import parse_version as v
    from otel_agent_state.offline import TraceView
    from otel_agent_state.report import render

    obs = Observation("a" * 16, "0" * 32, "solo", Op.READ, 1, 2, (FactVersion("f/1", v("n:1")),))
    html = render([TraceView("0" * 32, 1, observations=[obs])], total_traces=1, sources=["x"])
    assert "1 span, 1 observation, 1 agent" in html and "1 trace read" in html
    assert "1 spans" not in html and "1 agents" not in html


def offline_records(spans: tuple[ReadableSpan, ...]) -> list[Any]:
    from otel_agent_state.offline import spans_from_otlp_json

    return list(spans_from_otlp_json(otlp_request(list(spans))))
