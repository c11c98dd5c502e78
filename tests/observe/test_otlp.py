"""The OTLP protobuf devmesh writes by hand (devmesh.observe.otlp, tracing.SpanEncoder) decodes, with the
official opentelemetry-proto classes, to what the SDK's own encoder (`encode_spans`) makes of the same
span; and the sender's POST: headers, compression, retries, kept-alive connections, timeouts."""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from devmesh.observe import otlp
from devmesh.observe.tracing import SCOPE, RequestTracer, SpanEncoder, agent_resource
from devmesh.proxy.observe import RequestRecord
from otlp_receiver import OtlpReceiver, attributes_of, otlp_receiver

TRACE = "0af7651916cd43dd8448eb211c80319c"
PROXY_SPAN = "00f067aa0ba902b7"
CALLER_SPAN = "b7ad6b7169203331"
RESOURCE = agent_resource("shop", "alice-1a2b3c")


def request(**changes: Any) -> RequestRecord:
    entry = RequestRecord(
        time=1_764_300_000.125,
        method="POST",
        host="api.localhost:7080",
        path="/orders/7?expand=items",
        status=201,
        service="api",
        origin="local",
        duration_s=0.0025,
        trace_id="checkout-42",
        endpoint="127.0.0.1:3000",
        id=42,
        traceparent=f"00-{TRACE}-{PROXY_SPAN}-01",
        parent_span=CALLER_SPAN,
        request_bytes=17,
        response_bytes=512,
    )
    return entry._replace(**changes)


def reference_span(entry: RequestRecord, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """The span devmesh made of a request with the SDK's pipeline (a ReadableSpan for its
    BatchSpanProcessor and OTLPSpanExporter), before the hand-written encoder; its attributes in the order
    SpanEncoder writes them (a repeated field's order is part of the decoded message)."""
    trace_id, span_id, flags = entry.traceparent[3:35], entry.traceparent[36:52], entry.traceparent[53:]
    trace_flags = TraceFlags(int(flags, 16))
    parent = None
    if re.fullmatch("[0-9a-f]{16}", entry.parent_span) and int(entry.parent_span, 16):
        parent = SpanContext(
            int(trace_id, 16), int(entry.parent_span, 16), is_remote=True, trace_flags=trace_flags
        )
    host = entry.host
    address = (
        host[1:].partition("]")[0]
        if host.startswith("[")
        else host.rpartition(":")[0]
        if ":" in host
        else host
    )
    attributes: dict[str, str | int] = {
        "http.request.method": entry.method,
        "http.response.status_code": entry.status,
        "server.address": address,
    }
    for key, value in (
        ("devmesh.service", unmatched(entry.service)),
        ("devmesh.origin", unmatched(entry.origin)),
        ("devmesh.endpoint", entry.endpoint),
        ("devmesh.peer", entry.peer),
        ("devmesh.fault", entry.fault),
    ):
        if value:
            attributes[key] = value
    attributes.update(
        {
            "url.path": entry.path.partition("?")[0],
            "http.request.body.size": entry.request_bytes,
            "http.response.body.size": entry.response_bytes,
            "devmesh.trace_id": entry.trace_id,
            "devmesh.request_id": entry.id,
        }
    )
    end = round(entry.time * 1e9)
    return ReadableSpan(
        f"{entry.method} {unmatched(entry.service)}" if unmatched(entry.service) else entry.method,
        SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=trace_flags),
        parent,
        resource,
        attributes,
        kind=SpanKind.SERVER,
        status=Status(StatusCode.ERROR if entry.status >= 500 else StatusCode.UNSET),
        start_time=end - round(entry.duration_s * 1e9),
        end_time=end,
        instrumentation_scope=scope,
    )


def decoded(body: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return message


def unmatched(value: str) -> str:
    """The proxy records "-" as the service and origin of a request no service matched: no value."""
    return "" if value == "-" else value


def by_the_sdk(
    entries: Sequence[RequestRecord], resource: Resource = RESOURCE, scope: InstrumentationScope = SCOPE
) -> ExportTraceServiceRequest:
    spans = [reference_span(entry, resource, scope) for entry in entries]
    return decoded(encode_spans(spans).SerializeToString())


def by_devmesh(
    entries: Sequence[RequestRecord], resource: Resource = RESOURCE, scope: InstrumentationScope = SCOPE
) -> ExportTraceServiceRequest:
    return decoded(SpanEncoder(resource, scope).encode(entries))


BATCH = [
    request(),
    request(id=2, parent_span="", traceparent=f"00-{TRACE}-{2:016x}-01"),  # a root span
    request(id=3, parent_span="0" * 16, traceparent=f"00-{TRACE}-{3:016x}-01"),  # a malformed parent
    request(id=4, status=502, traceparent=f"00-{'f' * 32}-{'f' * 16}-03"),  # an error; every id bit set
    request(id=5, status=404, method="GET", service="", origin="", endpoint=""),  # no service matched
    request(id=6, origin="peer", peer="bob-4d5e6f", endpoint="10.0.0.5:7090", fault="latency"),
    request(id=7, host="[::1]:7080", path="/caf\u00e9/\u65e5\u672c?q=\U0001f600", trace_id="\u00fc" * 40),
    request(id=8, path="/" + "a" * 200, request_bytes=0, response_bytes=2**40, status=0),  # lengths > 127
    request(id=9, path="/" + "long" * 5000, trace_id="t" * 20_000),  # lengths of 3 varint bytes
    request(id=2**63 - 1, time=0.0, duration_s=0.0, method="", service=""),  # no name; times of 0
]


def test_a_batch_decodes_to_what_the_sdk_encoder_makes_of_it() -> None:
    ours, sdk = by_devmesh(BATCH), by_the_sdk(BATCH)
    assert ours == sdk
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert len(spans) == len(BATCH)
    # The SDK's defaults, the same in both: flags say whether the parent is remote (not the W3C flags);
    # no trace state, dropped counts, events or links; UNSET is an empty Status, present.
    assert [span.flags for span in spans[:3]] == [0x300, 0x100, 0x100]
    assert spans[0].HasField("status") and spans[0].status.code == 0
    assert not (
        spans[0].trace_state or spans[0].dropped_attributes_count or spans[0].events or spans[0].links
    )
    # A request whose service, origin... are empty has no such attributes; one without a method no name.
    assert {"devmesh.service", "devmesh.origin", "devmesh.endpoint"}.isdisjoint(
        attributes_of(spans[4].attributes)
    )
    assert spans[9].name == "" and spans[9].HasField("status")
    # Times of 0: written as 0 here, left out by protobuf; the same once decoded (proto3 has no presence).
    assert spans[9].start_time_unix_nano == spans[9].end_time_unix_nano == 0


def test_the_shared_fields_are_kept_per_route_and_bounded() -> None:
    encoder = SpanEncoder(RESOURCE, SCOPE)
    for number in range(3000):  # more routes than are kept: the cache starts over, spans stay right
        encoder.span(request(host=f"h{number}.localhost", traceparent=f"00-{TRACE}-{number + 1:016x}-01"))
    entries = [
        request(host=f"h{n % 7}.localhost", id=n, traceparent=f"00-{TRACE}-{n + 1:016x}-01")
        for n in range(50)
    ]
    assert decoded(encoder.encode(entries)) == by_the_sdk(entries)


@st.composite
def records(draw: st.DrawFn) -> RequestRecord:
    text = st.one_of(st.text(), st.text(min_size=100, max_size=600))  # unicode, empty, long
    trace = draw(st.integers(min_value=1, max_value=2**128 - 1))
    span = draw(st.integers(min_value=1, max_value=2**64 - 1))
    parent = draw(
        st.one_of(
            st.just(""),
            st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: f"{n:016x}"),
            st.integers(min_value=1, max_value=2**64 - 1).map(lambda n: f"{n:016X}"),  # not ours: upper case
            st.text(alphabet="0123456789abcdef_ ", min_size=15, max_size=17),
            st.text(),
        )
    )
    return RequestRecord(
        time=draw(st.floats(min_value=1.0, max_value=4e9)),
        method=draw(text),
        host=draw(text),
        path=draw(text),
        status=draw(st.integers(min_value=0, max_value=999)),
        service=draw(text),
        origin=draw(text),
        duration_s=draw(st.floats(min_value=0.0, max_value=1.0)),
        trace_id=draw(text),
        endpoint=draw(text),
        id=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        peer=draw(text),
        traceparent=f"00-{trace:032x}-{span:016x}-{draw(st.sampled_from(['01', '03', 'ff']))}",
        parent_span=parent,
        request_bytes=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        response_bytes=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        fault=draw(text),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(), min_size=1, max_size=4))
def test_any_recorded_request_decodes_to_what_the_sdk_makes_of_it(entries: list[RequestRecord]) -> None:
    ours = by_devmesh(entries)
    assert ours == by_the_sdk(entries)
    for entry, span in zip(entries, ours.resource_spans[0].scope_spans[0].spans, strict=True):
        # The strings come back as they went in (names, paths and values: unicode, empty or long).
        service = unmatched(entry.service)
        assert span.name == (f"{entry.method} {service}" if service else entry.method)
        attributes = attributes_of(span.attributes)
        assert attributes["url.path"] == entry.path.partition("?")[0]
        assert attributes["http.request.method"] == entry.method
        assert attributes["devmesh.trace_id"] == entry.trace_id
        assert attributes.get("devmesh.fault", "") == entry.fault
        assert attributes["devmesh.request_id"] == entry.id
        assert span.span_id.hex() == entry.traceparent[36:52]


attribute_values = st.one_of(
    st.text(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.lists(st.text(), max_size=3),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.lists(st.booleans(), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    resource_attributes=st.dictionaries(st.text(min_size=1), attribute_values, max_size=6),
    resource_schema=st.sampled_from(["", "https://opentelemetry.io/schemas/1.26.0"]),
    scope_name=st.text(),
    scope_version=st.one_of(st.none(), st.text()),
    scope_attributes=st.one_of(st.none(), st.dictionaries(st.text(min_size=1), attribute_values, max_size=3)),
    scope_schema=st.one_of(st.none(), st.just("https://opentelemetry.io/schemas/1.26.0")),
)
def test_a_resource_and_scope_are_encoded_as_the_sdk_encodes_them(
    resource_attributes: dict[str, Any],
    resource_schema: str,
    scope_name: str,
    scope_version: str | None,
    scope_attributes: dict[str, Any] | None,
    scope_schema: str | None,
) -> None:
    resource = Resource(resource_attributes, schema_url=resource_schema)
    scope = InstrumentationScope(scope_name, scope_version, scope_schema, scope_attributes)
    sdk_span = ReadableSpan(
        "op",
        SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1)),
        resource=resource,
        kind=SpanKind.INTERNAL,
        start_time=1,
        end_time=2,
        instrumentation_scope=scope,
    )
    ours = otlp.encode_span(
        (1).to_bytes(16, "big"),
        (2).to_bytes(8, "big"),
        b"",
        remote_parent=False,
        start_ns=1,
        end_ns=2,
        fields=otlp.span_name("op") + otlp.span_kind(otlp.KIND_INTERNAL) + otlp.span_status(error=False),
    )
    assert decoded(otlp.RequestEncoder(resource, scope).encode([ours])) == decoded(
        encode_spans([sdk_span]).SerializeToString()
    )


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text())
def test_attributes_are_byte_for_byte_what_protobuf_writes(number: int, text: str) -> None:
    key = otlp.attribute_key("k")
    as_protobuf = Span(
        attributes=[
            KeyValue(key="k", value=AnyValue(int_value=number)),
            KeyValue(key="k", value=AnyValue(string_value=text)),
        ]
    ).SerializeToString()
    assert otlp.int_attribute(key, number) + otlp.string_attribute(key, text) == as_protobuf


def test_an_int_out_of_int64_range_is_refused() -> None:
    with pytest.raises(ValueError, match="int64"):
        otlp.int_attribute(otlp.attribute_key("k"), -(2**63) - 1)
    with pytest.raises(ValueError, match="uint64"):
        otlp.varint(2**64)
    assert otlp.varint(2**64 - 1) == b"\xff" * 9 + b"\x01"


# -- the sender -----------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(autouse=True)
def no_otlp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEADERS", "COMPRESSION", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "FIRST_BACKOFF_S", 0.01)


BODY = SpanEncoder(RESOURCE, SCOPE).encode([request()])


def sender(url: str, *, timeout: float = 2.0, **options: Any) -> otlp.OtlpHttpSender:
    return otlp.OtlpHttpSender(url, timeout=timeout, **options)


def test_an_export_is_a_protobuf_post(receiver: OtlpReceiver) -> None:
    assert sender(f"{receiver.url}/v1/traces").send(BODY)
    assert receiver.errors == []
    assert receiver.bodies == [BODY]
    assert receiver.headers[0]["content-type"] == "application/x-protobuf"
    assert receiver.headers[0]["user-agent"].startswith("devmesh/")
    assert receiver.spans[0].span_id == PROXY_SPAN


def test_headers_come_from_the_otlp_variables(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=everyone,x-general=1")
    sender(f"{receiver.url}/v1/traces").send(BODY)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Authorization=Bearer%20abc, x-tenant=shop")
    sender(f"{receiver.url}/v1/traces", headers={"X-Explicit": "yes"}).send(BODY)
    general, traces = receiver.headers
    assert (general["x-tenant"], general["x-general"]) == ("everyone", "1")
    # The traces variable wins over the general one (it is not merged with it), as the SDK's exporter does.
    assert (traces["authorization"], traces["x-tenant"], traces["x-explicit"]) == (
        "Bearer abc",
        "shop",
        "yes",
    )
    assert "x-general" not in traces


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compression_comes_from_the_otlp_variables(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", compression.upper())
    assert sender(f"{receiver.url}/v1/traces").send(BODY)
    assert receiver.headers[0]["content-encoding"] == compression
    assert receiver.bodies == [BODY] and receiver.errors == []


def test_an_unknown_compression_sends_uncompressed(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    assert sender(f"{receiver.url}/v1/traces", compression="zstd").send(BODY)
    assert "content-encoding" not in receiver.headers[0]
    assert "zstd" in caplog.text


@pytest.mark.usefixtures("quick_backoff")
def test_an_overloaded_collector_is_retried(receiver: OtlpReceiver) -> None:
    receiver.answers = [(503, {}), (429, {"Retry-After": "0"}), (502, {})]
    assert sender(f"{receiver.url}/v1/traces").send(BODY)
    assert len(receiver.headers) == 4 and receiver.bodies == [BODY]


@pytest.mark.usefixtures("quick_backoff")
def test_a_refused_export_is_not_retried(receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.answers = [(400, {})]
    with caplog.at_level(logging.WARNING, logger="devmesh.observe.otlp"):
        assert not sender(f"{receiver.url}/v1/traces").send(BODY)
    assert len(receiver.headers) == 1
    assert "HTTP 400" in caplog.text


def test_retries_end_at_the_timeout(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp, "FIRST_BACKOFF_S", 0.05)
    receiver.answers = [(503, {})] * 100
    started = time.monotonic()
    assert not sender(f"{receiver.url}/v1/traces", timeout=0.5).send(BODY)
    assert time.monotonic() - started < 0.6
    assert 2 <= len(receiver.headers) <= 5  # 0, 0.05, 0.15, 0.35 s (+-20%); the next would be past 0.5 s


def test_a_retry_after_past_the_timeout_fails_at_once(receiver: OtlpReceiver) -> None:
    receiver.answers = [(503, {"Retry-After": "30"})]
    started = time.monotonic()
    assert not sender(f"{receiver.url}/v1/traces").send(BODY)
    assert time.monotonic() - started < 0.5 and len(receiver.headers) == 1


def test_failures_are_logged_once_until_an_export_works_again(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.answers = [(400, {})] * 3
    exporting = sender(f"{receiver.url}/v1/traces")
    with caplog.at_level(logging.INFO, logger="devmesh.observe.otlp"):
        for _ in range(4):
            exporting.send(BODY)
    assert [record.levelname for record in caplog.records] == ["WARNING", "INFO"]
    assert "works again" in caplog.records[1].getMessage()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.usefixtures("quick_backoff")
def test_no_collector_fails_within_the_timeout() -> None:
    started = time.monotonic()
    assert not sender(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=0.3).send(BODY)
    assert time.monotonic() - started < 1.0


def test_a_collector_that_does_not_answer_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        assert not sender(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces", timeout=0.3).send(BODY)
        assert 0.25 < time.monotonic() - started < 1.0


def test_abort_ends_an_export_in_flight() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        exporting = sender(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces", timeout=30)
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(exporting.send(BODY)))
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        exporting.abort()
        thread.join(5)
        assert results == [False] and time.monotonic() - started < 1.0
        assert not exporting.send(BODY)  # after abort: refused at once


def test_abort_ends_a_backoff(receiver: OtlpReceiver) -> None:
    receiver.answers = [(503, {"Retry-After": "20"})]
    exporting = sender(f"{receiver.url}/v1/traces", timeout=30)
    thread = threading.Thread(target=exporting.send, args=(BODY,))
    thread.start()
    time.sleep(0.2)
    exporting.abort()
    thread.join(2)
    assert not thread.is_alive()


class KeepAliveCollector:
    """A collector on raw sockets that answers HTTP/1.1 keep-alive; with `close_after_answer`, it closes
    each connection after its first answer without saying so (as an idle timeout does)."""

    def __init__(self, *, close_after_answer: bool) -> None:
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.requests = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/v1/traces"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                self.connections += 1
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):
            stream = connection.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = stream.readline()
                    if not line:
                        return
                    head += line
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                stream.read(length)
                self.requests += 1
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                if self.close_after_answer:
                    return

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("close_after_answer", [False, True])
def test_the_connection_is_kept_alive_and_a_closed_one_replaced(close_after_answer: bool) -> None:
    collector = KeepAliveCollector(close_after_answer=close_after_answer)
    try:
        exporting = sender(collector.url)
        for _ in range(3):
            assert exporting.send(BODY)
            time.sleep(0.05)  # the collector has closed the connection, when it does
        exporting.close()
        assert collector.requests == 3
        assert collector.connections == (3 if close_after_answer else 1)
    finally:
        collector.close()


@pytest.mark.parametrize("url", ["127.0.0.1:4318", "grpc://127.0.0.1:4317", "http:///v1/traces"])
def test_an_endpoint_is_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        otlp.OtlpHttpSender(url, timeout=1)


def test_a_tracer_sends_what_its_encoder_writes(receiver: OtlpReceiver) -> None:
    tracer = RequestTracer(receiver.url, mesh="shop", peer_id="alice-1a2b3c")
    tracer.record(request())
    tracer.close()
    assert receiver.bodies == [BODY]
