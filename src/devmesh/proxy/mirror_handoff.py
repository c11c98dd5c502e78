"""The exchange's side of shadow traffic: the copy of a request for its service's `mirror` is started
while the request is routed, filled as its body arrives, and handed to the `MirrorSender` once.

Functions of the exchange (its first argument) rather than methods, so the hot path keeps one class
(`Exchange`, slotted) and pays the same for a call; `mirror.py` holds the copy and the sender.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.mesh.snapshot import Endpoint, Origin
from devmesh.proxy import headers as hdr
from devmesh.proxy.mirror import MirrorCopy
from devmesh.proxy.request_head import framing

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange

# Not passed to a mirror: its own Host is written; the body is sent at once (no 100-continue to wait
# for); a client's X-DevMesh-Mirror would be a second one.
_NOT_MIRRORED = frozenset({b"host", b"expect", b"x-devmesh-mirror"})


def begin_mirror(ex: Exchange, endpoint: Endpoint) -> None:
    """Start the copy of this request for the service's mirror (it leaves in `mirror_ready`). A
    request that is itself a copy is not copied again (no loops)."""
    for name, _value in ex.headers:
        if len(name) == 16 and name.lower() == b"x-devmesh-mirror":
            return
    limit = ex.client.server.limits.mirror_max_body_bytes
    copy = ex.mirror = MirrorCopy(endpoint, limit)
    if ex.content_length is not None and int(ex.content_length) > limit:
        copy.too_large = True
    else:
        for frame in ex.pending:  # body that arrived while the request waited its turn
            copy.add(frame)
    copy.complete = ex.body_complete
    mirror_ready(ex)


def mirror_ready(ex: Exchange, *, held: bool = False) -> None:
    """Send the copy once its request is complete and the real response has begun, or the exchange
    has ended however it ended (`held`: or the real request is held, by a delay fault or a wait for
    its service to start). So the copy's work comes after the real answer is on its way, never
    before it; a copy is sent once."""
    copy = ex.mirror
    if copy is None or copy.sent or ex.view is None:
        return
    if held:
        copy.held = True  # from now on, it goes as soon as the request is whole
    if not copy.complete or not (ex.response_started or ex.done or copy.held):
        return
    copy.sent = True
    server = ex.client.server
    if copy.too_large:
        server.stats.mirror(ex.view.name, "too_large")
        return
    server.loop.call_soon(mirror_out, ex, copy)


def mirror_out(ex: Exchange, copy: MirrorCopy) -> None:
    """The copy, as the mirror gets it: the request's method, target and headers, Host rewritten to
    the mirror's own name (a peer gets the client's, as for routed requests), `X-DevMesh-Mirror: 1`,
    the same body; signed for a peer."""
    view = ex.view
    assert view is not None
    server = ex.client.server
    endpoint = copy.endpoint
    frames, copy.frames = copy.frames, []
    host = endpoint.host_header.encode("latin-1") if endpoint.host_header else ex.host_raw or b""
    headers = [
        (b"Host", host),
        *((n, v) for n, v in ex.headers if n.lower() not in _NOT_MIRRORED),
        (b"X-DevMesh-Mirror", b"1"),
    ]
    head = hdr.upstream_request_head(
        ex.method,
        ex.target,
        headers,
        host=ex.host_raw or b"",
        client_ip=ex.client.client_ip,
        scheme=ex.client.scheme,
        trace_id=ex.trace_id.encode(),
        traceparent=ex.traceparent or b"",
        framing=framing(ex),
        upgrade=None,
        connection=ex.connection_header,
    )
    if endpoint.origin is Origin.PEER:
        head = head[:-2] + server.peer_headers(ex.method, ex.target, endpoint.service) + b"\r\n"
    server.mirror.send(
        view.name,
        endpoint,
        b"".join([head, *frames]) if frames else head,
        head_only=ex.method == b"HEAD",
    )
