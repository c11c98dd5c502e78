"""Forwarding through the proxy over real sockets: keep-alive, pooling, headers, bodies both ways."""

from __future__ import annotations

import asyncio

from http_support import Message, MessageReader, backend, request_bytes, running_proxy, service_view


async def test_requests_reach_the_service_by_host_and_reuse_one_upstream_connection() -> None:
    async with backend() as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        responses = MessageReader(reader, response=True)
        for index in range(20):
            writer.write(request_bytes("GET", f"/items/{index}", "api.localhost:7080"))
            answer = await responses.next()
            assert answer is not None and answer.status == 200
            assert answer.header("x-echo-target") == f"/items/{index}"
        writer.close()
        assert api.connections == 1, "keep-alive on both sides: one upstream connection for 20 requests"
        assert proxy.server.pool.opened == 1


async def test_forwarded_headers_trace_ids_and_served_by() -> None:
    async with backend() as api, running_proxy(service_view("api", api.port, version="1.4.2")) as proxy:
        answer = await proxy.request(
            "api.localhost",
            "/x",
            headers={"X-Forwarded-For": "10.1.1.1", "Via": "1.0 corp", "X-DevMesh-Trace-ID": "abc123"},
        )
        assert answer.header("x-echo-x-forwarded-for") == "10.1.1.1, 127.0.0.1"
        assert answer.header("x-echo-x-forwarded-proto") == "http"
        assert answer.header("x-echo-x-forwarded-host") == "api.localhost"
        assert answer.header("x-echo-forwarded") == "for=127.0.0.1;host=api.localhost;proto=http"
        assert answer.header("x-echo-via") == "1.0 corp, 1.1 devmesh"
        assert answer.header("x-echo-x-devmesh-trace-id") == "abc123"  # kept when present
        assert (answer.header("x-echo-traceparent") or "").startswith("00-")
        assert answer.header("x-devmesh-served-by") == "local/api@1.4.2"
        assert answer.header("x-devmesh-trace-id") == "abc123"
        assert answer.header("via") == "1.1 devmesh"

        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        passed = await proxy.request("api.localhost", headers={"traceparent": traceparent})
        onward = passed.header("x-echo-traceparent") or ""
        # The trace goes on, with the proxy's span between the caller's and the service's.
        assert onward.startswith("00-0af7651916cd43dd8448eb211c80319c-") and onward.endswith("-01")
        assert "b7ad6b7169203331" not in onward
        assert passed.header("x-devmesh-trace-id") == "0af7651916cd43dd8448eb211c80319c"

        started = await proxy.request("api.localhost")
        trace_id = started.header("x-devmesh-trace-id")
        assert trace_id and len(trace_id) == 32
        assert (
            started.header(
                "x-echo-traceparent",
            ).split("-")[1]
            == trace_id
        )  # type: ignore[union-attr]


async def test_hop_by_hop_headers_are_not_forwarded() -> None:
    async def handler(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = ",".join(sorted(name.lower() for name, _ in request.headers))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
            b"Keep-Alive: timeout=5\r\nX-Seen: " + seen.encode() + b"\r\n\r\nok"
        )

    async with backend(handler) as api, running_proxy(service_view("api", api.port)) as proxy:
        answer = await proxy.request(
            "api.localhost",
            headers={
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Keep-Alive": "300",
                "Proxy-Connection": "x",
                "TE": "trailers",
            },
        )
        seen = (answer.header("x-seen") or "").split(",")
        for hop in ("x-drop-me", "keep-alive", "proxy-connection", "te"):
            assert hop not in seen
        assert answer.header("x-secret") is None and answer.header("keep-alive") is None
        assert answer.body == b"ok"


async def test_chunked_request_and_response_with_trailers() -> None:
    async def handler(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert request.body == b"hello world"
        assert request.trailers == [("X-Checksum", "42")]
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Done\r\n\r\n"
            b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Done: yes\r\n\r\n"
        )

    async with backend(handler) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: api.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 42\r\n\r\n"
        )
        answer = await MessageReader(reader, response=True).next()
        writer.close()
        assert answer is not None and answer.status == 200, answer
        assert answer.body == b"abcdefg"
        assert answer.header("transfer-encoding") == "chunked"
        assert answer.trailers == [("X-Done", "yes")]
        assert api.requests[0].header("transfer-encoding") == "chunked"


async def test_response_without_length_is_rechunked_for_http11_and_closed_for_http10() -> None:
    async def handler(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        return False

    async with backend(handler) as api, running_proxy(service_view("api", api.port)) as proxy:
        answer = await proxy.request("api.localhost")
        assert answer.body == b"until the end"
        assert answer.header("transfer-encoding") == "chunked"

        reader, writer = await proxy.connect()
        writer.write(b"GET / HTTP/1.0\r\nHost: api.localhost\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)  # the proxy closes: that is the end of the body
        writer.close()
        assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"\r\n\r\nuntil the end")
        assert b"chunked" not in raw


async def test_head_and_204_end_without_a_body_and_keep_the_connection() -> None:
    async def handler(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        elif request.target == "/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")

    async with backend(handler) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(request_bytes("HEAD", "/", "api.localhost"))
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert raw.startswith(b"HTTP/1.1 200") and b"Content-Length: 1000" in raw
        writer.write(
            request_bytes("GET", "/empty", "api.localhost") + request_bytes("GET", "/", "api.localhost")
        )
        responses = MessageReader(reader, response=True)
        empty = await responses.next()
        full = await responses.next()
        writer.close()
        assert empty is not None and empty.status == 204 and empty.body == b""
        assert full is not None and full.body == b"body"
        assert api.connections == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async def handler(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if request.target == "/slow":
            await asyncio.sleep(0.2)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
            % (len(request.target), request.target.encode())
        )

    async with backend(handler) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(
            request_bytes("GET", "/slow", "api.localhost")
            + request_bytes("POST", "/second", "api.localhost", body=b"data")
            + request_bytes("GET", "/third", "api.localhost")
        )
        responses = MessageReader(reader, response=True)
        bodies = [(await responses.next()) for _ in range(3)]
        writer.close()
        assert [m.body for m in bodies if m] == [b"/slow", b"/second", b"/third"]


async def test_expect_100_continue_is_relayed_before_the_body() -> None:
    async def handler(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(response_for(request.body))

    def response_for(body: bytes) -> bytes:
        return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    # A backend that answers 100 Continue itself, as real servers do, then reads the body.
    async def continuing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Expect: 100-continue" in head
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(5)
        writer.write(response_for(body))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(continuing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(service_view("api", port)) as proxy:
            reader, writer = await proxy.connect()
            writer.write(
                b"POST /upload HTTP/1.1\r\nHost: api.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"hello")
            final = await MessageReader(reader, response=True).next()
            writer.close()
            assert final is not None and final.status == 201 and final.body == b"hello"
    finally:
        server.close()


async def test_absolute_form_targets_route_by_their_host() -> None:
    async with backend() as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(b"GET http://api.localhost:7080/abs?q=1 HTTP/1.1\r\nHost: ignored.example\r\n\r\n")
        answer = await MessageReader(reader, response=True).next()
        writer.close()
        assert answer is not None and answer.status == 200
        assert answer.header("x-echo-target") == "/abs?q=1"
