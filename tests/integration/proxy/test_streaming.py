"""Streams through the proxy: server-sent events as they happen, WebSocket tunnels, disconnects and resets."""

from __future__ import annotations

import asyncio
import base64

import websockets

from http_support import Message, backend, request_bytes, running_proxy, service_view


async def test_server_sent_events_arrive_one_by_one_before_the_stream_ends() -> None:
    release = asyncio.Event()

    async def events(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
        writer.write(b"data: first\n\n")
        await writer.drain()
        await asyncio.wait_for(release.wait(), 10)  # the stream stays open until the test has the event
        writer.write(b"data: second\n\n")
        return False

    async with backend(events) as feed, running_proxy(service_view("events", feed.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/stream", "events.localhost", {"Accept": "text/event-stream"}))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"Transfer-Encoding: chunked" in head
        first = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), 5)
        assert b"data: first" in first, "the first event must arrive while the service still streams"
        release.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert b"data: second" in rest
        writer.close()


async def test_websocket_echo_through_the_proxy() -> None:
    async def echo(connection: websockets.ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with running_proxy(service_view("ws", port)) as proxy:
            # The real client library, speaking to the proxy under the service's name.
            conn = await websockets.connect(
                f"ws://ws.localhost:{proxy.port}/chat", sock=_reconnect(proxy.port)
            )
            async with conn:
                for text in ("hello", "x" * 100_000, "bye"):
                    await conn.send(text)
                    assert await asyncio.wait_for(conn.recv(), 10) == text
                await conn.send(b"\x00\x01binary")
                assert await asyncio.wait_for(conn.recv(), 10) == b"\x00\x01binary"
            # Closing on one side closes the tunnel: no connection is left behind.
            for _ in range(100):
                if not proxy.server.connections:
                    break
                await asyncio.sleep(0.02)
            assert not proxy.server.connections


def _reconnect(port: int):  # type: ignore[no-untyped-def]
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_upgrade_handshake_headers_are_forwarded_and_a_refusal_is_a_normal_response() -> None:
    async def refuse(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        assert request.header("upgrade") == "websocket"
        assert (request.header("connection") or "").lower() == "upgrade"
        writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope")
        return False

    async with backend(refuse) as api, running_proxy(service_view("api", api.port)) as proxy:
        key = base64.b64encode(b"0123456789abcdef").decode()
        answer = await proxy.request(
            "api.localhost",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
            },
        )
        assert answer.status == 426 and answer.body == b"nope"
        forwarded = api.requests[0]
        assert forwarded.header("upgrade") == "websocket" and forwarded.header("sec-websocket-key") == key


async def test_client_disconnect_cancels_the_upstream_request() -> None:
    upstream_closed = asyncio.Event()

    async def slow(_request: Message, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(200):
                writer.write(b"5\r\ntick\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            upstream_closed.set()
        return False

    async with backend(slow) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/stream", "api.localhost"))
        await asyncio.wait_for(reader.readuntil(b"tick"), 10)
        writer.transport.abort()
        await asyncio.wait_for(upstream_closed.wait(), 5)


async def test_upstream_reset_mid_response_ends_the_client_response_and_the_proxy_carries_on() -> None:
    async def reset(request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.target == "/ok":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        writer.transport.abort()
        return False

    async with backend(reset) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/big", "api.localhost"))
        received = await asyncio.wait_for(reader.read(), 10)  # ends with the close, not a hang
        writer.close()
        assert received.startswith(b"HTTP/1.1 200") and len(received) < 1_000_000
        answer = await proxy.request("api.localhost", "/ok")
        assert answer.status == 200 and answer.body == b"ok"


async def test_a_slow_reader_pauses_the_service_instead_of_filling_memory() -> None:
    sent = 0

    async def firehose(_request: Message, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        total = 64 * 1024 * 1024
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        chunk = b"z" * 65536
        while sent < total:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        return False

    async with backend(firehose) as api, running_proxy(service_view("api", api.port)) as proxy:
        reader, writer = await proxy.connect()
        writer.write(request_bytes("GET", "/", "api.localhost"))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        await asyncio.sleep(0.5)  # the client reads nothing for a while
        # Only socket buffers and the proxy's high-water marks hold data: far less than the 64 MiB.
        assert sent < 16 * 1024 * 1024, (
            f"the service was allowed to send {sent} bytes to a client that reads nothing"
        )
        received = 0
        while received < 64 * 1024 * 1024:
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            if not data:
                break
            received += len(data)
        writer.close()
        assert received == 64 * 1024 * 1024
