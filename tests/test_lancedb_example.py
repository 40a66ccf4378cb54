"""examples/rag_memory_lancedb.py as a user runs it: plain `python` and under the launcher."""

from __future__ import annotations

from pathlib import Path

from .test_qdrant_example import check_example


def test_lancedb_example(tmp_path: Path) -> None:
    check_example("rag_memory_lancedb.py", "search memories_index", tmp_path)
