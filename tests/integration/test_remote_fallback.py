"""The remote fallback: `remote = "https://..."` answers when nothing local (or at a peer) can, with its
own name as Host, over verified TLS."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.tls import LocalCA
from support import TINY_COMMAND, Project, free_port, http, running_agent, wait_for


class Remote(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {"remote": True, "host": self.headers["Host"], "forwarded_host": self.headers["X-Forwarded-Host"]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server on 127.0.0.1 with a certificate from a CA of the test's own."""
    ca, _ = LocalCA.load_or_create(tmp_path / "remote-ca")
    cert_pem, key_pem = ca.issue(["127.0.0.1"])
    (tmp_path / "remote.crt").write_bytes(cert_pem)
    (tmp_path / "remote.key").write_bytes(key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "remote.crt", tmp_path / "remote.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Remote)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca.cert_path
    finally:
        server.shutdown()
        server.server_close()


def test_remote_answers_when_the_local_service_is_down(project: Project, remote: tuple[int, Path]) -> None:
    remote_port, remote_ca = remote
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "remote"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[services.api]
command = "{TINY_COMMAND}"
remote = "https://127.0.0.1:{remote_port}"
[services.reports]
remote = "https://127.0.0.1:{remote_port}"
"""
    )
    # The remote is verified against the system's trust store; here that is the test's own CA.
    with running_agent(project, env={"SSL_CERT_FILE": str(remote_ca)}) as agent:
        agent.wait_healthy("api")
        status, headers, _ = http(listen, "api.localhost", "/x")
        assert status == 200 and headers["x-devmesh-served-by"] == "local/api", "local first"

        status, headers, body = http(listen, "reports.localhost", "/x")  # declared with only a remote
        answer = json.loads(body)
        assert status == 200 and headers["x-devmesh-served-by"] == "remote/reports"
        assert answer["host"] == f"127.0.0.1:{remote_port}", "the remote gets its own name as Host"
        assert answer["forwarded_host"] == "reports.localhost"

        agent.client.post("/api/v1/services/api/stop")
        wait_for(
            lambda: http(listen, "api.localhost", "/x")[1].get("x-devmesh-served-by") == "remote/api",
            timeout=10,
            what="the fallback",
        )


def test_a_remote_with_an_untrusted_certificate_is_refused(
    project: Project, remote: tuple[int, Path]
) -> None:
    remote_port, _ca = remote
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "remote"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[services.reports]
remote = "https://127.0.0.1:{remote_port}"
"""
    )
    with running_agent(project):
        status, _, body = http(listen, "reports.localhost", "/x")
        assert status == 502
        assert "certificate" in json.loads(body)["tried"][0].lower()
