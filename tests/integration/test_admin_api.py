"""The admin API over a real socket: token on writes, loopback host names, registrations."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from support import TINY_COMMAND, AgentProcess, Project, running_agent, wait_for

CONFIG = f"""
[mesh]
name = "admin"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:0"
[services.api]
command = "{TINY_COMMAND}"
health = {{ http = "/health", interval = "0.2s" }}
"""


def _request(
    agent: AgentProcess,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    host: str | None = None,
) -> tuple[int, Any]:
    host_name, _, port = agent.client.record.admin.rpartition(":")
    connection = http.client.HTTPConnection(host_name, int(port), timeout=5)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if host is not None:
        headers["Host"] = host
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return response.status, json.loads(data) if data else None


@pytest.fixture
def agent(project: Project):  # type: ignore[no-untyped-def]
    project.write(CONFIG)
    with running_agent(project) as running:
        running.wait_healthy()
        yield running


def test_writes_without_the_token_are_refused(agent: AgentProcess) -> None:
    pid = agent.service("api")["pid"]
    for token in (None, "wrong-token"):
        status, body = _request(agent, "POST", "/api/v1/services/api/restart", token=token)
        assert status == 401
        assert ".devmesh/token" in body["error"]
        status, _ = _request(agent, "POST", "/api/v1/register", token=token, body={"name": "x", "port": 1})
        assert status == 401
    assert agent.service("api")["pid"] == pid
    token = agent.project.paths.token_file.read_text().strip()
    status, body = _request(agent, "POST", "/api/v1/services/api/restart", token=token)
    assert status == 200
    wait_for(lambda: agent.service("api")["pid"] not in (None, pid), what="the restart")


def test_token_file_is_private(agent: AgentProcess) -> None:
    assert agent.project.paths.token_file.stat().st_mode & 0o077 == 0


def test_reads_need_no_token_but_a_loopback_host(agent: AgentProcess) -> None:
    status, body = _request(agent, "GET", "/api/v1/services")
    assert status == 200
    assert body[0]["name"] == "api"
    status, _ = _request(agent, "GET", "/api/v1/services", host="evil.example:7070")
    assert status == 403  # a DNS-rebinding page cannot read the mesh either
    status, body = _request(agent, "GET", "/healthz")
    assert (status, body["status"]) == (200, "ok")


def test_openapi_document_lists_the_routes(agent: AgentProcess) -> None:
    status, body = _request(agent, "GET", "/api/openapi.json")
    assert status == 200
    for path in ("/api/v1/services", "/api/v1/register", "/api/v1/services/{name}/restart", "/healthz"):
        assert path in body["paths"]


def test_unknown_service_is_404(agent: AgentProcess) -> None:
    token = agent.project.paths.token_file.read_text().strip()
    status, body = _request(agent, "POST", "/api/v1/services/nope/stop", token=token)
    assert status == 404
    assert "nope" in body["error"]


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ready" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_external_process_registers_and_leaves(agent: AgentProcess) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = agent.project.paths.token_file.read_text().strip()
    try:
        port = server.server_address[1]
        status, _ = _request(
            agent,
            "POST",
            "/api/v1/register",
            token=token,
            body={"name": "ide", "port": port, "version": "0.9", "health": "/ready"},
        )
        assert status == 201
        entry = wait_for(
            lambda: agent.service("ide")["health"] == "healthy" and agent.service("ide"), what="ide healthy"
        )
        assert entry["origin"] == "registered"
        assert entry["version"] == "0.9"
        assert entry["port"] == port
        status, body = _request(
            agent, "POST", "/api/v1/register", token=token, body={"name": "api", "port": port}
        )
        assert status == 409
        assert "config" in body["error"]
        status, _ = _request(agent, "DELETE", "/api/v1/register/ide", token=token)
        assert status == 200
        assert "ide" not in [entry["name"] for entry in agent.status()["services"]]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_register_validates_its_body(agent: AgentProcess) -> None:
    token = agent.project.paths.token_file.read_text().strip()
    status, _body = _request(
        agent, "POST", "/api/v1/register", token=token, body={"name": "Bad Name", "port": 0}
    )
    assert status == 422


def test_admin_refuses_to_bind_outside_loopback(project: Project) -> None:
    from support import devmesh

    project.write(CONFIG.replace('admin = "127.0.0.1:0"', 'admin = "0.0.0.0:0"'))
    result = devmesh("up", cwd=project.root)
    assert result.returncode == 1
    assert "loopback" in result.stderr


def test_admin_port_in_use_is_a_clear_error(project: Project) -> None:
    from support import devmesh

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        project.write(CONFIG.replace('admin = "127.0.0.1:0"', f'admin = "127.0.0.1:{port}"'))
        result = devmesh("up", cwd=project.root)
        assert result.returncode == 1
        assert "[proxy] admin" in result.stderr
        assert project.leftovers() == []
    finally:
        holder.close()
