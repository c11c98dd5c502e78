"""Forwarding one WSGI request to the devmesh proxy with `http.client`, bodies streamed both ways.

The request body is read from `wsgi.input` in pieces as it is sent (chunk-encoded when the server gives
no length); the response body is handed to the WSGI server piece by piece as it arrives, and the
connection closes when the server closes the iterable.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from typing import IO
from urllib.parse import quote

from devmesh.middleware.core import (
    BODY_CHUNK_BYTES,
    CONNECT_ATTEMPTS,
    CONNECT_RETRY_DELAY_S,
    ForwardProblem,
    MeshAddress,
    response_headers,
)
from devmesh.middleware.types import WSGIEnvironment

# PEP 3333: these come without the HTTP_ prefix.
_UNPREFIXED = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def environ_headers(environ: WSGIEnvironment) -> list[tuple[str, str]]:
    """The request headers of a WSGI environ, with their usual capitalization."""
    headers: list[tuple[str, str]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers.append(("-".join(part.capitalize() for part in key[5:].split("_")), str(value)))
        elif key in _UNPREFIXED and value:
            headers.append((_UNPREFIXED[key], str(value)))
    return headers


def request_target(environ: WSGIEnvironment) -> str:
    """The path and query as sent by the client (PEP 3333 keeps the path as latin-1-decoded bytes)."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    target = quote(path.encode("latin-1"), safe="/:@!$&'()*+,;=~") or "/"
    query = environ.get("QUERY_STRING", "")
    return f"{target}?{query}" if query else target


class StreamedResponse:
    """The mesh's response body as a WSGI iterable; `close()` (called by every WSGI server) closes the
    connection, so a client that goes away does not leave it open."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        while True:
            data = self._response.read1(BODY_CHUNK_BYTES)
            if not data:
                return
            yield data

    def close(self) -> None:
        self._response.close()
        self._connection.close()


def _connect(mesh: MeshAddress, timeout_s: float) -> http.client.HTTPConnection:
    last: OSError | None = None
    for attempt in range(CONNECT_ATTEMPTS):
        if attempt:
            time.sleep(CONNECT_RETRY_DELAY_S)
        connection = http.client.HTTPConnection(mesh.host, mesh.port, timeout=timeout_s)
        try:
            connection.connect()
            return connection
        except OSError as error:
            connection.close()
            last = error
    assert last is not None
    raise last


def _send_body(connection: http.client.HTTPConnection, source: IO[bytes], length: int | None) -> None:
    """Send exactly `length` bytes of `source`, or, with no length, all of it chunk-encoded."""
    if length is not None:
        remaining = length
        while remaining > 0:
            data = source.read(min(remaining, BODY_CHUNK_BYTES))
            if not data:
                break
            remaining -= len(data)
            connection.send(data)
        return
    while data := source.read(BODY_CHUNK_BYTES):
        connection.send(b"%x\r\n%b\r\n" % (len(data), data))
    connection.send(b"0\r\n\r\n")


def forward_wsgi(
    environ: WSGIEnvironment,
    *,
    mesh: MeshAddress,
    headers: list[tuple[str, str]],
    timeout_s: float,
) -> tuple[str, list[tuple[str, str]], StreamedResponse] | ForwardProblem:
    """Send the request to the mesh; its status line, headers and streamed body, or why it failed (then
    nothing reached the client)."""
    try:
        connection = _connect(mesh, timeout_s)
    except OSError as error:
        return ForwardProblem.unreachable(error)
    method = environ.get("REQUEST_METHOD", "GET")
    raw_length = environ.get("CONTENT_LENGTH") or ""
    length = int(raw_length) if raw_length.strip().isdigit() else None
    # Without a length, a body is there only where the server says the input ends by itself (chunked).
    chunked = length is None and bool(environ.get("wsgi.input_terminated"))
    try:
        connection.putrequest(method, request_target(environ), skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        if length is not None:
            connection.putheader("Content-Length", str(length))
        elif chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.putheader("Connection", "close")
        connection.endheaders()
        if length or chunked:
            _send_body(connection, environ["wsgi.input"], length)
        response = connection.getresponse()
    except TimeoutError:
        connection.close()
        return ForwardProblem.timeout(timeout_s)
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        return ForwardProblem.bad_response(error)
    status = f"{response.status} {response.reason or http.client.responses.get(response.status, '')}"
    return status.strip(), response_headers(response.getheaders()), StreamedResponse(connection, response)
