"""One body for the blocking and the coroutine wrapper of a client method.

A traced call is written once, as a generator that yields what it needs done and gets the
result back at the `yield`: `CALL` runs the application's own call; anything else is a
follow-up of ours (reading a value again, say), run by the wrapper's `follow`. Whatever
either raises is raised at the `yield`, so the body handles it with plain try/except, and
the generator's return value is the wrapper's. `drive` runs a body for a blocking client,
`adrive` for a coroutine one: the only place where the two differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

CALL: Final = object()  # a body's request to run the application's call

Body = Generator[object, Any, Any]


def _no_follow_up(step: object) -> Any:
    raise TypeError(f"the body asked for {step!r}, and no follow-up was given to run it")


def drive(body: Body, call: Callable[[], Any], follow: Callable[[Any], Any] = _no_follow_up) -> Any:
    """Run `body` with blocking calls; its return value, or what it raised."""
    done, step = _resume(body, None, None)
    while not done:
        try:
            value, error = (call() if step is CALL else follow(step)), None
        except BaseException as exc:  # the body decides; it re-raises the application's own
            value, error = None, exc
        done, step = _resume(body, value, error)
    return step


async def adrive(
    body: Body,
    call: Callable[[], Awaitable[Any]],
    follow: Callable[[Any], Awaitable[Any]] = _no_follow_up,
) -> Any:
    """Run `body` with awaited calls; its return value, or what it raised."""
    done, step = _resume(body, None, None)
    while not done:
        try:
            value, error = await (call() if step is CALL else follow(step)), None
        except BaseException as exc:
            value, error = None, exc
        done, step = _resume(body, value, error)
    return step


def _resume(body: Body, value: Any, error: BaseException | None) -> tuple[bool, Any]:
    """(False, the body's next request) or (True, its return value)."""
    try:
        return False, body.send(value) if error is None else body.throw(error)
    except StopIteration as finished:
        return True, finished.value
    except RuntimeError as failure:
        # A StopIteration of the application's, re-raised by the body, came out of the
        # generator as RuntimeError (PEP 479): the caller gets the original.
        if isinstance(error, StopIteration) and failure.__cause__ is error:
            raise error from error.__cause__
        raise
