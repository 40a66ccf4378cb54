"""How our wrappers coexist with other instrumentations' wrapt wrappers on the same function.

`unwrap()` from opentelemetry-instrumentation takes out the outermost wrapper, whoever's it
is: after another instrumentation wrapped on top of ours it would remove theirs and leave
ours. So ours are found by identity in the chain of wrappers and taken out where they stand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
