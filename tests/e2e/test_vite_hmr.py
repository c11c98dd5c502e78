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

from support import Project, running_agent

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, host: str, target: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(head.split()[1]), body.decode()


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


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
