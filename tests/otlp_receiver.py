"""An in-process OTLP/HTTP trace receiver for the tests: a real HTTP server on 127.0.0.1 that takes
`POST /v1/traces` (protobuf, as an OTLP/HTTP exporter sends it), answers as a collector does and keeps the spans.

    with otlp_receiver() as receiver:
        ... export to receiver.url ...
        span = receiver.wait_for_span(lambda span: span.name == "GET api")

`receiver.answers` scripts failures: each POST first takes the next (status, headers) there, if any, and
answers it instead of taking the spans (a collector that is overloaded, say).
"""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"


def value_of(value: AnyValue) -> Any:
    """An OTLP AnyValue as the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs}


@dataclass
class ReceivedSpan:
    """One span as the receiver got it, with its resource and scope, attributes decoded."""

    span: Span
    resource: dict[str, Any]
    scope: str
    attributes: dict[str, Any]

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_span_id(self) -> str:
        """The parent's span id in hex, "" for a root span."""
        return self.span.parent_span_id.hex()


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0  # export requests received
        self.errors: list[str] = []  # what was wrong with a request the receiver refused
        self.bodies: list[bytes] = []  # the export requests taken, as sent (decompressed)
        self.headers: list[dict[str, str]] = []  # every POST's headers (names lower-cased)
        self.answers: list[tuple[int, dict[str, str]]] = []  # scripted answers for the next POSTs
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._changed:
                    receiver.headers.append({name.lower(): value for name, value in self.headers.items()})
                    scripted = receiver.answers.pop(0) if receiver.answers else None
                if scripted is not None:
                    status, headers = scripted
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                problem = receiver._take(self.path, self.headers.get("Content-Type", ""), self.headers, body)
                if problem is not None:
                    self.send_error(400 if problem != "not found" else 404, problem)
                    return
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", PROTOBUF)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="otlp-receiver", daemon=True
        )
        self._thread.start()

    def _take(self, path: str, content_type: str, headers: Any, body: bytes) -> str | None:
        if path != "/v1/traces":
            problem = "not found"
        elif content_type != PROTOBUF:
            problem = f"Content-Type {content_type!r}, not {PROTOBUF}"
        else:
            encoding = headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except Exception as error:
                problem = f"not an ExportTraceServiceRequest: {error}"
            else:
                received = [
                    ReceivedSpan(
                        span,
                        attributes_of(group.resource.attributes),
                        scoped.scope.name,
                        attributes_of(span.attributes),
                    )
                    for group in request.resource_spans
                    for scoped in group.scope_spans
                    for span in scoped.spans
                ]
                with self._changed:
                    self.requests += 1
                    self.bodies.append(body)
                    self.spans.extend(received)
                    self._changed.notify_all()
                return None
        with self._changed:
            self.errors.append(f"{path}: {problem}")
            self._changed.notify_all()
        return problem

    def wait_for_span(
        self, matches: Callable[[ReceivedSpan], bool] = lambda span: True, *, timeout: float = 5.0
    ) -> ReceivedSpan:
        """The first span received that `matches`, waiting up to `timeout` seconds for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for span in self.spans:
                    if matches(span):
                        return span
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = [(span.name, span.trace_id) for span in self.spans]
                    raise AssertionError(
                        f"no matching span after {timeout}s; received {names}, refused {self.errors}"
                    )
                self._changed.wait(remaining)

    def wait_for_spans(self, count: int, *, timeout: float = 5.0) -> list[ReceivedSpan]:
        """The first `count` spans, waiting up to `timeout` seconds for them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.spans) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{len(self.spans)} spans after {timeout}s, not {count}")
                self._changed.wait(remaining)
            return list(self.spans[:count])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    try:
        yield receiver
    finally:
        receiver.close()
