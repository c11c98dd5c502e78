"""One request and its response, from the client's first header to the last byte sent back.

The exchange routes the request, tries endpoints in order (retrying where that is safe), streams the body
both ways with back-pressure, and answers with an error page when nothing can serve it. It is driven by
callbacks from the client connection (request side) and the upstream connection (response side).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from devmesh.faults.policy import FaultDecision, FaultHeaderError, FaultPolicy, decide, parse_fault_header
from devmesh.faults.throttle import Throttle
from devmesh.mesh.snapshot import Endpoint, Origin, RunState, ServiceView
from devmesh.peers.catalog import CATALOG_PATH
from devmesh.peers.signing import SERVICE_HEADER, SIGNED_HEADERS
from devmesh.proxy import headers as hdr
from devmesh.proxy.mirror import MirrorCopy
from devmesh.proxy.observe import RequestRecord
from devmesh.proxy.pages import ErrorPage, response_bytes
from devmesh.routing.table import LOCAL_ORIGINS, apply_pin, describe_unavailable, parse_pin

if TYPE_CHECKING:
    from devmesh.proxy.client import ClientConnection
    from devmesh.proxy.upstream import UpstreamConnection

# Safe to send twice (RFC 9110 §9.2.2): only these are retried on another endpoint.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RETRY_STATUSES = frozenset({502, 503, 504})
_CHUNKED = b"Transfer-Encoding: chunked\r\n"


def _cookie(header: bytes | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, if there."""
    if header is None:
        return None
    for part in header.decode("latin-1").split(";"):
        key, found, value = part.strip().partition("=")
        if found and key == name:
            return value
    return None


_PEER_ONLY_HEADERS = SIGNED_HEADERS | {SERVICE_HEADER.lower().encode()}
_TWO_HOSTS = b"\x00two"  # never a valid host: marks a request with two Host headers
# Not passed to a mirror: its own Host is written; the body is sent at once (no 100-continue to wait
# for); a client's X-DevMesh-Mirror would be a second one.
_NOT_MIRRORED = frozenset({b"host", b"expect", b"x-devmesh-mirror"})


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
            self._mirror_ready()

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
        if target[:1] != b"/" and not self._absolute_form():
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
            self._start_from_peer()
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
            endpoints = self._sticky(view, endpoints)
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
            self._begin_mirror(view.mirror)  # before faults: they never apply to the copy
        faults = server.state.snapshot.faults.get(view.name)
        if (faults is not None or self.fault_header is not None) and self._inject(view, endpoints, faults):
            return
        self._forward(view, endpoints)

    # -- mirror (shadow traffic) ---------------------------------------------------------------------

    def _begin_mirror(self, endpoint: Endpoint) -> None:
        """Start the copy of this request for the service's mirror (it leaves in `_mirror_ready`). A
        request that is itself a copy is not copied again (no loops)."""
        for name, _value in self.headers:
            if len(name) == 16 and name.lower() == b"x-devmesh-mirror":
                return
        limit = self.client.server.limits.mirror_max_body_bytes
        copy = self.mirror = MirrorCopy(endpoint, limit)
        if self.content_length is not None and int(self.content_length) > limit:
            copy.too_large = True
        else:
            for frame in self.pending:  # body that arrived while the request waited its turn
                copy.add(frame)
        copy.complete = self.body_complete
        self._mirror_ready()

    def _mirror_ready(self, *, held: bool = False) -> None:
        """Send the copy once its request is complete and the real response has begun, or the exchange
        has ended however it ended (`held`: or the real request is held, by a delay fault or a wait for
        its service to start). So the copy's work comes after the real answer is on its way, never
        before it; a copy is sent once."""
        copy = self.mirror
        if copy is None or copy.sent or self.view is None:
            return
        if held:
            copy.held = True  # from now on, it goes as soon as the request is whole
        if not copy.complete or not (self.response_started or self.done or copy.held):
            return
        copy.sent = True
        server = self.client.server
        if copy.too_large:
            server.stats.mirror(self.view.name, "too_large")
            return
        server.loop.call_soon(self._mirror_out, copy)

    def _mirror_out(self, copy: MirrorCopy) -> None:
        """The copy, as the mirror gets it: the request's method, target and headers, Host rewritten to
        the mirror's own name (a peer gets the client's, as for routed requests), `X-DevMesh-Mirror: 1`,
        the same body; signed for a peer."""
        view = self.view
        assert view is not None
        server = self.client.server
        endpoint = copy.endpoint
        frames, copy.frames = copy.frames, []
        host = endpoint.host_header.encode("latin-1") if endpoint.host_header else self.host_raw or b""
        headers = [
            (b"Host", host),
            *((n, v) for n, v in self.headers if n.lower() not in _NOT_MIRRORED),
            (b"X-DevMesh-Mirror", b"1"),
        ]
        head = hdr.upstream_request_head(
            self.method,
            self.target,
            headers,
            host=self.host_raw or b"",
            client_ip=self.client.client_ip,
            scheme=self.client.scheme,
            trace_id=self.trace_id.encode(),
            traceparent=self.traceparent or b"",
            framing=self._framing(),
            upgrade=None,
            connection=self.connection_header,
        )
        if endpoint.origin is Origin.PEER:
            head = head[:-2] + server.peer_headers(self.method, self.target, endpoint.service) + b"\r\n"
        server.mirror.send(
            view.name,
            endpoint,
            b"".join([head, *frames]) if frames else head,
            head_only=self.method == b"HEAD",
        )

    # -- faults -------------------------------------------------------------------------------------

    def _inject(
        self, view: ServiceView, endpoints: list[Endpoint], faults: tuple[FaultPolicy, ...] | None
    ) -> bool:
        """Decide the faults for this request; True when they took it over (delayed, aborted, reset)."""
        server = self.client.server
        policies = list(faults or ())
        if self.fault_header is not None and server.allow_fault_header:
            try:
                policies.append(parse_fault_header(self.fault_header.decode("latin-1"), view.name))
            except FaultHeaderError as error:
                self.respond_error(ErrorPage(400, "Bad Request", str(error)))
                return True
        decision = decide(
            policies, self.method.decode("latin-1"), self.target.decode("latin-1"), self.headers
        )
        if decision is None:
            return False
        self.fault = decision
        server.stats.fault(decision.names)
        if decision.delay_s > 0:
            self.fault_timer = server.loop.call_later(decision.delay_s, self._after_delay, view, endpoints)
            if self.mirror is not None:
                self._mirror_ready(held=True)  # the delay is the real request's, not the copy's
            return True
        return self._fault_answers(view)

    def _after_delay(self, view: ServiceView, endpoints: list[Endpoint]) -> None:
        self.fault_timer = None
        if self.done:
            return
        if not self._fault_answers(view):
            self._forward(view, endpoints)

    def _fault_answers(self, view: ServiceView) -> bool:
        """An abort or an outage answers in the service's place; True when one did."""
        fault = self.fault
        assert fault is not None
        if fault.reset:
            self.response_status = 0  # logged as a reset: no status reached the client
            self.client.reset()
            self._log()
            self.done = True
            if self.mirror is not None:
                self._mirror_ready()
            return True
        if fault.abort is not None:
            self.respond_error(
                ErrorPage(
                    fault.abort,
                    "Fault injected",
                    f"devmesh's fault {fault.label!r} answered instead of {view.name}.",
                    hint="`devmesh fault list` shows the faults; `devmesh fault rm NAME` or `devmesh fault clear` ends them",
                    service=view.name,
                )
            )
            return True
        return False

    def _forward(self, view: ServiceView, endpoints: list[Endpoint]) -> None:
        server = self.client.server
        if not endpoints and view.state == RunState.STARTING:
            server.wait_for_start(self, view.name)
            if self.mirror is not None:
                self._mirror_ready(held=True)
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
        self.request_head = self._request_head()
        self._send_to(endpoints[0])

    def _sticky(self, view: ServiceView, endpoints: list[Endpoint]) -> list[Endpoint]:
        """Session affinity: the endpoint named by the client's `devmesh-<service>` cookie goes first."""
        server = self.client.server
        name = f"devmesh-{view.name}"
        self.sticky_cookie = name
        wanted = _cookie(self.cookie, name)
        if wanted is None:
            return endpoints
        for index, endpoint in enumerate(endpoints):
            if server.sticky_id(endpoint) == wanted:
                return [endpoint, *endpoints[:index], *endpoints[index + 1 :]]
        return endpoints

    def _start_from_peer(self) -> None:
        """A request on the mesh port, from a peer agent: checked, then served by a local endpoint of a
        service this agent offers, never forwarded to a third agent."""
        server = self.client.server
        mesh = server.mesh
        assert mesh is not None
        # Only devmesh's own headers matter here (signature, service): the rest passes through untouched.
        headers = {
            name.lower().decode("latin-1"): value.decode("latin-1")
            for name, value in self.headers
            if name[:10].lower() == b"x-devmesh-"
        }
        target = self.target.decode("latin-1")
        if not self.peer_checked:  # routed again after a wait: its nonce is spent, it was checked
            verdict = mesh.check(self.method.decode(), target, headers)
            if not verdict.ok:
                self.respond_error(ErrorPage(401, "Unauthorized", f"Peer request refused: {verdict.reason}."))
                return
            self.peer_checked = True
        if target == CATALOG_PATH and self.method in (b"GET", b"HEAD"):
            self.respond_raw(200, b"application/json", mesh.catalog())
            return
        name = headers.get(SERVICE_HEADER.lower(), "")
        view = server.state.snapshot.services.get(name)
        if view is None or not mesh.offers(name):
            self.respond_error(
                ErrorPage(404, "Not offered", f"This agent does not offer {name or 'that service'!r}.")
            )
            return
        # Headers meant for this hop only: the service sees a plain proxied request.
        self.headers = [(n, v) for n, v in self.headers if n.lower() not in _PEER_ONLY_HEADERS]
        self.view = view
        self._forward(view, [e for e in server.endpoints_for(view) if e.origin in LOCAL_ORIGINS])

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

    def _absolute_form(self) -> bool:
        """`GET http://api.localhost/x HTTP/1.1` (a client told to use devmesh as its HTTP proxy):
        the host in the target wins over the Host header (RFC 9112 §3.2.2)."""
        target = self.target
        lowered = target[:8].lower()
        if not (lowered.startswith(b"http://") or lowered.startswith(b"https://")):
            self.respond_error(ErrorPage(400, "Bad Request", "The request target must be a path or a URL."))
            return False
        rest = target.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        self.host_raw = authority
        self.target = path
        # The service must see the host the request was routed by (RFC 9112 §3.2.2).
        self.headers = [(name, value) for name, value in self.headers if name.lower() != b"host"]
        self.headers.insert(0, (b"Host", authority))
        return True

    def _request_head(self, *, host: bytes | None = None) -> bytes:
        """The head for the service; `host`: the Host a remote fallback expects instead of the client's
        (X-Forwarded-Host keeps the client's)."""
        client = self.client
        headers = self.headers
        if host is not None:
            headers = [(b"Host", host), *((n, v) for n, v in headers if n.lower() != b"host")]
        return hdr.upstream_request_head(
            self.method,
            self.target,
            headers,
            host=self.host_raw or b"",
            client_ip=client.client_ip,
            scheme=client.scheme,
            trace_id=self.trace_id.encode(),
            traceparent=self.traceparent or b"",
            framing=self._framing(),
            upgrade=self.upgrade,
            connection=self.connection_header,
        )

    def _framing(self) -> bytes:
        """The body's framing line for the service: the proxy re-frames, never copies the client's."""
        if self.chunked:
            return _CHUNKED
        if self.content_length is not None:
            return b"Content-Length: " + self.content_length + b"\r\n"
        return b""

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
            head = self._request_head(host=endpoint.host_header.encode("latin-1"))
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

    # -- response side (called by the upstream connection) ------------------------------------------

    def on_response_head(
        self, upstream: UpstreamConnection, status: int, reason: bytes, headers: hdr.Headers
    ) -> None:
        client = self.client
        if 100 <= status < 200 and status != 101:
            # Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients as they come.
            if self.http_minor == 1 and not self.response_started:
                client.write(hdr.interim_head(status, reason, headers))
            return
        upstream.deadline = 0.0
        if status in RETRY_STATUSES and self._can_retry(sent=True):
            # Retried on the next endpoint once the parser is done with this response.
            self.response_status = status
            upstream.after_feed("retry")
            return
        self.response_head_done = True
        self.response_status = status
        head_only = self.method == b"HEAD" or status in (204, 304)
        framing = b""
        connection: bytes | None = None
        if status == 101:
            client.write(
                hdr.client_response_head(
                    status,
                    reason,
                    headers,
                    framing=b"",
                    served_by=self._served_by(),
                    trace_id=self.trace_id.encode(),
                    connection=None,
                    upgrade=True,
                    connection_header=upstream.connection,
                )
            )
            self.response_started = True
            return
        length = upstream.length
        upstream_chunked = upstream.chunked
        if head_only:
            if length is not None:
                framing = b"Content-Length: " + length + b"\r\n"
        elif length is not None and not upstream_chunked:
            framing = b"Content-Length: " + length + b"\r\n"
        elif self.http_minor == 1:
            framing = _CHUNKED
            self.response_chunked = True
            self.response_close_delimited = not upstream_chunked
        else:
            # An HTTP/1.0 client knows one way to find the end of an unknown-length body: the close.
            self.response_close_delimited = not upstream_chunked
            self.close_after = True
        if self.upgrade is not None:
            self.close_after = True  # the service refused to switch; the client may already have
        if not self.body_complete:
            # The service answered before the request body ended: the rest of it will not be read,
            # so neither connection can carry another request.
            self.close_after = True
        if self.close_after or not self.keep_alive:
            connection = b"close"
            self.close_after = True
        elif self.http_minor == 0:
            connection = b"keep-alive"
        fault = self.fault
        if fault is not None and fault.bandwidth is not None and not head_only:
            self.throttle = Throttle(
                client.server.loop,
                fault.bandwidth,
                write=client.write,
                pause=upstream.pause_reading,
                resume=upstream.resume_reading,
            )
        if self.sticky_cookie is not None and self.endpoint is not None:
            chosen = self.client.server.sticky_id(self.endpoint)
            if _cookie(self.cookie, self.sticky_cookie) != chosen:
                cookie = f"{self.sticky_cookie}={chosen}; Path=/; HttpOnly; SameSite=Lax".encode()
                headers = [*headers, (b"Set-Cookie", cookie)]
        client.write(
            hdr.client_response_head(
                status,
                reason,
                headers,
                framing=framing,
                served_by=self._served_by(),
                trace_id=self.trace_id.encode(),
                fault=fault.label.encode("latin-1") if fault is not None else b"",
                connection=connection,
                connection_header=upstream.connection,
            )
        )
        self.response_started = True
        if self.mirror is not None:
            self._mirror_ready()
        if self.method == b"HEAD":
            # httptools cannot be told the response has no body: end it once the parser returns.
            upstream.after_feed("head-done")

    def on_response_body(self, body: bytes) -> None:
        if not self.response_head_done or self.done:
            return
        self.response_bytes += len(body)
        frame = b"%x\r\n%b\r\n" % (len(body), body) if self.response_chunked else body
        if self.throttle is not None:
            self.throttle.push(frame)
        else:
            self.client.write(frame)

    def on_response_end(self, upstream: UpstreamConnection) -> None:
        if not self.response_head_done or self.response_status == 101:
            return  # the end of an interim response, of one being retried, or a switch of protocols
        reusable = upstream.parser.should_keep_alive() and self.body_complete
        throttle = self.throttle
        if throttle is not None and not throttle.idle:
            # The service is done; the client gets the rest at the fault's rate, from memory.
            self.upstream = None
            self._release(upstream, reusable=reusable)
            throttle.finish(self._end_response)
            return
        self._end_response(upstream, reusable=reusable)

    def _end_response(self, upstream: UpstreamConnection | None = None, *, reusable: bool = False) -> None:
        if self.done:
            return
        if self.response_chunked:
            self.client.write(hdr.trailer_block(self.response_trailers))
        self._finish(upstream, reusable=reusable)

    def after_upstream_feed(self, upstream: UpstreamConnection, action: str) -> None:
        if action == "retry":
            status = self.response_status
            self.upstream = None
            upstream.exchange = None
            upstream.close()
            self._failed(f"{self._where()}: answered {status}", sent=True)
        elif action == "head-done" and not self.done:
            reusable = upstream.parser.should_keep_alive() and self.body_complete
            upstream.reset_parser()
            self._finish(upstream, reusable=reusable)

    def on_upstream_upgraded(self, upstream: UpstreamConnection, rest: bytes) -> None:
        """101 from the service: from now on both connections are one byte tunnel."""
        if self.response_status != 101 or self.client.closed:
            upstream.close()
            return
        self.client.server.pool.not_busy(upstream)
        upstream.exchange = None
        upstream.deadline = 0.0
        self.upstream = None
        self._log()
        self.done = True
        self.client.start_tunnel(upstream, rest)

    def on_upstream_invalid(self, upstream: UpstreamConnection, reason: str) -> None:
        self.upstream = None
        upstream.exchange = None
        if self.response_started:
            self._abort()
            return
        self._failed(f"{self._where()}: invalid response ({reason})", sent=True)

    def on_upstream_lost(self, upstream: UpstreamConnection, exc: Exception | None) -> None:
        self.upstream = None
        if self.done:
            return
        if self.response_started:
            if self.response_close_delimited:
                # The end of a body delimited by the close: a normal end.
                if self.response_chunked:
                    self.client.write(hdr.trailer_block(self.response_trailers))
                self._finish(None, reusable=False)
            else:
                self._abort()  # reset mid-body: the client must not take a truncated body for a whole one
            return
        if upstream.reused and self._can_resend(sent=True):
            # A pooled connection the service had just closed: not the service's fault, try afresh.
            endpoint = self.endpoint
            if endpoint is not None:
                self.attempt -= 1
                self._send_to(endpoint)
                return
        self._failed(f"{self._where()}: connection closed before a response", sent=True)

    def on_endpoint_gone(self) -> None:
        """Its endpoint left the route table mid-request (the connection is already dropped): route
        again from the current snapshot when that is safe, else end the request."""
        self.upstream = None
        if self.done:
            return
        if self.response_started:
            self._abort()
            return
        if self._can_resend(sent=True):
            self.client.server.loop.call_soon(self.start)
            return
        self._failed(f"{self._where()}: left the mesh", sent=True)

    def on_upstream_timeout(self, upstream: UpstreamConnection) -> None:
        upstream.abort()
        self.upstream = None
        if self.response_started:
            self._abort()
            return
        timeout = self.client.server.timeout_s
        self.client.server.stats.upstream_error(self.view.name if self.view is not None else "-")
        self.tried.append(f"{self._where()}: no response in {timeout:g} s")
        self._service_page(
            504,
            "Gateway timeout",
            f"did not answer within {timeout:g} s.",
            "raise [proxy] timeout in devmesh.toml if it is expected to be this slow",
        )

    # -- ending -------------------------------------------------------------------------------------

    def _where(self) -> str:
        return self.endpoint.authority if self.endpoint is not None else "?"

    def _abort(self) -> None:
        """End a response already under way that cannot complete: the client sees the connection close."""
        self.client.abort_response()
        self._log()
        self.done = True
        if self.mirror is not None:
            self._mirror_ready()

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
            self._mirror_ready()
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
            self._mirror_ready()  # the request was whole: its copy still goes
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

    def _served_by(self) -> bytes:
        endpoint = self.endpoint
        return b"devmesh" if endpoint is None else self.client.server.served_by(endpoint)

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
