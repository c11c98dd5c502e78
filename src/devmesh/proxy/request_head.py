"""The request as the service gets it: an absolute-form target turned into a path and a Host, the head
written for the service, and the body's framing line (the proxy re-frames, never copies the client's).

Functions of the exchange (its first argument); the header rules themselves are in `headers.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.proxy import headers as hdr
from devmesh.proxy.pages import ErrorPage

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange

CHUNKED = b"Transfer-Encoding: chunked\r\n"


def absolute_form(ex: Exchange) -> bool:
    """`GET http://api.localhost/x HTTP/1.1` (a client told to use devmesh as its HTTP proxy):
    the host in the target wins over the Host header (RFC 9112 §3.2.2)."""
    target = ex.target
    lowered = target[:8].lower()
    if not (lowered.startswith(b"http://") or lowered.startswith(b"https://")):
        ex.respond_error(ErrorPage(400, "Bad Request", "The request target must be a path or a URL."))
        return False
    rest = target.split(b"://", 1)[1]
    slash = rest.find(b"/")
    authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
    ex.host_raw = authority
    ex.target = path
    # The service must see the host the request was routed by (RFC 9112 §3.2.2).
    ex.headers = [(name, value) for name, value in ex.headers if name.lower() != b"host"]
    ex.headers.insert(0, (b"Host", authority))
    return True


def request_head(ex: Exchange, *, host: bytes | None = None) -> bytes:
    """The head for the service; `host`: the Host a remote fallback expects instead of the client's
    (X-Forwarded-Host keeps the client's)."""
    client = ex.client
    headers = ex.headers
    if host is not None:
        headers = [(b"Host", host), *((n, v) for n, v in headers if n.lower() != b"host")]
    return hdr.upstream_request_head(
        ex.method,
        ex.target,
        headers,
        host=ex.host_raw or b"",
        client_ip=client.client_ip,
        scheme=client.scheme,
        trace_id=ex.trace_id.encode(),
        traceparent=ex.traceparent or b"",
        framing=framing(ex),
        upgrade=ex.upgrade,
        connection=ex.connection_header,
    )


def framing(ex: Exchange) -> bytes:
    """The body's framing line for the service: the proxy re-frames, never copies the client's."""
    if ex.chunked:
        return CHUNKED
    if ex.content_length is not None:
        return b"Content-Length: " + ex.content_length + b"\r\n"
    return b""
