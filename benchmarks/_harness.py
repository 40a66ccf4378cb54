"""Side-by-side timing for the benchmarks: every figure is a ratio measured in the same run.

Baseline and candidate run in alternating rounds (A B A B ...) so that drift on a small,
noisy machine hits both equally; each figure is the median over rounds.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Row:
    benchmark: str
    ours: float
    baseline: float | None
    unit: str
    ratio: float | None
    note: str = ""
    target: str = ""
    met: bool | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def per_op_us(fn: Callable[[int], None], n: int) -> float:
    """Microseconds per operation for one call of `fn(n)` doing n operations."""
    gc.collect()
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n * 1e6


def side_by_side(
    candidates: dict[str, Callable[[int], None]], n: int, rounds: int
) -> dict[str, float]:
    """Median µs/op of each candidate, rounds interleaved; one warm-up round first."""
    for fn in candidates.values():
        fn(max(1, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(per_op_us(fn, n))
    return {name: statistics.median(values) for name, values in samples.items()}


def ratio_row(
    benchmark: str,
    ours: float,
    baseline: float,
    *,
    unit: str = "µs/op",
    note: str = "",
    target: float | None = None,
) -> Row:
    """A row comparing `ours` to `baseline` (lower is better); `target` is a max ratio."""
    ratio = ours / baseline if baseline > 0 else None
    met = None if target is None or ratio is None else ratio <= target
    return Row(
        benchmark=benchmark,
        ours=ours,
        baseline=baseline,
        unit=unit,
        ratio=ratio,
        note=note,
        target=f"≤ {target:.2f}x" if target is not None else "",
        met=met,
    )
