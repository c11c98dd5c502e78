"""A real Vite dev server behind devmesh: the page, its modules and hot module replacement over the
proxy's WebSocket tunnel, as a browser uses them at http://web.localhost:<port>."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import websockets

from support import Project, free_port, http, running_agent

FIXTURE = Path(__file__).parent.parent / "fixtures" / "vite_app"

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None, reason="npm is not installed (Vite needs Node.js)"
)


@pytest.fixture(scope="module")
def vite_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    app = tmp_path_factory.mktemp("vite") / "app"
    shutil.copytree(FIXTURE, app)
    result = subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        pytest.fail(f"npm install failed (the npm registry must be reachable):\n{result.stderr}")
    return app


def get(port: int, host: str, target: str) -> tuple[int, str]:
    status, _headers, body = http(port, host, target)
    return status, body.decode()


async def hmr_messages(port: int, host: str, token: str, edit: Path) -> list[dict[str, object]]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    messages: list[dict[str, object]] = []
    async with websockets.connect(
        f"ws://{host}/?token={token}", sock=sock, subprotocols=[websockets.Subprotocol("vite-hmr")]
    ) as connection:
        messages.append(json.loads(await asyncio.wait_for(connection.recv(), 20)))
        await asyncio.to_thread(edit.write_text, 'document.getElementById("app").textContent = "v2";\n')
        for _ in range(50):
            if any(m.get("type") in ("update", "full-reload") for m in messages):
                break
            messages.append(json.loads(await asyncio.wait_for(connection.recv(), 20)))
    return messages


def test_vite_page_modules_and_hot_reload_through_the_proxy(project: Project, vite_app: Path) -> None:
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "vite"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[services.web]
command = "node_modules/.bin/vite --port $PORT --strictPort --host 127.0.0.1"
cwd = "{vite_app}"
health = {{ http = "/", interval = "1s" }}
"""
    )
    host = f"web.localhost:{listen}"
    with running_agent(project) as agent:
        agent.wait_healthy("web", timeout=60)
        status, page = get(listen, host, "/")
        assert status == 200 and "/@vite/client" in page
        status, module = get(listen, host, "/main.js")
        assert status == 200 and '"v1"' in module
        status, client = get(listen, host, "/@vite/client")
        found = re.search(r'const wsToken = "([^"]+)"', client)
        assert status == 200 and found, "Vite's client has no HMR token"
        messages = asyncio.run(hmr_messages(listen, host, found.group(1), vite_app / "main.js"))
        assert messages[0]["type"] == "connected"
        assert messages[-1]["type"] in ("update", "full-reload")
        status, module = get(listen, host, "/main.js")
        assert '"v2"' in module
