"""Starlette under devmesh: a main app, an api app with its own lifespan, and a WebSocket on
live.localhost, all in one process.

Run it with `devmesh up` here, or alone with `uvicorn app:app --port 8000`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from devmesh.asgi import DevmeshMiddleware


@asynccontextmanager
async def api_lifespan(_app: Starlette) -> AsyncIterator[dict[str, object]]:
    # The middleware passes lifespan events to mounted apps too, so this runs at server start.
    yield {"catalog": ["teapot", "kettle"]}


async def list_items(request: Request) -> JSONResponse:
    return JSONResponse({"service": "api", "items": request.state.catalog})


api = Starlette(routes=[Route("/items", list_items)], lifespan=api_lifespan)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"live.localhost echoes {text}")
    await websocket.close()


live = Starlette(routes=[WebSocketRoute("/ws", echo)])


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"web, for {request.state.devmesh.host or 'no host'}\n")


app = Starlette(
    routes=[Route("/", home)],
    middleware=[Middleware(DevmeshMiddleware, hosts={"api": api, "live": live})],
)
