"""`check` on one hot key: a single trace whose every operation reads or writes one fact.

Four agents take turns on a register (reads, writes and atomic compare-and-sets, values
repeating as in Jepsen's etcd test, digests only), operations overlapping their neighbours:
the worst case for version-order inference, which is per fact. Reported: seconds for the
whole `check` of 10k and 100k operations, and the growth from 10k to 100k (1x per 10x is
linear; 100x quadratic). The baseline is decoding the same spans alone.

    .venv/bin/python benchmarks/bench_hot_key.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from otel_agent_state import attributes as A  # noqa: E402
from otel_agent_state.offline import check_trace, spans_from_otlp_json  # noqa: E402

TRACE = "ab" * 16
FACT = "etcd:bench/register"


def _digest(value: int) -> str:
    return "h:" + hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest()


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        return {
            "key": key,
            "value": {"arrayValue": {"values": [{"stringValue": v} for v in value]}},
        }
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def history(n: int, agents: int = 4) -> dict[str, Any]:
    """An OTLP/JSON request with one trace of `n` operations on one fact (a linearizable
    register: each operation sees the value the one before it left)."""
    spans: list[dict[str, Any]] = [
        {
            "traceId": TRACE,
            "spanId": "0" * 15 + "1",
            "name": "invoke_workflow bench",
            "startTimeUnixNano": "0",
            "endTimeUnixNano": str((n + 10) * 1_000_000),
            "attributes": [_attr(A.SCOPE, "workflow")],
        }
    ]
    value = 0
    for i in range(n):
        start, end = i * 1_000_000, i * 1_000_000 + 1_500_000  # overlaps the next one
        agent_id = format(2 * i + 2, "016x")
        name = f"agent-{i % agents}"
        spans.append(
            {
                "traceId": TRACE,
                "spanId": agent_id,
                "parentSpanId": "0" * 15 + "1",
                "name": f"invoke_agent {name}",
                "startTimeUnixNano": str(start),
                "endTimeUnixNano": str(end + 1),
                "attributes": [
                    _attr("gen_ai.operation.name", "invoke_agent"),
                    _attr("gen_ai.agent.name", name),
                    _attr(A.SCOPE, "agent"),
                ],
            }
        )
        kind = i % 3
        attrs = [_attr(A.STORE, "etcd"), _attr(A.TIER, "primary")]
        if kind == 0:
            attrs += [
                _attr(A.OP, "read"),
                _attr(A.READ_FACTS, [FACT]),
                _attr(A.READ_VERSIONS, [_digest(value)]),
            ]
        elif kind == 1:
            value = (value + 1 + i) % 5
            attrs += [
                _attr(A.OP, "write"),
                _attr(A.WRITE_FACTS, [FACT]),
                _attr(A.WRITE_VERSIONS, [_digest(value)]),
            ]
        else:
            old, value = value, (value * 3 + 1) % 5
            attrs += [
                _attr(A.OP, "read_write"),
                _attr(A.READ_FACTS, [FACT]),
                _attr(A.READ_VERSIONS, [_digest(old)]),
                _attr(A.WRITE_FACTS, [FACT]),
                _attr(A.WRITE_VERSIONS, [_digest(value)]),
            ]
        spans.append(
            {
                "traceId": TRACE,
                "spanId": format(2 * i + 3, "016x"),
                "parentSpanId": agent_id,
                "name": "etcd op",
                "startTimeUnixNano": str(start + 1),
                "endTimeUnixNano": str(end),
                "attributes": attrs,
            }
        )
    return {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans}]}]}


def _time_check(n: int) -> tuple[float, float, int]:
    doc = history(n)
    start = time.process_time()
    records = list(spans_from_otlp_json(doc))
    decoded = time.process_time() - start
    start = time.process_time()
    found = check_trace(records)
    return time.process_time() - start, decoded, len(found)


def run(quick: bool) -> list[dict[str, Any]]:
    small, large = (1_000, 10_000) if quick else (10_000, 100_000)
    rows: list[dict[str, Any]] = []
    times = {}
    for n in (small, large):
        seconds, decoded, found = _time_check(n)
        times[n] = seconds
        rows.append(
            {
                "benchmark": (
                    f"check, one hot key, {n:,} operations "
                    "(digests, 4 agents, default 256-event window)"
                ),
                "ours": round(seconds, 3),
                "baseline": round(decoded, 3),
                "unit": "s CPU (baseline: decoding alone)",
                "ratio": round(seconds / decoded, 2) if decoded else None,
                "note": f"{found} findings (a linearizable history: 0 expected)",
            }
        )
    growth = times[large] / times[small] if times[small] else None
    rows.append(
        {
            "benchmark": f"check, one hot key: growth from {small:,} to {large:,} operations",
            "ours": round(growth, 1) if growth else 0.0,
            "baseline": 10.0,
            "unit": "x time for 10x operations (10 = linear)",
            "ratio": round(growth / 10, 2) if growth else None,
            "target": "O(n log n) per fact: <= 14x for 10x",
            "met": growth is not None and growth <= 14,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k operations")
    args = parser.parse_args()
    for row in run(args.quick):
        print(row)


if __name__ == "__main__":
    main()
