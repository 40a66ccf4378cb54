"""Write real SDK spans in the three formats `otel-agent-state check` reads.

- console: the SDK's own ConsoleSpanExporter, writing to a file;
- OTLP/JSON: the official OTLP protobuf encoder, then protobuf's JSON mapping with the ids
  turned from base64 into hex as OTLP/JSON requires (what an OTLP/HTTP JSON body holds);
- collector file exporter: the same requests, one per line, in batches.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter


def otlp_request(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    doc: dict[str, Any] = MessageToDict(encode_spans(spans))
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                _hex(span, "traceId", "spanId", "parentSpanId")
                for link in span.get("links", []):
                    _hex(link, "traceId", "spanId")
    return doc


def _hex(obj: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if obj.get(key):
            obj[key] = base64.b64decode(obj[key]).hex()


def write_console(spans: Sequence[ReadableSpan], path: Path) -> Path:
    with path.open("w") as out:
        ConsoleSpanExporter(out=out).export(spans)
    return path


def write_otlp_body(spans: Sequence[ReadableSpan], path: Path) -> Path:
    path.write_text(json.dumps(otlp_request(spans), indent=2))
    return path


def write_collector_lines(spans: Sequence[ReadableSpan], path: Path, batch: int = 3) -> Path:
    with path.open("w") as out:
        for i in range(0, len(spans), batch):
            out.write(json.dumps(otlp_request(spans[i : i + batch]), separators=(",", ":")))
            out.write("\n")
    return path


WRITERS = {
    "console": write_console,
    "otlp_body": write_otlp_body,
    "collector_lines": write_collector_lines,
}
