"""Where `check` spends its CPU, in instructions: a measure that does not drift with the VM.

Timings on the shared development VM move by up to 2x between hours; valgrind's instruction
counts do not, so they show whether a change to the checker made it cheaper. Each phase runs
in its own process under `valgrind --tool=cachegrind --cache-sim=no`, and a phase's count
is its process's minus the previous phase's (start-up and imports are the first phase):

    .venv/bin/python benchmarks/instructions.py [--spans 50000]

Needs valgrind (Debian's `valgrind` package). Takes a minute or two: valgrind runs Python
about 50 times slower.
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PHASES = ("import", "decode", "group", "judge")


def _phase(phase: str, path: str) -> None:
    """Run `check`'s work up to and including `phase` (what valgrind counts)."""
    from otel_agent_state.core.config import get_settings
    from otel_agent_state.offline import TraceGrouper, json_values, judge

    gc.disable()  # as `check` does
    if phase == "import":
        return
    grouper = TraceGrouper()
    with open(path, encoding="utf-8") as lines:
        for _, value in json_values(lines):
            if phase != "decode":
                grouper.add(value)
    if phase == "judge":
        settings = get_settings()
        for pending in grouper.finish():
            judge(pending.trace_id, pending.records, pending.parents, settings, spans=pending.count)


def _count(phase: str, path: Path) -> int:
    result = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--phase",
            phase,
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed on phase {phase}:\n{result.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=50_000, help="spans in the generated file")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("file", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        _phase(args.phase, args.file)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    from bench_check import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spans.jsonl"
        spans = generate(path, args.spans)
        counts: dict[str, int] = {}
        for phase in PHASES:
            print(f"[instructions] {phase} ...", file=sys.stderr, flush=True)
            counts[phase] = _count(phase, path)
    print(f"check's work on {spans:,} spans (bench_check's file), in instructions:")
    previous = 0
    for phase, total in counts.items():
        print(f"  {phase:<8} {(total - previous) / 1e6:>8,.0f}M")
        previous = total
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
