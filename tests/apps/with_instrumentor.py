"""Run an application with one named instrumentor switched on, as if it were the only one
installed: `python with_instrumentor.py module:Class app.py [args...]`.

OpenInference and OpenLLMetry register their instrumentors under the same entry-point names
(`openai_agents`, `langchain`), so with both in one environment `opentelemetry-instrument`
loads both or, disabled by name, neither. The framework tests disable both by name and
choose one here; everything of ours still loads zero-code.
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys


def main() -> None:
    module, _, name = sys.argv[1].partition(":")
    getattr(importlib.import_module(module), name)().instrument()
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python app.py`
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
