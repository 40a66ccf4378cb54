"""The public Python API (SPEC §6): scopes, manual observations and configure().

`agent`, `decision`, `mutation` and `workflow` are context managers (sync and async) and
decorators (each call opens its own scope). They open spans through the global
TracerProvider unless `configure(tracer_provider=...)` names another.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import attributes as A
from . import runtime
from .core.config import (
    ConfigError,
    FactRule,
    Settings,
    get_settings,
    parse_consistency,
    parse_rules_file,
    rules_from_dicts,
    set_settings,
)
from .core.model import NONE_VERSION, Op, Tier, VersionError, parse_version
from .errors import StaleReadError

F = TypeVar("F", bound=Callable[..., Any])

_tracer_provider: trace.TracerProvider | None = None


def _tracer() -> trace.Tracer:
    provider = _tracer_provider or trace.get_tracer_provider()
    return provider.get_tracer(A.SCOPE_NAME)


class _ScopeSpan:
    """A span-backed scope: context manager (sync/async) and decorator."""

    _span: Span | None = None
    _token: object = None

    def _name(self) -> str:
        raise NotImplementedError

    def _attributes(self) -> dict[str, Any]:
        raise NotImplementedError

    def _clone(self) -> _ScopeSpan:
        raise NotImplementedError

    def _before_end(self, span: Span, failed: bool) -> None:
        runtime.before_scope_end(span, failed)

    def __enter__(self) -> Any:
        if self._span is not None:
            raise RuntimeError(
                f"{type(self).__name__} scope is already open; create a new one for each use"
            )
        self._span = _tracer().start_span(
            self._name(), kind=SpanKind.INTERNAL, attributes=self._attributes()
        )
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        failed = exc is not None
        try:
            if exc is not None and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self._before_end(span, failed)
        finally:
            otel_context.detach(cast(Any, self._token))
            span.end()
            self._span = None

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                async with self._clone():
                    return await cast(Callable[..., Awaitable[Any]], func)(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self._clone():
                return func(*args, **kwargs)

        return cast(F, run)

    @property
    def span(self) -> Span:
        """The open span of this scope (INVALID_SPAN outside it)."""
        return self._span if self._span is not None else trace.INVALID_SPAN


class agent(_ScopeSpan):
    """An agent's turn: opens an `invoke_agent <name>` span with GenAI attributes.

    Reads and writes inside it are attributed to `name`. Usable as `with agent("risk"):`,
    `async with agent("risk"):` or `@agent("risk")`.
    """

    def __init__(self, name: str, id: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"agent name must be a non-empty string, got {name!r}")
        self.name = name
        self.id = id

    def _name(self) -> str:
        return f"invoke_agent {self.name}"

    def _attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: "invoke_agent",
            A.GEN_AI_AGENT_NAME: self.name,
            A.SCOPE: "agent",
        }
        if self.id is not None:
            attrs[A.GEN_AI_AGENT_ID] = self.id
        return attrs

    def _clone(self) -> agent:
        return agent(self.name, self.id)


class workflow(_ScopeSpan):
    """A multi-agent workflow: the root scope whose end closes the trace's detection."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"workflow name must be a non-empty string, got {name!r}")
        self.name = name

    def _name(self) -> str:
        return f"invoke_workflow {self.name}"

    def _attributes(self) -> dict[str, Any]:
        return {A.GEN_AI_OPERATION_NAME: "invoke_workflow", A.SCOPE: "workflow"}

    def _clone(self) -> workflow:
        return workflow(self.name)


class decision(_ScopeSpan):
    """A decision: on exit records `agentstate.decision.inputs` (facts@versions read inside)
    and the outcome set with `.outcome(...)`. A stale read that fed a decision is an error."""

    def __init__(self, intent: str, policy: str | None = None) -> None:
        if not isinstance(intent, str) or not intent:
            raise ValueError(f"decision intent must be a non-empty string, got {intent!r}")
        self.intent = intent
        self.policy = policy
        self._outcome: str | None = None

    def outcome(self, value: object) -> None:
        """Record what was decided (stored as text)."""
        self._outcome = str(value)
        if self._span is not None:
            self._span.set_attribute(A.DECISION_OUTCOME, self._outcome)

    def _name(self) -> str:
        return f"decision {self.intent}"

    def _attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {A.SCOPE: "decision", A.DECISION_INTENT: self.intent}
        if self.policy is not None:
            attrs[A.DECISION_POLICY] = self.policy
        return attrs

    def _clone(self) -> decision:
        return decision(self.intent, self.policy)


class mutation(_ScopeSpan):
    """An explicit multi-step mutation. Ending in an exception, or `.rollback()`, with
    committed writes that nothing restored is an orphaned mutation."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"mutation name must be a non-empty string, got {name!r}")
        self.name = name

    def commit(self) -> None:
        self._set_outcome("commit")

    def rollback(self) -> None:
        self._set_outcome("rollback")

    def _set_outcome(self, outcome: str) -> None:
        if self._span is None:
            raise RuntimeError("mutation.commit()/rollback() only inside its `with` block")
        self._span.set_attribute(A.MUTATION_OUTCOME, outcome)

    def _name(self) -> str:
        return f"mutation {self.name}"

    def _attributes(self) -> dict[str, Any]:
        return {A.SCOPE: "mutation", A.MUTATION_NAME: self.name}

    def _clone(self) -> mutation:
        return mutation(self.name)


# ---------------------------------------------------------------- manual observations


def _version_text(fact: str, version: str | int | None) -> str:
    if version is None:
        return NONE_VERSION
    if isinstance(version, bool) or not isinstance(version, (str, int)):
        raise TypeError(
            f"version of {fact!r} must be a version string ('n:3', 't:2026-11-26T10:00:00Z', "
            f"'h:ab12', 'none'), an int, or None; got {type(version).__name__}"
        )
    if isinstance(version, int):
        return f"n:{version}"
    try:
        return parse_version(version).text
    except VersionError as exc:
        raise ValueError(f"fact {fact!r}: {exc}") from None


def _check_common(fact: str, store: str, tier: str) -> None:
    if not isinstance(fact, str) or not fact:
        raise ValueError(f"fact must be a non-empty string key, got {fact!r}")
    if not isinstance(store, str) or not store:
        raise ValueError(f"store must be a non-empty string, got {store!r}")
    if tier not in {t.value for t in Tier}:
        raise ValueError(f"tier must be one of primary, replica, cache, index; got {tier!r}")


def observe_read(
    fact: str, version: str | int | None, *, store: str = "manual", tier: str = "primary"
) -> None:
    """Record that the current agent read `fact` at `version` from a store we do not
    instrument. In raise mode a stale read raises StaleReadError here."""
    _check_common(fact, store, tier)
    text = _version_text(fact, version)
    span = _tracer().start_span(
        f"agentstate.read {store}",
        kind=SpanKind.CLIENT,
        attributes={
            A.STORE: store,
            A.TIER: tier,
            A.OP: Op.READ.value,
            A.READ_FACTS: [fact],
            A.READ_VERSIONS: [text],
            A.CONSISTENCY: get_settings().consistency_label([fact]),
        },
    )
    try:
        runtime.guard_read(span)
    except StaleReadError as exc:
        span.set_status(Status(StatusCode.ERROR, str(exc)))
        raise
    finally:
        span.end()


def observe_write(
    fact: str,
    version: str | int | None,
    *,
    store: str = "manual",
    tier: str = "primary",
    txn_id: str | None = None,
    committed: bool = True,
) -> None:
    """Record that the current agent wrote `fact`, which now has `version` (None: deleted).

    With `txn_id` and `committed=False` the write counts once `end_transaction(txn_id,
    "commit")` is observed."""
    _check_common(fact, store, tier)
    text = _version_text(fact, version)
    attrs: dict[str, Any] = {
        A.STORE: store,
        A.TIER: tier,
        A.OP: (Op.DELETE if text == NONE_VERSION else Op.WRITE).value,
        A.WRITE_FACTS: [fact],
        A.WRITE_VERSIONS: [text],
        A.COMMITTED: bool(committed),
    }
    if txn_id is not None:
        attrs[A.TXN_ID] = str(txn_id)
    _tracer().start_span(f"agentstate.write {store}", kind=SpanKind.CLIENT, attributes=attrs).end()


def end_transaction(txn_id: str, outcome: str, *, store: str = "manual") -> None:
    """Record that transaction `txn_id` ended with `outcome` ('commit' or 'rollback')."""
    if outcome not in ("commit", "rollback"):
        raise ValueError(f"outcome must be 'commit' or 'rollback', got {outcome!r}")
    _tracer().start_span(
        f"agentstate.{outcome} {store}",
        kind=SpanKind.CLIENT,
        attributes={A.STORE: store, A.TXN_ID: str(txn_id), A.TXN_OUTCOME: outcome},
    ).end()


# ---------------------------------------------------------------- configure


def configure(
    *,
    consistency: str | None = None,
    on_anomaly: str | None = None,
    clock_skew_ms: int | None = None,
    max_traces: int | None = None,
    max_observations: int | None = None,
    max_facts_per_trace: int | None = None,
    max_events_per_fact: int | None = None,
    trace_ttl_ms: int | None = None,
    digest_key: str | bytes | None = None,
    rules: Sequence[Mapping[str, Any] | FactRule] | None = None,
    config_file: str | Path | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Settings:
    """The settings of SPEC §7 from code; unset arguments keep the environment's values.

    Raises ConfigError naming the argument and what it accepts. Limits (max_*, TTL) apply
    to processors created afterwards; call it before building the TracerProvider.
    """
    global _tracer_provider
    base = get_settings()
    changes: dict[str, Any] = {}
    if consistency is not None:
        try:
            changes["consistency"] = parse_consistency(consistency)
        except ValueError as exc:
            raise ConfigError(f"configure(consistency=...): {exc}") from None
    if on_anomaly is not None:
        if on_anomaly not in ("record", "raise"):
            raise ConfigError(f"configure(on_anomaly={on_anomaly!r}): use 'record' or 'raise'")
        changes["on_anomaly"] = on_anomaly
    for name, value, minimum in (
        ("clock_skew_ms", clock_skew_ms, 0),
        ("max_traces", max_traces, 1),
        ("max_observations", max_observations, 1),
        ("max_facts_per_trace", max_facts_per_trace, 1),
        ("max_events_per_fact", max_events_per_fact, 2),
        ("trace_ttl_ms", trace_ttl_ms, 1),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"configure({name}={value!r}): expected a whole number >= {minimum}")
        changes[name] = value
    if digest_key is not None:
        key = digest_key.encode() if isinstance(digest_key, str) else bytes(digest_key)
        if not 16 <= len(key) <= 64:
            raise ConfigError("configure(digest_key=...): use 16 to 64 bytes of secret")
        changes["digest_key"] = key
    if config_file is not None:
        changes["rules"] = parse_rules_file(Path(config_file))
        changes["config_source"] = str(config_file)
    if rules is not None:
        changes["rules"] = rules_from_dicts(list(rules))
        changes["config_source"] = "configure(rules=...)"
    settings = replace(base, **changes)
    set_settings(settings)
    if tracer_provider is not None:
        _tracer_provider = tracer_provider
    return settings
