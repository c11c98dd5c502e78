"""RequestTracer: every proxied request becomes the proxy's span of its trace, exported over OTLP/HTTP to a
real (in-process) receiver."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from devmesh.observe import tracing
from devmesh.observe.tracing import MISSING_MESSAGE, RequestTracer, load_tracer, traces_url
from devmesh.proxy.observe import AccessLog, RequestRecord
from otlp_receiver import OtlpReceiver, otlp_receiver

TRACE = "0af7651916cd43dd8448eb211c80319c"  # the W3C trace id
PROXY_SPAN = "00f067aa0ba902b7"  # the proxy's span: the traceparent it sent upstream has it
CALLER_SPAN = "b7ad6b7169203331"  # the span of whoever called through the proxy
END = 1_764_300_000.125


def request(**changes: Any) -> RequestRecord:
    entry = RequestRecord(
        time=END,
        method="POST",
        host="api.localhost:7080",
        path="/orders/7?expand=items",
        status=201,
        service="api",
        origin="local",
        duration_s=0.0025,
        trace_id="checkout-42",  # an X-DevMesh-Trace-ID, not the W3C trace id
        endpoint="127.0.0.1:3000",
        id=42,
        traceparent=f"00-{TRACE}-{PROXY_SPAN}-01",
        parent_span=CALLER_SPAN,
        request_bytes=17,
        response_bytes=512,
    )
    return entry._replace(**changes)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture
def tracer(receiver: OtlpReceiver) -> Iterator[RequestTracer]:
    running = RequestTracer(receiver.url, mesh="shop", peer_id="alice-1a2b3c")
    try:
        yield running
    finally:
        running.close()


def test_a_request_becomes_the_proxy_span_under_the_callers(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    tracer.record(request())
    received = receiver.wait_for_span()
    span = received.span
    assert received.trace_id == TRACE
    assert received.span_id == PROXY_SPAN  # the span the service sees as its parent
    assert received.parent_span_id == CALLER_SPAN
    assert span.name == "POST api"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert abs(span.end_time_unix_nano - 1_764_300_000_125_000_000) < 1000  # entry.time, to the ns
    assert span.end_time_unix_nano - span.start_time_unix_nano == 2_500_000  # the request's duration
    assert span.status.code == Status.STATUS_CODE_UNSET
    assert span.flags & 0x300 == 0x300  # the parent is remote: the caller's span
    assert received.attributes == {
        "devmesh.service": "api",
        "devmesh.origin": "local",
        "devmesh.endpoint": "127.0.0.1:3000",
        "devmesh.trace_id": "checkout-42",
        "devmesh.request_id": 42,
        "http.request.method": "POST",
        "http.response.status_code": 201,
        "url.path": "/orders/7",
        "server.address": "api.localhost",
        "http.request.body.size": 17,
        "http.response.body.size": 512,
    }
    assert {
        "service.name": "devmesh",
        "service.instance.id": "alice-1a2b3c",
        "devmesh.mesh": "shop",
    }.items() <= received.resource.items()
    assert received.scope == "devmesh.proxy"


def test_a_request_that_started_its_trace_is_a_root_span(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    tracer.record(request(method="GET", parent_span="", trace_id=TRACE))
    received = receiver.wait_for_span()
    assert (received.trace_id, received.span_id, received.parent_span_id) == (TRACE, PROXY_SPAN, "")
    assert received.name == "GET api"
    assert received.attributes["devmesh.trace_id"] == TRACE


def test_a_5xx_is_an_error_a_4xx_is_not(receiver: OtlpReceiver, tracer: RequestTracer) -> None:
    for request_id, status in enumerate((502, 404, 500), start=1):
        tracer.record(request(id=request_id, status=status))
    spans = receiver.wait_for_spans(3)
    codes = {span.attributes["http.response.status_code"]: span.span.status.code for span in spans}
    assert codes == {
        502: Status.STATUS_CODE_ERROR,
        404: Status.STATUS_CODE_UNSET,
        500: Status.STATUS_CODE_ERROR,
    }


def test_peer_and_fault_are_set_when_there_are_and_empty_fields_left_out(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    tracer.record(request(id=1, origin="peer", peer="bob-4d5e6f", endpoint="10.0.0.5:7090", fault="latency"))
    tracer.record(request(id=2, service="", origin="", endpoint="", status=404, method="GET"))
    by_id = {span.attributes["devmesh.request_id"]: span for span in receiver.wait_for_spans(2)}
    assert {
        "devmesh.origin": "peer",
        "devmesh.peer": "bob-4d5e6f",
        "devmesh.endpoint": "10.0.0.5:7090",
        "devmesh.fault": "latency",
    }.items() <= by_id[1].attributes.items()
    # A request no service matched: a span all the same, named by its method alone.
    assert by_id[2].name == "GET"
    assert not {
        "devmesh.service",
        "devmesh.origin",
        "devmesh.endpoint",
        "devmesh.peer",
        "devmesh.fault",
    } & set(by_id[2].attributes)


@pytest.mark.parametrize(
    ("host", "path", "address", "url_path"),
    [
        ("api.localhost", "/", "api.localhost", "/"),
        ("[::1]:7080", "/a/b?c=d&e", "::1", "/a/b"),
        ("127.0.0.1:7080", "/search?q=a?b", "127.0.0.1", "/search"),
    ],
)
def test_server_address_is_the_host_without_port_and_url_path_has_no_query(
    receiver: OtlpReceiver, tracer: RequestTracer, host: str, path: str, address: str, url_path: str
) -> None:
    tracer.record(request(host=host, path=path))
    attributes = receiver.wait_for_span().attributes
    assert (attributes["server.address"], attributes["url.path"]) == (address, url_path)


def test_records_without_a_usable_traceparent_are_skipped(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    skipped = [
        "",  # a request refused before its trace context was set (a bad Host, say)
        "garbage",
        f"00-{TRACE}-{PROXY_SPAN}",
        f"00-{'0' * 32}-{PROXY_SPAN}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE.upper()}-{PROXY_SPAN}-01",
        f"00-{TRACE}-{PROXY_SPAN}-00",  # not sampled: the caller records none of this trace
    ]
    for request_id, traceparent in enumerate(skipped, start=1):
        tracer.record(request(id=request_id, traceparent=traceparent))
    tracer.record(request(id=100))
    tracer.close()  # exports everything queued
    assert [span.attributes["devmesh.request_id"] for span in receiver.spans] == [100]


def test_a_malformed_caller_span_makes_a_root_span(receiver: OtlpReceiver, tracer: RequestTracer) -> None:
    tracer.record(request(parent_span="0" * 16))
    assert receiver.wait_for_span().parent_span_id == ""


def test_spans_go_out_within_a_second_without_a_flush(receiver: OtlpReceiver, tracer: RequestTracer) -> None:
    started = time.monotonic()
    tracer.record(request())
    receiver.wait_for_span(timeout=2)
    assert time.monotonic() - started < 1.0


def test_close_exports_what_is_queued(receiver: OtlpReceiver, tracer: RequestTracer) -> None:
    for request_id in range(1, 1001):
        tracer.record(request(id=request_id, traceparent=f"00-{TRACE}-{request_id:016x}-01"))
    tracer.close()
    assert len(receiver.spans) == 1000
    assert {span.span_id for span in receiver.spans} == {f"{n:016x}" for n in range(1, 1001)}
    tracer.record(request())  # after close: ignored, not an error
    tracer.close()


def test_the_endpoint_may_name_the_traces_path(receiver: OtlpReceiver) -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
    tracer = RequestTracer(f"{receiver.url}/v1/traces", mesh="shop", peer_id="alice-1a2b3c")
    try:
        tracer.record(request())
        receiver.wait_for_span()
    finally:
        tracer.close()
    assert receiver.errors == []


def test_the_access_log_hands_every_record_to_the_tracer(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    log = AccessLog(None, "off", sink=tracer)
    log.record(request())
    assert receiver.wait_for_span().span_id == PROXY_SPAN


def test_spans_go_out_in_batches(receiver: OtlpReceiver, tracer: RequestTracer) -> None:
    count = tracing.MAX_BATCH * 2 + 100
    for request_id in range(count):
        tracer.record(request(id=request_id, traceparent=f"00-{TRACE}-{request_id + 1:016x}-01"))
    tracer.close()
    assert len(receiver.spans) == count
    sizes = [
        len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
        for body in receiver.bodies
    ]
    assert len(sizes) >= 3 and max(sizes) <= tracing.MAX_BATCH


def test_under_steady_load_partial_batches_go_out_once_per_schedule(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    # ~2,000 requests a second for 1.5 s: full batches, and a partial one per SCHEDULE_DELAY_S at most,
    # not a POST of a few spans whenever the last one ends.
    count, started = 0, time.monotonic()
    while time.monotonic() - started < 1.5:
        for _ in range(2):  # continuously, as a proxy hands them over
            count += 1
            tracer.record(request(id=count, traceparent=f"00-{TRACE}-{count:016x}-01"))
        time.sleep(0.001)
    receiver.wait_for_spans(count)
    most = count // tracing.MAX_BATCH + int(1.5 / tracing.SCHEDULE_DELAY_S) + 3
    assert receiver.requests <= most, f"{receiver.requests} exports for {count} spans"


def test_an_overloaded_collector_gets_the_spans_when_it_recovers(
    receiver: OtlpReceiver, tracer: RequestTracer
) -> None:
    receiver.answers = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0.1"})]
    tracer.record(request())
    assert receiver.wait_for_span().span_id == PROXY_SPAN
    assert len(receiver.headers) == 3


def test_a_collector_that_is_down_is_one_warning_not_one_per_span(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    monkeypatch.setattr(tracing, "EXPORT_TIMEOUT_S", 0.2)
    with caplog.at_level(logging.DEBUG, logger="devmesh.observe"):
        tracer = RequestTracer(f"http://127.0.0.1:{nobody}", mesh="shop", peer_id="a")
        try:
            for round_ in range(3):  # three exports, each failing
                for request_id in range(100):
                    tracer.record(
                        request(
                            id=request_id, traceparent=f"00-{TRACE}-{round_ * 100 + request_id + 1:016x}-01"
                        )
                    )
                time.sleep(tracing.SCHEDULE_DELAY_S + 0.3)
        finally:
            tracer.close()
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "failed" in warnings[0].getMessage()
    assert len(caplog.records) >= 3  # the later failures at debug level


def test_a_collector_that_does_not_answer_blocks_neither_the_proxy_nor_close() -> None:
    before = set(threading.enumerate())
    # Connections to it are accepted by the kernel, and nothing ever answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        tracer = RequestTracer(f"http://127.0.0.1:{silent.getsockname()[1]}", mesh="shop", peer_id="a")
        try:
            count = tracing.MAX_QUEUE * 3
            started = time.monotonic()
            for request_id in range(count):
                tracer.record(request(id=request_id, traceparent=f"00-{TRACE}-{request_id + 1:016x}-01"))
            recording = time.monotonic() - started
            # The queue is bounded: what does not fit is dropped (counted), not waited for.
            assert (
                count - tracing.MAX_QUEUE - tracing.MAX_BATCH <= tracer.dropped <= count - tracing.MAX_QUEUE
            )
            assert recording < 3.0, f"{count} records took {recording:.2f}s"
        finally:
            started = time.monotonic()
            tracer.close()
            closing = time.monotonic() - started
        assert closing < tracing.CLOSE_TIMEOUT_S + 1
        # The export in flight was given up: the exporter's thread has ended.
        assert [
            thread for thread in set(threading.enumerate()) - before if thread.name == "devmesh-otlp"
        ] == []


def test_load_tracer_makes_a_tracer(receiver: OtlpReceiver) -> None:
    tracer = load_tracer(receiver.url, mesh="shop", peer_id="alice-1a2b3c")
    try:
        assert isinstance(tracer, RequestTracer)
        assert tracer.endpoint == f"{receiver.url}/v1/traces"
    finally:
        tracer.close()


def test_without_opentelemetry_load_tracer_says_how_to_install_it() -> None:
    script = """
import sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed
from devmesh.observe.tracing import TracingUnavailable, load_tracer
try:
    load_tracer("http://127.0.0.1:4318", mesh="shop", peer_id="a")
except TracingUnavailable as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == MISSING_MESSAGE
    assert MISSING_MESSAGE == (
        "[observe] otlp is set, but OpenTelemetry is not installed: pip install 'devmesh[otel]'"
    )
