"""The agent's side of discovery: what sources report becomes registrations, and only that.

The sources here are small objects of the test that report from a thread, as the Docker and Kubernetes
sources do; the supervisor, its runners and their health checks are the real ones.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from devmesh.agent.discovered import DiscoveryFeeds
from devmesh.config.schema import DiscoverySection, MeshConfig
from devmesh.discovery.base import DiscoveredService, Report
from devmesh.mesh.snapshot import Origin
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.manager import Supervisor
from support import free_port


class ThreadedSource:
    """Reports whatever the test hands it, from a thread of its own."""

    origin = Origin.DOCKER

    def __init__(self) -> None:
        self.sets: asyncio.Queue[list[DiscoveredService]] = asyncio.Queue()
        self.cancelled = asyncio.Event()

    def describe(self) -> str:
        return "the test's containers"

    async def run(self, report: Report) -> None:
        try:
            while True:
                found = await self.sets.get()
                thread = threading.Thread(target=report, args=(found,))
                thread.start()
                await asyncio.to_thread(thread.join)
        finally:
            self.cancelled.set()


async def until(condition: Callable[[], object]) -> None:
    async with asyncio.timeout(3):
        while not condition():
            await asyncio.sleep(0.01)


async def test_reports_become_registrations_and_leave_with_their_source(tmp_path: Path) -> None:
    taken_port = free_port()
    config = MeshConfig.model_validate({"services": {"api": {"port": taken_port}}})
    logs_out = io.StringIO()
    supervisor = Supervisor(
        config,
        project_dir=tmp_path,
        owner="test",
        logs=(logs := LogSink(tmp_path / "logs", terminal=logs_out)),
        on_change=lambda: None,
    )
    source = ThreadedSource()
    made: list[tuple[Origin, Sequence[object]]] = []

    def make(origin: Origin, settings: tuple[object, ...], _logs: LogSink) -> ThreadedSource:
        made.append((origin, settings))
        return source

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=make)
    try:
        feeds.configure(DiscoverySection(docker=True))
        assert made == [(Origin.DOCKER, ())]
        feeds.configure(DiscoverySection(docker=True))  # same settings: the source keeps running
        assert len(made) == 1

        # "api" is the config's: not taken, said once. "cache" is new: registered as a Docker service.
        await source.sets.put(
            [DiscoveredService("api", 1111, detail="container x"), DiscoveredService("cache", port, "7.2")]
        )
        await until(lambda: "cache" in supervisor.runners)
        cache = supervisor.runners["cache"]
        assert (cache.origin, cache.port, cache.spec.version) == (Origin.DOCKER, port, "7.2")
        assert supervisor.runners["api"].origin is Origin.LOCAL
        assert supervisor.runners["api"].port == taken_port
        await until(lambda: "api (container x) not added" in logs_out.getvalue())

        # The same set again changes nothing; a new port re-registers; a missing name leaves.
        await source.sets.put([DiscoveredService("cache", port, "7.2")])
        await asyncio.sleep(0.1)
        assert supervisor.runners["cache"] is cache
        other = socket.create_server(("127.0.0.1", 0))
        other_port = other.getsockname()[1]
        await source.sets.put([DiscoveredService("cache", other_port, "7.2")])
        await until(lambda: "cache" in supervisor.runners and supervisor.runners["cache"].port == other_port)
        await source.sets.put([])
        await until(lambda: "cache" not in supervisor.runners)
        other.close()

        # Turned off in the config: the source is cancelled and what it found leaves.
        await source.sets.put([DiscoveredService("cache", port)])
        await until(lambda: "cache" in supervisor.runners)
        feeds.configure(DiscoverySection(docker=False))
        await until(source.cancelled.is_set)
        await until(lambda: "cache" not in supervisor.runners)
        assert "api" in supervisor.runners
    finally:
        await feeds.close()
        await supervisor.down()
        logs.close()
        listener.close()


async def test_close_unregisters_everything_found(tmp_path: Path) -> None:
    supervisor = Supervisor(
        MeshConfig.model_validate({}),
        project_dir=tmp_path,
        owner="test",
        logs=(logs := LogSink(tmp_path / "logs", terminal=io.StringIO())),
        on_change=lambda: None,
    )
    source = ThreadedSource()
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=lambda *_: source)
    feeds.configure(DiscoverySection(docker=True))
    await source.sets.put([DiscoveredService("queue", free_port())])
    await until(lambda: "queue" in supervisor.runners)
    await feeds.close()
    assert "queue" not in supervisor.runners
    assert source.cancelled.is_set()
    await supervisor.down()
    logs.close()


async def test_a_missing_extra_is_logged_with_the_install_line(tmp_path: Path) -> None:
    terminal = io.StringIO()
    supervisor = Supervisor(
        MeshConfig.model_validate({}),
        project_dir=tmp_path,
        owner="test",
        logs=(logs := LogSink(tmp_path / "logs", terminal=terminal)),
        on_change=lambda: None,
    )

    def missing(*_: object) -> ThreadedSource:
        raise ImportError("No module named 'docker'")

    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=missing)
    feeds.configure(DiscoverySection(docker=True))
    await feeds.close()
    logs.close()
    assert "pip install 'devmesh[docker]'" in terminal.getvalue()
