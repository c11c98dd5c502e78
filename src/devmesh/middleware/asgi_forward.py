"""Forwarding one ASGI HTTP request to the devmesh proxy over a plain asyncio connection.

HTTP/1.1 with `Connection: close`: one connection per request keeps the client small (loopback
connects cost microseconds) and lets a response without a length end at EOF. Bodies stream both ways:
the request as it arrives from the server (chunked when its length is unknown), the response as it
arrives from the mesh (chunks decoded here; the ASGI server frames it again for its client).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from devmesh.middleware.core import (
    BODY_CHUNK_BYTES,
    CONNECT_ATTEMPTS,
    CONNECT_RETRY_DELAY_S,
    ForwardProblem,
    MeshAddress,
    response_headers,
)
from devmesh.middleware.types import Receive, Scope, Send

HEAD_LIMIT_BYTES = 64 * 1024
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


async def _connect(mesh: MeshAddress, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    last: OSError | None = None
    for attempt in range(CONNECT_ATTEMPTS):
        if attempt:
            await asyncio.sleep(CONNECT_RETRY_DELAY_S)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.open_connection(mesh.host, mesh.port, limit=HEAD_LIMIT_BYTES)
        except OSError as error:
            last = error
    assert last is not None
    raise last


async def _send_body(
    writer: asyncio.StreamWriter, receive: Receive, first: bytes, more: bool, *, chunked: bool
) -> None:
    """Write the request body as the server hands it over, chunk-encoded when `chunked`."""
    body, more_body = first, more
    while True:
        if body:
            writer.write(b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
            await writer.drain()
        if not more_body:
            break
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        body, more_body = message.get("body", b""), message.get("more_body", False)
    if chunked:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


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
        reader, writer = await _connect(mesh, timeout_s)
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
        try:
            await _send_body(writer, receive, body, more, chunked=chunked)
        except ClientGone:
            return None
        except (ConnectionError, OSError) as error:
            return ForwardProblem.unreachable(error)
        try:
            async with asyncio.timeout(timeout_s):
                status, mesh_headers = await _read_head(reader)
        except TimeoutError:
            return ForwardProblem.timeout(timeout_s)
        except (MeshResponseError, ConnectionError) as error:
            return ForwardProblem.bad_response(error)
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
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
