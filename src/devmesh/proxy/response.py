"""The response side of an exchange, driven by its upstream connection: the head re-framed for the
client (or a retry on the next endpoint), the body streamed (throttled under a bandwidth fault), the
end, and what happens when the service's connection upgrades, breaks, times out or leaves the mesh.

Functions of the exchange (its first argument), bound as methods of `Exchange` (`on_response_head =
response.on_response_head`): the upstream connection calls them as before, at the cost of a method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.faults.throttle import Throttle
from devmesh.proxy import headers as hdr
from devmesh.proxy.affinity import cookie_value
from devmesh.proxy.mirror_handoff import mirror_ready
from devmesh.proxy.request_head import CHUNKED

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange
    from devmesh.proxy.upstream import UpstreamConnection

RETRY_STATUSES = frozenset({502, 503, 504})


def on_response_head(
    ex: Exchange, upstream: UpstreamConnection, status: int, reason: bytes, headers: hdr.Headers
) -> None:
    client = ex.client
    if 100 <= status < 200 and status != 101:
        # Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients as they come.
        if ex.http_minor == 1 and not ex.response_started:
            client.write(hdr.interim_head(status, reason, headers))
        return
    upstream.deadline = 0.0
    if status in RETRY_STATUSES and ex._can_retry(sent=True):
        # Retried on the next endpoint once the parser is done with this response.
        ex.response_status = status
        upstream.after_feed("retry")
        return
    ex.response_head_done = True
    ex.response_status = status
    head_only = ex.method == b"HEAD" or status in (204, 304)
    framing = b""
    connection: bytes | None = None
    if status == 101:
        client.write(
            hdr.client_response_head(
                status,
                reason,
                headers,
                framing=b"",
                served_by=_served_by(ex),
                trace_id=ex.trace_id.encode(),
                connection=None,
                upgrade=True,
                connection_header=upstream.connection,
            )
        )
        ex.response_started = True
        return
    length = upstream.length
    upstream_chunked = upstream.chunked
    if head_only:
        if length is not None:
            framing = b"Content-Length: " + length + b"\r\n"
    elif length is not None and not upstream_chunked:
        framing = b"Content-Length: " + length + b"\r\n"
    elif ex.http_minor == 1:
        framing = CHUNKED
        ex.response_chunked = True
        ex.response_close_delimited = not upstream_chunked
    else:
        # An HTTP/1.0 client knows one way to find the end of an unknown-length body: the close.
        ex.response_close_delimited = not upstream_chunked
        ex.close_after = True
    if ex.upgrade is not None:
        ex.close_after = True  # the service refused to switch; the client may already have
    if not ex.body_complete:
        # The service answered before the request body ended: the rest of it will not be read,
        # so neither connection can carry another request.
        ex.close_after = True
    if ex.close_after or not ex.keep_alive:
        connection = b"close"
        ex.close_after = True
    elif ex.http_minor == 0:
        connection = b"keep-alive"
    fault = ex.fault
    if fault is not None and fault.bandwidth is not None and not head_only:
        ex.throttle = Throttle(
            client.server.loop,
            fault.bandwidth,
            write=client.write,
            pause=upstream.pause_reading,
            resume=upstream.resume_reading,
        )
    if ex.sticky_cookie is not None and ex.endpoint is not None:
        chosen = ex.client.server.sticky_id(ex.endpoint)
        if cookie_value(ex.cookie, ex.sticky_cookie) != chosen:
            cookie = f"{ex.sticky_cookie}={chosen}; Path=/; HttpOnly; SameSite=Lax".encode()
            headers = [*headers, (b"Set-Cookie", cookie)]
    client.write(
        hdr.client_response_head(
            status,
            reason,
            headers,
            framing=framing,
            served_by=_served_by(ex),
            trace_id=ex.trace_id.encode(),
            fault=fault.label.encode("latin-1") if fault is not None else b"",
            connection=connection,
            connection_header=upstream.connection,
        )
    )
    ex.response_started = True
    if ex.mirror is not None:
        mirror_ready(ex)
    if ex.method == b"HEAD":
        # httptools cannot be told the response has no body: end it once the parser returns.
        upstream.after_feed("head-done")


def on_response_body(ex: Exchange, body: bytes) -> None:
    if not ex.response_head_done or ex.done:
        return
    ex.response_bytes += len(body)
    frame = b"%x\r\n%b\r\n" % (len(body), body) if ex.response_chunked else body
    if ex.throttle is not None:
        ex.throttle.push(frame)
    else:
        ex.client.write(frame)


def on_response_end(ex: Exchange, upstream: UpstreamConnection) -> None:
    if not ex.response_head_done or ex.response_status == 101:
        return  # the end of an interim response, of one being retried, or a switch of protocols
    reusable = upstream.parser.should_keep_alive() and ex.body_complete
    throttle = ex.throttle
    if throttle is not None and not throttle.idle:
        # The service is done; the client gets the rest at the fault's rate, from memory.
        ex.upstream = None
        ex._release(upstream, reusable=reusable)
        throttle.finish(ex._end_response)
        return
    end_response(ex, upstream, reusable=reusable)


def end_response(ex: Exchange, upstream: UpstreamConnection | None = None, *, reusable: bool = False) -> None:
    if ex.done:
        return
    if ex.response_chunked:
        ex.client.write(hdr.trailer_block(ex.response_trailers))
    ex._finish(upstream, reusable=reusable)


def after_upstream_feed(ex: Exchange, upstream: UpstreamConnection, action: str) -> None:
    if action == "retry":
        status = ex.response_status
        ex.upstream = None
        upstream.exchange = None
        upstream.close()
        ex._failed(f"{ex._where()}: answered {status}", sent=True)
    elif action == "head-done" and not ex.done:
        reusable = upstream.parser.should_keep_alive() and ex.body_complete
        upstream.reset_parser()
        ex._finish(upstream, reusable=reusable)


def on_upstream_upgraded(ex: Exchange, upstream: UpstreamConnection, rest: bytes) -> None:
    """101 from the service: from now on both connections are one byte tunnel."""
    if ex.response_status != 101 or ex.client.closed:
        upstream.close()
        return
    ex.client.server.pool.not_busy(upstream)
    upstream.exchange = None
    upstream.deadline = 0.0
    ex.upstream = None
    ex._log()
    ex.done = True
    ex.client.start_tunnel(upstream, rest)


def on_upstream_invalid(ex: Exchange, upstream: UpstreamConnection, reason: str) -> None:
    ex.upstream = None
    upstream.exchange = None
    if ex.response_started:
        ex._abort()
        return
    ex._failed(f"{ex._where()}: invalid response ({reason})", sent=True)


def on_upstream_lost(ex: Exchange, upstream: UpstreamConnection, exc: Exception | None) -> None:
    ex.upstream = None
    if ex.done:
        return
    if ex.response_started:
        if ex.response_close_delimited:
            # The end of a body delimited by the close: a normal end.
            if ex.response_chunked:
                ex.client.write(hdr.trailer_block(ex.response_trailers))
            ex._finish(None, reusable=False)
        else:
            ex._abort()  # reset mid-body: the client must not take a truncated body for a whole one
        return
    if upstream.reused and ex._can_resend(sent=True):
        # A pooled connection the service had just closed: not the service's fault, try afresh.
        endpoint = ex.endpoint
        if endpoint is not None:
            ex.attempt -= 1
            ex._send_to(endpoint)
            return
    ex._failed(f"{ex._where()}: connection closed before a response", sent=True)


def on_endpoint_gone(ex: Exchange) -> None:
    """Its endpoint left the route table mid-request (the connection is already dropped): route
    again from the current snapshot when that is safe, else end the request."""
    ex.upstream = None
    if ex.done:
        return
    if ex.response_started:
        ex._abort()
        return
    if ex._can_resend(sent=True):
        ex.client.server.loop.call_soon(ex.start)
        return
    ex._failed(f"{ex._where()}: left the mesh", sent=True)


def on_upstream_timeout(ex: Exchange, upstream: UpstreamConnection) -> None:
    upstream.abort()
    ex.upstream = None
    if ex.response_started:
        ex._abort()
        return
    timeout = ex.client.server.timeout_s
    ex.client.server.stats.upstream_error(ex.view.name if ex.view is not None else "-")
    ex.tried.append(f"{ex._where()}: no response in {timeout:g} s")
    ex._service_page(
        504,
        "Gateway timeout",
        f"did not answer within {timeout:g} s.",
        "raise [proxy] timeout in devmesh.toml if it is expected to be this slow",
    )


def _served_by(ex: Exchange) -> bytes:
    endpoint = ex.endpoint
    return b"devmesh" if endpoint is None else ex.client.server.served_by(endpoint)
