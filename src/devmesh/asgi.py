"""`DevmeshMiddleware`: subdomain routing, forwarding to the mesh and a health endpoint for any ASGI app.

    from devmesh.asgi import DevmeshMiddleware

    app = DevmeshMiddleware(main_app, hosts={"api": api_app, "*.tenant": tenant_app})
    # or, in FastAPI / Starlette: app.add_middleware(DevmeshMiddleware, hosts={...})

For each HTTP or WebSocket request, in this order:

1. `/_devmesh/health` and `/_devmesh/routes` (any host) are answered by the middleware itself;
2. a host that `hosts=` mounts goes to that app (exact names before wildcards, the longest wildcard first);
3. a host naming another service of the mesh goes to the devmesh proxy, bodies streamed both ways
   (only for clients on this machine unless `forward_from=` allows more; never a second time, which
   would be a loop);
4. anything else goes to the wrapped app.

Every request's scope carries what was matched: `scope["devmesh"]` (a dict) and `scope["state"]["devmesh"]`
(a `HostMatch`, so `request.state.devmesh.wildcard` in Starlette). Lifespan events reach the wrapped app
and every mounted app. See docs/middleware.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from devmesh.middleware.asgi_forward import MeshResponseError, forward_http
from devmesh.middleware.core import (
    FORWARDED_BY_HEADER,
    Action,
    HostRoutingMiddleware,
    LocalResponse,
    came_through_mesh,
    forward_headers,
    trusted_forwarded,
)
from devmesh.middleware.hosts import HostMatch
from devmesh.middleware.types import ASGIApp, Message, Receive, Scope, Send

WEBSOCKET_TRY_AGAIN_LATER = 1013


class DevmeshMiddleware(HostRoutingMiddleware[ASGIApp]):
    """Wraps an ASGI app; see the module docstring for what it does with each request.

    Args:
        app: the ASGI app that gets every request the middleware does not answer, mount or forward.
        hosts: apps mounted by host, relative to `domain` (`"api"`, `"*.tenant"`) or in full
            (`"api.localhost"`).
        domain: the mesh's domain; default `$DEVMESH_DOMAIN`, else `localhost`.
        mesh: the devmesh proxy's URL for forwarding (`"http://127.0.0.1:7080"`); default
            `$DEVMESH_PROXY_URL` (set by devmesh for the processes it runs); False never forwards.
        mesh_services: the host names forwarded to the mesh; default: the other services devmesh lists
            in the environment (`DEVMESH_<NAME>_URL`).
        forward_unknown: also forward any other host under `domain` that nothing here serves (a peer's
            or a discovered service the environment does not list).
        service: this service's name, shown by the health endpoint and never forwarded; default
            `$DEVMESH_SERVICE`.
        version: this service's version for the health endpoint; default `$DEVMESH_SERVICE_VERSION`.
        trust_forwarded_headers: apply `X-Forwarded-Proto/-Host/-For` to the scope when the peer is a
            loopback address (the devmesh proxy on this machine).
        forward_from: the clients (besides loopback ones) whose requests may be forwarded to the mesh:
            addresses or networks (`["192.168.1.0/24"]`), or `"any"`. Others get a 403 saying so, so an
            app listening on the network does not relay other machines to the mesh's local services.
        health_path: where the health document is served; None turns it off.
        routes_path: where the mounted hosts and forwarding rules are listed; None turns it off.
        timeout: seconds to wait for the mesh to connect, and between two reads of its response.
        environ: the environment to read the defaults from (tests); default `os.environ`.
    """

    APP_KIND = "an ASGI app"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            if self.core.router:
                await _fan_out_lifespan(self._lifespan_apps(), scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = str(client[0]) if client else None  # the connection's own, before X-Forwarded-For
        if self.trust_forwarded_headers:
            scope = _apply_forwarded(scope)
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        host = _header(headers, b"host") or ""
        plan = self.core.plan(
            host, scope.get("path", ""), via_mesh=came_through_mesh(_header(headers, b"via"))
        )
        scope = _with_match(scope, plan.match)
        action = plan.action
        if kind == "websocket" and action in (Action.HEALTH, Action.ROUTES):
            action = Action.APP
        counters = self.core.counters
        if action in (Action.HEALTH, Action.ROUTES):
            counters.add("answered")
            await _respond(send, self.core.local_response(plan, scope["method"]))
        elif action is Action.MOUNTED:
            counters.add("mounted")
            assert plan.app is not None
            await plan.app(scope, receive, send)
        elif action is Action.FORWARD and kind == "websocket":
            counters.add("forward_failed")
            await send(
                {
                    "type": "websocket.close",
                    "code": WEBSOCKET_TRY_AGAIN_LATER,
                    "reason": "devmesh: this app forwards only HTTP to the mesh; "
                    "open the WebSocket through the devmesh proxy",
                }
            )
        elif action is Action.FORWARD:
            refusal = self.core.refusal(
                host, peer=peer, forwarded_by=_header(headers, FORWARDED_BY_HEADER.lower().encode())
            )
            if refusal is not None:
                counters.add("forward_refused")
                await _respond(send, refusal)
            else:
                await self._forward(scope, receive, send, host)
        else:
            counters.add("passed_to_app")
            await self.app(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, host: str) -> None:
        mesh = self.core.settings.mesh
        assert mesh is not None
        client = scope.get("client")
        headers = forward_headers(
            [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]],
            client=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            host=host,
            forwarded_by=self.core.settings.service or "devmesh-middleware",
        )
        try:
            problem = await forward_http(
                scope, receive, send, mesh=mesh, headers=headers, timeout_s=self.timeout
            )
        except MeshResponseError:
            self.core.counters.add("forward_failed")
            raise
        if problem is None:
            self.core.counters.add("forwarded")
            return
        self.core.counters.add("forward_failed")
        await _respond(send, self.core.failure_response(host, problem))

    def _lifespan_apps(self) -> list[tuple[str, ASGIApp]]:
        apps: list[tuple[str, ASGIApp]] = [("the wrapped app", self.app)]
        seen = {id(self.app)}
        for mounted in self.core.router.mounted:
            if id(mounted.app) not in seen:
                seen.add(id(mounted.app))
                apps.append((f"hosts[{mounted.pattern!r}]", mounted.app))
        return apps


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The last value of header `name` (lowercase), decoded as latin-1, or None."""
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found.decode("latin-1") if found is not None else None


def _apply_forwarded(scope: Scope) -> Scope:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    client = scope.get("client")
    view = trusted_forwarded(
        client[0] if client else None,
        proto=_header(headers, b"x-forwarded-proto"),
        host=_header(headers, b"x-forwarded-host"),
        forwarded_for=_header(headers, b"x-forwarded-for"),
    )
    if view is None:
        return scope
    scope = dict(scope)
    if view.scheme is not None:
        secure = view.scheme == "https"
        scope["scheme"] = ("wss" if secure else "ws") if scope["type"] == "websocket" else view.scheme
    if view.client is not None:
        scope["client"] = (view.client, 0)
    if view.host is not None:
        replaced = [(key, value) for key, value in headers if key.lower() != b"host"]
        scope["headers"] = [(b"host", view.host.encode("latin-1")), *replaced]
    return scope


def _with_match(scope: Scope, match: HostMatch) -> Scope:
    state = scope.get("state")
    return {
        **scope,
        "devmesh": match.as_dict(),
        "state": {**(state if isinstance(state, Mapping) else {}), "devmesh": match},
    }


async def _respond(send: Send, response: LocalResponse) -> None:
    status, headers, body = response
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _LifespanChild:
    """One app's lifespan, driven message by message through two queues."""

    def __init__(self, label: str, app: ASGIApp, scope: Scope) -> None:
        self.label = label
        self.supported = True
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._run(app, scope))
        self._replied = False

    async def _run(self, app: ASGIApp, scope: Scope) -> None:
        await app(scope, self._inbox.get, self._send)

    async def _send(self, message: Message) -> None:
        self._replied = True
        await self._outbox.put(message)

    async def step(self, message: Message) -> Message | None:
        """Hand `message` over and wait for the app's reply; None when the app ended without one (an app
        that does not speak lifespan: it is left out from then on, as servers do)."""
        await self._inbox.put(message)
        reply = asyncio.ensure_future(self._outbox.get())
        await asyncio.wait({reply, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if reply.done():
            return reply.result()
        reply.cancel()
        if not self._replied and not self.task.cancelled() and self.task.exception() is not None:
            self.supported = False
            return None
        if self.task.exception() is not None:
            error = self.task.exception()
            return {"type": message["type"] + ".failed", "message": repr(error)}
        self.supported = False
        return None

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _fan_out_lifespan(
    apps: list[tuple[str, ASGIApp]], scope: Scope, receive: Receive, send: Send
) -> None:
    """Run the lifespan of every app: startup in order, shutdown in reverse; one failure fails it.

    All apps see the same scope, so what each lifespan puts in `scope["state"]` reaches every request.
    """
    children: list[_LifespanChild] = []
    try:
        message = await receive()
        if message["type"] != "lifespan.startup":  # pragma: no cover - servers always start first
            return
        for label, app in apps:
            child = _LifespanChild(label, app, scope)
            children.append(child)
            reply = await child.step({"type": "lifespan.startup"})
            if reply is not None and reply["type"] == "lifespan.startup.failed":
                await send(
                    {"type": "lifespan.startup.failed", "message": f"{label}: {reply.get('message', '')}"}
                )
                return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        failures: list[str] = []
        for child in reversed([child for child in children if child.supported]):
            reply = await child.step({"type": "lifespan.shutdown"})
            if reply is not None and reply["type"] == "lifespan.shutdown.failed":
                failures.append(f"{child.label}: {reply.get('message', '')}")
        if failures:
            await send({"type": "lifespan.shutdown.failed", "message": "; ".join(failures)})
        else:
            await send({"type": "lifespan.shutdown.complete"})
    finally:
        for child in children:
            await child.stop()


def devmesh_scope(scope: Scope) -> dict[str, Any]:
    """What the middleware matched for this request (`scope["devmesh"]`), or an empty dict."""
    found = scope.get("devmesh")
    return dict(found) if isinstance(found, Mapping) else {}


__all__ = ["DevmeshMiddleware", "HostMatch", "devmesh_scope"]
