"""The remote's probe: its version (header, `GET /version`), its health, against real TLS servers on
loopback with a CA of the test's own."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from devmesh.health.remote import (
    ProbeResult,
    RemoteProber,
    RemoteTarget,
    next_status,
    probe_remote,
    version_from_body,
    version_from_headers,
)
from devmesh.routing.remote import RemoteStatus
from devmesh.tls import LocalCA
from http_support import Message, backend, response


@pytest.mark.parametrize(
    ("content_type", "body", "version"),
    [
        ("application/json", b'{"version": "1.4.2", "commit": "abc"}', "1.4.2"),
        ("application/json; charset=utf-8", b'{"version": 2}', "2"),
        (None, b'{"version": "v1.4.2"}', "v1.4.2"),
        ("text/plain", b"1.4.2\n", "1.4.2"),
        (None, b" 1.4.2rc1 ", "1.4.2rc1"),
        ("text/html", b"1.4.2", None),  # a catch-all page, whatever it says
        ("text/plain", b"1.4.2\nbuilt on a Tuesday", None),
        ("text/plain", b"not found", None),
        ("application/json", b'{"name": "api"}', None),
        ("application/json", b"[1, 2]", None),
        ("application/json", b"{not json", None),
    ],
)
def test_version_from_a_version_endpoint(content_type: str | None, body: bytes, version: str | None) -> None:
    assert version_from_body(body, content_type) == version


def test_version_from_the_header() -> None:
    assert version_from_headers({"x-devmesh-version": " 1.4.2 "}) == "1.4.2"
    assert version_from_headers({"x-devmesh-version": "<script>"}) is None
    assert version_from_headers({"x-version": "1.4.2"}) is None


def test_the_first_probe_decides_then_a_working_remote_survives_one_lost_probe() -> None:
    down = ProbeResult(False, reason="GET /: connection refused")
    assert next_status(None, down, 1, 2) == RemoteStatus(False, None, "GET /: connection refused")
    up = next_status(None, ProbeResult(True, "1.4.2"), 0, 2)
    assert up == RemoteStatus(True, "1.4.2")
    assert next_status(up, down, 1, 2) is up
    assert next_status(up, down, 2, 2) == RemoteStatus(False, "1.4.2", "GET /: connection refused")


@pytest.fixture
async def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for "localhost", client context trusting the test CA)."""
    ca, _ = LocalCA.load_or_create(tmp_path / "ca")
    cert, key = ca.issue(["localhost"])
    (tmp_path / "r.crt").write_bytes(cert)
    (tmp_path / "r.key").write_bytes(key)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "r.crt", tmp_path / "r.key")
    return server, ssl.create_default_context(cafile=str(ca.cert_path))


def answering(
    routes: dict[str, bytes],
) -> Callable[[Message, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handler(request: Message, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(routes.get(request.target, response(404, b"no")))

    return handler


async def test_a_probe_reads_the_version_header_over_verified_tls(
    tls_files: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = tls_files
    routes = {"/health": response(200, b"ok", {"X-DevMesh-Version": "1.4.2"})}
    async with backend(answering(routes), tls=server_tls) as remote:
        url = f"https://localhost:{remote.port}"
        result = await probe_remote(RemoteTarget(url, "/health"), context=client_tls, timeout_s=2)
        assert result == ProbeResult(True, "1.4.2")
        assert [(r.target, r.header("host")) for r in remote.requests] == [
            ("/health", f"localhost:{remote.port}")
        ]

        untrusted = await probe_remote(RemoteTarget(url), context=ssl.create_default_context(), timeout_s=2)
        assert not untrusted.healthy and untrusted.reason is not None
        assert untrusted.reason.startswith("GET /: certificate verify failed")


async def test_a_probe_falls_back_to_the_version_endpoint_and_any_answer_below_500_is_healthy() -> None:
    routes = {
        "/": response(401, b"who are you?"),
        "/version": response(200, b'{"version": "0.9.1"}', {"Content-Type": "application/json"}),
    }
    async with backend(answering(routes)) as remote:
        result = await probe_remote(
            RemoteTarget(f"http://127.0.0.1:{remote.port}"), context=None, timeout_s=2
        )
        assert result == ProbeResult(True, "0.9.1")
    async with backend(answering({})) as remote:  # /version answers 404: no version, still healthy
        result = await probe_remote(
            RemoteTarget(f"http://127.0.0.1:{remote.port}"), context=None, timeout_s=2
        )
        assert result == ProbeResult(True, None)
    async with backend(answering({"/": response(503, b"down")})) as remote:
        result = await probe_remote(
            RemoteTarget(f"http://127.0.0.1:{remote.port}"), context=None, timeout_s=2
        )
        assert result == ProbeResult(False, reason="GET / answered 503")


async def test_a_probe_of_a_remote_that_never_answers_times_out() -> None:
    async def silent(_request: Message, _reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async with backend(silent) as remote:
        result = await probe_remote(
            RemoteTarget(f"http://127.0.0.1:{remote.port}"), context=None, timeout_s=0.2
        )
        assert result == ProbeResult(False, reason="GET /: no answer within 0.2s")


async def test_the_prober_follows_its_targets_and_stops_on_close() -> None:
    changes: list[str] = []
    async with backend(answering({"/": response(200, b"", {"X-DevMesh-Version": "3.0"})})) as remote:
        prober = RemoteProber(
            tls_context=ssl.create_default_context, on_change=changes.append, interval_s=0.05, timeout_s=1
        )
        prober.update({"api": RemoteTarget(f"http://127.0.0.1:{remote.port}")})
        await _until(lambda: "api" in prober.statuses)
        assert prober.statuses["api"] == RemoteStatus(True, "3.0")
        await _until(lambda: len(remote.requests) >= 3)  # it keeps probing; the status does not change
        assert changes == ["api"]
        prober.update({})
        assert prober.statuses == {} and changes == ["api", "api"]
        prober.update({"api": RemoteTarget(f"http://127.0.0.1:{remote.port}")})
        await prober.close()
        seen = len(remote.requests)
        await asyncio.sleep(0.2)
        assert len(remote.requests) <= seen + 1, "no probe after close"


async def _until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)
