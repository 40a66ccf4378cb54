"""Compare the outcomes of two conformance runs: print the counts and every test whose
outcome differs; exit 1 on any difference (a test missing from one run counts) that is not
listed, with its reason, in the expected-differences file (optional fourth argument)."""

from __future__ import annotations

import json
import sys
from collections import Counter


def expected(path: str | None) -> dict[str, str]:
    """`<suite label> <test id>  # why` lines: differences that are the test inspecting our
    wrappers, not what the application sees (docs/conformance.md says which and why)."""
    found: dict[str, str] = {}
    if not path:
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            entry, _, why = line.partition("#")
            if entry.strip():
                found[entry.strip()] = why.strip()
    return found


def main(argv: list[str]) -> int:
    label, base_path, other_path = argv[1], argv[2], argv[3]
    allowed = expected(argv[4] if len(argv) > 4 else None)
    suite = label.split(" ", 1)[0]
    with open(base_path, encoding="utf-8") as f:
        base = json.load(f)
    with open(other_path, encoding="utf-8") as f:
        other = json.load(f)
    counts = Counter(base.values())
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    diffs = sorted(
        (t, base.get(t, "missing"), other.get(t, "missing"))
        for t in set(base) | set(other)
        if base.get(t) != other.get(t)
    )
    unexpected = [d for d in diffs if f"{suite} {d[0]}" not in allowed]
    print(f"{label}: {len(base)} tests ({summary}); {len(unexpected)} differ", end="")
    print(f" (+{len(diffs) - len(unexpected)} expected)" if len(diffs) > len(unexpected) else "")
    for test, was, now in diffs:
        why = allowed.get(f"{suite} {test}")
        print(f"  {test}: {was} -> {now}" + (f"  (expected: {why})" if why else ""))
    return 1 if unexpected or not base else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
