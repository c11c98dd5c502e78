"""The remote fallback ("mirror mode"): `remote = "https://..."` answers when nothing local (or at a peer)
can, with its own name as Host, over TLS with SNI and certificate verification; the agent probes it for
its health and its version, which `requires` checks; a service with only a remote is up while its remote
is."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.tls import LocalCA
from support import TINY_COMMAND, Project, devmesh, free_port, http, running_agent, wait_for


@dataclass
class RemoteServer:
    """An HTTPS server on 127.0.0.1 with a certificate from a CA of the test's own."""

    port: int
    ca: Path  # the CA's certificate: SSL_CERT_FILE for the agent
    sni: list[str | None] = field(default_factory=list)  # server names of the TLS handshakes
    requests: list[dict[str, str]] = field(default_factory=list)  # path and headers, as received


RemoteFactory = Callable[..., RemoteServer]


@pytest.fixture
def make_remote(tmp_path: Path) -> Iterator[RemoteFactory]:
    """`make_remote(names=..., version_header=..., version_body=...)`: start a remote.

    names: what its certificate is for; version_header: sent as X-DevMesh-Version on every answer;
    version_body: `(content type, body)` of `GET /version` (else it answers 404).
    """
    servers: list[ThreadingHTTPServer] = []
    ca, _ = LocalCA.load_or_create(tmp_path / "remote-ca")

    def start(
        *,
        names: tuple[str, ...] = ("127.0.0.1",),
        version_header: str | None = None,
        version_body: tuple[str, bytes] | None = None,
    ) -> RemoteServer:
        index = len(servers)
        cert_pem, key_pem = ca.issue(list(names))
        (tmp_path / f"remote{index}.crt").write_bytes(cert_pem)
        (tmp_path / f"remote{index}.key").write_bytes(key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp_path / f"remote{index}.crt", tmp_path / f"remote{index}.key")
        remote = RemoteServer(0, ca.cert_path)

        def record_sni(_sock: object, name: str | None, _context: object) -> None:
            remote.sni.append(name)

        context.sni_callback = record_sni

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                remote.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                if self.path == "/version":
                    if version_body is None:
                        self._answer(404, "text/plain", b"no such page")
                    else:
                        self._answer(200, *version_body)
                    return
                body = json.dumps(
                    {
                        "remote": True,
                        "path": self.path,
                        "host": self.headers["Host"],
                        "forwarded_host": self.headers["X-Forwarded-Host"],
                    }
                ).encode()
                self._answer(200, "application/json", body)

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                if version_header is not None:
                    self.send_header("X-DevMesh-Version", version_header)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        remote.port = server.server_address[1]
        return remote

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _config(listen: int, services: str, *, policy: str = "reject") -> str:
    return f"""
[mesh]
name = "remote"
version_policy = "{policy}"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
{services}
"""


def test_remote_answers_when_the_local_service_is_down(project: Project, make_remote: RemoteFactory) -> None:
    remote = make_remote()
    listen = free_port()
    project.write(
        _config(
            listen,
            f"""
[services.api]
command = "{TINY_COMMAND}"
remote = "https://127.0.0.1:{remote.port}"
[services.reports]
remote = "https://127.0.0.1:{remote.port}"
""",
        )
    )
    # The remote is verified against the system's trust store; here that is the test's own CA.
    with running_agent(project, env={"SSL_CERT_FILE": str(remote.ca)}) as agent:
        agent.wait_healthy("api")
        status, headers, _ = http(listen, "api.localhost", "/x")
        assert status == 200 and headers["x-devmesh-served-by"] == "local/api", "local first"

        status, headers, body = http(listen, "reports.localhost", "/x")  # declared with only a remote
        answer = json.loads(body)
        assert status == 200 and headers["x-devmesh-served-by"] == "remote/reports"
        assert answer["host"] == f"127.0.0.1:{remote.port}", "the remote gets its own name as Host"
        assert answer["forwarded_host"] == "reports.localhost"

        agent.client.post("/api/v1/services/api/stop")
        wait_for(
            lambda: http(listen, "api.localhost", "/x")[1].get("x-devmesh-served-by") == "remote/api",
            timeout=10,
            what="the fallback",
        )


def test_a_remote_gets_sni_and_its_own_host_and_a_remote_only_service_is_up(
    project: Project, make_remote: RemoteFactory
) -> None:
    remote = make_remote(names=("localhost",))
    listen = free_port()
    project.write(
        _config(
            listen,
            f"""
[services.reports]
remote = "https://localhost:{remote.port}"
[services.web]
command = "{TINY_COMMAND}"
depends_on = ["reports"]
""",
        )
    )
    with running_agent(project, env={"SSL_CERT_FILE": str(remote.ca)}) as agent:
        # A remote-only service is running and healthy while its remote answers: depends_on on it
        # does not wait forever, and neither does `devmesh up` nor `devmesh wait`.
        document = agent.wait_healthy("reports", "web")
        reports = next(entry for entry in document["services"] if entry["name"] == "reports")
        assert (reports["origin"], reports["state"], reports["health"]) == ("remote", "running", "healthy")
        assert reports["endpoints"] == [
            {
                "address": f"localhost:{remote.port}",
                "origin": "remote",
                "peer": None,
                "version": None,
                "healthy": True,
            }
        ]

        status, headers, body = http(listen, "reports.localhost", "/report?q=1")
        assert status == 200, body
        assert headers["x-devmesh-served-by"] == "remote/reports"
        answer = json.loads(body)
        assert answer["path"] == "/report?q=1"
        assert answer["host"] == f"localhost:{remote.port}", "Host rewritten to the remote's own name"
        assert answer["forwarded_host"] == "reports.localhost"
        # Every TLS handshake (the probes', the proxy's) named the remote: SNI.
        assert remote.sni and set(remote.sni) == {"localhost"}
        proxied = [r for r in remote.requests if r["path"] == "/report?q=1"]
        assert len(proxied) == 1 and proxied[0]["x-forwarded-host"] == "reports.localhost"
        probes = [r for r in remote.requests if r.get("user-agent") == "devmesh-remote-probe"]
        assert probes and probes[0]["path"] == "/" and probes[0]["host"] == f"localhost:{remote.port}"


@pytest.mark.parametrize("mistake", ["another CA", "another name"])
def test_a_remote_whose_certificate_does_not_verify_is_not_used(
    project: Project, make_remote: RemoteFactory, tmp_path: Path, mistake: str
) -> None:
    if mistake == "another CA":
        remote = make_remote(names=("localhost",))
        other, _ = LocalCA.load_or_create(tmp_path / "other-ca")
        trusted = other.cert_path  # the agent trusts a CA, but not the one that issued the certificate
    else:
        remote = make_remote(names=("127.0.0.1",))  # the right CA, a certificate for another name
        trusted = remote.ca
    listen = free_port()
    project.write(
        _config(
            listen,
            f"""
[services.reports]
remote = "https://localhost:{remote.port}"
""",
        )
    )
    with running_agent(project, env={"SSL_CERT_FILE": str(trusted)}) as agent:
        entry = wait_for(
            lambda: (e := agent.service("reports"))["health"] == "unhealthy" and e,
            timeout=10,
            what="the remote found unusable",
        )
        assert entry["state"] == "stopped"
        assert "certificate verify failed" in entry["detail"]
        status, _, body = http(listen, "reports.localhost", "/x", headers={"Accept": "application/json"})
        page = json.loads(body)
        assert status == 503
        assert "certificate verify failed" in page["message"]
        assert "SSL_CERT_FILE" in page["hint"]
        assert remote.requests == [], "nothing was sent to a remote whose certificate did not verify"


def test_a_remote_version_outside_requires_is_refused_under_reject(
    project: Project, make_remote: RemoteFactory
) -> None:
    remote = make_remote(version_header="1.3.0")
    listen = free_port()
    project.write(
        _config(
            listen,
            f"""
[services.reports]
remote = "https://127.0.0.1:{remote.port}"
requires = ">=2"
[services.billing]
remote = "https://127.0.0.1:{remote.port}"
requires = "^1.2"
[services.api]
command = "{TINY_COMMAND}"
remote = "https://127.0.0.1:{remote.port}"
requires = ">=2"
""",
        )
    )
    with running_agent(project, env={"SSL_CERT_FILE": str(remote.ca)}) as agent:
        agent.wait_healthy("billing", "api")
        billing = agent.service("billing")
        assert billing["version"] == "1.3.0", "a remote-only service shows what its remote announces"
        status, headers, _ = http(listen, "billing.localhost", "/x")
        assert status == 200 and headers["x-devmesh-served-by"] == "remote/billing@1.3.0"

        reports = wait_for(
            lambda: (e := agent.service("reports"))["health"] == "unhealthy" and e, what="reports refused"
        )
        assert reports["endpoints"] == [], "filtered out, as a peer's endpoint would be"
        status, _, body = http(listen, "reports.localhost", "/x", headers={"Accept": "application/json"})
        message = json.loads(body)["message"]
        assert status == 503
        assert "1.3.0" in message and "'>=2'" in message, message

        # With a local endpoint, the remote is not needed: no detail while api runs here...
        status, headers, _ = http(listen, "api.localhost", "/x")
        assert headers["x-devmesh-served-by"] == "local/api"
        # ...and without one, the page says which version the remote announced and what was required.
        agent.client.post("/api/v1/services/api/stop")
        wait_for(lambda: agent.service("api")["state"] == "stopped", what="api stopped")
        status, _, body = http(listen, "api.localhost", "/x", headers={"Accept": "application/json"})
        message = json.loads(body)["message"]
        assert status == 503 and "announces 1.3.0" in message and "'>=2'" in message, message
        log = agent.log()
        assert log.count("announces 1.3.0, outside requires '>=2'; not used") == 2  # reports and api


@pytest.mark.parametrize(
    "version_body",
    [("application/json", b'{"version": "1.3.0", "commit": "abc"}'), ("text/plain", b"1.3.0\n")],
    ids=["json", "text"],
)
def test_a_remote_version_from_its_version_endpoint_is_used_with_a_warning_under_warn(
    project: Project, make_remote: RemoteFactory, version_body: tuple[str, bytes]
) -> None:
    remote = make_remote(version_body=version_body)  # no header: the version comes from GET /version
    listen = free_port()
    project.write(
        _config(
            listen,
            f"""
[services.reports]
remote = "https://127.0.0.1:{remote.port}"
requires = ">=2"
""",
            policy="warn",
        )
    )
    with running_agent(project, env={"SSL_CERT_FILE": str(remote.ca)}) as agent:
        agent.wait_healthy("reports")
        assert agent.service("reports")["endpoints"][0]["version"] == "1.3.0"
        for _ in range(5):
            status, headers, _ = http(listen, "reports.localhost", "/x")
            assert status == 200 and headers["x-devmesh-served-by"] == "remote/reports@1.3.0"
        agent.status()
        warning = "announces 1.3.0, outside requires '>=2'; used anyway"
        assert agent.log().count(warning) == 1, agent.log()


def test_up_detach_returns_once_a_remote_only_service_is_up(
    project: Project, make_remote: RemoteFactory
) -> None:
    remote = make_remote()
    project.write(
        _config(
            0,
            f"""
[services.reports]
remote = "https://127.0.0.1:{remote.port}"
[services.web]
command = "{TINY_COMMAND}"
depends_on = ["reports"]
""",
        )
    )
    env = {"SSL_CERT_FILE": str(remote.ca)}
    try:
        # `up --detach` returns once every service is healthy: with a remote-only service among them it
        # waited until its timeout.
        result = devmesh("up", "--detach", "--timeout", "20", cwd=project.root, env=env)
        assert result.returncode == 0, result.stderr
        document = json.loads(devmesh("status", "--json", cwd=project.root).stdout)
        states = {entry["name"]: (entry["origin"], entry["health"]) for entry in document["services"]}
        assert states == {"reports": ("remote", "healthy"), "web": ("local", "healthy")}
    finally:
        assert devmesh("down", cwd=project.root).returncode == 0
    wait_for(lambda: not project.leftovers(), timeout=10, what="no process left behind")
