"""The admin API application, `/metrics`, the events stream and the dashboard.

Reads are open on loopback; every write needs `Authorization: Bearer <token>` with the token from
`.devmesh/token`, so a web page open in the developer's browser cannot drive the agent. Requests whose
Host is not a loopback name are refused too, which defeats DNS rebinding. Browsers do not apply the
same-origin policy to WebSockets, so the events stream checks `Origin` itself.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated, Any, Protocol
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response

from devmesh import __version__
from devmesh.admin.models import (
    ActionResult,
    FaultSpec,
    Problem,
    Registration,
    ReplayResult,
    RoutePin,
    ScenarioRunRequest,
    ServiceStatus,
    StatusDocument,
)
from devmesh.config.schema import HealthSection
from devmesh.faults.book import FaultError, policy_from_section
from devmesh.faults.policy import FaultPolicy
from devmesh.observe.events import EventHub
from devmesh.supervisor.manager import SupervisorError

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
_DASHBOARD_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


class AgentControl(Protocol):
    """What the admin API needs of the agent."""

    @property
    def token(self) -> str: ...

    def status(self) -> StatusDocument: ...

    async def start_service(self, name: str) -> list[str]: ...

    async def stop_service(self, name: str) -> None: ...

    async def restart_service(self, name: str) -> None: ...

    def register(
        self, name: str, *, port: int, version: str | None, health: HealthSection | None
    ) -> None: ...

    async def unregister(self, name: str) -> None: ...

    @property
    def pins(self) -> dict[str, str]: ...

    def pin(self, name: str, pin: str) -> None: ...

    def unpin(self, name: str) -> None: ...

    def recent_requests(
        self,
        *,
        service: str | None = None,
        status: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, object]]: ...

    def recent_request(self, request_id: int) -> dict[str, object] | None: ...

    async def replay(self, request_id: int) -> dict[str, object]: ...

    @property
    def events(self) -> EventHub: ...

    def hello(self) -> dict[str, Any]: ...

    def metrics(self) -> bytes: ...

    def fault_list(self) -> list[dict[str, object]]: ...

    def add_fault(self, policy: FaultPolicy) -> None: ...

    def remove_fault(self, name: str) -> None: ...

    def set_fault_enabled(self, name: str, enabled: bool) -> None: ...

    def clear_faults(self) -> None: ...

    def scenario_list(self) -> list[dict[str, object]]: ...

    def run_scenario(self, name: str, duration_s: float | None) -> dict[str, object]: ...

    def stop_scenario(self, name: str) -> None: ...


def _host_is_loopback(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in _LOOPBACK_HOSTS or host.endswith(".localhost")


def create_admin_app(agent: AgentControl) -> FastAPI:
    app = FastAPI(
        title="devmesh admin API",
        version=__version__,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )

    @app.middleware("http")
    async def loopback_only(request: Request, call_next):  # type: ignore[no-untyped-def]
        client = request.client.host if request.client else ""
        if client not in ("127.0.0.1", "::1", "testclient") and not client.startswith("127."):
            return JSONResponse({"error": "the admin API answers on loopback only"}, status_code=403)
        if not _host_is_loopback(request.headers.get("host", "")):
            return JSONResponse(
                {"error": "the admin API answers only to loopback host names"}, status_code=403
            )
        return await call_next(request)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        expected = agent.token
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip(), expected):
            raise HTTPException(
                status_code=401,
                detail="this request needs the project's token: Authorization: Bearer <.devmesh/token>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    writes = [Depends(require_token)]
    problems: dict[int | str, dict[str, object]] = {
        401: {"model": Problem},
        404: {"model": Problem},
        409: {"model": Problem},
    }

    @app.exception_handler(SupervisorError)
    async def supervisor_error(_request: Request, error: SupervisorError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(FaultError)
    async def fault_error(_request: Request, error: FaultError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/status")
    async def status() -> StatusDocument:
        return agent.status()

    @app.get("/api/v1/services")
    async def services() -> list[ServiceStatus]:
        return agent.status().services

    @app.get("/api/v1/services/{name}", responses={404: {"model": Problem}})
    async def service(name: str) -> ServiceStatus:
        for entry in agent.status().services:
            if entry.name == name:
                return entry
        raise HTTPException(status_code=404, detail=f"no service named {name!r}")

    @app.post("/api/v1/services/{name}/start", dependencies=writes, responses=problems)
    async def start(name: str) -> ActionResult:
        started = await agent.start_service(name)
        return ActionResult(service=name, action="start", started=started)

    @app.post("/api/v1/services/{name}/stop", dependencies=writes, responses=problems)
    async def stop(name: str) -> ActionResult:
        await agent.stop_service(name)
        return ActionResult(service=name, action="stop")

    @app.post("/api/v1/services/{name}/restart", dependencies=writes, responses=problems)
    async def restart(name: str) -> ActionResult:
        await agent.restart_service(name)
        return ActionResult(service=name, action="restart")

    @app.post("/api/v1/register", dependencies=writes, responses=problems, status_code=201)
    async def register(body: Registration) -> ActionResult:
        health = HealthSection(http=body.health) if isinstance(body.health, str) else body.health
        agent.register(body.name, port=body.port, version=body.version, health=health)
        return ActionResult(service=body.name, action="register")

    @app.delete("/api/v1/register/{name}", dependencies=writes, responses=problems)
    async def unregister(name: str) -> ActionResult:
        await agent.unregister(name)
        return ActionResult(service=name, action="unregister")

    @app.get("/api/v1/peers")
    async def peers() -> list[dict[str, object]]:
        return agent.status().peers

    @app.get("/api/v1/requests")
    async def requests(
        service: str | None = None,
        status: Annotated[str | None, Query(description="a code (502) or a class (5xx)")] = None,
        trace_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 100,
    ) -> list[dict[str, object]]:
        """Recent proxied requests, newest last: headers (credentials masked) and sizes, not bodies."""
        return agent.recent_requests(service=service, status=status, trace_id=trace_id, limit=limit)

    @app.get("/api/v1/requests/{request_id}", responses={404: {"model": Problem}})
    async def recent_request(request_id: int) -> dict[str, object]:
        found = agent.recent_request(request_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no recent request {request_id}")
        return found

    @app.post("/api/v1/requests/{request_id}/replay", dependencies=writes, responses=problems)
    async def replay(request_id: int) -> ReplayResult:
        """Send a recorded request again through the proxy, with its original headers."""
        return ReplayResult.model_validate(await agent.replay(request_id))

    @app.get("/api/v1/faults")
    async def faults() -> list[dict[str, object]]:
        """Every fault: the config's (switched on or off), those added at run time, those of scenarios."""
        return agent.fault_list()

    @app.post("/api/v1/faults", dependencies=writes, responses=problems, status_code=201)
    async def add_fault(body: FaultSpec) -> ActionResult:
        services = {entry.name for entry in agent.status().services}
        if body.service not in services:
            raise HTTPException(
                status_code=404,
                detail=f"no service named {body.service!r} (services: {', '.join(sorted(services)) or 'none'})",
            )
        agent.add_fault(policy_from_section(body.name, body, source="runtime"))
        return ActionResult(service=body.service, action=f"fault {body.name} added")

    @app.delete("/api/v1/faults", dependencies=writes, responses=problems)
    async def clear_faults() -> ActionResult:
        """Everything off: run-time faults removed, config faults switched off, scenarios stopped."""
        agent.clear_faults()
        return ActionResult(service="*", action="faults cleared")

    @app.delete("/api/v1/faults/{name}", dependencies=writes, responses=problems)
    async def remove_fault(name: str) -> ActionResult:
        """A run-time fault goes; a config fault is switched off until the config changes."""
        agent.remove_fault(name)
        return ActionResult(service="*", action=f"fault {name} removed")

    @app.post("/api/v1/faults/{name}/enable", dependencies=writes, responses=problems)
    async def enable_fault(name: str) -> ActionResult:
        agent.set_fault_enabled(name, True)
        return ActionResult(service="*", action=f"fault {name} enabled")

    @app.post("/api/v1/faults/{name}/disable", dependencies=writes, responses=problems)
    async def disable_fault(name: str) -> ActionResult:
        agent.set_fault_enabled(name, False)
        return ActionResult(service="*", action=f"fault {name} disabled")

    @app.get("/api/v1/scenarios")
    async def scenarios() -> list[dict[str, object]]:
        """Scenarios to run (the config's and the built-in ones) and, in status, the running ones."""
        return agent.scenario_list()

    @app.post("/api/v1/scenarios/{name}/run", dependencies=writes, responses=problems)
    async def run_scenario(name: str, body: ScenarioRunRequest | None = None) -> dict[str, object]:
        """Turn a scenario on; the agent turns it off when its time is up."""
        return agent.run_scenario(name, body.duration if body is not None else None)

    @app.delete("/api/v1/scenarios/{name}", dependencies=writes, responses=problems)
    async def stop_scenario(name: str) -> ActionResult:
        agent.stop_scenario(name)
        return ActionResult(service="*", action=f"scenario {name} stopped")

    @app.get("/metrics", include_in_schema=True, response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format (DESIGN §5 names), from the agent's own registry."""
        from devmesh.observe.metrics import CONTENT_TYPE

        return Response(agent.metrics(), media_type=CONTENT_TYPE)

    @app.websocket("/api/v1/events")
    async def events(socket: WebSocket) -> None:
        """Every change of the mesh, pushed: a `hello` with the whole state, then events as they happen."""
        origin = socket.headers.get("origin")
        if origin is not None and not _host_is_loopback(urlsplit(origin).netloc):
            await socket.close(code=1008, reason="the events stream answers loopback pages only")
            return
        await socket.accept()
        hub = agent.events
        hello = agent.hello()  # before subscribing: it sends pending changes to the others
        subscription = hub.subscribe()
        closed: asyncio.Future[Any] | None = None
        try:
            await socket.send_json(hello)
            # The client sends nothing; reading notices when it goes away.
            closed = asyncio.ensure_future(socket.receive())
            while True:
                getter = asyncio.ensure_future(subscription.queue.get())
                done, _ = await asyncio.wait({getter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if closed in done:
                    getter.cancel()
                    break
                event = getter.result()
                await socket.send_json(event)
                if event["type"] == "overflow":  # the hub gave up on this client: the last message
                    await socket.close(code=1013, reason="too far behind; reconnect")
                    break
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            hub.unsubscribe(subscription)
            if closed is not None:
                closed.cancel()

    @app.get("/api/v1/routes")
    async def routes() -> dict[str, str]:
        """The pins set by `devmesh route`: service -> local | remote | peer=ID."""
        return dict(agent.pins)

    @app.post("/api/v1/routes/{name}", dependencies=writes, responses=problems)
    async def pin(name: str, body: RoutePin) -> ActionResult:
        agent.pin(name, body.pin)
        return ActionResult(service=name, action=f"route {body.pin}")

    @app.delete("/api/v1/routes/{name}", dependencies=writes, responses=problems)
    async def unpin(name: str) -> ActionResult:
        agent.unpin(name)
        return ActionResult(service=name, action="route cleared")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        return _dashboard_file("index.html")

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        return _dashboard_file(name)

    return app


def _dashboard_file(name: str) -> Response:
    """A file of the dashboard, shipped inside the package (no build step). Names are single path parts."""
    path = DASHBOARD_DIR / name
    kind = _DASHBOARD_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or kind is None or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no dashboard file {name!r}")
    # Always revalidated: after an upgrade the browser must not run an old app.js against a new API.
    return FileResponse(path, media_type=kind, headers={"Cache-Control": "no-cache"})
