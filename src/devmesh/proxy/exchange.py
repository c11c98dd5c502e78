"""One request and its response, from the client's first header to the last byte sent back.

The exchange routes the request, tries endpoints in order (retrying where that is safe), streams the body
both ways with back-pressure, and answers with an error page when nothing can serve it. It is driven by
callbacks from the client connection (request side) and the upstream connection (response side).

`Exchange` is the one slotted class of the request path; its parts live beside it as functions that take
the exchange first (a call costs what a method call does): the response side (`response.py`, bound as
methods), the request head for the service (`request_head.py`), session affinity (`affinity.py`), fault
injection (`injection.py`), the mirror copy's hand-off (`mirror_handoff.py`) and requests on the mesh
port (`mesh_port.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from devmesh.faults.policy import FaultDecision
from devmesh.faults.throttle import Throttle
from devmesh.mesh.snapshot import Endpoint, Origin, RunState, ServiceView
from devmesh.proxy import headers as hdr
from devmesh.proxy import response
from devmesh.proxy.affinity import sticky_first
from devmesh.proxy.injection import inject
from devmesh.proxy.mesh_port import start_from_peer
from devmesh.proxy.mirror import MirrorCopy
from devmesh.proxy.mirror_handoff import begin_mirror, mirror_ready
from devmesh.proxy.observe import RequestRecord
from devmesh.proxy.pages import ErrorPage, response_bytes
from devmesh.proxy.request_head import absolute_form, request_head
from devmesh.routing.table import apply_pin, describe_unavailable, parse_pin

if TYPE_CHECKING:
    from devmesh.proxy.client import ClientConnection
    from devmesh.proxy.upstream import UpstreamConnection

# Safe to send twice (RFC 9110 §9.2.2): only these are retried on another endpoint.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_TWO_HOSTS = b"\x00two"  # never a valid host: marks a request with two Host headers


class Exchange:
    __slots__ = (
        "accept",
        "attempt",
        "body_complete",
        "candidates",
        "chunked",
        "client",
        "close_after",
        "connection_header",
        "content_length",
        "cookie",
        "done",
        "endpoint",
        "fault",
        "fault_header",
        "fault_timer",
        "headers",
        "headers_done",
        "host",
        "host_raw",
        "http_minor",
        "keep_alive",
        "method",
        "mirror",
        "parent_span",
        "peer_checked",
        "pending",
        "pending_bytes",
        "replay",
        "replay_bytes",
        "request_bytes",
        "request_head",
        "response_bytes",
        "response_chunked",
        "response_close_delimited",
        "response_head_done",
        "response_started",
        "response_status",
        "response_trailers",
        "retries_left",
        "route_pin",
        "started",
        "sticky_cookie",
        "target",
        "throttle",
        "trace_header",
        "trace_id",
        "traceparent",
        "trailers",
        "tried",
        "unsupported_coding",
        "upgrade",
        "upstream",
        "view",
        "wait_deadline",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.started = time.monotonic()
        self.method = b""
        self.target = b""
        self.headers: hdr.Headers = []
        self.headers_done = False
        self.http_minor = 1
        self.keep_alive = True
        self.trailers: hdr.Headers = []
        self.host_raw: bytes | None = None
        self.host = ""
        self.accept: bytes | None = None
        self.trace_header: bytes | None = None
        self.route_pin: bytes | None = None
        self.traceparent: bytes | None = None
        self.trace_id = ""
        self.parent_span = ""  # the caller's span id, from its traceparent
        self.chunked = False
        self.unsupported_coding: bytes | None = None
        self.content_length: bytes | None = None
        self.upgrade: bytes | None = None
        self.connection_header: bytes | None = None
        self.cookie: bytes | None = None
        self.sticky_cookie: str | None = None  # the cookie that keeps this client on one endpoint
        self.body_complete = False
        self.request_bytes = 0
        self.response_bytes = 0
        # Request bytes (head, then body frames) not yet written to an upstream connection.
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        # Everything sent upstream, kept while it fits so that a retry can send it again.
        self.replay: list[bytes] | None = None
        self.replay_bytes = 0
        self.request_head = b""
        self.view: ServiceView | None = None
        self.candidates: list[Endpoint] = []
        self.attempt = 0
        self.retries_left = 0
        self.endpoint: Endpoint | None = None
        self.upstream: UpstreamConnection | None = None
        self.tried: list[str] = []
        self.response_head_done = False
        self.response_started = False
        self.response_status = 0
        self.response_chunked = False
        self.response_close_delimited = False
        self.response_trailers: hdr.Headers = []
        self.close_after = False
        self.done = False
        self.wait_deadline = 0.0
        self.peer_checked = False
        self.fault_header: bytes | None = None  # X-DevMesh-Fault, honoured with allow_fault_header
        self.fault: FaultDecision | None = None  # the faults that touch this request
        self.fault_timer: asyncio.TimerHandle | None = None
        self.throttle: Throttle | None = None
        self.mirror: MirrorCopy | None = None  # the copy for the service's `mirror`, while it is collected

    # -- request side (called by the client connection) ---------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        """Remember what routing, framing and tracing need; every header is kept to forward."""
        self.headers.append((name, value))
        if len(name) > 15:
            lowered = name.lower()
            if lowered == b"transfer-encoding":
                self.chunked = True
                if value.strip().lower() != b"chunked":
                    # gzip, chunked and the like: the service would take coded bytes for the body.
                    self.unsupported_coding = value
            elif lowered == b"x-devmesh-trace-id":
                self.trace_header = value
        else:
            lowered = name.lower()
            if lowered == b"host":
                # Two Host headers: the service may read the other one than the proxy routed on.
                self.host_raw = value if self.host_raw is None else _TWO_HOSTS
            elif lowered == b"accept":
                self.accept = value
            elif lowered == b"content-length":
                self.content_length = value
            elif lowered == b"traceparent":
                self.traceparent = value
            elif lowered == b"upgrade":
                self.upgrade = value
            elif lowered == b"connection":
                self.connection_header = value
            elif lowered == b"x-devmesh-fault":
                self.fault_header = value
            elif lowered == b"x-devmesh-route":
                self.route_pin = value
            elif lowered == b"cookie":
                self.cookie = value if self.cookie is None else self.cookie + b"; " + value

    def on_request_body(self, body: bytes) -> None:
        frame = b"%x\r\n%b\r\n" % (len(body), body) if self.chunked else body
        mirror = self.mirror
        if mirror is not None:
            mirror.add(frame)  # the copy holds the same bytes object: no second buffer
        if self.done:
            return
        self.request_bytes += len(body)
        self._send_upstream(frame)

    def on_request_end(self) -> None:
        self.body_complete = True
        mirror = self.mirror
        if self.chunked:
            tail = hdr.trailer_block(self.trailers)
            if mirror is not None:
                mirror.add(tail)
            if not self.done:
                self._send_upstream(tail)
        if mirror is not None:
            mirror.complete = True
            mirror_ready(self)

    def _send_upstream(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            self.replay_bytes += len(data)
            if self.replay_bytes > self.client.server.replay_limit:
                self.replay = None  # too big to retry with; it streams through as it comes
            else:
                replay.append(data)
        upstream = self.upstream
        if upstream is not None:
            self.client.write_upstream(upstream, data)
        else:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > self.client.server.buffer_high:
                self.client.pause_reading()

    # -- routing and connecting ---------------------------------------------------------------------

    def start(self) -> None:
        """Route the request (its headers are complete) and send it on its way."""
        client = self.client
        server = client.server
        target = self.target
        if self.method == b"CONNECT":
            self.respond_error(
                ErrorPage(
                    405, "Method not allowed", "devmesh is a reverse proxy; it does not tunnel CONNECT."
                )
            )
            return
        if self.unsupported_coding is not None:
            coding = self.unsupported_coding.decode("latin-1")
            self.respond_error(
                ErrorPage(
                    501, "Not implemented", f"Transfer-Encoding {coding!r}: devmesh accepts only chunked."
                )
            )
            return
        if target[:1] != b"/" and not absolute_form(self):
            return
        if self.host_raw is None:
            if self.http_minor == 1:
                self.respond_error(ErrorPage(400, "Bad Request", "HTTP/1.1 requests need a Host header."))
                return
            self.host_raw = b""
        host = server.host_name(self.host_raw)
        if host is None:
            message = (
                "The request has two Host headers."
                if self.host_raw is _TWO_HOSTS
                else "The Host header is not a host name with an optional port."
            )
            self.host_raw = b""
            self.respond_error(ErrorPage(400, "Bad Request", message))
            return
        self.host = host
        self.trace_id, self.traceparent, self.parent_span = hdr.trace_context(
            self.traceparent, self.trace_header
        )
        if server.mesh is not None:
            start_from_peer(self)
            return
        table = server.route_table()
        path = self.target.decode("latin-1")
        view = table.match(host, path)
        if view is None:
            self.respond_error(
                ErrorPage(
                    404,
                    "No such service",
                    f"No service of the mesh answers to {host or 'this host'!r}.",
                    hint="use one of the hosts below, or add the name to `hosts` of a service in devmesh.toml",
                    hosts=table.known_hosts(),
                )
            )
            return
        self.view = view
        endpoints = server.endpoints_for(view)
        if view.sticky == "cookie" and len(endpoints) > 1:
            endpoints = sticky_first(self, view, endpoints)
        if self.route_pin is not None:
            pin = parse_pin(self.route_pin.decode("latin-1"))
            if pin is None:
                self.respond_error(
                    ErrorPage(400, "Bad Request", "X-DevMesh-Route must be local, remote or peer=ID.")
                )
                return
            endpoints = apply_pin(endpoints, pin)
            if not endpoints:
                where = ", ".join(sorted({e.peer_id or e.origin.value for e in view.endpoints})) or "nowhere"
                self.respond_error(
                    ErrorPage(
                        503,
                        "Service unavailable",
                        f"X-DevMesh-Route: {pin} allows no endpoint of {view.name} (it runs: {where}).",
                        hint="drop the header, or pin to one of those; `devmesh peers` lists the peers",
                        service=view.name,
                    )
                )
                return
        if view.mirror is not None and self.mirror is None and self.upgrade is None:
            begin_mirror(self, view.mirror)  # before faults: they never apply to the copy
        faults = server.state.snapshot.faults.get(view.name)
        if (faults is not None or self.fault_header is not None) and inject(self, view, endpoints, faults):
            return
        self._forward(view, endpoints)

    def _forward(self, view: ServiceView, endpoints: list[Endpoint]) -> None:
        server = self.client.server
        if not endpoints and view.state == RunState.STARTING:
            server.wait_for_start(self, view.name)
            if self.mirror is not None:
                mirror_ready(self, held=True)
            return
        if not endpoints:
            message, hint = describe_unavailable(view)
            self.respond_error(ErrorPage(503, "Service unavailable", message, hint=hint, service=view.name))
            return
        self.candidates = endpoints
        if self.attempt == 0:
            self.retries_left = server.retries
            if self.upgrade is None and self.pending_bytes <= server.replay_limit:
                # Body that arrived while the request waited its turn counts toward what a retry resends.
                self.replay = list(self.pending)
                self.replay_bytes = self.pending_bytes
        self.request_head = request_head(self)
        self._send_to(endpoints[0])

    def still_starting(self, waited_s: float) -> None:
        self._service_page(
            503,
            "Service unavailable",
            f"is still starting after {waited_s:g} s.",
            "see `devmesh logs {name}`; `devmesh status` shows its state and health",
        )

    def _service_page(self, status: int, title: str, message: str, hint: str) -> None:
        """An error page about this request's service: its name leads the message and fills the hint."""
        view = self.view
        name = view.name if view is not None else "the service"
        self.respond_error(
            ErrorPage(
                status,
                title,
                f"{name} {message}",
                hint=hint.format(name=name),
                service=view.name if view is not None else None,
                tried=self.tried,
            )
        )

    def _send_to(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.attempt += 1
        pool = self.client.server.pool
        upstream = pool.acquire((endpoint.host, endpoint.port))
        if upstream is not None:
            self._attach(upstream)
        else:
            self.client.server.spawn(self._connect(endpoint))

    async def _connect(self, endpoint: Endpoint) -> None:
        pool = self.client.server.pool
        try:
            upstream = await pool.connect(
                (endpoint.host, endpoint.port), tls=endpoint.tls, peer=endpoint.origin is Origin.PEER
            )
        except (OSError, TimeoutError) as error:
            if self.done:
                return
            reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
            self._failed(
                f"{endpoint.origin.value} {endpoint.authority}: cannot connect ({reason.lower()})", sent=False
            )
            return
        if self.done:
            pool.release(upstream)
            return
        self._attach(upstream)

    def _attach(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        upstream.exchange = self
        upstream.deadline = self.client.server.loop.time() + self.client.server.timeout_s
        head = self.request_head
        endpoint = self.endpoint
        if endpoint is not None and endpoint.host_header is not None:
            head = request_head(self, host=endpoint.host_header.encode("latin-1"))
        if endpoint is not None and endpoint.origin is Origin.PEER:
            head = (
                head[:-2]
                + self.client.server.peer_headers(self.method, self.target, endpoint.service)
                + b"\r\n"
            )
        # `replay`, while kept, holds every body byte received so far, `pending` only the unsent ones.
        body = self.replay if self.replay is not None else self.pending
        data = b"".join([head, *body]) if body else head
        self.pending = []
        if self.pending_bytes:
            self.pending_bytes = 0
            self.client.resume_reading()
        self.client.write_upstream(upstream, data)

    def _failed(self, reason: str, *, sent: bool) -> None:
        """This endpoint did not answer usefully: try the next one, or say what was tried.

        `sent`: the service may have acted on the request. Then only idempotent methods are tried again;
        a request that never left (connection refused) is safe to send elsewhere whatever its method.
        """
        self.tried.append(reason)
        server = self.client.server
        stats = server.stats
        service = self.view.name if self.view is not None else "-"
        stats.upstream_error(service)
        if self._can_retry(sent=sent):
            stats.retry(service)
            self.retries_left -= 1
            self._send_to(self.candidates[self.attempt % len(self.candidates)])
            return
        current = server.state.snapshot.services.get(service)
        if current is not None and current.state == RunState.STARTING and self._can_resend(sent=sent):
            # The service went down for a restart between routing and connecting: wait for it.
            server.wait_for_start(self, service)
            return
        self._service_page(
            502,
            "Bad gateway",
            "did not answer.",
            "see `devmesh logs {name}`; `devmesh status` shows its state",
        )

    def _can_retry(self, *, sent: bool) -> bool:
        return self.retries_left > 0 and self._can_resend(sent=sent)

    def _can_resend(self, *, sent: bool) -> bool:
        if self.response_started or self.client.closed or (sent and self.method not in IDEMPOTENT):
            return False
        # Without the whole body in hand (replay dropped), a retry would send half a request.
        return self.replay is not None

    # -- response side (called by the upstream connection): in `response.py` -----------------------

    on_response_head = response.on_response_head
    on_response_body = response.on_response_body
    on_response_end = response.on_response_end
    _end_response = response.end_response
    after_upstream_feed = response.after_upstream_feed
    on_upstream_upgraded = response.on_upstream_upgraded
    on_upstream_invalid = response.on_upstream_invalid
    on_upstream_lost = response.on_upstream_lost
    on_endpoint_gone = response.on_endpoint_gone
    on_upstream_timeout = response.on_upstream_timeout

    # -- ending -------------------------------------------------------------------------------------

    def _where(self) -> str:
        return self.endpoint.authority if self.endpoint is not None else "?"

    def _abort(self) -> None:
        """End a response already under way that cannot complete: the client sees the connection close."""
        self.client.abort_response()
        self._log()
        self.done = True
        if self.mirror is not None:
            mirror_ready(self)

    def respond_raw(self, status: int, content_type: bytes, body: bytes) -> None:
        """Answer with the proxy's own content (the mesh catalog)."""
        close = not self.keep_alive or not self.body_complete
        head = (
            b"HTTP/1.1 %d OK\r\nContent-Type: %b\r\nContent-Length: %d\r\nCache-Control: no-store\r\n%b\r\n"
            % (status, content_type, len(body), b"Connection: close\r\n" if close else b"")
        )
        self.response_status = status
        self.response_head_done = self.response_started = True
        self.close_after = close
        self.client.write(head if self.method == b"HEAD" else head + body)
        self._finish(None, reusable=False)

    def respond_error(self, page: ErrorPage) -> None:
        """Answer with the proxy's own page (the request was not, or could not be, forwarded)."""
        if self.response_started:
            self._abort()
            return
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        # After an Upgrade request the client may already be speaking the new protocol: close.
        close = (
            page.status in (400, 405, 408, 413, 414, 431, 501)
            or not self.keep_alive
            or not self.body_complete
            or self.upgrade is not None
        )
        self.response_status = page.status
        self.response_head_done = True
        self.response_started = True
        self.close_after = close
        self.client.write(
            response_bytes(
                page,
                self.accept,
                trace_id=self.trace_id,
                close=close,
                head_only=self.method == b"HEAD",
                fault=self.fault.label if self.fault is not None else "",
            )
        )
        self._finish(None, reusable=False)

    def _finish(self, upstream: UpstreamConnection | None, *, reusable: bool) -> None:
        if self.done:
            return
        self.done = True
        self.upstream = None
        if upstream is not None:
            self._release(upstream, reusable=reusable)
        self._log()
        if self.mirror is not None:
            mirror_ready(self)
        self.client.exchange_done(self)

    def _release(self, upstream: UpstreamConnection, *, reusable: bool) -> None:
        if reusable:
            self.client.server.pool.release(upstream)
        else:
            upstream.exchange = None
            upstream.close()

    def cancel(self) -> None:
        """The client went away: cancel the request upstream (the service sees the connection reset)."""
        if self.done:
            return
        self.done = True
        if self.mirror is not None:
            mirror_ready(self)  # the request was whole: its copy still goes
        if self.fault_timer is not None:
            self.fault_timer.cancel()
        if self.throttle is not None:
            self.throttle.cancel()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        if self.response_status or self.view is not None:
            self.response_status = self.response_status or 499
            self._log()

    def _log(self) -> None:
        server = self.client.server
        duration = time.monotonic() - self.started
        view = self.view
        service = view.name if view is not None else "-"
        endpoint = self.endpoint
        origin = endpoint.origin.value if endpoint is not None else "-"
        status = self.response_status
        server.stats.count(service, origin, status, duration)
        log = server.access_log
        if log is not None:
            server.request_seq += 1
            log.record(
                RequestRecord(
                    time.time(),
                    self.method.decode("latin-1"),
                    self.host,
                    self.target[:2048].decode("latin-1"),
                    status,
                    service,
                    origin,
                    duration,
                    self.trace_id,
                    endpoint.authority if endpoint is not None else "",
                    server.request_seq,
                    (endpoint.peer_id or "") if endpoint is not None else "",
                    self.traceparent.decode("latin-1") if self.traceparent else "",
                    self.parent_span,
                    self.request_bytes,
                    self.response_bytes,
                    self.fault.label if self.fault is not None else "",
                    self.headers,
                )
            )
