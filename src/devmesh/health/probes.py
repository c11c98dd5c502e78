"""Probes: one attempt to learn whether a service is healthy. Each returns None when healthy, or a short
reason when not (shown in `devmesh status` and on error pages)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from devmesh.config.schema import HealthSection

Probe = Callable[[], Awaitable[str | None]]


async def probe_tcp(host: str, port: int, timeout_s: float) -> str | None:
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that lands as
        # the inner call completes, and a monitor that cannot be cancelled stalls its service's runner.
        async with asyncio.timeout(timeout_s):
            _reader, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer on port {port} within {timeout_s:g}s"
    except OSError as error:
        return f"port {port}: {error.strerror or error}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


async def probe_http(host: str, port: int, path: str, timeout_s: float) -> str | None:
    """GET `path`; healthy on a 2xx or 3xx status."""
    try:
        async with asyncio.timeout(timeout_s):
            return await _http_get_status(host, port, path)
    except TimeoutError:
        return f"GET {path} did not answer within {timeout_s:g}s"
    except OSError as error:
        return f"GET {path}: {error.strerror or error}"


async def _http_get_status(host: str, port: int, path: str) -> str | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: devmesh-health\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return f"GET {path}: not an HTTP response"
    status = int(parts[1])
    if 200 <= status < 400:
        return None
    return f"GET {path} answered {status}"


async def probe_cmd(command: str, *, env: Mapping[str, str], cwd: Path, timeout_s: float) -> str | None:
    """Run `command` in a shell; healthy when it exits 0."""
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-c",
        command,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout_s):
            _out, err = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        return f"health command did not finish within {timeout_s:g}s"
    if process.returncode == 0:
        return None
    last = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    return f"health command exited {process.returncode}" + (f": {last[0][:200]}" if last else "")


def build_probe(
    health: HealthSection | None,
    *,
    host: str,
    port: int | None,
    env: Mapping[str, str],
    cwd: Path,
    timeout_s: float,
) -> Probe | None:
    """The probe for a service's health section; a bare TCP probe of `port` when there is none."""
    if health is not None and health.cmd is not None:
        command = health.cmd
        return lambda: probe_cmd(command, env=env, cwd=cwd, timeout_s=timeout_s)
    if port is None:
        return None
    if health is not None and health.http is not None:
        path = health.http
        return lambda: probe_http(host, port, path, timeout_s)
    return lambda: probe_tcp(host, port, timeout_s)
