"""The proxy inside a real agent (`devmesh up` as a child process): names, HTTPS, bulk transfers."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import psutil

from support import Project, bulk_project, free_port, http, running_agent

GIB = 1024 * 1024 * 1024


def test_status_shows_proxy_urls_and_the_service_answers_by_name(project: Project) -> None:
    listen = bulk_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        status = agent.status()
        assert status["agent"]["listen"] == f"127.0.0.1:{listen}"
        assert agent.service("bulk")["url"] == f"http://bulk.localhost:{listen}"
        code, headers, body = http(listen, f"bulk.localhost:{listen}", "/health")
        assert code == 200 and body == b"ok"
        assert headers["x-devmesh-served-by"] == "local/bulk"
        code, _, body = http(listen, "nothing.localhost")
        assert code == 404 and "bulk.localhost" in json.loads(body)["hosts"]
        # The access log has the request, as a JSON line.
        access = project.paths.log_dir / "access.log"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "nothing.localhost" not in (
            access.read_text() if access.exists() else ""
        ):
            time.sleep(0.05)
        lines = [json.loads(line) for line in access.read_text().splitlines()]
        recent = agent.client.get("/api/v1/requests")
        assert [(r["host"], r["status"]) for r in recent[-2:]] == [
            ("bulk.localhost", 200),
            ("nothing.localhost", 404),
        ]
        assert {
            "method": "GET",
            "host": "bulk.localhost",
            "path": "/health",
            "status": 200,
            "service": "bulk",
        }.items() <= lines[0].items()


def test_stopped_service_gets_a_503_that_says_how_to_start_it(project: Project) -> None:
    listen = bulk_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        agent.client.post("/api/v1/services/bulk/stop")
        code, _, body = http(listen, "bulk.localhost")
        page = json.loads(body)
        assert code == 503 and "devmesh run bulk" in page["hint"]


def test_https_with_a_certificate_that_verifies_against_devmeshs_ca(project: Project, tmp_path: Path) -> None:
    https = free_port()
    bulk_project(project, proxy=f'https = "127.0.0.1:{https}"')
    home = tmp_path / "home"
    with running_agent(project, env={"DEVMESH_HOME": str(home)}) as agent:
        agent.wait_healthy("bulk")
        assert agent.status()["agent"]["https"] == f"127.0.0.1:{https}"
        context = ssl.create_default_context(cafile=str(home / "ca" / "rootCA.pem"))
        with socket.create_connection(("127.0.0.1", https), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="bulk.localhost") as tls:
                tls.sendall(b"GET /health HTTP/1.1\r\nHost: bulk.localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")
        assert "certificate authority" in agent.log()
        # A client that does not trust devmesh's CA refuses the certificate.
        with socket.create_connection(("127.0.0.1", https), timeout=10) as raw:
            try:
                ssl.create_default_context().wrap_socket(raw, server_hostname="bulk.localhost")
            except ssl.SSLCertVerificationError:
                pass
            else:
                raise AssertionError("the system trust store accepted a certificate from devmesh's CA")


class _RssSampler:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_one_gib_download_and_upload_stream_with_flat_agent_memory(project: Project) -> None:
    listen = bulk_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        assert http(listen, "bulk.localhost", "/download?bytes=1048576")[0] == 200  # warm up the path
        baseline = psutil.Process(agent.process.pid).memory_info().rss

        with _RssSampler(agent.process.pid) as download_memory:
            with socket.create_connection(("127.0.0.1", listen), timeout=60) as sock:
                sock.sendall(f"GET /download?bytes={GIB} HTTP/1.1\r\nHost: bulk.localhost\r\n\r\n".encode())
                buffer = bytearray(1 << 20)
                received = 0
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
                head, _, first = head.partition(b"\r\n\r\n")
                received = len(first)
                assert b"Content-Length: %d" % GIB in head
                while received < GIB:
                    count = sock.recv_into(buffer)
                    assert count, f"the download ended early, at {received} bytes"
                    received += count
        assert received == GIB

        with _RssSampler(agent.process.pid) as upload_memory:
            with socket.create_connection(("127.0.0.1", listen), timeout=60) as sock:
                sock.sendall(
                    f"POST /upload HTTP/1.1\r\nHost: bulk.localhost\r\nContent-Length: {GIB}\r\n\r\n".encode()
                )
                block = b"\1" * (1 << 20)
                for _ in range(GIB // len(block)):
                    sock.sendall(block)
                reply = b""
                while not reply.endswith(b"}"):
                    chunk = sock.recv(4096)
                    assert chunk, reply
                    reply += chunk
        assert json.loads(reply.partition(b"\r\n\r\n")[2]) == {"received": GIB}

        growth = max(download_memory.peak, upload_memory.peak) - baseline
        assert growth < 32 * 1024 * 1024, f"the agent grew by {growth / 2**20:.1f} MiB while moving 2 GiB"


def test_restarting_a_service_drops_no_request(project: Project) -> None:
    listen = bulk_project(project)
    with running_agent(project) as agent:
        agent.wait_healthy("bulk")
        results: list[int] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set() and len(results) < 5000:
                results.append(http(listen, "bulk.localhost", "/health")[0])

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            time.sleep(0.3)
            for _ in range(3):
                agent.client.post("/api/v1/services/bulk/restart")
                time.sleep(0.5)
            agent.wait_healthy("bulk")
            time.sleep(0.3)
        finally:
            stop.set()
            worker.join(30)
        assert agent.service("bulk")["restarts"] >= 3
        assert results and set(results) == {200}, f"statuses seen during restarts: {sorted(set(results))}"
