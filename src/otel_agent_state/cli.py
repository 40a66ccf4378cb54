"""The `otel-agent-state` command."""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .core.config import ConfigError, Settings, get_settings, parse_consistency

if TYPE_CHECKING:
    from .offline import TraceView

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

Run the same scenario on real servers: --redis-url puts the score cache in Redis,
--postgres-dsn the primary and the replica in PostgreSQL (schemas agentstate_demo and
agentstate_demo_replica), either or both:

    otel-agent-state demo --redis-url redis://127.0.0.1:6379/0 \\
        --postgres-dsn postgresql://postgres@127.0.0.1:5432/test
"""


_CHECK_HELP = """\
Check exported traces offline: read spans from OTLP JSON files, group them into whole
traces (across files: a trace split over the exports of several processes is judged as
one), run the same detectors as the live span processor, and print a JSON report:

    {"traces": N, "spans": N, "anomalies": [{"kind", "trace_id", "span_id", "fact",
     "observed_version", "expected_version", "agents", "evidence_span_ids", "summary",
     "severity", "store", "lag_ms"}]}

Formats, told apart per file by looking at the content:
  - the OTel Collector file exporter: one ExportTraceServiceRequest per line (JSON lines);
  - an OTLP/HTTP JSON body: one ExportTraceServiceRequest per file (any layout);
  - the SDK console exporter (OTEL_TRACES_EXPORTER=console): one indented span per object;
    what the application itself prints between the spans is skipped, with a warning.
Any of them gzip-compressed or not. Use - to read standard input.

Settings come from the same OTEL_AGENTSTATE_* variables and fact rules as the live
processor (consistency model, clock skew across processes); the options override them.

Exit status: 0 no anomaly of severity error, 1 at least one, 2 unreadable input (the file,
line and reason go to standard error), bad configuration, or with --require-spans an input
without a single span.
"""

_CHECK_EPILOG = """\
examples:
  otel-agent-state check traces.jsonl
  otel-agent-state check planner.jsonl scorer.jsonl --clock-skew-ms 50
  OTEL_TRACES_EXPORTER=console opentelemetry-instrument python my_agents.py \\
      | otel-agent-state check -
  otel-agent-state check --require-spans collector-export.jsonl.gz
  otel-agent-state check --skip-bad big.jsonl | jq '.anomalies[] | .summary'

memory: spans are held until the input ends (no span proves a trace complete); beyond
--max-spans the oldest trace is judged early on what was read of it, with a warning.
"""

_REPORT_HELP = """\
Write a self-contained HTML state timeline of exported traces (same inputs as 'check'):
one section per trace, agents as lanes, each read and write of a fact with its version,
anomalies highlighted with links to their evidence spans. No external assets: open the
file in any browser, attach it to a ticket.
"""

_REPORT_EPILOG = """\
examples:
  otel-agent-state report traces.jsonl -o report.html
  otel-agent-state report planner.jsonl scorer.jsonl -o run-42.html --max-traces 20

Traces with anomalies come first; at most --max-traces traces are drawn (default 100).
Exit status as for 'check' (1 when an error-severity anomaly was found).
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
    demo.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run the workflows N times, 0 = until interrupted (default: 1); keeps the "
        "process alive for metric scrapers",
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="pause between repetitions (default: 5)",
    )
    demo.add_argument(
        "--redis-url",
        default=os.environ.get("AGENTSTATE_REDIS_URL") or None,
        metavar="URL",
        help="keep the score cache in this Redis, e.g. redis://127.0.0.1:6379/0 "
        "(default: $AGENTSTATE_REDIS_URL, else a SQLite table)",
    )
    demo.add_argument(
        "--postgres-dsn",
        default=os.environ.get("AGENTSTATE_POSTGRES_DSN") or None,
        metavar="DSN",
        help="keep the primary and the replica in this PostgreSQL, schemas agentstate_demo "
        "and agentstate_demo_replica (default: $AGENTSTATE_POSTGRES_DSN, else SQLite)",
    )
    demo.add_argument(
        "--mysql-dsn",
        default=os.environ.get("AGENTSTATE_MYSQL_DSN") or None,
        metavar="DSN",
        help="keep the primary and the replica in this MySQL/MariaDB (PyMySQL), databases "
        "agentstate_demo and agentstate_demo_replica, e.g. mysql://root@127.0.0.1:3306/test "
        "(default: $AGENTSTATE_MYSQL_DSN, else SQLite)",
    )
    demo.set_defaults(handler=_demo)
    check = _input_command(
        commands,
        "check",
        "check exported traces (OTLP JSON, console JSON) and print a JSON report",
        _CHECK_HELP,
        _CHECK_EPILOG,
    )
    check.add_argument(
        "--indent", type=int, default=None, help="indent the JSON report (default: one line)"
    )
    check.set_defaults(handler=_check)
    report = _input_command(
        commands,
        "report",
        "write a self-contained HTML state timeline of exported traces",
        _REPORT_HELP,
        _REPORT_EPILOG,
    )
    report.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")
    report.add_argument(
        "--max-traces",
        type=_positive,
        default=100,
        help="draw at most this many traces, those with anomalies first (default: 100)",
    )
    report.set_defaults(handler=_report)
    serve = commands.add_parser(
        "serve",
        help="OTLP receiver (gRPC :4317, HTTP :4318) that runs the detectors across processes",
        description="An OTLP receiver that groups spans into traces, runs the detectors "
        "across processes and re-exports anomaly spans and metrics over OTLP.",
    )
    try:
        serve_module = _serve_module()
    except Exception:  # a broken serve must not take check, report and demo down with it
        serve_module = None
    if serve_module is not None:
        serve_module.add_arguments(serve)
    serve.set_defaults(handler=_serve)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _input_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """A command that reads exported traces (check, report) with the input options."""
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _input_arguments(parser)
    return parser


def _input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="input files; - for stdin")
    parser.add_argument(
        "--consistency",
        help="consistency model for facts without a rule: linearizable, session, "
        "bounded:<ms>, eventual (default: $OTEL_AGENTSTATE_CONSISTENCY or linearizable)",
    )
    parser.add_argument(
        "--clock-skew-ms",
        type=int,
        help="clock skew tolerated between processes (default: $OTEL_AGENTSTATE_CLOCK_SKEW_MS)",
    )
    parser.add_argument(
        "--max-spans",
        type=_positive,
        default=2_000_000,
        help="spans held in memory before the oldest trace is judged early (default: 2000000)",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable lines (or a damaged console span) with a warning instead of "
        "stopping with exit status 2",
    )
    parser.add_argument(
        "--require-spans",
        action="store_true",
        help="exit with status 2 when the input holds no span at all (an empty export "
        "should not pass a CI gate)",
    )


def _serve_module() -> Any:
    """`serve` lives in its own module (it needs the OTLP exporter); loaded only if present."""
    if importlib.util.find_spec(f"{__package__}.serve") is None:
        return None
    return importlib.import_module(f"{__package__}.serve")


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoError, run

    try:
        run(
            sys.stdout,
            workdir=args.workdir,
            console=args.console,
            which=args.run,
            repeat=args.repeat,
            interval=args.interval,
            redis_url=args.redis_url,
            postgres_dsn=args.postgres_dsn,
            mysql_dsn=args.mysql_dsn,
        )
    except DemoError as exc:
        sys.stdout.flush()
        print(f"otel-agent-state demo: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        module = _serve_module()
    except Exception as exc:
        print(f"otel-agent-state: serve is not available: {exc}", file=sys.stderr)
        return 2
    if module is None:
        print("otel-agent-state: serve is not available in this installation", file=sys.stderr)
        return 2
    return int(module.run(args))


class _InputError(Exception):
    def __init__(self, message: str, *, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet  # already explained on stderr


def _settings(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    if args.consistency:
        try:
            settings = replace(settings, consistency=parse_consistency(args.consistency))
        except ValueError as exc:
            raise ConfigError(f"--consistency: {exc}") from None
    if args.clock_skew_ms is not None:
        settings = replace(settings, clock_skew_ms=max(0, args.clock_skew_ms))
    return settings


def _views(args: argparse.Namespace, settings: Settings) -> Iterator[TraceView]:
    """Judge every trace in the input files; raises _InputError on unreadable input."""
    from .offline import TraceGrouper

    grouper = TraceGrouper(max_spans=args.max_spans)
    # Millions of long-lived, acyclic objects: the cyclic GC would rescan them over and
    # over (a third of the run time); reference counting frees the garbage.
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield from _judged(args, settings, grouper)
    finally:
        if collecting:
            gc.enable()


def _judged(args: argparse.Namespace, settings: Settings, grouper: Any) -> Iterator[TraceView]:
    from .offline import (
        FormatError,
        PendingTrace,
        ReadStats,
        json_values,
        judge,
        may_hold_spans,
        open_input,
    )

    warned = False

    def done(pending: PendingTrace) -> TraceView:
        return judge(
            pending.trace_id, pending.records, pending.parents, settings, spans=pending.count
        )

    for name in args.files:
        label = "<stdin>" if name == "-" else name

        def bad(error: FormatError, label: str = label) -> None:
            print(f"{label}:{error.line}: {error.reason} (skipped)", file=sys.stderr)

        try:
            stream = open_input(name)
        except OSError as exc:
            raise _InputError(f"{label}: {exc.strerror or exc}") from None
        except FormatError as exc:
            raise _InputError(f"{label}: {exc.reason}") from None
        lineno = 0
        stats = ReadStats()
        try:
            for lineno, value in json_values(stream, bad if args.skip_bad else None, stats):
                try:
                    evicted = grouper.add(value)
                except FormatError as exc:
                    if stats.concatenated and not may_hold_spans(value):
                        stats.other_json += 1  # the application's own JSON output
                        continue
                    if not args.skip_bad:
                        raise FormatError(exc.reason, lineno) from None
                    bad(FormatError(exc.reason, lineno))
                    continue
                for pending in evicted:
                    if not warned:
                        warned = True
                        print(
                            f"otel-agent-state: more than {args.max_spans} spans held: judging "
                            "the oldest traces early (raise --max-spans if their spans are "
                            "spread over the input)",
                            file=sys.stderr,
                        )
                    yield done(pending)
        except FormatError as exc:
            raise _InputError(f"{label}:{exc.line or lineno}: {exc.reason}") from None
        except UnicodeDecodeError as exc:
            raise _InputError(
                f"{label}:{lineno + 1}: not UTF-8 text ({exc.reason}); check reads OTLP JSON "
                "or console-exporter JSON, plain or gzip-compressed"
            ) from None
        except (OSError, EOFError) as exc:  # EOFError: a gzip stream cut short
            raise _InputError(f"{label}: {getattr(exc, 'strerror', None) or exc}") from None
        finally:
            if name != "-":
                stream.close()
            elif stream is not sys.stdin and hasattr(stream, "detach"):
                stream.detach()  # leave standard input itself open
        if stats.skipped_lines and not stats.values:
            raise _InputError(
                f"{label}:{stats.first_skipped}: not JSON (no JSON value in "
                f"{stats.skipped_lines} line{'s' if stats.skipped_lines != 1 else ''} of text)"
            )
        if stats.skipped_lines or stats.other_json:
            lines, other = stats.skipped_lines, stats.other_json
            skipped = [
                f"{lines} line{'s' if lines != 1 else ''} of text that "
                f"{'are' if lines != 1 else 'is'} not JSON"
            ] * bool(lines) + [
                f"{other} JSON value{'s' if other != 1 else ''} that "
                f"{'hold' if other != 1 else 'holds'} no span"
            ] * bool(other)
            print(
                f"otel-agent-state: {label}: skipped {' and '.join(skipped)} (the "
                "application's own output between the console exporter's spans?)",
                file=sys.stderr,
            )
    for pending in grouper.finish():
        yield done(pending)
    if grouper.spans == 0:
        where = ", ".join("<stdin>" if f == "-" else f for f in args.files)
        print(
            f"otel-agent-state: no spans in {where}"
            + (": nothing was checked" if not args.require_spans else " (--require-spans)"),
            file=sys.stderr,
        )
        if args.require_spans:
            raise _InputError("no spans read", quiet=True)


def _check(args: argparse.Namespace) -> int:
    from .core.model import Severity
    from .offline import finding_json

    settings = _settings(args)
    traces = spans = 0
    anomalies: list[dict[str, Any]] = []
    failed = False
    try:
        for view in _views(args, settings):
            traces += 1
            spans += view.spans
            for finding in view.findings:
                anomalies.append(finding_json(finding))
                failed = failed or finding.severity == Severity.ERROR
    except _InputError as exc:
        if not exc.quiet:
            print(f"otel-agent-state check: {exc}", file=sys.stderr)
        return 2
    report = {"traces": traces, "spans": spans, "anomalies": anomalies}
    status = 1 if failed else 0
    try:
        json.dump(report, sys.stdout, indent=args.indent)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `check ... | head`: the reader has all it wanted
        _drop_stdout()
    return status


def _drop_stdout() -> None:
    """Point stdout at /dev/null after the reader went away, so that the interpreter's final
    flush does not fail again (the Python docs' recipe for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _report(args: argparse.Namespace) -> int:
    from .core.model import Severity
    from .report import render

    settings = _settings(args)
    kept: list[TraceView] = []
    quiet: list[TraceView] = []
    traces = 0
    failed = False
    try:
        for view in _views(args, settings):
            traces += 1
            failed = failed or any(f.severity == Severity.ERROR for f in view.findings)
            if view.findings:
                if len(kept) < args.max_traces:
                    kept.append(view)
            elif len(quiet) < args.max_traces and view.observations:
                quiet.append(view)
    except _InputError as exc:
        if not exc.quiet:
            print(f"otel-agent-state report: {exc}", file=sys.stderr)
        return 2
    shown = (kept + quiet)[: args.max_traces]
    html = render(shown, total_traces=traces, sources=[str(f) for f in args.files])
    try:
        args.output.write_text(html, encoding="utf-8")
    except OSError as exc:
        print(f"otel-agent-state report: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(shown)} of {traces} traces)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Report it with the command's own usage (argparse would show the top-level one).
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command = commands.choices.get(args.command or "", parser)
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except BrokenPipeError:  # output piped into `head` and the like
        _drop_stdout()
        return 1
    except ConfigError as exc:
        hook = sys.modules.get(f"{__package__}.autoinstrument")
        if hook is None or not hook.reported(exc):  # else the launcher's hook said it
            print(f"otel-agent-state: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
