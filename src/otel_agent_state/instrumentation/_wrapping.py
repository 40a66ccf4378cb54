"""How our wrappers coexist with other instrumentations' wrapt wrappers on the same function.

`unwrap()` from opentelemetry-instrumentation takes out the outermost wrapper, whoever's it
is: after another instrumentation wrapped on top of ours it would remove theirs and leave
ours. So ours are found by identity in the chain of wrappers and taken out where they stand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import wrapt

_log = logging.getLogger(__name__)

PROXY_TYPES: tuple[type, ...] = tuple(
    t for t in (getattr(wrapt, "BaseObjectProxy", None), wrapt.ObjectProxy) if t is not None
)


def wrapper_chain(first: Any) -> list[Any]:
    """`first` and the wrapt wrappers under it, outermost first, the function last."""
    chain = [first]
    while len(chain) < 32 and isinstance(chain[-1], PROXY_TYPES):
        inner = getattr(chain[-1], "__wrapped__", None)
        if inner is None:
            break
        chain.append(inner)
    return chain


def chain_of(owner: Any, name: str) -> list[Any]:
    """`owner.name` (its own attribute, not inherited; None when missing) and the wrapt
    wrappers under it, outermost first, the function last."""
    return wrapper_chain(vars(owner).get(name))


def replace_link(owner: Any, name: str, chain: list[Any], index: int, new: Any) -> None:
    """Make `new` stand where `chain[index]` stands (`owner.name` or a wrapper's inside)."""
    if index == 0:
        setattr(owner, name, new)
    else:
        chain[index - 1].__wrapped__ = new


def wrap_under(owner: Any, name: str, wrapper: Callable[..., Any]) -> bool:
    """Put the wrapt `wrapper` innermost on `owner.name` (a module's or class's own
    attribute), under the wrappers already there, so that another instrumentation's span
    (contrib's) stays the outer one whatever the load order; on top of them when one does
    not let us in. Never twice; False when `owner` has no such attribute."""
    chain = chain_of(owner, name)
    if chain[-1] is None:
        return False
    if any(getattr(link, "_self_wrapper", None) is wrapper for link in chain):
        return True  # e.g. a wrapper shared by two modules, already gone under
    try:
        replace_link(owner, name, chain, len(chain) - 1, wrapt.FunctionWrapper(chain[-1], wrapper))
    except Exception:
        _log.debug("cannot go under the wrapper of %s.%s", owner, name, exc_info=True)
        wrapt.wrap_function_wrapper(owner, name, wrapper)
    return True


def unwrap_ours(owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
    """Take `wrapper` out of `owner.name` wherever it stands, leaving the others' in place
    (never `unwrap()`: it takes out the outermost wrapper, whoever's it is)."""
    chain = chain_of(owner, name)
    for index, link in enumerate(chain[:-1]):
        if getattr(link, "_self_wrapper", None) is wrapper:
            try:
                replace_link(owner, name, chain, index, link.__wrapped__)
            except Exception:
                _log.debug("cannot take our wrapper out of %s.%s", owner, name, exc_info=True)
            return


Wrapped = list[tuple[Any, str, Callable[..., Any]]]  # (owner, attribute, our wrapper)


def unwrap_all(wrapped: Wrapped) -> None:
    """`unwrap_ours` for each, the last wrapped first."""
    for owner, name, wrapper in reversed(wrapped):
        unwrap_ours(owner, name, wrapper)


# --------------------------------------------------------------------------- subclasses


class StandIn(type):
    """The metaclass of our subclasses that stand in for a class the application chose (a C
    connection or cursor class, or its own subclass of one): `type(conn) == DictConnection`
    holds, and hashes alike, as it does uninstrumented. Only `is` tells them apart."""

    def __eq__(cls, other: object) -> bool:
        return cls is other or other is cls.__dict__.get("_agentstate_stands_for")

    def __ne__(cls, other: object) -> bool:
        return not cls.__eq__(other)

    def __hash__(cls) -> int:
        original = cls.__dict__.get("_agentstate_stands_for")
        return hash(original) if original is not None else type.__hash__(cls)


def stand_in(original: type, bases: tuple[type, ...], **namespace: Any) -> type:
    """A class with `bases` named as `original` is (name, qualified name, module, so reprs
    and messages read the same) and equal to it."""
    namespace.setdefault("__module__", original.__module__)
    namespace.setdefault("__qualname__", original.__qualname__)
    namespace.setdefault("__doc__", original.__doc__)
    namespace["_agentstate_stands_for"] = original
    return StandIn(original.__name__, bases, namespace)


def subclass_under(base: type, root: type, traced_root: type, **namespace: Any) -> type:
    """A subclass of `base` (an application's subclass of the C class `root`) whose method
    resolution runs `base`'s own overrides first and ours (`traced_root`, a subclass of
    `root`) just above `root`: `Dict*`'s `cursor()` still picks its cursor class, ours only
    sees the result. It stands in for `base` (`stand_in`). Raises TypeError when the
    hierarchies or metaclasses do not merge (the caller then leaves `base` alone)."""
    if base is root:
        return traced_root
    return stand_in(base, (base, traced_root), **namespace)


# --------------------------------------------------------------------------- semantic conventions


def _stable_db_conventions() -> bool:
    """Whether contrib instrumentations emit the stable database conventions (`database` or
    `database/dup` in OTEL_SEMCONV_STABILITY_OPT_IN), as contrib itself decides it."""
    try:
        from opentelemetry.instrumentation._semconv import (
            _OpenTelemetrySemanticConventionStability as Stability,
        )
        from opentelemetry.instrumentation._semconv import (
            _OpenTelemetryStabilitySignalType as Signal,
        )
        from opentelemetry.instrumentation._semconv import _StabilityMode as Mode

        Stability._initialize()  # type: ignore[no-untyped-call]
        return bool(
            Stability._get_opentelemetry_stability_opt_in_mode(Signal.DATABASE) != Mode.DEFAULT
        )
    except Exception:  # an older or newer contrib: read the variable as documented
        import os

        parts = {p.strip() for p in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")}
        return bool(parts & {"database", "database/dup"})


def for_contrib_span(span: Any, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Which of our attributes go on another instrumentation's span. In contrib's default
    (old) convention mode only ours (`agentstate.*`): a `db.system.name` beside its
    `db.system` would make its span a mix of both conventions. In the stable modes, also the
    stable `db.*` attributes it did not set itself (its own values stay)."""
    if not _stable_db_conventions():
        return {k: v for k, v in attrs.items() if k.startswith("agentstate.")}
    present = getattr(span, "attributes", None) or {}
    return {k: v for k, v in attrs.items() if not (k.startswith("db.") and k in present)}
