"""Traffic shadowing with a real agent: `mirror = "http://..."` and `mirror = "peer=ID"` in devmesh.toml,
copies arriving while the client's latency stays what it is without a mirror, and devmesh_mirror_total."""

from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support import TINY_COMMAND, Project, free_port, http, running_agent, wait_for

# Services that answer on keep-alive connections from one asyncio loop: the least noise for timings.
BULK_COMMAND = f"{sys.executable} {Path(__file__).parent.parent / 'fixtures' / 'bulk_service.py'}"


@dataclass
class Shadow:
    """An HTTP/1.1 server on 127.0.0.1 that records what it gets and answers at once."""

    port: int = 0
    requests: list[dict[str, object]] = field(default_factory=list)


def start_shadow() -> tuple[Shadow, ThreadingHTTPServer]:
    shadow = Shadow()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            shadow.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    **{name.lower(): value for name, value in self.headers.items()},
                }
            )
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"shadow")

        do_GET = do_POST = do_PUT = _any

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shadow.port = server.server_address[1]
    return shadow, server


@pytest.fixture
def shadow_servers() -> Iterator[list[ThreadingHTTPServer]]:
    servers: list[ThreadingHTTPServer] = []
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def metrics(agent) -> str:  # type: ignore[no-untyped-def]
    admin = agent.status()["agent"]["admin"]
    return http(int(admin.rpartition(":")[2]), admin, "/metrics")[2].decode()


def mirror_counts(agent) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """devmesh_mirror_total by its labels as written (`{result="sent",service="api"}`)."""
    counts: dict[str, float] = {}
    for line in metrics(agent).splitlines():
        if line.startswith("devmesh_mirror_total{"):
            labels, _, value = line.removeprefix("devmesh_mirror_total").partition(" ")
            counts[labels] = float(value)
    return counts


def test_copies_arrive_and_a_slow_mirror_leaves_the_latency_unchanged(
    project: Project, shadow_servers: list[ThreadingHTTPServer]
) -> None:
    fast, fast_server = start_shadow()
    primary, primary_server = start_shadow()  # the orders service itself, started elsewhere
    shadow_servers += [fast_server, primary_server]
    listen = free_port()
    slow = free_port()  # a mirror that answers after 1 s, in a process of its own (run by the agent)
    down = free_port()  # nothing listens there
    project.write(
        f"""
[mesh]
name = "shadow"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[services.orders]
port = {primary.port}
mirror = "http://localhost:{fast.port}"
[services.api]
command = "{BULK_COMMAND}"
mirror = "http://127.0.0.1:{slow}"
[services.gone]
command = "{BULK_COMMAND}"
mirror = "http://127.0.0.1:{down}"
[services.plain]
command = "{BULK_COMMAND}"
[services.slow-shadow]
command = "{BULK_COMMAND}"
port = {slow}
env = {{ RESPONSE_DELAY_S = "1" }}
"""
    )
    with running_agent(project) as agent:
        agent.wait_healthy()
        status, headers, body = http(
            listen, "orders.localhost", "/orders?id=7", {"X-Custom": "yes"}, method="POST", body=b"order"
        )
        assert status == 200 and headers["x-devmesh-served-by"] == "local/orders"
        assert body == b"shadow" and len(primary.requests) == 1
        assert "x-devmesh-mirror" not in primary.requests[0], "the real request is untouched"
        wait_for(lambda: len(fast.requests) == 1, what="the copy")
        copy = fast.requests[0]
        assert (copy["method"], copy["path"], copy["body"]) == ("POST", "/orders?id=7", b"order")
        assert copy["host"] == f"localhost:{fast.port}", "Host rewritten to the mirror's"
        assert copy["x-devmesh-mirror"] == "1" and copy["x-custom"] == "yes"
        assert copy["x-forwarded-host"] == "orders.localhost"
        assert copy["x-devmesh-trace-id"] == headers["x-devmesh-trace-id"]

        rounds = _compare_p50(listen)
        api = ('{result="sent",service="api"}', '{result="dropped",service="api"}')

        def settled() -> dict[str, float] | None:
            counts = mirror_counts(agent)
            return counts if sum(counts.get(key, 0) for key in api) == 50 * rounds else None

        by_key = wait_for(settled, timeout=10, what="every copy for the slow mirror answered or dropped")
        sent, dropped = (by_key[key] for key in api)
        assert 8 <= sent <= 8 * rounds and sent + dropped == 50 * rounds, by_key
        assert by_key['{result="sent",service="orders"}'] == 1
        assert by_key['{result="failed",service="gone"}'] == 50 * rounds
        assert not any("plain" in labels for labels in by_key)


def test_a_peer_gets_the_copies_through_its_mesh_port(tmp_path: Path) -> None:
    alice, bob = Project((tmp_path / "alice").resolve()), Project((tmp_path / "bob").resolve())
    alice.root.mkdir()
    bob.root.mkdir()
    mesh_port = free_port()
    alice.write(
        f"""
[mesh]
name = "team"
secret = "s3cret"
share = true
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{free_port()}"
mesh = "127.0.0.1:{mesh_port}"
[peers]
discovery = "off"
[services.api]
command = "{TINY_COMMAND}"
version = "2.0.0"
"""
    )
    bob_listen = free_port()
    host_name = socket.gethostname().split(".")[0]  # a peer's id is <host name>-<random>: stable part
    bob.write(
        f"""
[mesh]
name = "team"
secret = "s3cret"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{bob_listen}"
mesh = "127.0.0.1:{free_port()}"
[peers]
static = ["127.0.0.1:{mesh_port}"]
discovery = "off"
[services.api]
command = "{TINY_COMMAND}"
version = "1.0.0"
mirror = "peer={host_name}"
"""
    )
    with running_agent(alice) as offering, running_agent(bob) as following:
        offering.wait_healthy("api")
        wait_for(
            lambda: any(p["alive"] for p in following.status()["peers"]), timeout=10, what="alice seen by bob"
        )
        following.wait_healthy("api")
        for index in range(3):
            status, headers, _ = http(bob_listen, "api.localhost", f"/shadowed/{index}")
            assert status == 200 and headers["x-devmesh-served-by"] == "local/api@1.0.0"
        wait_for(
            lambda: 'devmesh_peer_requests_total{code="200",service="api"} 3.0' in metrics(offering),
            timeout=10,
            what="three signed copies served by alice's api",
        )
        assert 'devmesh_mirror_total{result="sent",service="api"} 3.0' in metrics(following)
        wait_for(lambda: "GET /shadowed/2" in offering.log(), what="alice's api logging the copy")


def _compare_p50(listen: int) -> int:
    """50 requests to each of plain (no mirror), api (a mirror that answers after 1 s), gone (a mirror
    that is down) and plain again, one after another (interleaved, the work of one request's copy would
    land on the next one): p50 with a mirror within 1.5x of p50 without, and no request near the
    mirror's 1 s. Up to 3 rounds, for a machine busy with other tests; returns how many were run."""
    seen: list[tuple[float, float, float]] = []
    for rounds in range(1, 4):
        plain = _latencies(listen, "plain.localhost", 50)
        mirrored = _latencies(listen, "api.localhost", 50)
        gone = _latencies(listen, "gone.localhost", 50)
        plain += _latencies(listen, "plain.localhost", 50)
        assert max(mirrored) < 0.5 and max(gone) < 0.5, (max(mirrored), max(gone))
        seen.append(tuple(statistics.median(series) for series in (mirrored, gone, plain)))  # type: ignore[arg-type]
        p50_mirrored, p50_gone, p50_plain = seen[-1]
        if p50_mirrored < 1.5 * p50_plain and p50_gone < 1.5 * p50_plain:
            return rounds
    raise AssertionError(f"p50 with a mirror above 1.5x p50 without, in every round: {seen}")


def _latencies(listen: int, host: str, count: int) -> list[float]:
    """The latency of each of `count` GETs to `host`, one after another on one keep-alive connection."""
    connection = HTTPConnection("127.0.0.1", listen, timeout=10)
    timings: list[float] = []
    try:
        for index in range(count):
            started = time.perf_counter()
            connection.request("GET", f"/r{index}", headers={"Host": host})
            answer = connection.getresponse()
            answer.read()
            timings.append(time.perf_counter() - started)
            assert answer.status == 200
    finally:
        connection.close()
    return timings
