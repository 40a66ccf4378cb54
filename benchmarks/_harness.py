"""Side-by-side timing for the benchmarks: every figure is a ratio measured in the same run.

Baseline and candidate run in alternating rounds (A B A B ...) so that drift on a small,
noisy machine hits both equally; each figure is the median over rounds.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any


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


Setup = Callable[[], AbstractContextManager[Callable[[int], None]]]


def side_by_side_setups(setups: dict[str, Setup], n: int, rounds: int) -> dict[str, float]:
    """Like side_by_side, for candidates that must be set up and torn down around each
    round (global instrumentors that patch a client class: only one can be active)."""
    samples: dict[str, list[float]] = {name: [] for name in setups}
    for index in range(rounds + 1):
        for name, setup in setups.items():
            with setup() as work:
                work(max(1, n // 10))  # warm-up inside the same setup
                if index:  # round 0 only warms up
                    samples[name].append(per_op_us(work, n))
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def nothing(work: Callable[[int], None]) -> Iterator[Callable[[int], None]]:
    yield work


def in_agents(tracer_provider: Any, work: Callable[[int], None]) -> Callable[[int], None]:
    """Run the operations inside one agent span per 50 operations, as agents do."""
    tracer = tracer_provider.get_tracer("bench")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "bench"}

    def run(n: int) -> None:
        done = 0
        while done < n:
            step = min(50, n - done)
            with tracer.start_as_current_span("invoke_agent bench", attributes=attributes):
                work(step)
            done += step

    return run


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
