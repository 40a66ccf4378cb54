"""`otel-agent-state report`: a self-contained HTML state timeline of judged traces.

One section per trace: agents as lanes (their agent spans as bars), every read and write of
a fact as a mark with its version, anomalies circled in red with dashed lines to their
evidence spans, and tables below with links between anomalies and evidence. The SVG is
drawn here, so the page reads without JavaScript; the inline script adds highlighting on
hover and click. No external assets.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from html import escape
from typing import NamedTuple

from .core.model import Observation, Scope, ScopeKind, Severity
from .offline import Finding, TraceView

_WIDTH = 1240
_LEFT = 170
_RIGHT = 30
_LANE = 78  # the least height of a lane; more label rows make it taller
_TOP = 34
_FIRST_ROW = 30  # centre of a lane's first row of marks, below its transaction ends
_ROW = 16
_MAX_ROWS = 12  # past this, labels share rows (and may overlap) rather than grow the lane
_BOTTOM = 22  # under the rows: the decision and mutation bars
# Advance of one character of the 11px monospace labels (0.6 em, rounded up), and the room
# kept between a label and its neighbours.
_CHAR = 6.8
_GAP = 8

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
svg.timeline { display: block; width: 100%; max-width: 1240px; height: auto; }
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
td, li, h2 { overflow-wrap: anywhere; }  /* long fact keys wrap instead of overflowing */
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
        f'<div class="meta">{escape(", ".join(sources))} &middot; '
        f"{_n(total_traces, 'trace')} read, {len(views)} shown &middot; {errors} error and "
        f"{_n(warnings, 'warning anomaly', 'warning anomalies')}</div>",
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


class _Placed(NamedTuple):
    """Where an observation's mark and label go: no label leaves the drawing or overlaps
    another label of its lane."""

    cx: float
    row: int
    text: str
    left: bool  # the label ends left of the mark (it would run off the right edge)


def _place(marks: list[tuple[float, float, str]]) -> tuple[list[_Placed], int]:
    """(mark x, mark end x, label) for one lane's observations in time order -> placements
    and the number of rows used. Greedy interval packing: each mark with its label takes the
    first row where it fits between what is already there."""
    rows: list[list[tuple[float, float]]] = []
    out = []
    right_edge, left_edge = _WIDTH - 6, _LEFT + 6
    for cx, end, label in marks:
        room_right = right_edge - (cx + 20)
        room_left = (cx - 10) - left_edge
        left = len(label) * _CHAR > room_right and room_left > room_right
        room = room_left if left else room_right
        text = _short(label, max(int(room // _CHAR), 4))
        width = len(text) * _CHAR
        lo, hi = (cx - 10 - width, max(cx + 18, end)) if left else (cx - 8, cx + 20 + width)
        free = (
            r
            for r, taken in enumerate(rows)
            if all(hi + _GAP <= a or lo >= b + _GAP for a, b in taken)
        )
        row = next(free, len(rows))
        if row == len(rows):
            if row >= _MAX_ROWS:  # share the row whose last label ends first
                row = min(range(len(rows)), key=lambda r: rows[r][-1][1])
            else:
                rows.append([])
        rows[row].append((lo, hi))
        out.append(_Placed(cx, row, text, left))
    return out, max(len(rows), 1)


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

    observations = sorted(view.observations, key=lambda o: o.start_ns)
    by_lane: dict[str, list[Observation]] = {}
    for obs in observations:
        by_lane.setdefault(obs.agent if obs.agent in lane_of else lanes[0], []).append(obs)
    placed: dict[str, _Placed] = {}
    heights: dict[str, int] = {}
    for agent in lanes:
        mine = by_lane.get(agent, [])
        spots, rows = _place([(x(o.start_ns), x(o.end_ns), _label(o, short=True)) for o in mine])
        placed.update((o.span_id, spot) for o, spot in zip(mine, spots, strict=True))
        heights[agent] = max(_LANE, _FIRST_ROW + (rows - 1) * _ROW + 12 + _BOTTOM)
    tops: dict[str, int] = {}
    top = _TOP
    for agent in lanes:
        tops[agent] = top
        top += heights[agent]

    def y(agent: str) -> int:
        return tops.get(agent, _TOP)

    def lane_height(agent: str) -> int:
        return heights.get(agent, _LANE)

    height = top + 10
    offending = {f.span_id: f for f in view.findings}
    evidence: dict[str, Finding] = {}
    for f in view.findings:
        for span_id in f.evidence_span_ids:
            evidence.setdefault(span_id, f)
    svg = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        'aria-label="state timeline">'
    ]
    for ms_tick in range(6):
        t = t0 + span * ms_tick // 5
        anchor = "start" if ms_tick == 0 else "end" if ms_tick == 5 else "middle"
        svg.append(
            f'<text class="axis" x="{x(t)}" y="14" text-anchor="{anchor}">'
            f"{(t - t0) / 1e6:.1f} ms</text>"
            f'<line x1="{x(t)}" y1="20" x2="{x(t)}" y2="{height - 6}" stroke="#e3e7ef"/>'
        )
    for agent in lanes:
        top = y(agent)
        svg.append(
            f'<rect class="lane-bg" x="{_LEFT}" y="{top + 4}" width="{plot}" '
            f'height="{lane_height(agent) - 8}" rx="4"/>'
            f'<text class="lane-label" x="8" y="{top + lane_height(agent) // 2 + 4}">'
            f"{escape(_short(agent, 22))}</text>"
        )
    for scope in view.scopes:
        svg.append(_scope_bar(scope, x(scope.start_ns), x(scope.end_ns or t1), y, lane_height))
    position: dict[str, tuple[float, float]] = {}
    for obs in observations:
        spot = placed[obs.span_id]
        agent = obs.agent if obs.agent in lane_of else lanes[0]
        cy = y(agent) + _FIRST_ROW + spot.row * _ROW
        svg.append(_obs_mark(obs, spot, cy, x(obs.end_ns), offending, position))
    for end in view.txn_ends:
        agent = end.agent if end.agent in lane_of else lanes[0]
        cx, cy = x(end.end_ns), y(agent) + 14
        position.setdefault(end.span_id, (cx, cy))
        svg.append(
            f'<g class="obs txn-end" data-span="{end.span_id}"><title>{end.outcome} of '
            f"transaction {escape(end.txn_id)} (span {end.span_id})</title>"
            f'<path d="M{cx - 4},{cy - 4} L{cx + 4},{cy + 4} M{cx - 4},{cy + 4} '
            f'L{cx + 4},{cy - 4}" stroke="#444" stroke-width="2"/></g>'
        )
    for scope in view.scopes:
        if scope.span_id not in position:
            bottom = y(scope.agent) + lane_height(scope.agent) - _BOTTOM + 8
            position[scope.span_id] = (x(scope.end_ns or t1), bottom)
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
            f"<div>{badges} {_n(view.spans, 'span')}, "
            f"{_n(len(view.observations), 'observation')}, {_n(len(lanes), 'agent')}</div>",
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


def _scope_bar(
    scope: Scope,
    left: float,
    right: float,
    y: Callable[[str], int],
    lane_height: Callable[[str], int],
) -> str:
    """An agent span fills its lane behind the marks; decisions and mutations are thin bars
    under the rows of labels, so no label lies on them."""
    top, lane = y(scope.agent), lane_height(scope.agent)
    if scope.kind in (ScopeKind.AGENT, ScopeKind.WORKFLOW):
        bar_top, bar_height = top + 8, lane - 16
    elif scope.kind == ScopeKind.DECISION:
        bar_top, bar_height = top + lane - _BOTTOM + 2, 5
    else:
        bar_top, bar_height = top + lane - _BOTTOM + 9, 5
    failed = " failed" if scope.failed else ""
    label = f"{scope.kind.value} {scope.name}" + (" (failed)" if scope.failed else "")
    return (
        f'<rect class="scope{failed}" data-kind="{scope.kind.value}" '
        f'data-span="{scope.span_id}" x="{left}" y="{bar_top}" width="{max(right - left, 2)}" '
        f'height="{bar_height}" rx="3" '
        f'opacity="{0.55 if scope.kind == ScopeKind.AGENT else 0.9}">'
        f"<title>{escape(label)} (span {scope.span_id})</title></rect>"
    )


def _obs_mark(
    obs: Observation,
    spot: _Placed,
    cy: float,
    end_x: float,
    offending: dict[str, Finding],
    position: dict[str, tuple[float, float]],
) -> str:
    cx = spot.cx
    position[obs.span_id] = (cx, cy)
    parts = [f'<g class="obs" data-span="{obs.span_id}">']
    tip = _obs_text(obs)
    parts.append(f"<title>{escape(tip)} (span {obs.span_id})</title>")
    width = max(end_x - cx, 2)
    parts.append(f'<rect x="{cx}" y="{cy + 7}" width="{width}" height="2" fill="#94a3b8"/>')
    if obs.writes:
        cls = "failed-op" if obs.failed else "pending" if not obs.committed else "write"
        parts.append(f'<rect class="{cls}" x="{cx - 5}" y="{cy - 5}" width="10" height="10"/>')
    if obs.reads:
        dx = 12 if obs.writes else 0
        parts.append(f'<circle class="read" cx="{cx + dx}" cy="{cy}" r="5"/>')
    bold = ' font-weight="700"' if obs.span_id in offending else ""
    where = f'x="{cx - 10}" text-anchor="end"' if spot.left else f'x="{cx + 20}"'
    parts.append(f'<text class="obs-label" {where} y="{cy + 4}"{bold}>{escape(spot.text)}</text>')
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


def _n(count: int, one: str, many: str = "") -> str:
    """`1 span`, `2 spans`."""
    return f"{count} {one if count == 1 else many or one + 's'}"


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
