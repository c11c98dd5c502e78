from __future__ import annotations

import asyncio
from pathlib import Path

from devmesh.config.schema import HealthSection
from devmesh.health.probes import build_probe, probe_cmd, probe_http, probe_tcp


async def _serve(status_line: bytes) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_http_probe_healthy_on_2xx_and_3xx() -> None:
    for status_line, healthy in (
        (b"HTTP/1.1 200 OK", True),
        (b"HTTP/1.1 302 Found", True),
        (b"HTTP/1.1 503 No", False),
    ):
        server, port = await _serve(status_line)
        async with server:
            reason = await probe_http("127.0.0.1", port, "/health", 1.0)
        assert (reason is None) == healthy, reason
        if not healthy:
            assert reason == "GET /health answered 503"


async def test_http_probe_timeout_and_refused() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        assert await probe_http("127.0.0.1", port, "/h", 0.1) == "GET /h did not answer within 0.1s"
        release.set()
        await asyncio.sleep(0.05)
    refused = await probe_tcp("127.0.0.1", port, 0.5)
    assert refused is not None and f"port {port}" in refused


async def test_cmd_probe(tmp_path: Path) -> None:
    assert await probe_cmd("true", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout_s=5) is None
    reason = await probe_cmd(
        "echo broken >&2; exit 3", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout_s=5
    )
    assert reason == "health command exited 3: broken"
    slow = await probe_cmd("sleep 5", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path, timeout_s=0.2)
    assert slow is not None and "did not finish" in slow


def test_build_probe_picks_the_kind(tmp_path: Path) -> None:
    assert build_probe(None, host="127.0.0.1", port=None, env={}, cwd=tmp_path, timeout_s=1) is None
    assert build_probe(None, host="127.0.0.1", port=1, env={}, cwd=tmp_path, timeout_s=1) is not None
    command = HealthSection(cmd="true")
    assert build_probe(command, host="127.0.0.1", port=None, env={}, cwd=tmp_path, timeout_s=1) is not None
