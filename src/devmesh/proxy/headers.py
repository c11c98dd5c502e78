"""Header rewriting in both directions (RFC 9110 §7.6 and DESIGN §3 step 5).

Hot path: each function walks the header list once and builds the head as one bytes object.
"""

from __future__ import annotations

import random
import re

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop: they describe one connection, never the next one (RFC 9110 §7.6.1). Content-Length and
# Transfer-Encoding are framing: the proxy writes its own for each side.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)
# Request headers the proxy sets itself, from its own view of the request.
# X-DevMesh-Fault is the proxy's own: a request's fault is for the proxy, not for the service.
_REPLACED_ON_REQUEST = frozenset(
    {b"x-forwarded-proto", b"x-forwarded-host", b"x-devmesh-trace-id", b"traceparent", b"x-devmesh-fault"}
)
_APPENDED_ON_REQUEST = frozenset({b"x-forwarded-for", b"forwarded", b"via"})
_REPLACED_ON_RESPONSE = frozenset({b"x-devmesh-served-by", b"x-devmesh-trace-id", b"x-devmesh-fault"})

_TRACEPARENT_RE = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_TRACE_ID_RE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ZERO_TRACE = b"0" * 32


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names a `Connection` header lists, lowercased (they are hop-by-hop too)."""
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


# Connection tokens that name no other header: the usual values, seen on nearly every request.
_PLAIN_CONNECTION_VALUES = frozenset({b"keep-alive", b"close", b"upgrade", b"keep-alive, upgrade"})


def _named_by_connection(headers: Headers, connection: bytes | None) -> set[bytes] | None:
    """Header names that the Connection header lists beyond the usual tokens (they are hop-by-hop).

    `connection`: the value of the (last) Connection header, which the parsers note as they go, so the
    common case costs no pass over the headers.
    """
    if connection is None or connection.lower() in _PLAIN_CONNECTION_VALUES:
        return None
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= connection_tokens(value) - {b"keep-alive", b"close", b"upgrade"}
    return named


def trace_context(traceparent: bytes | None, trace_header: bytes | None) -> tuple[str, bytes, str]:
    """(trace id, traceparent to send upstream, the caller's span id or ""). The proxy is a span of the
    trace: an incoming W3C context keeps its trace id and flags and gets the proxy's own span id as
    parent; a request with only X-DevMesh-Trace-ID starts a context with that id where it is one;
    else a new trace starts."""
    if traceparent is not None:
        found = _TRACEPARENT_RE.match(traceparent.strip())
        if found is not None and found.group(1) != _ZERO_TRACE:
            trace_id = trace_header if trace_header and _TRACE_ID_RE.match(trace_header) else found.group(1)
            context = b"00-%b-%016x-%b" % (found.group(1), random.getrandbits(64), found.group(3))
            return trace_id.decode("ascii"), context, found.group(2).decode("ascii")
    if trace_header is not None and _TRACE_ID_RE.match(trace_header):
        trace_id = trace_header.decode("ascii")
        hex_id = (
            trace_id.lower()
            if re.fullmatch(r"[0-9a-fA-F]{32}", trace_id)
            else f"{random.getrandbits(128):032x}"
        )
        return trace_id, f"00-{hex_id}-{random.getrandbits(64):016x}-01".encode(), ""
    hex_id = f"{random.getrandbits(128):032x}"
    return hex_id, f"00-{hex_id}-{random.getrandbits(64):016x}-01".encode(), ""


def forwarded_for(client_ip: str) -> str:
    """A `Forwarded: for=` value: IPv6 addresses are quoted and bracketed (RFC 7239 §6)."""
    return f'"[{client_ip}]"' if ":" in client_ip else client_ip


def upstream_request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    host: bytes,
    client_ip: bytes,
    scheme: bytes,
    trace_id: bytes,
    traceparent: bytes,
    framing: bytes,
    upgrade: bytes | None,
    connection: bytes | None = None,
) -> bytes:
    """The request head sent to a service. `framing` is the Content-Length or Transfer-Encoding line(s)."""
    drop = HOP_BY_HOP
    forwarded_values: list[bytes] = []
    xff: list[bytes] = []
    via: list[bytes] = []
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    named = _named_by_connection(headers, connection)
    if named:
        headers = [(name, value) for name, value in headers if name.lower() not in named]
    for name, value in headers:
        lowered = name.lower()
        if lowered in drop or lowered in _REPLACED_ON_REQUEST:
            continue
        if lowered in _APPENDED_ON_REQUEST:
            if lowered == b"x-forwarded-for":
                xff.append(value)
            elif lowered == b"forwarded":
                forwarded_values.append(value)
            else:
                via.append(value)
            continue
        lines += (name, b": ", value, b"\r\n")
    xff.append(client_ip)
    via.append(b"1.1 devmesh")
    forwarded_values.append(
        b"for=" + forwarded_for(client_ip.decode()).encode() + b";host=" + host + b";proto=" + scheme
    )
    lines += (
        b"X-Forwarded-For: ",
        b", ".join(xff),
        b"\r\nX-Forwarded-Proto: ",
        scheme,
        b"\r\nX-Forwarded-Host: ",
        host,
        b"\r\nForwarded: ",
        b", ".join(forwarded_values),
        b"\r\nVia: ",
        b", ".join(via),
        b"\r\nX-DevMesh-Trace-ID: ",
        trace_id,
        b"\r\ntraceparent: ",
        traceparent,
        b"\r\n",
        framing,
    )
    if upgrade is not None:
        lines += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n\r\n")
    else:
        lines.append(b"\r\n")
    return b"".join(lines)


def client_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    framing: bytes,
    served_by: bytes,
    trace_id: bytes,
    connection: bytes | None,
    upgrade: bool = False,
    connection_header: bytes | None = None,
    fault: bytes = b"",
) -> bytes:
    """The response head sent to the client. `framing`: its Content-Length or Transfer-Encoding line;
    `connection`: a `Connection:` value to send (close, keep-alive), if any; `fault`: the faults that
    touched the response (X-DevMesh-Fault), if any."""
    lines = [b"HTTP/1.1 ", str(status).encode(), b" ", reason, b"\r\n"]
    via: list[bytes] = []
    named = _named_by_connection(headers, connection_header)
    if named:
        headers = [(name, value) for name, value in headers if name.lower() not in named]
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in _REPLACED_ON_RESPONSE:
            if upgrade and lowered == b"upgrade":
                lines += (name, b": ", value, b"\r\n")
            continue
        if lowered == b"via":
            via.append(value)
            continue
        lines += (name, b": ", value, b"\r\n")
    via.append(b"1.1 devmesh")
    lines += (
        framing,
        b"Via: ",
        b", ".join(via),
        b"\r\nX-DevMesh-Served-By: ",
        served_by,
        b"\r\nX-DevMesh-Trace-ID: ",
        trace_id,
        b"\r\n",
    )
    if fault:
        lines += (b"X-DevMesh-Fault: ", fault, b"\r\n")
    if upgrade:
        lines.append(b"Connection: Upgrade\r\n")
    elif connection is not None:
        lines += (b"Connection: ", connection, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def trailer_block(trailers: Headers) -> bytes:
    """The end of a chunked body: the last chunk, the trailer fields, the final CRLF."""
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for name, value in trailers:
        if name.lower() not in HOP_BY_HOP:
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def interim_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """A 1xx response (100 Continue, 103 Early Hints) as the client gets it."""
    lines = [b"HTTP/1.1 ", str(status).encode(), b" ", reason, b"\r\n"]
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
