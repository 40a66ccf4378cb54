"""The `otel-agent-state` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import ConfigError

_DESCRIPTION = """\
Make shared state visible in the traces of multi-agent systems.

Most users need no command at all: install the package and run the application under
the OpenTelemetry launcher,

    opentelemetry-instrument --service_name planner python my_agents.py

and stale reads, divergent views, orphaned mutations and lost updates are reported as
spans named 'agentstate.anomaly <kind>', span events and metrics.
"""

_DEMO_HELP = """\
Run the credit-scoring scenario on embedded SQLite (a primary database with a cache
table, and a replica file that lags). The faulty workflow skips the cache invalidation,
reads the replica before it caught up and runs a transfer in autocommit that dies
half-way; the correct workflow does the same work properly. The demo prints what each
agent saw and every anomaly found; the correct workflow shows none.

Also runs under the launcher, which prints every span with the console exporter:

    OTEL_TRACES_EXPORTER=console opentelemetry-instrument otel-agent-state demo
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-agent-state",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the credit-scoring scenario on embedded SQLite",
        description=_DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--run",
        choices=("both", "faulty", "correct"),
        default="both",
        help="which workflow to run (default: both)",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        help="keep the SQLite files in this directory (default: a temporary one)",
    )
    demo.add_argument(
        "--console",
        action="store_true",
        help="also print every span as JSON (without the launcher)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "demo":
            from .demo import run

            run(sys.stdout, workdir=args.workdir, console=args.console, which=args.run)
            return 0
    except ConfigError as exc:
        print(f"otel-agent-state: configuration error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2  # pragma: no cover - parser.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
