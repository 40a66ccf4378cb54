"""The driver that lets one generator body serve a blocking and a coroutine client wrapper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from otel_agent_state.instrumentation._steps import CALL, Body, adrive, drive


def _body(log: list[str]) -> Body:
    """A wrapper body: a follow-up before, the call, a follow-up after (its failure handled)."""
    log.append(f"before -> {(yield 'fetch-before')}")
    try:
        result = yield CALL
    except BaseException as exc:
        log.append(f"call raised {type(exc).__name__}")
        raise
    try:
        log.append(f"after -> {(yield 'fetch-after')}")
    except ValueError as exc:
        log.append(f"follow-up failed: {exc}")
    return result


def _run(how: str, body: Body, call: Callable[[], Any], follow: Callable[[Any], Any]) -> Any:
    if how == "sync":
        return drive(body, call, follow)

    async def acall() -> Any:
        return call()

    async def afollow(step: Any) -> Any:
        return follow(step)

    return asyncio.run(adrive(body, acall, afollow))


HOW = pytest.mark.parametrize("how", ["sync", "async"])


@HOW
def test_the_body_gets_each_result_and_returns_the_calls(how: str) -> None:
    log: list[str] = []
    assert _run(how, _body(log), lambda: 42, lambda step: step.upper()) == 42
    assert log == ["before -> FETCH-BEFORE", "after -> FETCH-AFTER"]


@HOW
def test_the_applications_exception_reaches_the_caller_unchanged(how: str) -> None:
    log: list[str] = []
    error = KeyError("missing")

    def call() -> Any:
        raise error

    with pytest.raises(KeyError) as caught:
        _run(how, _body(log), call, lambda step: step)
    assert caught.value is error
    assert log == ["before -> fetch-before", "call raised KeyError"]


@HOW
def test_a_follow_up_failure_is_raised_in_the_body(how: str) -> None:
    log: list[str] = []

    def follow(step: Any) -> Any:
        if step == "fetch-after":
            raise ValueError("connection lost")
        return step

    assert _run(how, _body(log), lambda: "ok", follow) == "ok"
    assert log == ["before -> fetch-before", "follow-up failed: connection lost"]


def test_a_stop_iteration_of_the_application_is_not_turned_into_runtime_error() -> None:
    # Uninstrumented, the caller would see StopIteration: so must it instrumented.
    log: list[str] = []
    error = StopIteration("exhausted")

    def call() -> Any:
        raise error

    with pytest.raises(StopIteration) as caught:
        drive(_body(log), call, lambda step: step)
    assert caught.value is error
    assert log[-1] == "call raised StopIteration"


@HOW
def test_a_body_may_end_without_asking_anything(how: str) -> None:
    def body() -> Body:
        if False:  # a generator that returns at once
            yield CALL
        return "nothing to do"

    assert _run(how, body(), lambda: pytest.fail("not called"), lambda step: step) == (
        "nothing to do"
    )


@HOW
def test_a_follow_up_without_a_runner_is_a_type_error_raised_in_the_body(how: str) -> None:
    def body() -> Body:
        try:
            yield "fetch"
        except TypeError as exc:
            return f"refused: {exc}"
        return "ran"

    if how == "sync":
        out = drive(body(), lambda: None)
    else:

        async def nothing() -> None:
            return None

        out = asyncio.run(adrive(body(), nothing))
    assert out.startswith("refused: the body asked for 'fetch'")
