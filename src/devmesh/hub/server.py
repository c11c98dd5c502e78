"""`devmesh hub serve`: the FastAPI application, its background tasks and the uvicorn server.

Start-up migrates the database, loads the JWT secret, and (PostgreSQL) opens the LISTEN connection
through which every replica hears the others' changes. A sweep re-checks the peers of the workspaces
this process serves, so an agent held by a replica that died turns offline within OFFLINE_AFTER_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy.exc import DataError, IntegrityError

from devmesh.hub import fleet, limits
from devmesh.hub.api import HubContext, router
from devmesh.hub.database import Database, Event, libpq_url
from devmesh.hub.sessions import SessionRegistry, serve_session
from devmesh.hub.store import jwt_secret

log = logging.getLogger("devmesh.hub")
CONSOLE = Path(__file__).parent / "console"


def create_app(db: Database, *, secret_file: Path | None = None) -> FastAPI:
    """The hub application on a migrated database (`db.migrate()` first)."""
    registry = SessionRegistry(db)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.bind(asyncio.get_running_loop())
        tasks = [asyncio.create_task(_sweep(registry)), asyncio.create_task(registry.run_heartbeat_flush())]
        if db.is_postgres:
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(_listen(db, registry, ready)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 10)
        else:
            db.listener = registry.publish
            fleet.reset_sessions(db)
        try:
            yield
        finally:
            db.listener = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(
        title="devmesh hub",
        openapi_url="/hub/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.hub = HubContext(db=db, secret=jwt_secret(db, secret_file))
    app.state.registry = registry
    app.include_router(router)

    # The API bounds what it takes (422 naming the field); these answer what slips through anyway
    # (a value the database refuses, two requests creating the same row) instead of a bare 500.
    @app.exception_handler(DataError)
    async def refused_value(_request: Request, error: DataError) -> JSONResponse:
        log.warning("the database refused a value: %s", error.orig)
        return JSONResponse({"detail": "a value in the request is not valid for the hub's database"}, 422)

    @app.exception_handler(IntegrityError)
    async def conflict(_request: Request, error: IntegrityError) -> JSONResponse:
        log.warning("conflicting change: %s", error.orig)
        return JSONResponse({"detail": "a concurrent change made this one conflict: try again"}, 409)

    @app.websocket("/hub/v1/agent/session")
    async def agent_session(websocket: WebSocket) -> None:
        await serve_session(websocket, db, registry)

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        """The web console (static; every piece of data it shows comes from the API with a JWT)."""
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-store"})

    return app


async def _sweep(registry: SessionRegistry) -> None:
    while True:
        await asyncio.sleep(limits.SWEEP_INTERVAL_S)
        for workspace_id in registry.workspaces():
            registry.publish(Event("peers", workspace_id))


async def _listen(db: Database, registry: SessionRegistry, ready: asyncio.Event) -> None:
    """LISTEN on the hub channel for as long as the hub runs; reconnects with a capped backoff and
    refreshes every session after a gap (an event may have been missed meanwhile)."""
    import psycopg

    delay = limits.LISTEN_RETRY_INITIAL_S
    first = True
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                libpq_url(db.url), autocommit=True
            ) as connection:
                await connection.execute(f"LISTEN {limits.NOTIFY_CHANNEL}")
                ready.set()
                delay = limits.LISTEN_RETRY_INITIAL_S
                if not first:
                    for workspace_id in registry.workspaces():
                        for kind in ("revision", "peers", "revoke"):
                            registry.publish(Event(kind, workspace_id))
                first = False
                async for notice in connection.notifies():
                    try:
                        registry.publish(Event.decode(notice.payload))
                    except (ValueError, KeyError, TypeError):
                        log.warning("ignored a malformed hub notification: %r", notice.payload[:200])
        except (psycopg.Error, OSError) as error:
            log.warning("hub LISTEN connection lost (%s); retrying in %.1fs", error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, limits.LISTEN_RETRY_MAX_S)


def serve(db_url: str, host: str, port: int, *, secret_file: Path | None = None) -> int:
    """Run the hub until SIGINT/SIGTERM; the exit code for the CLI."""
    import uvicorn

    db = Database(db_url)
    db.migrate()
    app = create_app(db, secret_file=secret_file)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws="websockets-sansio",
        lifespan="on",
        ws_max_size=limits.MESSAGE_MAX_BYTES,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        db.dispose()
    return 0 if server.started else 1
