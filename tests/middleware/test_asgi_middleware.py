"""DevmeshMiddleware with plain ASGI apps, called the way an ASGI server calls them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devmesh.asgi import DevmeshMiddleware
from devmesh.middleware.types import Message, Receive, Scope, Send


def replying(name: str) -> Any:
    """An ASGI app that answers with its name and what the middleware told it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": name})
            await send({"type": "websocket.close", "code": 1000})
            return
        assert scope["type"] == "http"
        match = scope["state"]["devmesh"]
        body = json.dumps(
            {
                "app": name,
                "scope": scope["devmesh"],
                "wildcard": match.wildcard,
                "scheme": scope["scheme"],
                "client": list(scope["client"]) if scope.get("client") else None,
                "host": dict(scope["headers"]).get(b"host", b"").decode(),
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return app


def http_scope(host: str, path: str = "/", *, method: str = "GET", **extra: Any) -> Scope:
    headers = [(b"host", host.encode())]
    headers += [(name.encode(), value.encode()) for name, value in extra.pop("headers", {}).items()]
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "http",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "state": {"from_lifespan": 1},
        **extra,
    }


async def call(app: Any, scope: Scope, inbound: list[Message] | None = None) -> list[Message]:
    pending = list(inbound or [{"type": "http.request", "body": b"", "more_body": False}])
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def body_of(sent: list[Message]) -> Any:
    return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def middleware(**options: Any) -> DevmeshMiddleware:
    options.setdefault("environ", {})
    return DevmeshMiddleware(
        replying("main"), hosts={"api": replying("api"), "*.tenant": replying("tenant")}, **options
    )


async def test_mounted_hosts_get_their_app_and_the_match() -> None:
    app = middleware()
    api = body_of(await call(app, http_scope("API.localhost:8000")))
    assert api["app"] == "api"
    assert api["scope"] == {
        "host": "api.localhost",
        "domain": "localhost",
        "subdomain": "api",
        "pattern": "api",
        "wildcard": None,
    }
    tenant = body_of(await call(app, http_scope("acme.tenant.localhost")))
    assert (tenant["app"], tenant["wildcard"]) == ("tenant", "acme")


async def test_other_hosts_fall_through_to_the_wrapped_app_keeping_the_lifespan_state() -> None:
    app = middleware()
    seen: dict[str, Any] = {}

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope["state"])
        await replying("main")(scope, receive, send)

    app.app = recording
    result = body_of(await call(app, http_scope("unknown.localhost")))
    assert (result["app"], result["scope"]["subdomain"]) == ("main", "unknown")
    assert seen["from_lifespan"] == 1 and seen["devmesh"].host == "unknown.localhost"


async def test_health_is_answered_on_any_host_and_routes_lists_the_mounts() -> None:
    app = middleware(service="web", version="3.1")
    sent = await call(app, http_scope("acme.tenant.localhost", "/_devmesh/health"))
    assert sent[0]["status"] == 200
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    health = body_of(sent)
    assert (health["status"], health["service"], health["version"]) == ("ok", "web", "3.1")
    routes = body_of(await call(app, http_scope("x", "/_devmesh/routes")))
    assert [entry["pattern"] for entry in routes["hosts"]] == ["api", "*.tenant"]
    assert routes["requests"]["answered"] == 2
    assert (await call(app, http_scope("x", "/_devmesh/health", method="DELETE")))[0]["status"] == 405


async def test_health_paths_can_be_moved_or_turned_off() -> None:
    app = middleware(health_path="/healthz", routes_path=None)
    assert body_of(await call(app, http_scope("x", "/healthz")))["status"] == "ok"
    assert body_of(await call(app, http_scope("x", "/_devmesh/routes")))["app"] == "main"


async def test_forwarded_headers_apply_only_from_a_loopback_peer() -> None:
    app = middleware()
    headers = {
        "x-forwarded-proto": "https",
        "x-forwarded-for": "203.0.113.5",
        "x-forwarded-host": "api.localhost",
    }
    trusted = body_of(await call(app, http_scope("web.localhost", headers=headers)))
    assert (trusted["app"], trusted["scheme"], trusted["client"]) == ("api", "https", ["203.0.113.5", 0])
    assert trusted["host"] == "api.localhost"
    remote = body_of(
        await call(app, http_scope("web.localhost", headers=headers, client=("198.51.100.2", 1)))
    )
    assert (remote["app"], remote["scheme"], remote["client"][0]) == ("main", "http", "198.51.100.2")
    off = middleware(trust_forwarded_headers=False)
    assert body_of(await call(off, http_scope("web.localhost", headers=headers)))["scheme"] == "http"


async def test_websockets_are_routed_by_host() -> None:
    app = middleware()
    scope = {**http_scope("acme.tenant.localhost", "/ws"), "type": "websocket", "scheme": "ws"}
    sent = await call(app, scope, [{"type": "websocket.connect"}])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "tenant"


async def test_a_websocket_for_a_mesh_service_is_refused_with_a_reason() -> None:
    app = middleware(mesh="http://127.0.0.1:9", mesh_services=["pay"])
    scope = {**http_scope("pay.localhost", "/ws"), "type": "websocket", "scheme": "ws"}
    sent = await call(app, scope, [{"type": "websocket.connect"}])
    assert sent[0]["type"] == "websocket.close" and "devmesh proxy" in sent[0]["reason"]


def lifespan_app(name: str, log: list[str], *, fail: str | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            step = message["type"].removeprefix("lifespan.")
            log.append(f"{name} {step}")
            if fail == step:
                await send({"type": f"{message['type']}.failed", "message": f"{name} broke"})
                continue
            if step == "startup":
                scope["state"][name] = True
            await send({"type": f"{message['type']}.complete"})
            if step == "shutdown":
                return

    return app


async def not_speaking_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("this app serves only HTTP")


async def test_lifespan_reaches_every_app_in_order_and_shares_state() -> None:
    log: list[str] = []
    app = DevmeshMiddleware(
        lifespan_app("main", log),
        hosts={"api": lifespan_app("api", log), "admin": not_speaking_lifespan},
        environ={},
    )
    scope: Scope = {"type": "lifespan", "state": {}}
    sent = await call(app, scope, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert log == ["main startup", "api startup", "api shutdown", "main shutdown"]
    assert scope["state"] == {"main": True, "api": True}


async def test_a_failing_startup_names_the_app() -> None:
    log: list[str] = []
    app = DevmeshMiddleware(
        lifespan_app("main", log), hosts={"api": lifespan_app("api", log, fail="startup")}, environ={}
    )
    sent = await call(app, {"type": "lifespan", "state": {}}, [{"type": "lifespan.startup"}])
    assert sent == [{"type": "lifespan.startup.failed", "message": "hosts['api']: api broke"}]


async def test_a_failing_shutdown_is_reported_after_every_app_had_its_turn() -> None:
    log: list[str] = []
    app = DevmeshMiddleware(
        lifespan_app("main", log, fail="shutdown"), hosts={"api": lifespan_app("api", log)}, environ={}
    )
    sent = await call(
        app, {"type": "lifespan", "state": {}}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    assert sent[-1] == {"type": "lifespan.shutdown.failed", "message": "the wrapped app: main broke"}
    assert log[-2:] == ["api shutdown", "main shutdown"]


async def test_without_hosts_the_lifespan_goes_straight_to_the_app() -> None:
    log: list[str] = []
    app = DevmeshMiddleware(lifespan_app("main", log), environ={})
    sent = await call(
        app, {"type": "lifespan", "state": {}}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="app: 'nope' is not an ASGI app"):
        DevmeshMiddleware("nope", environ={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout: 0"):
        DevmeshMiddleware(replying("x"), timeout=0, environ={})


async def test_a_mesh_host_is_forwarded_only_for_a_loopback_client() -> None:
    """An app listening on the network must not relay other machines to the mesh's local services."""
    app = middleware(mesh="http://127.0.0.1:9", mesh_services=["admin"])
    # X-Forwarded-For can't make a remote peer look local: the connection's own address decides.
    scope = http_scope(
        "admin.localhost", client=("192.168.1.7", 40000), headers={"x-forwarded-for": "127.0.0.1"}
    )
    sent = await call(app, scope)
    assert sent[0]["status"] == 403 and (b"content-type", b"application/json") in sent[0]["headers"]
    refused = body_of(sent)
    assert refused["error"] == "forward refused" and refused["client"] == "192.168.1.7"
    assert "forward_from=" in refused["message"] and "not from this machine" in refused["message"]
    # A peer with no IP address (a Unix socket, a test client's name) is not loopback either.
    assert (await call(app, http_scope("admin.localhost", client=("testclient", 1))))[0]["status"] == 403
    assert (await call(app, http_scope("admin.localhost", client=None)))[0]["status"] == 403
    # What the app itself serves still answers any client; only forwarding is limited.
    assert body_of(await call(app, http_scope("api.localhost", client=("192.168.1.7", 1))))["app"] == "api"
    # From loopback (also as a dual-stack socket shows it), it goes to the mesh (down here: 502).
    for local in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        forwarded = await call(app, http_scope("admin.localhost", client=(local, 1)))
        assert body_of(forwarded)["error"] == "mesh unreachable"
    routes = body_of(await call(app, http_scope("x", "/_devmesh/routes")))
    assert routes["requests"]["forward_refused"] == 3 and routes["forward_from"] == ["loopback"]


async def test_forward_from_lets_more_clients_through() -> None:
    lan = middleware(mesh="http://127.0.0.1:9", mesh_services=["admin"], forward_from=["192.168.1.0/24"])
    inside = await call(lan, http_scope("admin.localhost", client=("192.168.1.7", 1)))
    assert body_of(inside)["error"] == "mesh unreachable"
    outside = await call(lan, http_scope("admin.localhost", client=("10.0.0.2", 1)))
    assert outside[0]["status"] == 403
    anyone = middleware(mesh="http://127.0.0.1:9", mesh_services=["admin"], forward_from="any")
    sent = await call(anyone, http_scope("admin.localhost", client=("testclient", 1)))
    assert body_of(sent)["error"] == "mesh unreachable"


async def test_a_request_another_middleware_forwarded_is_not_forwarded_again() -> None:
    app = middleware(mesh="http://127.0.0.1:9", mesh_services=["admin"])
    scope = http_scope("admin.localhost", headers={"x-devmesh-forwarded-by": "web"})
    sent = await call(app, scope)
    assert sent[0]["status"] == 508
    loop = body_of(sent)
    assert loop["error"] == "forwarding loop" and loop["forwarded_by"] == "web"
    assert "http://127.0.0.1:9" in loop["message"] and "not at" not in loop["message"]
