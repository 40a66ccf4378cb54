"""What the memory-layer instrumentations (LangGraph store, mem0) share: the application's
call runs with OTel's suppress-instrumentation key set beneath our span, so the layer's own
work (its vector store, its SQL driver) is not observed a second time, as other facts."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ._vector import Handler, async_wrapper, suppressed, sync_wrapper


class Quiet:
    """The application's call with instrumentation suppressed. `__func__` is the wrapped
    function's, so `_vector.bind` reads the real signature (and caches it by function)."""

    def __init__(self, wrapped: Any, is_async: bool) -> None:
        self.wrapped = wrapped
        self.__func__ = getattr(wrapped, "__func__", wrapped)
        self.is_async = is_async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.is_async:
            return self._acall(*args, **kwargs)
        with suppressed():
            return self.wrapped(*args, **kwargs)

    async def _acall(self, *args: Any, **kwargs: Any) -> Any:
        with suppressed():
            return await self.wrapped(*args, **kwargs)


def quiet_wrapper(handler: Handler, method: str, is_async: bool) -> Callable[..., Any]:
    """`_vector`'s wrapper for `method`, with the application's call made `Quiet`."""
    inner = (async_wrapper if is_async else sync_wrapper)(handler, method)
    if is_async:

        async def awrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            return await inner(Quiet(wrapped, True), instance, args, kwargs)

        return functools.update_wrapper(awrapper, inner)

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return inner(Quiet(wrapped, False), instance, args, kwargs)

    return functools.update_wrapper(wrapper, inner)
