"""Forwarding one ASGI HTTP request to the devmesh proxy over a plain asyncio connection.

HTTP/1.1 with `Connection: close`: one connection per request keeps the client small (loopback
connects cost microseconds) and lets a response without a length end at EOF. Bodies stream both ways:
the request as it arrives from the server (chunked when its length is unknown), the response as it
arrives from the mesh (chunks decoded here; the ASGI server frames it again for its client).
"""

from __future__ import annotations

import asyncio
import os
import socket
from asyncio import FIRST_COMPLETED
from typing import Any
from urllib.parse import quote

from devmesh.middleware.core import (
    BODY_CHUNK_BYTES,
    CONNECT_ATTEMPTS,
    CONNECT_RETRY_DELAY_S,
    ForwardProblem,
    MeshAddress,
    response_headers,
)
from devmesh.middleware.types import Message, Receive, Scope, Send

HEAD_LIMIT_BYTES = 64 * 1024
# After a write to the mesh failed, how long an answer it may have sent already is waited for.
EARLY_ANSWER_WAIT_S = 1.0
NO_BODY_STATUSES = frozenset({204, 304})


class MeshResponseError(Exception):
    """The mesh's response broke off or was not HTTP after its head reached the client."""


class ClientGone(Exception):
    """The client disconnected while its request body was being forwarded."""


def request_target(scope: Scope) -> bytes:
    raw_path = scope.get("raw_path")
    path = raw_path if isinstance(raw_path, bytes) and raw_path else quote(scope["path"]).encode()
    query = scope.get("query_string") or b""
    return path + b"?" + query if query else path


class _MeshProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, except for a connection lost with an error while the request is still
    being sent. A mesh that answers early (413) and closes makes the rest of the body fail to write;
    asyncio then closes the socket without reading what arrived meanwhile, and fails every read of what
    it had. Here the answer is read from the socket first and the response side ends like an EOF;
    what broke is kept in `send_error` (drain() still raises)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.reader = reader
        self.sending = True
        self.send_error: OSError | None = None
        self._socket: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._socket = transport.get_extra_info("socket")
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sending and isinstance(exc, OSError):
            self.send_error, exc = exc, None
            self._read_what_is_left()
        super().connection_lost(exc)

    def _read_what_is_left(self) -> None:
        """Hand the reader what the kernel still holds of the mesh's answer (the transport closes the
        socket right after this, unread)."""
        if self._socket is None:
            return
        try:
            spare = socket.socket(fileno=os.dup(self._socket.fileno()))
        except OSError:
            return
        with spare:
            spare.setblocking(False)
            while True:
                try:
                    data = spare.recv(BODY_CHUNK_BYTES)
                except OSError:  # nothing more now (BlockingIOError), or the reset itself
                    return
                if not data:
                    return
                self.reader.feed_data(data)


async def _open(mesh: MeshAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, _MeshProtocol]:
    """asyncio.open_connection with a _MeshProtocol."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=HEAD_LIMIT_BYTES)
    protocol = _MeshProtocol(reader)
    transport, _ = await loop.create_connection(lambda: protocol, mesh.host, mesh.port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop), protocol


async def _connect(
    mesh: MeshAddress, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, _MeshProtocol]:
    last: OSError | None = None
    for attempt in range(CONNECT_ATTEMPTS):
        if attempt:
            await asyncio.sleep(CONNECT_RETRY_DELAY_S)
        try:
            async with asyncio.timeout(timeout_s):
                return await _open(mesh)
        except OSError as error:
            last = error
    assert last is not None
    raise last


HeadFuture = asyncio.Future[tuple[int, list[tuple[str, str]]]]


def _refused(head: HeadFuture) -> bool:
    """True once the mesh answered with an error, or closed, before taking the whole body: the rest of
    the body is not sent (RFC 9112 §9.5) and the answer goes to the client. An early 2xx or 3xx does
    not stop the body."""
    if not head.done():
        return False
    if head.cancelled() or head.exception() is not None:
        return True
    return head.result()[0] >= 400


def _with_head(waiting: asyncio.Future[Any], head: HeadFuture) -> set[asyncio.Future[Any]]:
    """What to wait for: `waiting`, and the response head while it has not arrived."""
    return {waiting} if head.done() else {waiting, head}


async def _drained(writer: asyncio.StreamWriter, head: HeadFuture, timeout_s: float) -> bool:
    """Wait until the mesh took what was written: True; False when it refused the body first.

    Raises TimeoutError when it takes nothing for `timeout_s`, and the write's error when the connection
    broke."""
    drain = asyncio.ensure_future(writer.drain())
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if _refused(head):
                    return False
                await asyncio.wait(_with_head(drain, head), return_when=FIRST_COMPLETED)
                if drain.done():
                    drain.result()
                    return True
    finally:
        if not drain.done():
            drain.cancel()


async def _next_message(receive: Receive, head: HeadFuture) -> Message | None:
    """The client's next message, or None when the mesh refused the body while waiting for it."""
    if _refused(head):
        return None
    message = asyncio.ensure_future(receive())
    try:
        while True:
            await asyncio.wait(_with_head(message, head), return_when=FIRST_COMPLETED)
            if message.done():
                return message.result()
            if _refused(head):
                return None
    finally:
        if not message.done():
            message.cancel()


async def _send_body(
    writer: asyncio.StreamWriter,
    receive: Receive,
    first: bytes,
    more: bool,
    *,
    chunked: bool,
    head: HeadFuture,
    timeout_s: float,
) -> None:
    """Write the request body as the server hands it over, chunk-encoded when `chunked`; stop early when
    the mesh refuses it (`head`, the response being read meanwhile, is an error or the connection closed).
    Each write must be taken within `timeout_s` (TimeoutError)."""
    body, more_body = first, more
    while True:
        if body:
            writer.write(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
            if not await _drained(writer, head, timeout_s):
                return
        if not more_body:
            break
        message = await _next_message(receive, head)
        if message is None:
            return
        if message["type"] == "http.disconnect":
            raise ClientGone
        body, more_body = message.get("body", b""), message.get("more_body", False)
    if chunked:
        writer.write(b"0\r\n\r\n")
        await _drained(writer, head, timeout_s)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    """The status and headers of the final response (interim 1xx ones are skipped)."""
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            raise MeshResponseError("the mesh closed the connection before answering") from error
        except asyncio.LimitOverrunError as error:
            raise MeshResponseError(f"response head over {HEAD_LIMIT_BYTES} bytes") from error
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise MeshResponseError(f"not an HTTP response: {lines[0][:80]!r}")
        status = int(parts[1])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, separator, value = line.partition(":")
            if not separator:
                raise MeshResponseError(f"malformed header line {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        if 100 <= status < 200:
            continue
        return status, headers


async def _relay_body(
    reader: asyncio.StreamReader,
    headers: list[tuple[str, str]],
    send: Send,
    *,
    timeout_s: float,
) -> None:
    """Pass the response body to the client as it arrives, then end it."""

    async def read(count: int) -> bytes:
        async with asyncio.timeout(timeout_s):
            return await reader.read(count)

    async def read_exactly(count: int) -> bytes:
        try:
            async with asyncio.timeout(timeout_s):
                return await reader.readexactly(count)
        except asyncio.IncompleteReadError as error:
            raise MeshResponseError("the mesh's response broke off") from error

    async def read_line() -> bytes:
        try:
            async with asyncio.timeout(timeout_s):
                return await reader.readuntil(b"\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            raise MeshResponseError("the mesh's chunked response broke off") from error

    async def out(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    lowered = {name.lower(): value for name, value in headers}
    if "chunked" in lowered.get("transfer-encoding", "").lower():
        while True:
            size_line = await read_line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as error:
                raise MeshResponseError(f"bad chunk size {size_line[:40]!r}") from error
            if size == 0:
                while (await read_line()) != b"\r\n":  # trailers: not passed on
                    pass
                break
            remaining = size
            while remaining:
                data = await read_exactly(min(remaining, BODY_CHUNK_BYTES))
                remaining -= len(data)
                await out(data)
            await read_exactly(2)
    elif "content-length" in lowered:
        try:
            remaining = int(lowered["content-length"])
        except ValueError as error:
            raise MeshResponseError(f"bad Content-Length {lowered['content-length']!r}") from error
        while remaining > 0:
            data = await read(min(remaining, BODY_CHUNK_BYTES))
            if not data:
                raise MeshResponseError(f"the mesh's response broke off with {remaining} bytes to go")
            remaining -= len(data)
            await out(data)
    else:
        while data := await read(BODY_CHUNK_BYTES):
            await out(data)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def forward_http(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    mesh: MeshAddress,
    headers: list[tuple[str, str]],
    timeout_s: float,
) -> ForwardProblem | None:
    """Forward the request; None once the mesh's response went to the client, else why it could not be
    (nothing was sent to the client then: the caller answers with the problem).

    Raises MeshResponseError when the response breaks off after its head was sent (the server then
    drops the connection, so the client sees a truncated response, not a complete wrong one).
    """
    try:
        reader, writer, protocol = await _connect(mesh, timeout_s)
    except (OSError, TimeoutError) as error:
        return ForwardProblem.unreachable(error)
    try:
        first = await receive()
        if first["type"] == "http.disconnect":
            return None
        body, more = first.get("body", b""), first.get("more_body", False)
        method: str = scope["method"]
        length = next((value for name, value in scope["headers"] if name.lower() == b"content-length"), None)
        chunked = False
        framing: list[tuple[str, str]] = []
        if length is not None:
            framing.append(("Content-Length", length.decode("latin-1")))
        elif more:
            chunked = True
            framing.append(("Transfer-Encoding", "chunked"))
        elif body or method in ("POST", "PUT", "PATCH"):
            framing.append(("Content-Length", str(len(body))))
        lines = [method.encode("ascii") + b" " + request_target(scope) + b" HTTP/1.1\r\n"]
        for name, value in [*headers, *framing, ("Connection", "close")]:
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        lines.append(b"\r\n")
        writer.write(b"".join(lines))
        # The response is read while the body is sent: a mesh that answers early (413, 404, 503) and
        # closes gets its answer to the client instead of a broken write.
        head = asyncio.ensure_future(_read_head(reader))
        try:
            send_error: OSError | None = None
            try:
                await _send_body(writer, receive, body, more, chunked=chunked, head=head, timeout_s=timeout_s)
            except ClientGone:
                return None
            except OSError as error:  # ConnectionError, or TimeoutError: the mesh stopped reading
                send_error = protocol.send_error or error
            try:
                async with asyncio.timeout(timeout_s if send_error is None else EARLY_ANSWER_WAIT_S):
                    status, mesh_headers = await head
                # From here a connection lost with an error breaks the response (not an EOF). Until
                # now the end of the body may still have been in the transport's buffer.
                protocol.sending = False
            except (MeshResponseError, OSError) as error:  # OSError: TimeoutError, ConnectionError
                if isinstance(send_error, TimeoutError):
                    return ForwardProblem.body_stalled(timeout_s)
                if send_error is not None:
                    return ForwardProblem.send_failed(send_error)
                if isinstance(error, TimeoutError):
                    return ForwardProblem.timeout(timeout_s)
                return ForwardProblem.bad_response(error)
        finally:
            if not head.done():
                head.cancel()
            elif not head.cancelled():
                head.exception()  # retrieved: asyncio does not log it
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in response_headers(mesh_headers)
                ],
            }
        )
        if method == "HEAD" or status in NO_BODY_STATUSES:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return None
        try:
            await _relay_body(reader, mesh_headers, send, timeout_s=timeout_s)
        except (TimeoutError, ConnectionError) as error:
            raise MeshResponseError(f"the mesh's response broke off: {error!r}") from error
        return None
    finally:
        if writer.transport.get_write_buffer_size():
            # Body left unsent to a mesh that stopped reading: a close would wait for it forever.
            writer.transport.abort()
        else:
            writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
