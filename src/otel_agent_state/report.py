"""`otel-agent-state report`: a self-contained HTML state timeline of judged traces.

One section per trace: agents as lanes (their agent spans as bars), every read and write of
a fact as a mark with its version, anomalies circled in red with dashed lines to their
evidence spans, and tables below with links between anomalies and evidence. The SVG is
drawn here, so the page reads without JavaScript; the inline script adds highlighting on
hover and click. No external assets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape

from .core.model import Observation, Scope, ScopeKind, Severity
from .offline import Finding, TraceView

_WIDTH = 1240
_LEFT = 170
_RIGHT = 30
_LANE = 78
_TOP = 34

_CSS = """
:root { --bg:#fbfbfd; --fg:#1d2330; --muted:#6b7285; --read:#2563eb; --write:#059669;
  --err:#dc2626; --warn:#d97706; --lane:#eef1f7; --scope:#dfe6f3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
  background: var(--bg); color: var(--fg); }
header { padding: 18px 28px; background: #1d2330; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .meta { color: #c5cad6; font-size: 13px; }
main { padding: 10px 28px 40px; }
section.trace { background: #fff; border: 1px solid #dde2ec; border-radius: 8px;
  margin: 18px 0; padding: 14px 18px; }
section.trace h2 { font-size: 16px; margin: 0 0 6px; font-family: ui-monospace, monospace; }
.badge { display: inline-block; border-radius: 10px; padding: 1px 9px; font-size: 12px;
  font-weight: 600; margin-right: 6px; color: #fff; }
.badge.error { background: var(--err); } .badge.warning { background: var(--warn); }
.badge.ok { background: var(--write); }
.legend { color: var(--muted); font-size: 12px; margin: 4px 0 8px; }
.legend span { margin-right: 16px; }
svg text { font: 11px ui-monospace, SFMono-Regular, Menlo, monospace; fill: var(--fg); }
svg .lane-label { font: 600 12px system-ui, sans-serif; }
svg .axis { fill: var(--muted); }
svg .lane-bg { fill: var(--lane); }
svg .scope { fill: var(--scope); stroke: #b8c4dc; }
svg .scope.failed { fill: #fde2e2; stroke: var(--err); }
svg .read { fill: var(--read); } svg .write { fill: var(--write); }
svg .pending { fill: #fff; stroke: var(--write); stroke-width: 2; }
svg .failed-op { fill: #fff; stroke: var(--err); stroke-width: 2; }
svg .anomaly-mark { fill: none; stroke: var(--err); stroke-width: 2.5; }
svg .anomaly-mark.warning { stroke: var(--warn); }
svg .evidence-line { stroke: var(--err); stroke-width: 1.5; stroke-dasharray: 5 4; fill: none; }
svg .evidence-line.warning { stroke: var(--warn); }
svg g.obs:hover text, svg g.obs.hl text { font-weight: 700; }
svg g.obs.hl rect, svg g.obs.hl circle { stroke: #111; stroke-width: 2; }
table { border-collapse: collapse; width: 100%; margin-top: 10px; font-size: 12.5px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #edf0f5;
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; }
td.mono, .mono { font-family: ui-monospace, monospace; }
tr.anomalous td { background: #fff1f1; } tr.evidence td { background: #fff8e6; }
tr.hl td { outline: 2px solid #111; }
.anomalies li { margin: 6px 0; }
.anomalies .kind { font-weight: 700; }
a { color: #1d4ed8; }
.empty { color: var(--muted); }
"""

_JS = """
(function () {
  var marks = document.querySelectorAll('.anomaly-mark');
  document.body.dataset.anomalyMarks = String(marks.length);
  function ids(el) { return (el.getAttribute('data-related') || '').split(' '); }
  function highlight(spanIds, on) {
    spanIds.forEach(function (id) {
      if (!id) return;
      document.querySelectorAll('[data-span="' + id + '"]').forEach(function (n) {
        n.classList.toggle('hl', on);
      });
    });
  }
  document.querySelectorAll('[data-related]').forEach(function (el) {
    el.addEventListener('mouseenter', function () { highlight(ids(el), true); });
    el.addEventListener('mouseleave', function () { highlight(ids(el), false); });
  });
  document.querySelectorAll('g.obs').forEach(function (g) {
    g.addEventListener('click', function () {
      var row = document.getElementById('row-' + g.getAttribute('data-span'));
      if (row) row.scrollIntoView({behavior: 'smooth', block: 'center'});
    });
  });
  document.body.dataset.rendered = 'true';
})();
"""


def render(views: Sequence[TraceView], *, total_traces: int, sources: Sequence[str]) -> str:
    findings = [f for view in views for f in view.findings]
    errors = sum(1 for f in findings if f.severity == Severity.ERROR)
    warnings = len(findings) - errors
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>otel-agent-state: state timeline</title>",
        f"<style>{_CSS}</style></head>",
        f'<body data-rendered="false" data-traces="{len(views)}" data-anomalies="{len(findings)}">',
        "<header><h1>State timeline</h1>",
        f'<div class="meta">{escape(", ".join(sources))} &middot; {total_traces} traces read, '
        f"{len(views)} shown &middot; {errors} error and {warnings} warning anomalies</div>",
        "</header><main>",
    ]
    if not views:
        parts.append('<p class="empty">No trace with state observations in the input.</p>')
    for view in views:
        parts.append(_trace_section(view))
    parts.append(
        '<script type="application/json" id="agentstate-findings">'
        + _json_for_script([_finding_dict(f) for f in findings])
        + "</script>"
    )
    parts.append(f"<script>{_JS}</script></main></body></html>")
    return "\n".join(parts)


def _json_for_script(value: object) -> str:
    return json.dumps(value).replace("</", "<\\/")


def _finding_dict(f: Finding) -> dict[str, object]:
    return {
        "kind": f.kind.value,
        "trace_id": f.trace_id,
        "span_id": f.span_id,
        "fact": f.fact,
        "severity": f.severity.value,
        "evidence_span_ids": list(f.evidence_span_ids),
    }


def _lanes(view: TraceView) -> list[str]:
    lanes: dict[str, None] = {}
    events: list[tuple[int, str]] = [
        (s.start_ns, s.agent) for s in view.scopes if s.kind == ScopeKind.AGENT
    ]
    events += [(o.start_ns, o.agent) for o in view.observations]
    for _, agent in sorted(events):
        lanes.setdefault(agent, None)
    return list(lanes) or ["(no agent)"]


def _trace_section(view: TraceView) -> str:
    lanes = _lanes(view)
    lane_of = {agent: i for i, agent in enumerate(lanes)}
    times = [o.start_ns for o in view.observations] + [o.end_ns for o in view.observations]
    times += [s.start_ns for s in view.scopes] + [s.end_ns or s.start_ns for s in view.scopes]
    times += [e.end_ns for e in view.txn_ends]
    t0, t1 = (min(times), max(times)) if times else (0, 1)
    span = max(t1 - t0, 1)
    plot = _WIDTH - _LEFT - _RIGHT

    def x(t: int) -> float:
        return round(_LEFT + (t - t0) / span * plot, 1)

    def y(agent: str) -> int:
        return _TOP + lane_of.get(agent, 0) * _LANE

    height = _TOP + len(lanes) * _LANE + 10
    offending = {f.span_id: f for f in view.findings}
    evidence: dict[str, Finding] = {}
    for f in view.findings:
        for span_id in f.evidence_span_ids:
            evidence.setdefault(span_id, f)
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" role="img" aria-label="state timeline">'
    ]
    for ms_tick in range(6):
        t = t0 + span * ms_tick // 5
        svg.append(
            f'<text class="axis" x="{x(t)}" y="14" text-anchor="middle">'
            f"{(t - t0) / 1e6:.1f} ms</text>"
            f'<line x1="{x(t)}" y1="20" x2="{x(t)}" y2="{height - 6}" stroke="#e3e7ef"/>'
        )
    for agent in lanes:
        top = y(agent)
        svg.append(
            f'<rect class="lane-bg" x="{_LEFT}" y="{top + 4}" width="{plot}" '
            f'height="{_LANE - 8}" rx="4"/>'
            f'<text class="lane-label" x="8" y="{top + _LANE // 2 + 4}">'
            f"{escape(_short(agent, 22))}</text>"
        )
    for scope in view.scopes:
        svg.append(_scope_bar(scope, x, y, t1))
    position: dict[str, tuple[float, float]] = {}
    for index, obs in enumerate(sorted(view.observations, key=lambda o: o.start_ns)):
        svg.append(_obs_mark(obs, index, x, y, offending, position))
    for end in view.txn_ends:
        agent = end.agent if end.agent in lane_of else lanes[0]
        cx, cy = x(end.end_ns), y(agent) + 16
        position.setdefault(end.span_id, (cx, cy))
        svg.append(
            f'<g class="obs" data-span="{end.span_id}"><title>{end.outcome} of transaction '
            f"{escape(end.txn_id)} (span {end.span_id})</title>"
            f'<path d="M{cx - 5},{cy - 5} L{cx + 5},{cy + 5} M{cx - 5},{cy + 5} '
            f'L{cx + 5},{cy - 5}" stroke="#444" stroke-width="2"/></g>'
        )
    for scope in view.scopes:
        if scope.span_id not in position:
            position[scope.span_id] = (x(scope.end_ns or t1), y(scope.agent) + _LANE - 16)
    for f in view.findings:
        origin = position.get(f.span_id)
        if origin is None:
            continue
        level = f.severity.value
        for span_id in f.evidence_span_ids:
            target = position.get(span_id)
            if target is None or target == origin:
                continue
            svg.append(
                f'<path class="evidence-line {level}" data-related="{f.span_id} {span_id}" '
                f'd="M{origin[0]},{origin[1]} L{target[0]},{target[1]}"/>'
            )
        svg.append(
            f'<circle class="anomaly-mark {level}" data-kind="{f.kind.value}" '
            f'data-span="{f.span_id}" data-related="{f.span_id} '
            f'{" ".join(f.evidence_span_ids)}" cx="{origin[0]}" cy="{origin[1]}" r="11">'
            f"<title>{escape(f.summary)}</title></circle>"
        )
    svg.append("</svg>")
    errors = sum(1 for f in view.findings if f.severity == Severity.ERROR)
    warnings = len(view.findings) - errors
    badges = (f'<span class="badge error">{errors} error</span>' if errors else "") + (
        f'<span class="badge warning">{warnings} warning</span>' if warnings else ""
    ) or '<span class="badge ok">no anomaly</span>'
    return "\n".join(
        [
            f'<section class="trace" id="t-{view.trace_id}" data-trace="{view.trace_id}">',
            f"<h2>trace {view.trace_id}</h2>",
            f"<div>{badges} {view.spans} spans, {len(view.observations)} observations, "
            f"{len(lanes)} agents</div>",
            '<div class="legend"><span style="color:var(--read)">&#9679; read</span>'
            '<span style="color:var(--write)">&#9632; write</span>'
            "<span>&#9633; uncommitted / failed write</span>"
            '<span style="color:var(--err)">&#9711; anomaly, dashed line to its evidence</span>'
            "<span>bars: agent, decision and mutation spans</span></div>",
            *svg,
            _anomaly_list(view),
            _obs_table(view, offending, evidence),
            "</section>",
        ]
    )


def _scope_bar(scope: Scope, x: object, y: object, t_end: int) -> str:
    assert callable(x) and callable(y)
    top = y(scope.agent)
    inset = {ScopeKind.AGENT: 8, ScopeKind.WORKFLOW: 8, ScopeKind.DECISION: 48}.get(scope.kind, 54)
    heightbar = 6 if scope.kind != ScopeKind.AGENT else _LANE - 16
    left, right = x(scope.start_ns), x(scope.end_ns or t_end)
    failed = " failed" if scope.failed else ""
    label = f"{scope.kind.value} {scope.name}" + (" (failed)" if scope.failed else "")
    return (
        f'<rect class="scope{failed}" data-span="{scope.span_id}" x="{left}" '
        f'y="{top + inset}" width="{max(right - left, 2)}" height="{heightbar}" rx="3" '
        f'opacity="{0.55 if scope.kind == ScopeKind.AGENT else 0.9}">'
        f"<title>{escape(label)} (span {scope.span_id})</title></rect>"
    )


def _obs_mark(
    obs: Observation,
    index: int,
    x: object,
    y: object,
    offending: dict[str, Finding],
    position: dict[str, tuple[float, float]],
) -> str:
    assert callable(x) and callable(y)
    top = y(obs.agent)
    cx = x(obs.start_ns)
    row = index % 3
    cy = top + 22 + row * 16
    position[obs.span_id] = (cx, cy)
    parts = [f'<g class="obs" data-span="{obs.span_id}">']
    tip = _obs_text(obs)
    parts.append(f"<title>{escape(tip)} (span {obs.span_id})</title>")
    width = max(x(obs.end_ns) - cx, 2)
    parts.append(f'<rect x="{cx}" y="{cy + 7}" width="{width}" height="2" fill="#94a3b8"/>')
    if obs.writes:
        cls = "failed-op" if obs.failed else "pending" if not obs.committed else "write"
        parts.append(f'<rect class="{cls}" x="{cx - 5}" y="{cy - 5}" width="10" height="10"/>')
    if obs.reads:
        dx = 12 if obs.writes else 0
        parts.append(f'<circle class="read" cx="{cx + dx}" cy="{cy}" r="5"/>')
    label = _short(_label(obs, short=True), 46)
    bold = ' font-weight="700"' if obs.span_id in offending else ""
    parts.append(f'<text x="{cx + 20}" y="{cy + 4}"{bold}>{escape(label)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _label(obs: Observation, short: bool = False) -> str:
    items = [f"R {r.fact}={_v(r.version.text, short)}" for r in obs.reads]
    items += [f"W {w.fact}={_v(w.version.text, short)}" for w in obs.writes]
    return "; ".join(items) or obs.op.value


def _v(text: str, short: bool) -> str:
    """Digests are long and say only equality: their first 8 hex digits tell them apart."""
    return text[:10] + "\u2026" if short and text.startswith("h:") and len(text) > 11 else text


def _obs_text(obs: Observation) -> str:
    return (
        f"{obs.agent} {obs.op.value} on {obs.store} ({obs.tier.value}): {_label(obs)}"
        + ("" if obs.committed else f" [uncommitted, txn {obs.txn_id}]")
        + (" [failed]" if obs.failed else "")
    )


def _short(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "\u2026"


def _anomaly_list(view: TraceView) -> str:
    if not view.findings:
        return '<p class="empty">No anomaly in this trace.</p>'
    items = []
    for f in view.findings:
        links = ", ".join(
            f'<a class="mono" href="#row-{escape(s)}">{escape(view.names.get(s, "span"))} '
            f"{escape(s)}</a>"
            for s in f.evidence_span_ids
        )
        items.append(
            f'<li class="anomaly {f.severity.value}" id="anomaly-{f.span_id}-{f.kind.value}" '
            f'data-related="{f.span_id} {" ".join(f.evidence_span_ids)}">'
            f'<span class="badge {f.severity.value}">{f.severity.value}</span>'
            f'<span class="kind">{f.kind.value}</span> on <span class="mono">'
            f'{escape(f.fact)}</span>: observed <span class="mono">'
            f'{escape(f.observed_version)}</span>, expected <span class="mono">'
            f"{escape(f.expected_version)}</span>"
            + (f", lag {f.lag_ms:g} ms" if f.lag_ms is not None else "")
            + f'<br>{escape(f.summary)}<br>at <a class="mono" href="#row-{f.span_id}">'
            f"{escape(view.names.get(f.span_id, 'span'))} {f.span_id}</a>; evidence: {links}"
            "</li>"
        )
    return '<ul class="anomalies">' + "".join(items) + "</ul>"


def _obs_table(view: TraceView, offending: dict[str, Finding], evidence: dict[str, Finding]) -> str:
    t0 = min((o.start_ns for o in view.observations), default=0)
    t0 = min([t0, *(s.start_ns for s in view.scopes)])
    rows = [
        "<table><thead><tr><th>t (ms)</th><th>agent</th><th>span</th><th>op</th>"
        "<th>store / tier</th><th>reads</th><th>writes</th></tr></thead><tbody>"
    ]
    items: list[tuple[int, str, str]] = []
    for obs in view.observations:
        cls = (
            "anomalous"
            if obs.span_id in offending
            else ("evidence" if obs.span_id in evidence else "")
        )
        reads = "<br>".join(f"{escape(r.fact)} = {escape(r.version.text)}" for r in obs.reads)
        writes = "<br>".join(f"{escape(w.fact)} = {escape(w.version.text)}" for w in obs.writes)
        if obs.writes and not obs.committed:
            writes += f" <em>(txn {escape(obs.txn_id or '')})</em>"
        if obs.failed:
            writes += " <em>(failed)</em>"
        items.append(
            (
                obs.start_ns,
                obs.span_id,
                f'<tr id="row-{obs.span_id}" class="{cls}" data-span="{obs.span_id}">'
                f"<td>{(obs.start_ns - t0) / 1e6:.3f}</td><td>{escape(obs.agent)}</td>"
                f'<td class="mono">{escape(view.names.get(obs.span_id, ""))}<br>'
                f"{obs.span_id}</td><td>{obs.op.value}</td>"
                f"<td>{escape(obs.store)} / {obs.tier.value}</td>"
                f'<td class="mono">{reads}</td><td class="mono">{writes}</td></tr>',
            )
        )
    for scope in view.scopes:
        cls = "evidence" if scope.span_id in evidence else ""
        state = "failed" if scope.failed else "ok"
        items.append(
            (
                scope.start_ns,
                scope.span_id,
                f'<tr id="row-{scope.span_id}" class="{cls}" data-span="{scope.span_id}">'
                f"<td>{(scope.start_ns - t0) / 1e6:.3f}</td><td>{escape(scope.agent)}</td>"
                f'<td class="mono">{escape(view.names.get(scope.span_id, ""))}<br>'
                f"{scope.span_id}</td><td>{scope.kind.value} scope</td><td></td>"
                f"<td colspan=2>{escape(scope.name)} ({state})</td></tr>",
            )
        )
    for end in view.txn_ends:
        cls = "evidence" if end.span_id in evidence else ""
        items.append(
            (
                end.end_ns,
                end.span_id,
                f'<tr id="row-{end.span_id}" class="{cls}" data-span="{end.span_id}">'
                f"<td>{(end.end_ns - t0) / 1e6:.3f}</td><td>{escape(end.agent)}</td>"
                f'<td class="mono">{escape(view.names.get(end.span_id, ""))}<br>'
                f"{end.span_id}</td><td>{end.outcome}</td><td></td>"
                f"<td colspan=2>transaction {escape(end.txn_id)}</td></tr>",
            )
        )
    seen: set[str] = set()
    for _, span_id, html in sorted(items, key=lambda i: i[0]):
        if span_id in seen:
            continue  # one row per span (a COMMIT span can also be an observation)
        seen.add(span_id)
        rows.append(html)
    rows.append("</tbody></table>")
    return "".join(rows)
