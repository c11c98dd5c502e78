"""The framework examples on real sockets: forwarding to a mesh (a real HTTP server on loopback in the
test, then a real devmesh agent), bodies streamed both ways, and the 502 when the mesh is down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devmesh.config import load_config
from devmesh.middleware.core import BODY_CHUNK_BYTES
from support import Project, free_port, http, running_agent, wait_for

FRAMEWORKS = Path(__file__).resolve().parents[2] / "examples" / "frameworks"
STREAM_WAIT_S = 10.0
FIRST_PIECE = b"a" * (BODY_CHUNK_BYTES + 1000) + b";"
# uvicorn, flask and python3 from this test's environment, as a developer's shell finds them.
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


class MeshStandIn(ThreadingHTTPServer):
    """Plays the devmesh proxy: `/stream` sends its second piece only once the test says the first one
    arrived; `/upload` notes when the first piece of a chunked body arrived; anything else echoes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.release_second_piece = threading.Event()
        self.first_upload_piece = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: MeshStandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _seen(self) -> dict[str, Any]:
        return {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            "x_forwarded_host": self.headers.get("X-Forwarded-Host"),
            "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
            "forwarded_by": self.headers.get("X-DevMesh-Forwarded-By"),
            "cookie": self.headers.get("Cookie"),
            "connection_named": self.headers.get("X-Hop"),
        }

    def _json(self, document: dict[str, Any], status: int = 200) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Mesh", "stand-in")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"6\r\nfirst\n\r\n")
            self.wfile.flush()
            released = self.server.release_second_piece.wait(STREAM_WAIT_S)
            piece = b"second\n" if released else b"late\n"
            self.wfile.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
            return
        self._json(self._seen())

    def do_POST(self) -> None:
        received = b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                received += self.rfile.read(size)
                self.rfile.readline()
                self.server.first_upload_piece.set()
        else:
            received = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._json(
            {**self._seen(), "received": received.decode(), "chunked": "Transfer-Encoding" in self.headers}
        )


@pytest.fixture
def mesh() -> Iterator[MeshStandIn]:
    server = MeshStandIn()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release_second_piece.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextmanager
def example(folder: str, env: dict[str, str]) -> Iterator[int]:
    """The example's `web` service started with the command of its devmesh.toml, as devmesh starts it."""
    root = FRAMEWORKS / folder
    command = load_config(root / "devmesh.toml").config.services["web"].command
    assert isinstance(command, str)
    port = free_port()
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DEVMESH_")}
    # A file, not a pipe: a chatty server never blocks on it.
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=root,
            env={**clean, "PATH": VENV_PATH, "PORT": str(port), "PYTHONDONTWRITEBYTECODE": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )
        try:

            def healthy() -> bool:
                if process.poll() is not None:
                    errors.seek(0)
                    output = errors.read().decode(errors="replace")[-2000:]
                    raise AssertionError(f"{folder} exited with {process.returncode}:\n{output}")
                try:
                    return http(port, "localhost", "/_devmesh/health", timeout=2)[0] == 200
                except OSError:
                    return False

            wait_for(healthy, timeout=30, interval=0.1, what=f"{folder} to answer its health check")
            yield port
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # the shell and the server it started: our own group
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def mesh_env(url: str) -> dict[str, str]:
    """What devmesh gives `web` in a mesh that also has `files`."""
    return {
        "DEVMESH_SERVICE": "web",
        "DEVMESH_PROXY_URL": url,
        "DEVMESH_WEB_URL": "http://web.localhost:7080",
        "DEVMESH_FILES_URL": "http://files.localhost:7080",
    }


def stream_through(port: int, mesh: MeshStandIn) -> list[bytes]:
    """GET /stream for files.localhost: the first piece must arrive before the mesh sends the second."""
    connection = HTTPConnection("127.0.0.1", port, timeout=STREAM_WAIT_S * 2)
    try:
        connection.request("GET", "/stream", headers={"Host": "files.localhost"})
        response = connection.getresponse()
        assert response.status == 200
        first = response.read1(64)  # returns as soon as the first piece is there
        mesh.release_second_piece.set()
        return [first, response.read()]
    finally:
        connection.close()


def upload_through(port: int, mesh: MeshStandIn) -> dict[str, Any]:
    """A chunked POST whose second piece is sent only after the mesh received the first one. The first
    piece is larger than the forwarders' read size: a WSGI server's `wsgi.input.read(n)` may wait for
    all `n` bytes, so WSGI streams in pieces of that size, never holding the whole body."""
    arrived: list[bool] = []

    def pieces() -> Iterator[bytes]:
        yield FIRST_PIECE
        arrived.append(mesh.first_upload_piece.wait(STREAM_WAIT_S))
        yield b"piece-two"

    connection = HTTPConnection("127.0.0.1", port, timeout=STREAM_WAIT_S * 2)
    try:
        connection.request(
            "POST",
            "/upload?x=1",
            body=pieces(),
            headers={"Host": "files.localhost:8000", "Cookie": "a=b", "Connection": "X-Hop", "X-Hop": "1"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        document = json.loads(response.read())
    finally:
        connection.close()
    assert arrived == [True], "the request body was buffered: the mesh saw nothing before it all arrived"
    return document


@pytest.mark.parametrize("folder", ["fastapi_app", "flask_app"])
def test_forwarding_streams_both_ways_with_forwarded_headers(folder: str, mesh: MeshStandIn) -> None:
    with example(folder, mesh_env(mesh.url)) as port:
        assert stream_through(port, mesh) == [b"first\n", b"second\n"]
        document = upload_through(port, mesh)
        assert document["received"] == FIRST_PIECE.decode() + "piece-two" and document["chunked"]
        assert document["path"] == "/upload?x=1"
        assert document["host"] == "files.localhost:8000"
        assert document["x_forwarded_host"] == "files.localhost:8000"
        assert document["x_forwarded_proto"] == "http"
        assert document["x_forwarded_for"] == "127.0.0.1"
        assert document["forwarded_by"] == "web"
        assert document["cookie"] == "a=b"
        assert document["connection_named"] is None  # named by Connection: hop-by-hop
        status, headers, _ = http(port, "files.localhost", "/anything")
        assert (status, headers["x-mesh"]) == (200, "stand-in")
        # The hosts it mounts and its own stay here; what the proxy delivered is not sent back.
        assert json.loads(http(port, "api.localhost", "/items")[2])["service"] == "api"
        assert json.loads(http(port, "web.localhost")[2])["service"] == "web"
        delivered = http(port, "files.localhost", "/", {"Via": "1.1 devmesh"})
        assert json.loads(delivered[2]) == {"service": "web", "subdomain": "files"}
        routes = json.loads(http(port, "localhost", "/_devmesh/routes")[2])
        assert routes["forwarded_hosts"] == ["files.localhost"] and routes["requests"]["forwarded"] == 3


@pytest.mark.parametrize("folder", ["fastapi_app", "flask_app"])
def test_mesh_down_is_a_502_that_says_what_to_check(folder: str) -> None:
    nothing_there = f"http://127.0.0.1:{free_port()}"
    with example(folder, mesh_env(nothing_there)) as port:
        status, headers, body = http(port, "files.localhost", "/report")
        assert status == 502 and headers["content-type"] == "application/json"
        document = json.loads(body)
        assert document["error"] == "mesh unreachable"
        assert document["mesh"] == nothing_there
        assert f"to the devmesh proxy at {nothing_there}" in document["message"]
        assert "devmesh up" in document["message"]
        # The app itself still answers.
        assert http(port, "web.localhost")[0] == 200


def test_django_example_under_runserver() -> None:
    with example("django_project", {}) as port:
        assert json.loads(http(port, "api.localhost", "/items")[2])["service"] == "api"
        assert json.loads(http(port, "acme.tenant.localhost")[2])["tenant"] == "acme"
        health = json.loads(http(port, "web.localhost", "/_devmesh/health")[2])
        assert health["status"] == "ok"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_fastapi_example_under_a_real_agent(project: Project) -> None:
    shutil.copytree(FRAMEWORKS / "fastapi_app", project.root, dirs_exist_ok=True)
    project.write('[proxy]\nadmin = "127.0.0.1:0"\nlisten = "127.0.0.1:0"\n', name="devmesh.local.toml")
    (project.root / "public" / "index.txt").write_text("served by files\n", encoding="utf-8")
    with running_agent(project, env={"PATH": VENV_PATH}) as agent:
        document = agent.wait_healthy("web", "files", timeout=60)
        proxy_port = int(document["agent"]["listen"].rsplit(":", 1)[1])
        web_port = agent.service("web")["port"]
        # Through the proxy: every host of web reaches its process, the middleware picks the sub-app.
        assert json.loads(http(proxy_port, "api.localhost", "/items")[2])["service"] == "api"
        assert json.loads(http(proxy_port, "acme.tenant.localhost")[2])["tenant"] == "acme"
        # Straight to web's own port: files is another service of the mesh, so it goes through the proxy.
        status, headers, body = http(web_port, "files.localhost", "/index.txt")
        assert (status, body) == (200, b"served by files\n")
        assert "devmesh" in headers["via"]
        health = json.loads(http(web_port, "files.localhost", "/_devmesh/health")[2])
        assert health["service"] == "web"
