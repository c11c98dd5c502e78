"""A supervised port-forward: a loopback listener for one Service port whose connections reach a pod.

`kubectl port-forward svc/web` picks one pod when it starts and dies with it. Here each accepted
connection picks a ready pod at that moment (`choose` asks the cluster), so a rollout or a crashed pod only
fails the connections that were open on it. The bytes travel through the API server's `pods/portforward`
(a websocket per connection, opened by `open_tunnel` in a worker thread: the kubernetes client is
synchronous) and come back to asyncio as a plain socket.

The client's tunnel has no half-close: when its local socket ends it drops the whole stream, answer
included. So a client's end-of-stream is not passed on; the pod's answer is awaited (bounded by
HALF_CLOSE_WAIT_S) and the pod's end-of-stream closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from devmesh.supervisor.logs import LogSink

__all__ = [
    "HALF_CLOSE_WAIT_S",
    "TUNNEL_OPEN_TIMEOUT_S",
    "Backend",
    "ChooseBackend",
    "OpenTunnel",
    "PortForwardListener",
    "Tunnel",
]

TUNNEL_OPEN_TIMEOUT_S = 15.0  # choosing a pod and opening its websocket through the API server
HALF_CLOSE_WAIT_S = 30.0  # after the client stopped sending, how long the pod's answer may take
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Backend:
    """Where one connection goes: a pod of the Service and the port it listens on."""

    pod: str
    port: int


class Tunnel(Protocol):
    """An open port-forward: `socket` carries the bytes; `release()` (blocking, called once the socket is
    closed) frees what is behind it, such as the websocket to the API server."""

    socket: socket.socket

    def release(self) -> None: ...


ChooseBackend = Callable[[], Awaitable[Backend | None]]
OpenTunnel = Callable[[Backend], Tunnel]  # blocking: runs in a worker thread


class PortForwardListener:
    """127.0.0.1:`port` for one port of one Service, for as long as the Service has that port."""

    def __init__(
        self,
        *,
        label: str,
        choose: ChooseBackend,
        open_tunnel: OpenTunnel,
        logs: LogSink,
        executor: Executor | None = None,
    ) -> None:
        """`open_tunnel` runs in `executor` (default: the loop's)."""
        self.label = label  # "default/web port 80", for logs
        self.port = 0
        self._choose = choose
        self._open_tunnel = open_tunnel
        self._logs = logs
        self._executor = executor
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, preferred_port: int | None = None) -> int:
        """Listen on loopback: on `preferred_port` when it is still free (the port this Service had
        before the cluster went away), else on a port the system picks. Returns the port."""
        if preferred_port:
            with contextlib.suppress(OSError):
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", preferred_port)
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop accepting and cut the open connections (their tunnels close with them)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(TUNNEL_OPEN_TIMEOUT_S):
                backend = await self._choose()
                if backend is None:
                    self._logs.agent(
                        f"kubernetes: {self.label}: no ready pod; connection closed",
                        component="kubernetes",
                        level="warning",
                        event="k8s-no-ready-pod",
                        target=self.label,
                    )
                    return
                opening = asyncio.get_running_loop().run_in_executor(
                    self._executor, self._open_tunnel, backend
                )
                try:
                    tunnel = await asyncio.shield(opening)
                except asyncio.CancelledError:
                    # Cancelled while the worker thread connects: close what it opens.
                    opening.add_done_callback(_close_opened)
                    raise
        except Exception as error:  # the cluster's errors arrive as many types; each one fails one connection
            self._logs.agent(
                f"kubernetes: {self.label}: port-forward failed: {error}",
                component="kubernetes",
                level="warning",
                event="k8s-port-forward-failed",
                target=self.label,
                error=str(error),
            )
            return
        try:
            tunnel.socket.setblocking(False)
            pod_reader, pod_writer = await asyncio.open_connection(sock=tunnel.socket)
        except OSError:
            tunnel.socket.close()
            _release_later(tunnel)
            return
        try:
            await _splice(client_reader, client_writer, pod_reader, pod_writer)
        finally:
            pod_writer.close()
            _release_later(tunnel)


async def _splice(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    pod_reader: asyncio.StreamReader,
    pod_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until the pod's side ends (or the client's, plus HALF_CLOSE_WAIT_S)."""
    upstream = asyncio.create_task(_copy(client_reader, pod_writer))
    downstream = asyncio.create_task(_copy(pod_reader, client_writer))
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if downstream not in done:
            await asyncio.wait({downstream}, timeout=HALF_CLOSE_WAIT_S)
    finally:
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()


def _close_opened(future: asyncio.Future[Tunnel]) -> None:
    if not future.cancelled() and future.exception() is None:
        tunnel = future.result()
        tunnel.socket.close()
        _release_later(tunnel)


def _release_later(tunnel: Tunnel) -> None:
    """Release in a thread of its own: it may wait a little for the client's thread, and must happen
    even when the listener is being torn down (an executor may be shutting down by then)."""
    threading.Thread(target=tunnel.release, name="devmesh port-forward release", daemon=True).start()
