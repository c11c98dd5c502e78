"""The remote fallback: `remote = "https://..."` answers when nothing local (or at a peer) can, with its
own name as Host, over verified TLS."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.tls import LocalCA
from support import TINY_COMMAND, Project, running_agent, wait_for


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


def get(port: int, host: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return (
        int(lines[0].split()[1]),
        {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])},
        body,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        status, headers, _ = get(listen, "api.localhost")
        assert status == 200 and headers["x-devmesh-served-by"] == "local/api", "local first"

        status, headers, body = get(listen, "reports.localhost")  # declared with only a remote
        answer = json.loads(body)
        assert status == 200 and headers["x-devmesh-served-by"] == "remote/reports"
        assert answer["host"] == f"127.0.0.1:{remote_port}", "the remote gets its own name as Host"
        assert answer["forwarded_host"] == "reports.localhost"

        agent.client.post("/api/v1/services/api/stop")
        wait_for(
            lambda: get(listen, "api.localhost")[1].get("x-devmesh-served-by") == "remote/api",
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
        status, _, body = get(listen, "reports.localhost")
        assert status == 502
        assert "certificate" in json.loads(body)["tried"][0].lower()
