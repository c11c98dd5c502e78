"""Trace export: every proxied request becomes an OpenTelemetry span, sent over OTLP/HTTP (`[observe] otlp`).

The span is the proxy's own span of the request's W3C trace: its trace and span ids are the ones in the
traceparent the proxy sent upstream, so a service's span shows up under it, and its parent is the
caller's span when the request came with a traceparent.

OpenTelemetry is an optional extra (`pip install 'devmesh[otel]'`): this module imports without it, and
`load_tracer` says how to install it. Recording runs on the proxy's event loop, per request: it checks
the traceparent and queues the record (under a microsecond); a thread of the tracer's own turns the
queued records into spans, in batches, and exports them; a full queue drops spans rather than wait.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import deque
from collections.abc import Iterable

from devmesh import __version__
from devmesh.observe import otlp
from devmesh.proxy.observe import RequestRecord

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
except ImportError as error:  # the extra is missing: RequestTracer raises TracingUnavailable
    _missing: ImportError | None = error
else:
    _missing = None
    SCOPE = InstrumentationScope("devmesh.proxy", __version__)

_logger = logging.getLogger(__name__)

MISSING_MESSAGE = "[observe] otlp is set, but OpenTelemetry is not installed: pip install 'devmesh[otel]'"

TRACES_PATH = "/v1/traces"
SCHEDULE_DELAY_S = 0.25  # how long a span waits for its batch: a trace viewer shows it about at once
MAX_QUEUE = 4096  # spans waiting for export; past that (a collector down or slow) new spans are dropped
MAX_BATCH = 512
EXPORT_TIMEOUT_S = 5.0  # one export, retries included: a collector on this machine answers in ms
CLOSE_TIMEOUT_S = 2.0  # how long `close` waits for the last spans to go out

# What trace_context (devmesh.proxy.headers) sends upstream, sampled (its flags odd) and with ids that
# are not all zeros; anything else is not a span of ours.
_TRACEPARENT_RE = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][13579bdf]")
_SPAN_ID_RE = re.compile(r"(?!0{16})[0-9a-f]{16}")


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

    Not the SDK's pipeline (a ReadableSpan per request into a BatchSpanProcessor, whose thread runs
    OTLPSpanExporter): that cost the agent ~100 us of CPU a request, about twice the proxying itself:
    ~8 us on the event loop to build the ReadableSpan and queue it, and ~45 us a span for the SDK's
    protobuf encoding (~55 with the POST), on a thread that holds the GIL the loop needs. The SDK's
    processor with a hand-written SpanExporter still cost ~19 us a span (the ReadableSpan, the processor's
    queueing, reading the span back). Here the loop queues the RequestRecord as it is (a regular
    expression and an append, under 1 us), and the export thread writes each span straight to OTLP
    protobuf (devmesh.observe.otlp; our spans have one fixed shape, the resource and the scope are
    encoded once) and POSTs the batch: ~5 us a span to encode, ~7 with the POST. The queue and its thread
    keep the BatchSpanProcessor's behaviour in a few lines: a span waits at most SCHEDULE_DELAY_S or
    until a batch is full, at most MAX_QUEUE of them wait, MAX_BATCH go in one request. The SDK still
    gives the resource (Resource.create: the telemetry.sdk attributes, OTEL_RESOURCE_ATTRIBUTES) and the
    scope, and each span decodes to what the SDK's encoder made of the ReadableSpan for the same request
    (tests/observe/test_otlp.py compares the two).

    The ids come from the request, not from an IdGenerator, and the sampling decision is the
    traceparent's.
    """

    def __init__(self, endpoint: str, *, mesh: str, peer_id: str) -> None:
        if _missing is not None:
            raise TracingUnavailable(MISSING_MESSAGE) from _missing
        self.endpoint = traces_url(endpoint)
        self.dropped = 0  # spans not exported because the queue was full
        self._closed = False
        self._queue: deque[RequestRecord] = deque()  # appended on the loop, taken by the export thread
        self._wake = threading.Event()  # a batch is full, or the tracer is closing
        self._encoder = SpanEncoder(agent_resource(mesh, peer_id), SCOPE)  # the export thread's
        self._sender = otlp.OtlpHttpSender(self.endpoint, timeout=EXPORT_TIMEOUT_S)
        self._thread = threading.Thread(target=self._export_loop, name="devmesh-otlp", daemon=True)
        self._thread.start()

    def record(self, entry: RequestRecord) -> None:
        """One span for one request; called on the event loop's thread, so no I/O here."""
        if self._closed or _TRACEPARENT_RE.fullmatch(entry.traceparent) is None:
            return
        queue = self._queue
        if len(queue) >= MAX_QUEUE:  # quietly: a collector that is down must not flood the agent's log
            self.dropped += 1
            return
        queue.append(entry)
        if len(queue) == MAX_BATCH:
            self._wake.set()

    def close(self) -> None:
        """Export what is queued (waiting at most CLOSE_TIMEOUT_S) and stop the exporter's thread."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():  # a collector that does not answer: give up what is left
            self._sender.abort()
            self._thread.join(0.5)  # the thread is a daemon: it never keeps the agent from exiting

    def _export_loop(self) -> None:
        while not self._closed:
            self._wake.wait(SCHEDULE_DELAY_S)
            self._wake.clear()
            self._export(everything=False)
        self._export(everything=True)
        self._sender.close()

    def _export(self, *, everything: bool) -> None:
        """What is queued, MAX_BATCH spans a request: one batch, however small (the schedule's), then
        only full ones (as the SDK's processor does); or everything (closing). Under load a batch is sent
        when full, not whenever the last POST ends: a request per few spans would cost more than them."""
        queue = self._queue
        first = True
        while queue and (first or everything or len(queue) >= MAX_BATCH):
            first = False
            batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
            try:
                sent = self._sender.send(self._encoder.encode(batch))
            except Exception:  # a bug here must not end the thread: every later span would be lost
                _logger.exception("OTLP: %d spans could not be exported", len(batch))
                sent = False
            if not sent and self._sender.aborted:
                return


_METHOD = otlp.attribute_key("http.request.method")
_STATUS = otlp.attribute_key("http.response.status_code")
_ADDRESS = otlp.attribute_key("server.address")
_SERVICE = otlp.attribute_key("devmesh.service")
_ORIGIN = otlp.attribute_key("devmesh.origin")
_ENDPOINT = otlp.attribute_key("devmesh.endpoint")
_PEER = otlp.attribute_key("devmesh.peer")
_FAULT = otlp.attribute_key("devmesh.fault")
_PATH = otlp.attribute_key("url.path")
_REQUEST_SIZE = otlp.attribute_key("http.request.body.size")
_RESPONSE_SIZE = otlp.attribute_key("http.response.body.size")
_TRACE_ID = otlp.attribute_key("devmesh.trace_id")
_REQUEST_ID = otlp.attribute_key("devmesh.request_id")
_SERVER = otlp.span_kind(otlp.KIND_SERVER)

_SHARED_KEPT = 1024  # SpanEncoder's shared fields kept: a few per service in practice

# What the spans of many requests share (the fields `_shared` writes), by
# (method, status, host, service, origin, endpoint, peer, fault).
_SharedKey = tuple[str, int, str, str, str, str, str, str]


def agent_resource(mesh: str, peer_id: str) -> Resource:
    """The agent's OpenTelemetry resource: the SDK's (telemetry.sdk.*, OTEL_RESOURCE_ATTRIBUTES) and ours."""
    return Resource.create({"service.name": "devmesh", "service.instance.id": peer_id, "devmesh.mesh": mesh})


class SpanEncoder:
    """OTLP ExportTraceServiceRequest bodies for recorded requests, each request the proxy's SERVER span
    (of one resource and scope). A span's name, kind, status and the attributes that come from the
    method, status, host and route are the same for many requests: written once, kept. Not thread-safe
    (the export thread's own)."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._request = otlp.RequestEncoder(resource, scope)
        self._shared: dict[_SharedKey, bytes] = {}

    def encode(self, entries: Iterable[RequestRecord]) -> bytes:
        """One request with the spans of `entries` (whose traceparents passed `RequestTracer.record`)."""
        return self._request.encode([self.span(entry) for entry in entries])

    def span(self, entry: RequestRecord) -> bytes:
        """`entry`'s Span message."""
        key = (
            entry.method,
            entry.status,
            entry.host,
            entry.service,
            entry.origin,
            entry.endpoint,
            entry.peer,
            entry.fault,
        )
        shared = self._shared.get(key)
        if shared is None:
            if len(self._shared) >= _SHARED_KEPT:
                self._shared.clear()
            shared = self._shared[key] = _shared(entry)
        traceparent = entry.traceparent
        parent = entry.parent_span
        end = round(entry.time * 1e9)
        string, integer = otlp.string_attribute, otlp.int_attribute
        return otlp.encode_span(
            bytes.fromhex(traceparent[3:35]),
            bytes.fromhex(traceparent[36:52]),
            bytes.fromhex(parent) if parent and _SPAN_ID_RE.fullmatch(parent) else b"",
            remote_parent=True,  # the caller's span, from the traceparent the request came with
            start_ns=end - round(entry.duration_s * 1e9),
            end_ns=end,
            fields=b"".join(
                (
                    shared,
                    string(_PATH, entry.path.partition("?")[0]),
                    integer(_REQUEST_SIZE, entry.request_bytes),
                    integer(_RESPONSE_SIZE, entry.response_bytes),
                    string(_TRACE_ID, entry.trace_id),
                    integer(_REQUEST_ID, entry.id),
                )
            ),
        )


def _shared(entry: RequestRecord) -> bytes:
    """The span's name, kind and status, and its first attributes (the rest are `SpanEncoder.span`'s)."""
    string = otlp.string_attribute
    # The proxy records "-" for the service and origin of a request no service matched (a 404).
    service = "" if entry.service == "-" else entry.service
    origin = "" if entry.origin == "-" else entry.origin
    fields = [
        otlp.span_name(f"{entry.method} {service}" if service else entry.method),
        _SERVER,
        otlp.span_status(error=entry.status >= 500),
        string(_METHOD, entry.method),
        otlp.int_attribute(_STATUS, entry.status),
        string(_ADDRESS, _host_name(entry.host)),
    ]
    # Left out when empty: a request no service matched (a 404) has no service, origin or endpoint.
    if service:
        fields.append(string(_SERVICE, service))
    if origin:
        fields.append(string(_ORIGIN, origin))
    if entry.endpoint:
        fields.append(string(_ENDPOINT, entry.endpoint))
    if entry.peer:
        fields.append(string(_PEER, entry.peer))
    if entry.fault:
        fields.append(string(_FAULT, entry.fault))
    return b"".join(fields)


def _host_name(host: str) -> str:
    """`api.localhost:7080` -> `api.localhost`; `[::1]:7080` -> `::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if ":" in host else host
