"""The port-forward listener on real loopback sockets; the tunnel is a TCP connection to a server in the
test (the API server's side is covered in tests/integration/test_kubernetes.py)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devmesh.discovery.portforward import Backend, PortForwardListener
from devmesh.supervisor.logs import LogSink
from support import free_port


class TcpTunnel:
    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.released = False

    def release(self) -> None:
        self.released = True


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[LogSink]:
    sink = LogSink(tmp_path / "logs", terminal=io.StringIO())
    yield sink
    sink.close()


def events(tmp_path: Path, logs: LogSink) -> list[str]:
    logs.flush()
    return [
        json.loads(line).get("event", "")
        for path in (tmp_path / "logs").glob("*.log")
        for line in path.read_text().splitlines()
    ]


@pytest.fixture
async def pod() -> AsyncIterator[int]:
    """Like the kubernetes client's tunnel, it drops the whole stream as soon as its input ends; it
    answers after a short pause."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read(1024)
        await asyncio.sleep(0.1)
        if not reader.at_eof():
            writer.write(b"answer to " + request)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


def exchange(port: int, data: bytes, *, half_close: bool) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(1024):
                received += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread: a reset, which is "closed" too
    return received


async def test_the_answer_arrives_even_after_the_client_stopped_sending(pod: int, logs: LogSink) -> None:
    tunnels: list[TcpTunnel] = []

    async def choose() -> Backend:
        return Backend("web-0", 8080)

    def open_tunnel(backend: Backend) -> TcpTunnel:
        tunnels.append(TcpTunnel(pod))
        return tunnels[-1]

    listener = PortForwardListener(
        label="shop/web port 80", choose=choose, open_tunnel=open_tunnel, logs=logs
    )
    port = await listener.start()
    try:
        # The client's end-of-stream is not passed on: the tunnel would drop the answer with it.
        assert await asyncio.to_thread(exchange, port, b"ping", half_close=True) == b"answer to ping"
        assert await asyncio.to_thread(exchange, port, b"pong", half_close=False) == b"answer to pong"
        await asyncio.sleep(0.05)
        assert len(tunnels) == 2 and all(tunnel.released for tunnel in tunnels)
    finally:
        await listener.close()


async def test_the_port_is_kept_when_free_and_released_on_close(logs: LogSink) -> None:
    async def choose() -> None:
        return None

    wanted = free_port()
    first = PortForwardListener(label="a", choose=choose, open_tunnel=TcpTunnel, logs=logs)  # type: ignore[arg-type]
    assert await first.start(wanted) == wanted
    second = PortForwardListener(label="b", choose=choose, open_tunnel=TcpTunnel, logs=logs)  # type: ignore[arg-type]
    taken = await second.start(wanted)  # taken by the first: another port
    assert taken != wanted
    await first.close()
    await second.close()
    for closed in (wanted, taken):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", closed), timeout=5).close()


async def test_without_a_pod_or_a_tunnel_the_connection_is_closed_and_logged(
    logs: LogSink, tmp_path: Path
) -> None:
    backends: list[Backend | None] = [None, Backend("web-0", 8080)]

    async def choose() -> Backend | None:
        return backends.pop(0)

    def open_tunnel(backend: Backend) -> TcpTunnel:
        raise OSError("Handshake status 500 Internal Server Error")

    listener = PortForwardListener(
        label="shop/web port 80", choose=choose, open_tunnel=open_tunnel, logs=logs
    )
    port = await listener.start()
    try:
        assert await asyncio.to_thread(exchange, port, b"x", half_close=False) == b""
        assert await asyncio.to_thread(exchange, port, b"x", half_close=False) == b""
    finally:
        await listener.close()
    assert [event for event in events(tmp_path, logs) if event.startswith("k8s-")] == [
        "k8s-no-ready-pod",
        "k8s-port-forward-failed",
    ]


async def test_closing_the_listener_cuts_open_connections(logs: LogSink) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    tunnels: list[TcpTunnel] = []

    async def choose() -> Backend:
        return Backend("web-0", 8080)

    def open_tunnel(backend: Backend) -> TcpTunnel:
        tunnels.append(TcpTunnel(int(server.sockets[0].getsockname()[1])))
        return tunnels[-1]

    listener = PortForwardListener(
        label="shop/web port 80", choose=choose, open_tunnel=open_tunnel, logs=logs
    )
    port = await listener.start()
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        client.sendall(b"hello")
        for _ in range(250):
            if tunnels:
                break
            await asyncio.sleep(0.02)
        await asyncio.wait_for(listener.close(), 2)
        assert await asyncio.to_thread(client.recv, 10) == b""
        await asyncio.sleep(0.05)
        assert tunnels[0].released
    finally:
        client.close()
        server.close()
        await server.wait_closed()
