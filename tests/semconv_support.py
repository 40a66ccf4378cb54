"""contrib's semantic-convention mode (OTEL_SEMCONV_STABILITY_OPT_IN) for one test.

contrib reads the variable once per process; `semconv_mode` sets it and makes contrib read
it again, and puts the process back as it was afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.instrumentation._semconv import (
    _OpenTelemetrySemanticConventionStability as Stability,
)

VAR = "OTEL_SEMCONV_STABILITY_OPT_IN"
MODES = ["default", "database/dup"]


@contextmanager
def semconv_mode(mode: str) -> Iterator[None]:
    """`default`: the variable unset (contrib's old conventions); else its value."""
    before = os.environ.get(VAR)
    if mode == "default":
        os.environ.pop(VAR, None)
    else:
        os.environ[VAR] = mode
    Stability._initialized = False
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VAR, None)
        else:
            os.environ[VAR] = before
        Stability._initialized = False
