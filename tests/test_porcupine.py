"""Soundness on evidence nobody here wrote: Porcupine's Jepsen etcd histories (issue 13).

Every conversion of the 23 histories Porcupine labels linearizable must give no finding of
any kind, live (the processor) and offline (`check` on the exported spans), and both must
agree. Of the 79 non-linearizable ones, what is flagged is reported in docs/accuracy.md
(`python -m tests.test_porcupine`); each stale read flagged must be a violation that real
time alone proves (checked here independently of the detectors).
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest

from otel_agent_state.offline import check_trace, spans_from_otlp_json

from . import porcupine as P
from .otlp_json import otlp_request

LINEARIZABLE = [name for name, ok in P.histories() if ok]
VIOLATING = [name for name, ok in P.histories() if not ok]


def offline(replayed: P.Replayed) -> list[tuple[str, str]]:
    records = list(spans_from_otlp_json(otlp_request(replayed.spans)))
    return sorted((f.kind.value, f.span_id) for f in check_trace(records))


def test_the_corpus_is_what_porcupine_labels() -> None:
    assert (len(LINEARIZABLE), len(VIOLATING)) == (23, 79)


@pytest.mark.parametrize("agents", ["operation", "process"])
@pytest.mark.parametrize("name", LINEARIZABLE)
def test_linearizable_history_gives_no_finding(name: str, agents: P.Agents) -> None:
    replayed = P.replay((P.DATA / name).read_text(), agents)
    assert replayed.live() == []
    assert offline(replayed) == []


def proven_by_real_time(text: str, read_span: str, replayed: P.Replayed) -> bool:
    """Independently of the detectors: the read's value was overwritten before it began.
    Some write W (a completed write or successful cas) ended before the read started, and
    every operation that may have written the value read (completed, timed out or never
    answered) precedes W: it ended before W started, or W is a successful cas that expected
    the value and it is the value's only writer (the cas read what it wrote). Then no
    linearization lets the read return the value."""
    spans = {format(s.context.span_id, "016x"): s for s in replayed.spans}
    read = spans[read_span]
    value = (read.attributes or {})["agentstate.read.versions"][0]  # type: ignore[index]
    ops = P.parse(text)
    by_time = {op.start: op for op in ops}
    op = by_time[((read.start_time or 0) - 1) // P.MS]

    def writes(o: P.Operation) -> str | None:
        if o.kind == "write":
            return P.digest(o.value)
        if o.kind == "cas" and o.cas is not None and o.outcome in ("ok", "info"):
            return P.digest(o.cas[1])
        return None

    def done(o: P.Operation) -> int:
        return o.end if o.end is not None and o.outcome == "ok" else 1 << 30

    producers = [o for o in ops if writes(o) == value and o.start < (op.end or 0)]
    if value == "none":
        producers = []  # nil: the initial state, overwritten by any completed write
    for w in ops:
        if writes(w) is None or writes(w) == value or w.outcome != "ok":
            continue
        cas_read_it = w.kind == "cas" and w.cas is not None and P.digest(w.cas[0]) == value
        if done(w) < op.start and all(
            done(p) < w.start or (cas_read_it and len(producers) == 1) for p in producers
        ):
            return True
    return False


def flagged(name: str, agents: P.Agents) -> tuple[Counter[str], int, int]:
    text = (P.DATA / name).read_text()
    replayed = P.replay(text, agents)
    found = offline(replayed)
    assert found == replayed.live(), f"{name}: offline and live differ"
    stale = [span for kind, span in found if kind == "stale_read"]
    proven = sum(proven_by_real_time(text, span, replayed) for span in stale)
    return Counter(kind for kind, _ in found), len(stale), proven


@pytest.mark.parametrize("name", VIOLATING)
def test_each_stale_read_flagged_in_a_violating_history_is_a_real_violation(name: str) -> None:
    _, stale, proven = flagged(name, "operation")
    assert proven == stale


def main() -> None:
    """Print the table docs/accuracy.md carries (python -m tests.test_porcupine)."""
    for agents in ("operation", "process"):
        histories = Counter[str]()
        total = Counter[str]()
        stale_total = proven_total = 0
        for name in VIOLATING:
            kinds, stale, proven = flagged(name, agents)  # type: ignore[arg-type]
            total.update(kinds)
            stale_total += stale
            proven_total += proven
            if kinds:
                histories["any"] += 1
        print(
            f"agents per {agents}: {histories['any']} of {len(VIOLATING)} non-linearizable "
            f"histories flagged; findings {dict(total)}; stale reads proven independently "
            f"{proven_total}/{stale_total}",
            file=sys.stdout,
        )


if __name__ == "__main__":
    main()
