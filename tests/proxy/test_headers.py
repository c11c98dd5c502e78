"""Header rewriting, unit by unit."""

from __future__ import annotations

from devmesh.proxy.headers import client_response_head, trace_context, trailer_block, upstream_request_head
from devmesh.proxy.pages import ErrorPage, render, response_bytes, wants_json


def test_upstream_head_drops_hop_by_hop_and_appends_forwarding_headers() -> None:
    head = upstream_request_head(
        b"GET",
        b"/x",
        [
            (b"Host", b"api.localhost"),
            (b"Connection", b"X-Private"),
            (b"X-Private", b"1"),
            (b"Forwarded", b"for=10.0.0.1"),
        ],
        host=b"api.localhost",
        client_ip=b"::1",
        scheme=b"https",
        trace_id=b"t1",
        traceparent=b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01",
        framing=b"",
        upgrade=None,
        connection=b"X-Private",
    )
    text = head.decode()
    assert text.startswith("GET /x HTTP/1.1\r\nHost: api.localhost\r\n")
    assert "X-Private" not in text and "Connection:" not in text
    assert 'Forwarded: for=10.0.0.1, for="[::1]";host=api.localhost;proto=https\r\n' in text
    assert "X-Forwarded-Proto: https\r\n" in text and text.endswith("\r\n\r\n")


def test_upgrade_requests_keep_their_upgrade_headers() -> None:
    head = upstream_request_head(
        b"GET",
        b"/ws",
        [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")],
        host=b"h",
        client_ip=b"1.2.3.4",
        scheme=b"http",
        trace_id=b"t",
        traceparent=b"p",
        framing=b"",
        upgrade=b"websocket",
    )
    assert head.endswith(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n")


def test_response_head_sets_framing_via_and_served_by() -> None:
    head = client_response_head(
        200,
        b"OK",
        [(b"Content-Length", b"99"), (b"Via", b"1.1 nginx"), (b"X-DevMesh-Served-By", b"spoofed")],
        framing=b"Content-Length: 5\r\n",
        served_by=b"local/api@1.0",
        trace_id=b"t",
        connection=b"close",
    ).decode()
    assert "Content-Length: 99" not in head and "Content-Length: 5\r\n" in head
    assert "Via: 1.1 nginx, 1.1 devmesh\r\n" in head
    assert "X-DevMesh-Served-By: local/api@1.0\r\n" in head and "spoofed" not in head
    assert head.endswith("Connection: close\r\n\r\n")


def test_trace_context() -> None:
    incoming = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trace_id, onward, parent = trace_context(incoming, None)
    # Same trace and flags, the proxy's own span as the parent of the service's; the caller's span kept.
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and parent == "b7ad6b7169203331"
    assert onward.startswith(b"00-0af7651916cd43dd8448eb211c80319c-") and onward.endswith(b"-01")
    assert onward.split(b"-")[2] != b"b7ad6b7169203331" and len(onward) == 55
    trace_id, started, parent = trace_context(None, b"my-trace")
    assert trace_id == "my-trace" and started.startswith(b"00-") and len(started) == 55 and parent == ""
    hex_id = "a" * 32
    assert trace_context(None, hex_id.encode())[1].startswith(b"00-" + hex_id.encode())
    fresh_id, fresh, _ = trace_context(b"garbage", b"bad value with spaces")
    assert len(fresh_id) == 32 and fresh.split(b"-")[1].decode() == fresh_id


def test_trailer_block() -> None:
    assert trailer_block([]) == b"0\r\n\r\n"
    assert trailer_block([(b"X-Sum", b"1"), (b"Connection", b"x")]) == b"0\r\nX-Sum: 1\r\n\r\n"


def test_pages_follow_accept() -> None:
    assert wants_json(None) and wants_json(b"*/*") and wants_json(b"application/json")
    assert not wants_json(b"text/html,application/xhtml+xml,*/*;q=0.8")
    page = ErrorPage(
        503, "Service unavailable", "api is <stopped>", hint="run `devmesh run api`", service="api"
    )
    content_type, body = render(page, b"text/html")
    assert (
        content_type.startswith(b"text/html")
        and b"&lt;stopped&gt;" in body
        and b"<code>devmesh run api</code>" in body
    )
    raw = response_bytes(page, None, trace_id="t", close=True, head_only=True)
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and raw.endswith(
        b"Connection: close\r\n\r\n"
    )
