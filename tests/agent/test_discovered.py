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
from dataclasses import replace
from pathlib import Path

from devmesh.agent.discovered import DiscoveryFeeds, make_source, wanted_sources
from devmesh.config.schema import DiscoverySection, KubernetesSection, MeshConfig
from devmesh.discovery.base import DiscoveredService, Report
from devmesh.discovery.kubernetes import KubernetesSource
from devmesh.mesh.snapshot import Health, Origin
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


def supervisor_for(
    tmp_path: Path, config: MeshConfig | None = None
) -> tuple[Supervisor, LogSink, io.StringIO]:
    terminal = io.StringIO()
    logs = LogSink(tmp_path / "logs", terminal=terminal)
    supervisor = Supervisor(
        config or MeshConfig.model_validate({}),
        project_dir=tmp_path,
        owner="test",
        logs=logs,
        on_change=lambda: None,
    )
    return supervisor, logs, terminal


class Sources:
    """One ThreadedSource per origin, made as the feeds ask for them."""

    def __init__(self) -> None:
        self.by_origin: dict[Origin, ThreadedSource] = {}

    def __call__(self, origin: Origin, _settings: tuple[object, ...], _logs: LogSink) -> ThreadedSource:
        source = ThreadedSource()
        source.origin = origin
        self.by_origin[origin] = source
        return source


async def test_a_change_of_readiness_alone_is_passed_on_without_registering_again(tmp_path: Path) -> None:
    supervisor, logs, _ = supervisor_for(tmp_path)
    sources = Sources()
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=sources)
    listener = socket.create_server(("127.0.0.1", 0))  # accepts: it must not make the service healthy
    port = listener.getsockname()[1]
    try:
        feeds.configure(DiscoverySection(kubernetes=KubernetesSection(context="dev")))
        source = sources.by_origin[Origin.KUBERNETES]
        not_ready = DiscoveredService(
            "api", port, ready=False, ready_detail="no ready pod behind default/api"
        )
        await source.sets.put([not_ready])
        await until(lambda: "api" in supervisor.runners)
        runner = supervisor.runners["api"]
        await until(lambda: runner.health is Health.UNHEALTHY)
        assert runner.view("localhost").detail == "no ready pod behind default/api"

        await source.sets.put([replace(not_ready, ready=True, ready_detail="")])
        await until(lambda: runner.health is Health.HEALTHY)
        assert supervisor.runners["api"] is runner  # the same registration: no gap in routing
        await source.sets.put([not_ready])
        await until(lambda: runner.health is Health.UNHEALTHY)
        assert supervisor.runners["api"] is runner
    finally:
        await feeds.close()
        await supervisor.down()
        logs.close()
        listener.close()


async def test_a_report_arriving_during_a_pass_does_not_end_the_reconciler(tmp_path: Path) -> None:
    supervisor, logs, _ = supervisor_for(tmp_path)
    sources = Sources()
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=sources)
    feeds.configure(DiscoverySection(docker=True, kubernetes=KubernetesSection()))
    docker, kubernetes = sources.by_origin[Origin.DOCKER], sources.by_origin[Origin.KUBERNETES]
    unregister = supervisor.unregister

    async def slow_unregister(name: str, origin: Origin = Origin.REGISTERED) -> None:
        # Meanwhile the other source reports for the first time (from its thread, as sources do).
        await kubernetes.sets.put([DiscoveredService("web", free_port())])
        await until(lambda: Origin.KUBERNETES in feeds._latest)
        await unregister(name, origin)

    try:
        await docker.sets.put([DiscoveredService("cache", free_port())])
        await until(lambda: "cache" in supervisor.runners)
        supervisor.unregister = slow_unregister  # type: ignore[method-assign]
        await docker.sets.put([])
        await until(lambda: "cache" not in supervisor.runners)
        await until(lambda: "web" in supervisor.runners)
        assert supervisor.runners["web"].origin is Origin.KUBERNETES
    finally:
        supervisor.unregister = unregister  # type: ignore[method-assign]
        await feeds.close()
        await supervisor.down()
        logs.close()


async def test_close_never_raises_and_unregisters_what_it_can(tmp_path: Path) -> None:
    supervisor, logs, terminal = supervisor_for(tmp_path)
    sources = Sources()
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=sources)
    feeds.configure(DiscoverySection(docker=True))
    await sources.by_origin[Origin.DOCKER].sets.put(
        [DiscoveredService("a", free_port()), DiscoveredService("b", free_port())]
    )
    await until(lambda: {"a", "b"} <= set(supervisor.runners))
    unregister = supervisor.unregister

    async def failing(name: str, origin: Origin = Origin.REGISTERED) -> None:
        if name == "a":
            raise RuntimeError("the supervisor broke")
        await unregister(name, origin)

    supervisor.unregister = failing  # type: ignore[method-assign]
    await feeds.close()  # the agent's shutdown goes on: supervisor.down() comes next
    assert "b" not in supervisor.runners
    assert "unregistering a failed (RuntimeError: the supervisor broke)" in terminal.getvalue()
    await supervisor.down()
    logs.close()


async def test_a_name_the_config_took_is_registered_again_once_the_config_lets_it_go(tmp_path: Path) -> None:
    supervisor, logs, _ = supervisor_for(tmp_path)
    sources = Sources()
    feeds = DiscoveryFeeds(supervisor=supervisor, logs=logs, make=sources)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        feeds.configure(DiscoverySection(docker=True))
        await sources.by_origin[Origin.DOCKER].sets.put([DiscoveredService("cache", port)])
        await until(lambda: "cache" in supervisor.runners)

        # A reload adds cache to the config: the config's service replaces the container's...
        await supervisor.apply(MeshConfig.model_validate({"services": {"cache": {"port": free_port()}}}))
        feeds.configure(DiscoverySection(docker=True))
        await asyncio.sleep(0.1)
        assert supervisor.runners["cache"].origin is Origin.LOCAL
        # ...and a reload that drops it again gives the name back to the container, still running.
        await supervisor.apply(MeshConfig.model_validate({}))
        feeds.configure(DiscoverySection(docker=True))
        await until(lambda: "cache" in supervisor.runners)
        assert (supervisor.runners["cache"].origin, supervisor.runners["cache"].port) == (Origin.DOCKER, port)
    finally:
        await feeds.close()
        await supervisor.down()
        logs.close()
        listener.close()


def test_the_kubeconfig_of_the_config_reaches_the_source(tmp_path: Path) -> None:
    section = DiscoverySection(
        kubernetes=KubernetesSection(context="staging", namespace="shop", kubeconfig="kube/config")
    )
    settings = wanted_sources(section, tmp_path)[Origin.KUBERNETES]
    assert settings == ("staging", "shop", str(tmp_path / "kube" / "config"))  # relative to the project
    logs = LogSink(tmp_path / "logs", terminal=io.StringIO())
    source = make_source(Origin.KUBERNETES, settings, logs)
    assert isinstance(source, KubernetesSource)
    assert (source.context, source.namespace, source.kubeconfig) == settings
    assert str(tmp_path / "kube" / "config") in source.describe()
    # Unset: the agent's $KUBECONFIG, else ~/.kube/config, as kubectl reads them.
    assert wanted_sources(DiscoverySection(kubernetes=KubernetesSection()), tmp_path)[Origin.KUBERNETES] == (
        None,
        "default",
        None,
    )
    logs.close()
