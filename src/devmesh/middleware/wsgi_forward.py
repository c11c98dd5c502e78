"""Forwarding one WSGI request to the devmesh proxy with `http.client`, bodies streamed both ways.

The request body is read from `wsgi.input` in pieces as it is sent (chunk-encoded when the server gives
no length); the response body is handed to the WSGI server piece by piece as it arrives, and the
connection closes when the server closes the iterable.
"""

from __future__ import annotations

import http.client
import selectors
import socket
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

# After a send to the mesh failed, how long an answer it may have sent already is waited for.
EARLY_ANSWER_WAIT_S = 1.0
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


class _AnswerWatch:
    """Sees whether the mesh answered with an error (or closed) while the request body is still being
    sent, by peeking at the socket between two pieces: then the rest is not sent (RFC 9112 §9.5) and the
    answer goes to the client, instead of a broken write or a send blocked on a mesh that stopped
    reading. An interim, 2xx or 3xx answer does not stop the body (nor is looked for again)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._watching = True

    def refused(self) -> bool:
        if not self._watching or not self._selector.select(0):
            return False
        try:
            seen = self._sock.recv(16, socket.MSG_PEEK)
        except OSError:
            return True  # reset: whatever it sent is read next, or the error reported
        if not seen:
            return True  # closed without a word
        parts = seen.split(b" ", 2)
        if len(parts) < 3:
            return False  # not all of the status line yet: look again before the next piece
        if parts[1].isdigit() and int(parts[1]) >= 400:
            return True
        self._watching = False
        return False

    def close(self) -> None:
        self._selector.close()


def _send_body(connection: http.client.HTTPConnection, source: IO[bytes], length: int | None) -> None:
    """Send exactly `length` bytes of `source`, or, with no length, all of it chunk-encoded; stop early
    when the mesh answered with an error meanwhile (its answer is then read as usual)."""
    assert connection.sock is not None
    watch = _AnswerWatch(connection.sock)
    try:
        if length is not None:
            remaining = length
            while remaining > 0:
                data = source.read(min(remaining, BODY_CHUNK_BYTES))
                if not data or watch.refused():
                    return
                remaining -= len(data)
                connection.send(data)
            return
        while data := source.read(BODY_CHUNK_BYTES):
            if watch.refused():
                return
            connection.send(b"%x\r\n%b\r\n" % (len(data), data))
        connection.send(b"0\r\n\r\n")
    finally:
        watch.close()


def _early_answer(
    connection: http.client.HTTPConnection, timeout_s: float
) -> http.client.HTTPResponse | None:
    """After a send to the mesh failed: the answer it may have sent already, or None."""
    sock = connection.sock
    if sock is None:
        return None
    try:
        sock.settimeout(min(timeout_s, EARLY_ANSWER_WAIT_S))
        response = connection.getresponse()
        sock.settimeout(timeout_s)  # the body is read through the same socket
        return response
    except (OSError, http.client.HTTPException):
        return None


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
            try:
                _send_body(connection, environ["wsgi.input"], length)
            except OSError as error:  # the mesh stopped reading: it may have answered already
                early = _early_answer(connection, timeout_s)
                if early is None:
                    connection.close()
                    if isinstance(error, TimeoutError):
                        return ForwardProblem.body_stalled(timeout_s)
                    return ForwardProblem.send_failed(error)
                return _streamed(connection, early)
        response = connection.getresponse()
    except TimeoutError:
        connection.close()
        return ForwardProblem.timeout(timeout_s)
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        return ForwardProblem.bad_response(error)
    return _streamed(connection, response)


def _streamed(
    connection: http.client.HTTPConnection, response: http.client.HTTPResponse
) -> tuple[str, list[tuple[str, str]], StreamedResponse]:
    status = f"{response.status} {response.reason or http.client.responses.get(response.status, '')}"
    return status.strip(), response_headers(response.getheaders()), StreamedResponse(connection, response)
