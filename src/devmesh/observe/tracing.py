"""Trace export: every proxied request becomes an OpenTelemetry span, sent over OTLP/HTTP (`[observe] otlp`).

The span is the proxy's own span of the request's W3C trace: its trace and span ids are the ones in the
traceparent the proxy sent upstream, so a service's span shows up under it, and its parent is the
caller's span when the request came with a traceparent.

OpenTelemetry is an optional extra (`pip install 'devmesh[otel]'`): this module imports without it, and
`load_tracer` says how to install it. Recording runs on the proxy's event loop, per request: it builds
one span and queues it; the SDK's BatchSpanProcessor exports from its own thread, and a full queue drops
spans rather than wait.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from devmesh import __version__
from devmesh.proxy.observe import RequestRecord

try:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as error:  # the extra is missing: RequestTracer raises TracingUnavailable
    _missing: ImportError | None = error
else:
    _missing = None
    _ERROR = Status(StatusCode.ERROR)
    _UNSET = Status(StatusCode.UNSET)

MISSING_MESSAGE = "[observe] otlp is set, but OpenTelemetry is not installed: pip install 'devmesh[otel]'"

TRACES_PATH = "/v1/traces"
SCHEDULE_DELAY_MS = 250  # how long a span waits for its batch: a trace viewer shows it about at once
MAX_QUEUE = 4096  # spans waiting for export; past that (a collector down or slow) new spans are dropped
MAX_BATCH = 512
EXPORT_TIMEOUT_S = 5.0  # one export, retries included: a collector on this machine answers in ms
CLOSE_TIMEOUT_S = 2.0  # how long `close` waits for the last spans to go out

# What trace_context (devmesh.proxy.headers) sends upstream; anything else is not a span of ours.
_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")


class TracingUnavailable(Exception):
    """`[observe] otlp` is set but the OpenTelemetry packages are not installed."""


def load_tracer(endpoint: str, *, mesh: str, peer_id: str) -> RequestTracer:
    """The agent's trace exporter; TracingUnavailable (with the pip command) without the `otel` extra."""
    return RequestTracer(endpoint, mesh=mesh, peer_id=peer_id)


def traces_url(endpoint: str) -> str:
    """`[observe] otlp` is the collector's base URL (`http://127.0.0.1:4318`); a URL that already
    names the traces path is kept."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


class RequestTracer:
    """A RecordSink that turns each finished request into a SERVER span and exports it over OTLP/HTTP.

    The spans are built as the SDK's ReadableSpan, the form span processors and exporters take, rather
    than through a Tracer: its spans validate and copy every attribute, under locks, at several times
    the cost (~35 us a request against ~10). The ids come from the request, not from an IdGenerator,
    and the sampling decision is the traceparent's.
    """

    def __init__(self, endpoint: str, *, mesh: str, peer_id: str) -> None:
        if _missing is not None:
            raise TracingUnavailable(MISSING_MESSAGE) from _missing
        self.endpoint = traces_url(endpoint)
        self.dropped = 0  # spans not exported because the queue was full
        self._closed = False
        self._queued = 0  # spans handed to the processor (on the loop's thread)
        self._exported = 0  # spans the processor took out of its queue (on its thread)
        tracer = self

        class CountingExporter(OTLPSpanExporter):
            # The processor's queue drops its oldest span when full, with a warning logged per span: on
            # the proxy's hot path, while a collector is down. Counting what left the queue lets
            # `record` drop the new span instead, quietly.
            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                tracer._exported += len(spans)
                return super().export(spans)

        self._processor = BatchSpanProcessor(
            CountingExporter(endpoint=self.endpoint, timeout=EXPORT_TIMEOUT_S),
            max_queue_size=MAX_QUEUE,
            schedule_delay_millis=SCHEDULE_DELAY_MS,
            max_export_batch_size=MAX_BATCH,
        )
        self._resource = Resource.create(
            {"service.name": "devmesh", "service.instance.id": peer_id, "devmesh.mesh": mesh}
        )
        self._scope = InstrumentationScope("devmesh.proxy", __version__)

    def record(self, entry: RequestRecord) -> None:
        """One span for one request; called on the event loop's thread, so no I/O here."""
        found = _TRACEPARENT_RE.fullmatch(entry.traceparent)
        if found is None or self._closed:
            return
        flags = TraceFlags(int(found.group(3), 16))
        if not flags.sampled:  # the caller chose not to record this trace: its services do not either
            return
        trace_id = int(found.group(1), 16)
        span_id = int(found.group(2), 16)
        if not trace_id or not span_id:
            return
        if self._queued - self._exported >= MAX_QUEUE:
            self.dropped += 1
            return
        self._queued += 1
        parent = None
        if entry.parent_span and _SPAN_ID_RE.fullmatch(entry.parent_span):
            parent_id = int(entry.parent_span, 16)
            if parent_id:
                parent = SpanContext(trace_id, parent_id, is_remote=True, trace_flags=flags)
        end = round(entry.time * 1e9)
        span = ReadableSpan(
            f"{entry.method} {entry.service}" if entry.service else entry.method,
            SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags),
            parent,
            self._resource,
            _attributes(entry),
            kind=SpanKind.SERVER,
            status=_ERROR if entry.status >= 500 else _UNSET,
            start_time=end - round(entry.duration_s * 1e9),
            end_time=end,
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(span)

    def close(self) -> None:
        """Export what is queued (waiting at most CLOSE_TIMEOUT_S) and stop the exporter's thread."""
        if self._closed:
            return
        self._closed = True
        # The SDK's shutdown waits up to 30 s for an export in flight: it runs in a thread of its own,
        # left behind (a daemon, as is the processor's worker) if the collector does not answer.
        closing = threading.Thread(target=self._processor.shutdown, name="devmesh-otlp-close", daemon=True)
        closing.start()
        closing.join(CLOSE_TIMEOUT_S)


def _attributes(entry: RequestRecord) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {
        "http.request.method": entry.method,
        "http.response.status_code": entry.status,
        "url.path": entry.path.partition("?")[0],
        "server.address": _host_name(entry.host),
        "http.request.body.size": entry.request_bytes,
        "http.response.body.size": entry.response_bytes,
        "devmesh.trace_id": entry.trace_id,
        "devmesh.request_id": entry.id,
    }
    # Left out when empty: a request no service matched (a 404) has no service, origin or endpoint.
    if entry.service:
        attributes["devmesh.service"] = entry.service
    if entry.origin:
        attributes["devmesh.origin"] = entry.origin
    if entry.endpoint:
        attributes["devmesh.endpoint"] = entry.endpoint
    if entry.peer:
        attributes["devmesh.peer"] = entry.peer
    if entry.fault:
        attributes["devmesh.fault"] = entry.fault
    return attributes


def _host_name(host: str) -> str:
    """`api.localhost:7080` -> `api.localhost`; `[::1]:7080` -> `::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host
