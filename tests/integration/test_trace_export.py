"""Trace export from a real agent (`devmesh up`): `[observe] otlp` points at an in-process OTLP receiver,
and a request through the proxy shows up there as the proxy's span of the caller's trace."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from otlp_receiver import OtlpReceiver, otlp_receiver
from support import Project, free_port, http, running_agent, wait_for

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"

# A service that answers with the headers it got: the traceparent the proxy sent upstream.
ECHO_SERVICE = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


def test_a_request_through_the_proxy_is_exported_as_the_proxy_span(
    project: Project, receiver: OtlpReceiver
) -> None:
    listen = free_port()
    (project.root / "echo.py").write_text(ECHO_SERVICE, encoding="utf-8")
    project.write(
        f"""
[mesh]
name = "traced"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[observe]
otlp = "{receiver.url}"
[services.echo]
command = "{sys.executable} echo.py"
health = {{ http = "/health", interval = "0.2s" }}
"""
    )
    with running_agent(project) as agent:
        agent.wait_healthy("echo")
        peer_id = agent.status()["agent"]["peer_id"]
        code, headers, body = http(
            listen,
            f"echo.localhost:{listen}",
            "/orders?page=2",
            {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"},
        )
        assert code == 200
        sent_upstream = json.loads(body)["traceparent"]
        version, trace_id, proxy_span, flags = sent_upstream.split("-")
        assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01") and proxy_span != CALLER_SPAN

        received = receiver.wait_for_span(
            lambda span: span.attributes.get("url.path") == "/orders", timeout=10
        )
        # The proxy's span: in the caller's trace, under the caller's span, and the parent of the service's.
        assert received.trace_id == CALLER_TRACE
        assert received.parent_span_id == CALLER_SPAN
        assert received.span_id == proxy_span
        assert received.name == "GET echo"
        assert {
            "devmesh.service": "echo",
            "devmesh.origin": "local",
            "devmesh.trace_id": headers["x-devmesh-trace-id"],
            "http.request.method": "GET",
            "http.response.status_code": 200,
            "server.address": "echo.localhost",
            "http.response.body.size": len(body),
        }.items() <= received.attributes.items()
        assert {
            "service.name": "devmesh",
            "service.instance.id": peer_id,
            "devmesh.mesh": "traced",
        }.items() <= received.resource.items()

        # The same request in the agent's recent requests.
        recent = wait_for(
            lambda: [
                r for r in agent.client.get("/api/v1/requests?service=echo") if r["path"] == "/orders?page=2"
            ],
            what="the request in /api/v1/requests",
        )
        assert recent[0]["traceparent"] == sent_upstream
        assert received.attributes["devmesh.request_id"] == recent[0]["id"]
        assert received.attributes["devmesh.endpoint"] == recent[0]["endpoint"]
        start, end = received.span.start_time_unix_nano, received.span.end_time_unix_nano
        assert 0 <= end - start < 10**10
        assert abs(end / 1e9 - recent[0]["time"]) < 0.001
    assert receiver.errors == []
