"""Limits and bad input, through real sockets (docs/threat-model.md).

Every test here talks bytes to an in-process proxy: malformed requests get 400, oversized heads 431 or
414, smuggling vectors are refused before a service sees them, slow and idle clients time out, and none of
it disturbs other connections. `running_proxy` fails a test if any exception reached the event loop.

Tests whose docstring says "regression" pin proxy bugs found while writing this file (all fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from devmesh.mesh.snapshot import RunState
from devmesh.proxy.server import ProxyLimits
from http_support import (
    Backend,
    Message,
    MessageReader,
    RunningProxy,
    backend,
    request_bytes,
    running_proxy,
    service_view,
)

LIMITS = ProxyLimits(
    header_timeout_s=0.5,
    body_idle_timeout_s=0.5,
    keepalive_timeout_s=1.0,
    sweep_interval_s=0.05,
    max_header_bytes=4096,
    max_headers=32,
    max_url_bytes=1024,
)
HOST = "api.localhost"


# -- helpers ------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """Everything the proxy sent on one connection, and whether it closed it."""

    raw: bytes
    closed: bool
    elapsed: float

    @property
    def status(self) -> int:
        if self.raw[:9] == b"HTTP/1.1 " and self.raw[9:12].isdigit():
            return int(self.raw[9:12])
        return 0

    @property
    def head(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[0]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    @property
    def body(self) -> bytes:
        return self.raw.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.raw else b""


async def send_raw(proxy: RunningProxy, data: bytes, *, wait: float = 3.0) -> Reply:
    """Send `data` on a new connection; collect what comes back until the proxy closes or `wait` ends."""
    reader, writer = await proxy.connect()
    started = time.monotonic()
    writer.write(data)
    raw = b""
    closed = False
    try:
        async with asyncio.timeout(wait):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                raw += chunk
    except TimeoutError:
        pass
    except ConnectionError:
        closed = True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Reply(raw, closed, time.monotonic() - started)


def response_count(raw: bytes) -> int:
    """How many responses `raw` holds (error pages are JSON, so a status line starts a line)."""
    return len(re.findall(rb"(?:^|\n)HTTP/1\.1 \d{3} ", raw))


def assert_rejected(reply: Reply, *statuses: int) -> None:
    """The proxy's own error page with one of `statuses`, `Connection: close`, and the connection closed."""
    assert reply.status in statuses, reply.raw[:300]
    assert (reply.header("connection") or "").lower() == "close", reply.head
    assert reply.closed, "the proxy must close a connection it cannot trust to be at a request boundary"
    page = json.loads(reply.body)
    assert page["status"] == reply.status


async def wait_for(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """What arrives until the proxy closes the connection, or `within` seconds pass."""
    data = b""
    with contextlib.suppress(ConnectionError, TimeoutError):
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                data += chunk
    return data


@contextlib.asynccontextmanager
async def api_proxy(limits: ProxyLimits = LIMITS) -> AsyncIterator[tuple[Backend, RunningProxy]]:
    """An echo service `api` behind a proxy with `limits`."""
    async with backend() as api, running_proxy(service_view("api", api.port), limits=limits) as proxy:
        yield api, proxy


async def assert_still_serving(proxy: RunningProxy) -> None:
    answer = await proxy.request(HOST, "/after", timeout=2.0)
    assert answer.status == 200 and answer.header("x-echo-target") == "/after"


# -- malformed requests: 400 ---------------------------------------------------------------------------

MALFORMED_REQUEST_LINES = {
    "invalid method token": b"G@T / HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "unknown method": b"FROB / HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "unknown version": b"GET / HTTP/9.1\r\nHost: api.localhost\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "tab in target": b"GET /a\tb HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "not a path or URL": b"GET api HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "TLS client hello on the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    "binary garbage": b"\x00\xff\xfe\r\n\r\n",
}
# Rejected by the exchange once the head is parsed (not by llhttp): the parser must stop there too
# (regression: the request pipelined behind was forwarded and run by the service).
REJECTED_AFTER_THE_HEAD = {
    "asterisk form outside OPTIONS": b"OPTIONS * HTTP/1.1\r\nHost: api.localhost\r\n\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
}
MALFORMED_HEADER_LINES = {
    "no colon": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-Broken\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\nHost: api.localhost\r\n: value\r\n\r\n",
    "invalid name char": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX(y): 1\r\n\r\n",
    "whitespace before the first header": b"GET / HTTP/1.1\r\n Host: api.localhost\r\n\r\n",
    "CR without LF": b"GET / HTTP/1.1\r\nHost: api.localhost\rX-A: 1\r\n\r\n",
    "control char in value": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-A: a\x01b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-A: a\x7fb\r\n\r\n",
}


@pytest.mark.parametrize(
    "data",
    [
        *MALFORMED_REQUEST_LINES.values(),
        *MALFORMED_HEADER_LINES.values(),
        *REJECTED_AFTER_THE_HEAD.values(),
    ],
    ids=[*MALFORMED_REQUEST_LINES, *MALFORMED_HEADER_LINES, *REJECTED_AFTER_THE_HEAD],
)
async def test_malformed_requests_get_400_and_the_connection_closes(data: bytes) -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(proxy, data + request_bytes("GET", "/smuggled", HOST))
        assert_rejected(reply, 400)
        assert response_count(reply.raw) == 1, "nothing after the bad request may be parsed"
        await asyncio.sleep(0.05)
        assert api.connections == 0 and api.requests == [], "the service never sees a bad request"
        await assert_still_serving(proxy)


async def test_error_page_for_a_bad_request_follows_accept() -> None:
    async with api_proxy() as (_api, proxy):
        reply = await send_raw(proxy, b"GET / HTTP/1.1\r\nHost : api.localhost\r\nAccept: text/html\r\n\r\n")
        # The header line with the bad name is never parsed, so Accept is not known yet: JSON.
        assert reply.status == 400 and reply.header("content-type") == "application/json"
        reply = await send_raw(proxy, b"GET / HTTP/1.1\r\nAccept: text/html\r\n\r\n")
        assert reply.status == 400 and (reply.header("content-type") or "").startswith("text/html")
        assert b"Host header" in reply.body


# -- oversized heads: 431, 414 -------------------------------------------------------------------------


async def test_a_header_block_larger_than_the_limit_gets_431() -> None:
    headers = {f"X-Fill-{index}": "v" * 500 for index in range(10)}  # ~5 KB in 10 fields, limit 4 KB
    async with api_proxy() as (api, proxy):
        assert_rejected(await send_raw(proxy, request_bytes("GET", "/", HOST, headers)), 431)
        assert api.connections == 0
        await assert_still_serving(proxy)


async def test_one_header_line_longer_than_the_limit_gets_431() -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(proxy, request_bytes("GET", "/", HOST, {"X-Long": "v" * 5000}))
        assert_rejected(reply, 431)
        assert api.connections == 0


async def test_more_header_fields_than_the_limit_get_431() -> None:
    headers = {f"X-{index}": "1" for index in range(40)}  # tiny, but more than max_headers = 32
    async with api_proxy() as (api, proxy):
        assert_rejected(await send_raw(proxy, request_bytes("GET", "/", HOST, headers)), 431)
        assert api.connections == 0


async def test_a_head_just_under_the_limits_is_forwarded() -> None:
    headers = {f"X-Fill-{index}": "v" * 300 for index in range(10)}  # ~3.2 KB, 11 fields
    async with api_proxy() as (_api, proxy):
        answer = await proxy.request(HOST, "/" + "p" * 900, headers=headers)
        assert answer.status == 200 and answer.header("x-echo-x-fill-9") == "v" * 300


async def test_a_target_longer_than_the_limit_gets_414() -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(proxy, request_bytes("GET", "/" + "a" * 2000, HOST))
        assert_rejected(reply, 414)
        assert api.connections == 0
        await assert_still_serving(proxy)


async def test_an_unterminated_header_line_over_the_limit_gets_431_without_waiting_for_its_end() -> None:
    """httptools reports a header only once its line ends; the proxy must count an unfinished head as it
    arrives, or one endless line is buffered until the header timeout (regression: it answered 408)."""
    limits = ProxyLimits(header_timeout_s=1.5, sweep_interval_s=0.05, max_header_bytes=4096)
    async with api_proxy(limits) as (_api, proxy):
        reader, writer = await proxy.connect()
        writer.write(b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(16):
                writer.write(b"a" * 16384)  # 256 KB, 64 times the limit, and no end of line
                await writer.drain()
        started = time.monotonic()
        raw = await read_until_closed(reader, 1.0)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 431 "), raw[:100]
        assert time.monotonic() - started < 1.0


async def test_an_endless_trailer_line_is_refused_without_waiting_for_the_body_timeout() -> None:
    limits = ProxyLimits(body_idle_timeout_s=3.0, sweep_interval_s=0.05, max_header_bytes=4096)
    async with api_proxy(limits) as (api, proxy):
        reader, writer = await proxy.connect()
        writer.write(
            b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nX-Endless: "
        )
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for _ in range(16):
                writer.write(b"t" * 16384)  # 256 KB of one trailer line, 64 times the limit
                await writer.drain()
        await read_until_closed(reader, 2.0)
        writer.close()
        assert not proxy.server.connections and time.monotonic() - started < 1.5
        assert api.requests == [], "a request whose trailers never ended is never complete upstream"


# -- request smuggling: refused before anything reaches the service -------------------------------------

SMUGGLING = {
    "Content-Length and Transfer-Encoding": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nG"
    ),
    "Transfer-Encoding and Content-Length": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "duplicate Content-Length, same value": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
    ),
    "duplicate Content-Length, different values": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 1\r\nContent-Length: 40\r\n\r\nx"
    ),
    "Content-Length list": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 1, 1\r\n\r\nx",
    "negative Content-Length": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: -1\r\n\r\n",
    "signed Content-Length": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: +1\r\n\r\nx",
    "Content-Length overflow": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 99999999999999999999999\r\n\r\n"
    ),
    "obs-fold with a space": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n",
    "obs-fold with a tab": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-A: 1\r\n\tfolded\r\n\r\n",
    "Transfer-Encoding: chunked, gzip": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "Transfer-Encoding: chunked twice": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "empty Transfer-Encoding": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: \r\n\r\n",
    "bare LF line endings": b"GET / HTTP/1.1\nHost: api.localhost\n\n",
    "bare LF after a header": b"GET / HTTP/1.1\r\nHost: api.localhost\nTransfer-Encoding: chunked\r\n\r\n",
    "space before the colon": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"
    ),
    "space before the colon of Content-Length": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length : 5\r\n\r\nhello"
    ),
    "NUL in a header value": b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("data", list(SMUGGLING.values()), ids=list(SMUGGLING))
async def test_smuggling_vectors_get_400_and_never_reach_the_service(data: bytes) -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(proxy, data + request_bytes("GET", "/smuggled", HOST))
        assert_rejected(reply, 400)
        assert response_count(reply.raw) == 1
        await asyncio.sleep(0.05)
        assert api.connections == 0 and api.requests == []
        await assert_still_serving(proxy)


# Framing errors llhttp finds only after the head is complete (so after the exchange has started).
LATE_FRAMING_ERRORS = {
    "Transfer-Encoding: identity": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: identity\r\n\r\n",
    "unknown transfer coding": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked with parameters": b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    ),
    "chunk size overflow": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10000000000000000\r\nhello\r\n0\r\n\r\n"
    ),
    "space after the chunk size": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n"
    ),
    "bare LF after the chunk size": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"
    ),
    "chunk data longer than its size": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n"
    ),
    "Content-Length in the trailers": (
        b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"
    ),
}


@pytest.mark.parametrize("data", list(LATE_FRAMING_ERRORS.values()), ids=list(LATE_FRAMING_ERRORS))
async def test_late_framing_errors_close_and_never_deliver_a_request(data: bytes) -> None:
    async with api_proxy() as (api, proxy):
        await assert_still_serving(proxy)  # leaves an idle pooled connection the bad request could use
        reply = await send_raw(proxy, data + request_bytes("GET", "/smuggled", HOST))
        assert reply.closed
        assert b"/smuggled" not in reply.raw and response_count(reply.raw) <= 1
        await asyncio.sleep(0.1)
        assert [request.target for request in api.requests] == ["/after"], "no request completed upstream"
        await assert_still_serving(proxy)


@pytest.mark.parametrize("data", list(LATE_FRAMING_ERRORS.values()), ids=list(LATE_FRAMING_ERRORS))
async def test_late_framing_errors_are_answered_with_400(data: bytes) -> None:
    """Framing errors found once the exchange is under way still get an answer, not a bare close
    (regression: `_reject` answered only when no exchange was active)."""
    async with api_proxy() as (api, proxy):
        await assert_still_serving(proxy)
        reply = await send_raw(proxy, data)
        await asyncio.sleep(0.1)
        assert [request.target for request in api.requests] == ["/after"]
        # A transfer coding the proxy does not implement may get 501 (RFC 9112 §6.1), as nginx does.
        if b"Transfer-Encoding: chunked\r\n" in data:
            assert_rejected(reply, 400)
        else:
            assert_rejected(reply, 400, 501)


async def test_transfer_codings_other_than_chunked_are_refused() -> None:
    """`gzip, chunked` passes llhttp; forwarding it re-chunked without the coding would hand the service
    coded bytes as the body (regression: it did). 501, as nginx answers."""
    async with api_proxy() as (api, proxy):
        reply = await send_raw(
            proxy,
            b"POST / HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n"
            b"3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
        )
        await asyncio.sleep(0.05)
        assert api.requests == []
        assert reply.status in (400, 501) and reply.closed


async def test_a_request_with_two_host_headers_gets_400() -> None:
    """The proxy routes on one Host and the service may read the other (RFC 9112 §3.2: 400)."""
    async with api_proxy() as (api, proxy):
        reply = await send_raw(
            proxy,
            b"GET / HTTP/1.1\r\nHost: admin.internal\r\nHost: api.localhost\r\nConnection: close\r\n\r\n",
        )
        await asyncio.sleep(0.05)
        assert api.requests == []
        assert_rejected(reply, 400)


async def test_absolute_form_replaces_the_host_header() -> None:
    """RFC 9112 §3.2.2: the target's authority replaces Host (regression: the client's Host went upstream)."""
    async with api_proxy() as (_api, proxy):
        reply = await send_raw(
            proxy, b"GET http://api.localhost/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n"
        )
        assert reply.status == 200
        assert reply.header("x-echo-host") == "api.localhost"


def forwarded_pairs(value: str) -> list[tuple[str, str]]:
    """The (parameter, value) pairs of a Forwarded header (RFC 7239), quoted strings kept whole."""
    pairs = re.findall(r'([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,\s]*)', value)
    return [(name.lower(), raw.strip('"')) for name, raw in pairs]


async def test_a_host_that_is_not_a_host_name_cannot_forge_forwarded() -> None:
    """A wildcard service matched any Host ending in its suffix, and the proxy pasted it unquoted into
    `Forwarded: ...;host=<Host>;proto=http`: the client could forge the proxy's own `for` and `proto`."""
    async with (
        backend() as tenant,
        running_proxy(service_view("t", tenant.port, hosts=("*.tenant",)), limits=LIMITS) as proxy,
    ):
        forged = b"x;proto=https, for=6.6.6.6;host=a.tenant.localhost"
        reply = await send_raw(proxy, b"GET / HTTP/1.1\r\nHost: " + forged + b"\r\nConnection: close\r\n\r\n")
        if reply.status == 400:
            assert tenant.requests == []
            return
        # Or forwarded with the host quoted (RFC 7239 §4): then only the proxy speaks for `for` and `proto`.
        assert reply.status == 200 and len(tenant.requests) == 1
        pairs = forwarded_pairs(tenant.requests[0].header("forwarded") or "")
        assert [value for name, value in pairs if name == "for"] == ["127.0.0.1"], pairs
        assert [value for name, value in pairs if name == "proto"] == ["http"], pairs


# -- no open proxy ---------------------------------------------------------------------------------------


async def test_connect_is_refused_with_405() -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(
            proxy, b"CONNECT api.localhost:443 HTTP/1.1\r\nHost: api.localhost:443\r\n\r\n"
        )
        assert_rejected(reply, 405)
        assert api.connections == 0


async def test_absolute_form_for_a_host_outside_the_mesh_is_404_not_forwarded() -> None:
    async with api_proxy() as (api, proxy):
        reply = await send_raw(
            proxy, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        )
        assert reply.status == 404 and reply.closed
        assert "api.localhost" in json.loads(reply.body)["hosts"]
        assert api.connections == 0


async def test_an_upgrade_the_proxy_refuses_closes_the_connection() -> None:
    """After an Upgrade request the proxy answers itself (404 here), later bytes must not be swallowed as
    tunnel data on a kept-alive connection (regression: the next request hung)."""
    async with api_proxy() as (_api, proxy):
        reply = await send_raw(
            proxy,
            b"GET /ws HTTP/1.1\r\nHost: nowhere.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            + request_bytes("GET", "/next", HOST),
            wait=0.8,
        )
        assert reply.status == 404
        assert reply.closed or response_count(reply.raw) == 2, "the next request hangs"


# -- slow and idle clients -------------------------------------------------------------------------------


async def dribble(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    """Send `data` one byte at a time (slowloris), until it ends or the proxy closes."""
    with contextlib.suppress(ConnectionError):
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)


async def test_slowloris_headers_get_408_after_the_header_timeout() -> None:
    async with api_proxy() as (api, proxy):
        reader, writer = await proxy.connect()
        started = time.monotonic()
        sender = asyncio.create_task(
            dribble(writer, b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-Slow: " + b"z" * 100, 0.1)
        )
        raw = await read_until_closed(reader, 3.0)
        elapsed = time.monotonic() - started
        sender.cancel()
        writer.close()
        assert raw.startswith(b"HTTP/1.1 408 "), raw[:100]
        assert b"Connection: close" in raw
        assert 0.4 <= elapsed <= 2.0, elapsed  # header_timeout_s = 0.5, from the first byte, not refreshed
        assert api.connections == 0
        await wait_for(lambda: not proxy.server.connections)


async def test_a_client_that_sends_nothing_is_closed_after_the_keepalive_timeout() -> None:
    async with api_proxy() as (_api, proxy):
        reader, writer = await proxy.connect()
        started = time.monotonic()
        raw = await read_until_closed(reader, 3.0)
        elapsed = time.monotonic() - started
        writer.close()
        assert raw == b"", "an idle connection is closed quietly"
        assert 0.8 <= elapsed <= 2.0, elapsed  # keepalive_timeout_s = 1.0


async def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with api_proxy() as (_api, proxy):
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/", HOST))
        answer = await MessageReader(reader, response=True).next(timeout=2)
        assert answer is not None and answer.status == 200
        started = time.monotonic()
        rest = await read_until_closed(reader, 3.0)
        writer.close()
        assert rest == b"" and 0.8 <= time.monotonic() - started <= 2.0


async def test_a_stalled_body_closes_the_connection_and_cancels_the_upstream_request() -> None:
    async with api_proxy() as (api, proxy):
        reader, writer = await proxy.connect()
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
        )
        await wait_for(lambda: api.connections == 1)  # the head went upstream: the request is in flight
        started = time.monotonic()
        raw = await read_until_closed(reader, 3.0)
        writer.close()
        assert not raw.startswith(b"HTTP/1.1 2"), raw[:100]
        assert time.monotonic() - started <= 1.5  # body_idle_timeout_s = 0.5
        await wait_for(lambda: api.closed_connections == 1)  # the service sees its connection go
        assert api.requests == [], "a body that never ended is never handed to the service as complete"
        await assert_still_serving(proxy)


async def test_a_body_paused_by_back_pressure_is_not_a_stalled_body() -> None:
    """The body idle timeout is for a client that stops sending, not for one the proxy stopped reading
    because the service reads slowly (regression: such uploads were cut off)."""
    body_size = 16 * 1024 * 1024  # more than the socket buffers on both sides hold

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(1.2)  # busy: reads nothing for longer than body_idle_timeout_s
            await reader.readexactly(body_size)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(slow_reader, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        limits = ProxyLimits(body_idle_timeout_s=0.4, sweep_interval_s=0.05)
        async with running_proxy(service_view("api", port), limits=limits) as proxy:
            reader, writer = await proxy.connect()
            writer.write(request_bytes("POST", "/upload", HOST, body=b"x" * body_size))
            try:
                answer = await MessageReader(reader, response=True).next(timeout=5)
            except ConnectionError:
                answer = None
            writer.close()
            assert answer is not None, "the proxy dropped an upload it had paused itself"
            assert answer.status == 200
    finally:
        server.close()
        await asyncio.sleep(0.05)  # let the handler see the close


# -- other connections are not disturbed ------------------------------------------------------------------


async def test_slow_idle_and_garbage_connections_do_not_delay_a_good_request() -> None:
    limits = ProxyLimits(
        header_timeout_s=5.0, body_idle_timeout_s=5.0, keepalive_timeout_s=5.0, sweep_interval_s=0.05
    )
    async with api_proxy(limits) as (_api, proxy):
        opened: list[asyncio.StreamWriter] = []
        tasks: list[asyncio.Task[None]] = []

        async def open_connection(first: bytes = b"") -> asyncio.StreamWriter:
            _reader, writer = await proxy.connect()
            if first:
                writer.write(first)
            opened.append(writer)
            return writer

        slow = await open_connection()
        tasks.append(
            asyncio.create_task(
                dribble(slow, b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX: " + b"z" * 200, 0.05)
            )
        )
        await open_connection()  # silent
        await open_connection(b"POST / HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 1000000\r\n\r\nabc")
        await open_connection(b"GET / HTTP/1.1\r\nHost: api.localhost\r\nX-Endless: " + b"e" * 60000)
        await wait_for(lambda: len(proxy.server.connections) == 4)
        garbage = [send_raw(proxy, b"\x16\x03\x01garbage\r\n\r\n", wait=1.0) for _ in range(20)]

        started = time.monotonic()
        answers = await asyncio.gather(proxy.request(HOST, "/good", timeout=2.0), *garbage)
        good = answers[0]
        assert isinstance(good, Message) and good.status == 200
        assert time.monotonic() - started < 0.5, "answered at once, not after some other client's timeout"
        assert all(isinstance(reply, Reply) and reply.status == 400 for reply in answers[1:])
        assert len(proxy.server.connections) >= 4, (
            "the slow connections are still open: nothing waited for them"
        )

        for task in tasks:
            task.cancel()
        for writer in opened:
            writer.close()
        await wait_for(lambda: not proxy.server.connections)


async def test_many_pipelined_requests_behind_a_forwarded_one_are_all_answered() -> None:
    """Queued requests the proxy answers itself must not start each other recursively (regression: ~250
    of them hit the recursion limit, the error was swallowed, the connection hung with no deadline)."""
    async with api_proxy() as (_api, proxy):
        reader, writer = await proxy.connect()
        count = 600
        writer.write(request_bytes("GET", "/", HOST) + request_bytes("GET", "/", "nowhere.localhost") * count)
        raw = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                while response_count(raw) < count + 1:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    raw += chunk
        writer.close()
        assert raw.count(b"HTTP/1.1 404 ") == count


async def test_a_client_that_never_reads_cannot_grow_the_proxys_buffers() -> None:
    """Error pages written for pipelined requests ignored `pause_writing` (regression: ~10x what the
    client sent was buffered, without bound); the proxy must stop reading a client that does not read."""
    limits = ProxyLimits(keepalive_timeout_s=10.0, sweep_interval_s=0.05)
    async with api_proxy(limits) as (_api, proxy):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        chunk = request_bytes("GET", "/", "nowhere.localhost") * 2000  # ~80 KB of requests for 404 pages
        buffered = 0
        started = time.monotonic()
        with contextlib.suppress(TimeoutError, ConnectionError):
            while time.monotonic() - started < 2.0 and buffered < 32 * 1024 * 1024:
                writer.write(chunk)
                await asyncio.wait_for(writer.drain(), 0.5)
                connection = next(iter(proxy.server.connections))
                assert connection.transport is not None
                buffered = max(buffered, connection.transport.get_write_buffer_size())
        writer.transport.abort()
        assert buffered < 16 * 1024 * 1024, (
            f"the proxy buffered {buffered} bytes for a client that never reads"
        )


async def test_a_client_that_stops_reading_a_response_is_disconnected() -> None:
    """A slow-read slowloris: the client asks for a big response and reads none of it. It has until
    body_idle_timeout_s to read again, then both connections go (regression: they were held forever)."""

    async def endless(_request: Message, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 * 1024 * 1024))
        for _ in range(1024):
            writer.write(b"x" * 65536)
            await writer.drain()  # blocks once the proxy stops reading; raises when it lets go
        return False

    limits = ProxyLimits(body_idle_timeout_s=0.5, keepalive_timeout_s=0.5, sweep_interval_s=0.05)
    async with backend(endless) as api, running_proxy(service_view("api", api.port), limits=limits) as proxy:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(request_bytes("GET", "/download", HOST))
        await wait_for(lambda: api.connections == 1)
        try:
            await wait_for(lambda: not proxy.server.connections, within=2.0)  # never read a byte
            await wait_for(lambda: api.closed_connections == 1)  # and the download was cancelled upstream
        finally:
            writer.transport.abort()


# -- the proxy's own answers: 404, 503, 504 ----------------------------------------------------------------


async def test_unknown_host_gets_404_listing_the_known_hosts_as_json_or_html() -> None:
    async with (
        backend() as api,
        running_proxy(
            service_view("api", api.port, hosts=("api", "api-v1")),
            service_view("web", api.port, routes=("/shop/*",)),
            limits=LIMITS,
        ) as proxy,
    ):
        answer = await proxy.request("nope.localhost")
        assert answer.status == 404 and answer.header("content-type") == "application/json"
        page = json.loads(answer.body)
        assert page["status"] == 404 and "nope.localhost" in page["message"]
        assert page["hosts"] == ["api-v1.localhost", "api.localhost", "localhost/shop", "web.localhost"]

        html = await proxy.request("nope.localhost", headers={"Accept": "text/html,application/xhtml+xml"})
        assert html.status == 404 and (html.header("content-type") or "").startswith("text/html")
        assert b"<a href='//api-v1.localhost'>api-v1.localhost</a>" in html.body
        assert api.connections == 0


async def test_a_service_without_a_healthy_endpoint_gets_503_that_says_how_to_start_it() -> None:
    async with api_proxy() as (api, _proxy):
        stopped = service_view("api", api.port, healthy=False, state=RunState.STOPPED)
        async with running_proxy(stopped, limits=LIMITS) as proxy:
            answer = await proxy.request(HOST)
            assert answer.status == 503
            page = json.loads(answer.body)
            assert page["service"] == "api" and "devmesh run api" in page["hint"]
            html = await proxy.request(HOST, headers={"Accept": "text/html"})
            assert html.status == 503 and b"<code>devmesh run api</code>" in html.body
        assert api.connections == 0


async def test_a_service_that_does_not_answer_in_time_gets_504_and_the_request_is_cancelled() -> None:
    async def silent(_request: Message, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> bool:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # never answers; returns when the proxy gives up on the request
        return False

    async with (
        backend(silent) as api,
        running_proxy(service_view("api", api.port), limits=LIMITS, timeout_s=0.3) as proxy,
    ):
        started = time.monotonic()
        answer = await proxy.request(HOST, "/slow", timeout=3)
        assert answer.status == 504, answer
        assert 0.25 <= time.monotonic() - started <= 1.5
        page = json.loads(answer.body)
        assert "did not answer within 0.3 s" in page["message"]
        await wait_for(lambda: api.closed_connections == 1)
        assert [request.target for request in api.requests] == ["/slow"]
