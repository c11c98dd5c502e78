"""Docker discovery against a real Docker-compatible engine: rootful podman (tests/engines/podman.py).

`devmesh from-docker` as a user runs it, `--write` into a real config, `DockerSource` following the
engine's events (and the engine going away and coming back), and an agent with `[discovery] docker =
true` routing to a container started after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from devmesh.config import load_config
from devmesh.discovery.base import DiscoveredService
from devmesh.discovery.docker import DockerSource
from devmesh.supervisor.logs import LogSink

if TYPE_CHECKING:
    from engines.podman import PodmanEngine
from support import Project, devmesh, free_port, http, running_agent, wait_for

pytest_plugins = ["engines.podman"]  # the `podman` and `podman_engine` fixtures

COMPOSE_LABELS = {
    "com.docker.compose.project": "shop",
    "com.docker.compose.service": "api",
    "org.opencontainers.image.version": "1.4.2",
}
USER_CONFIG = """\
# The shop: every service of it, one command.
[mesh]
name = "shop"   # peers with the same name share services

[services.web]
port = 3000     # started by `npm run dev`, elsewhere
"""


def test_from_docker_lists_running_containers_with_published_ports(
    podman: PodmanEngine, project: Project
) -> None:
    api = podman.run_http("shop-api-1", labels=COMPOSE_LABELS)
    podman.client().containers.run(podman.image, ["sleep", "60"], name="no-ports", detach=True)

    table = devmesh("from-docker", cwd=project.root, env=podman.env)
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "PORT", "VERSION", "CONTAINER", "IMAGE"]
    assert [row.split() for row in rows] == [["api", str(api.port), "1.4.2", "shop-api-1", podman.image]]
    assert "skipped container no-ports: publishes no TCP port" in table.stderr

    as_json = devmesh("from-docker", "--json", cwd=project.root, env=podman.env)
    document = json.loads(as_json.stdout)
    assert document["docker"] == podman.url
    assert [(s["name"], s["port"], s["container_port"]) for s in document["services"]] == [
        ("api", api.port, 8080)
    ]
    assert document["skipped"] == [{"container": "no-ports", "reason": "publishes no TCP port"}]


def test_from_docker_without_an_engine_fails_naming_docker_host(project: Project, tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    result = devmesh("from-docker", cwd=project.root, env={"DOCKER_HOST": nowhere})
    assert result.returncode == 1
    assert result.stderr.startswith(f"devmesh: no Docker engine answers at {nowhere}")
    assert "DOCKER_HOST" in result.stderr
    assert result.stdout == ""


def test_write_appends_each_container_under_a_comment_and_keeps_the_users_text(
    podman: PodmanEngine, project: Project
) -> None:
    api = podman.run_http("shop-api-1", labels=COMPOSE_LABELS)
    worker = podman.run_http("worker")
    config = project.write(USER_CONFIG)

    result = devmesh("from-docker", "--write", cwd=project.root, env=podman.env)
    assert result.returncode == 0, result.stderr
    assert f"added api (port {api.port}, container shop-api-1) to devmesh.toml" in result.stdout
    text = config.read_text(encoding="utf-8")
    assert text.startswith(USER_CONFIG)  # the user's bytes, all of them, unchanged
    assert f"# from Docker container shop-api-1 (image {podman.image})\n[services.api]\n" in text
    assert f"# from Docker container worker (image {podman.image})\n[services.worker]\n" in text
    services = load_config(config).config.services
    assert services["api"].port == api.port and services["api"].version == "1.4.2"
    assert services["api"].command is None  # the container is started elsewhere
    assert services["api"].health is not None and services["api"].health.tcp
    assert services["worker"].port == worker.port and services["worker"].version == "1"

    again = devmesh("from-docker", "--write", "--json", cwd=project.root, env=podman.env)
    assert again.returncode == 0, again.stderr
    written = json.loads(again.stdout)["write"]
    assert written["added"] == []
    assert set(written["not_added"]) == {"api", "worker"}
    assert "already in devmesh.toml" in written["not_added"]["api"]
    assert config.read_text(encoding="utf-8") == text


def test_write_without_a_config_says_to_run_init(podman: PodmanEngine, project: Project) -> None:
    podman.run_http("shop-api-1", labels=COMPOSE_LABELS)
    result = devmesh("from-docker", "--write", cwd=project.root, env=podman.env)
    assert result.returncode == 2
    assert "devmesh init" in result.stderr
    assert not (project.root / "devmesh.toml").exists()


def test_write_to_a_yaml_config_prints_the_toml_to_add(podman: PodmanEngine, project: Project) -> None:
    api = podman.run_http("shop-api-1", labels=COMPOSE_LABELS)
    config = project.write("mesh:\n  name: shop\n", name="devmesh.yaml")
    result = devmesh("from-docker", "--write", cwd=project.root, env=podman.env)
    assert result.returncode == 2
    assert "YAML" in result.stderr
    assert "[services.api]" in result.stdout and f"port = {api.port}" in result.stdout
    assert config.read_text(encoding="utf-8") == "mesh:\n  name: shop\n"
    # --json: the document first (it is what a script reads), then the failure, exit 2 all the same.
    result = devmesh("from-docker", "--write", "--json", cwd=project.root, env=podman.env)
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert [service["name"] for service in document["services"]] == ["api"]
    assert document["write"]["added"] == [] and "YAML" in document["write"]["error"]
    assert "YAML" in result.stderr
    assert config.read_text(encoding="utf-8") == "mesh:\n  name: shop\n"


# -- the source the agent runs -----------------------------------------------------------------------


class Reports:
    """Every set a source reported, in order; waits on a condition, never on a fixed time."""

    def __init__(self) -> None:
        self.sets: list[list[DiscoveredService]] = []
        self.cancel_seconds: float | None = None  # how long the source took to end once cancelled

    def __call__(self, services: Sequence[DiscoveredService]) -> None:
        self.sets.append(list(services))

    def names(self) -> set[str] | None:
        return {service.name for service in self.sets[-1]} if self.sets else None

    async def until(self, condition: Callable[[set[str]], bool], *, within: float = 15, what: str) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            names = self.names()
            if names is not None and condition(names):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; reports: {self.sets}")


@contextlib.asynccontextmanager
async def following(source: DockerSource) -> AsyncIterator[Reports]:
    reports = Reports()
    task = asyncio.create_task(source.run(reports))
    try:
        yield reports
    finally:
        cancelled_at = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reports.cancel_seconds = time.monotonic() - cancelled_at


def event_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "devmesh-docker-events"]


async def test_the_source_follows_containers_as_they_start_and_go(
    podman: PodmanEngine, tmp_path: Path
) -> None:
    early = podman.run_http("early")
    terminal = io.StringIO()
    logs = LogSink(tmp_path / "logs", terminal=terminal, colour=False)
    source = DockerSource(logs=logs, base_url=podman.url)
    try:
        async with following(source) as reports:
            await reports.until(lambda names: names == {"early"}, what="the container running before")
            assert reports.sets[-1] == [
                DiscoveredService(
                    "early", early.port, version="1", detail=f"container early (image {podman.image})"
                )
            ]
            late = await asyncio.to_thread(podman.run_http, "late", labels={"devmesh.service": "catalog"})
            await reports.until(
                lambda names: names == {"early", "catalog"}, what="the container started after"
            )
            assert next(s.port for s in reports.sets[-1] if s.name == "catalog") == late.port
            await asyncio.to_thread(late.container.stop, timeout=2)
            await reports.until(lambda names: names == {"early"}, what="the stopped container to leave")
            await asyncio.to_thread(early.remove)
            await reports.until(lambda names: names == set(), what="the removed container to leave")
            assert event_threads(), "the source follows events in its own thread"
        # Cancelled: the thread blocked reading the events stream has ended, at once.
        assert reports.cancel_seconds is not None and reports.cancel_seconds < 1
        wait_for(lambda: not event_threads(), timeout=2, what="the events thread to end")
    finally:
        logs.close()
    assert "warning" not in terminal.getvalue()


async def test_the_source_survives_the_engine_going_away_and_coming_back(
    podman: PodmanEngine, tmp_path: Path
) -> None:
    """A second service on the same storage plays the engine that stops and starts again."""
    running = podman.run_http("survivor")
    socket = tmp_path / "second.sock"
    terminal = io.StringIO()
    logs = LogSink(tmp_path / "logs", terminal=terminal, colour=False)
    source = DockerSource(logs=logs, base_url=f"unix://{socket}")
    env = {**os.environ, **podman.env}
    env.pop("CONTAINER_HOST")
    try:
        async with following(source) as reports:
            await reports.until(lambda names: names == set(), what="an empty set while no engine answers")
            service = await asyncio.to_thread(
                subprocess.Popen,
                ["podman", "system", "service", "--time=0", f"unix://{socket}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                await reports.until(lambda names: names == {"survivor"}, what="the engine to be found")
                count = len(reports.sets)
            finally:
                service.send_signal(signal.SIGTERM)
                service.wait(10)
            await reports.until(
                lambda names: names == set() and len(reports.sets) > count, what="the engine's loss reported"
            )
        wait_for(lambda: not event_threads(), timeout=2, what="the events thread to end")
    finally:
        logs.close()
    warnings = [line for line in terminal.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 2, warnings  # once when it was not there, once when it went: not per retry
    assert "no Docker engine answers at" in warnings[0] and str(socket) in warnings[0]
    assert f"lost Docker at unix://{socket}" in warnings[1]
    assert "answers again" in terminal.getvalue()
    assert running.port  # the container itself never stopped


# -- the agent ---------------------------------------------------------------------------------------


def docker_project(project: Project) -> int:
    listen = free_port()
    project.write(
        f"""
[mesh]
name = "shop"
[proxy]
admin = "127.0.0.1:0"
listen = "127.0.0.1:{listen}"
[discovery]
docker = true
"""
    )
    return listen


def services_by_name(agent: Any) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in agent.status()["services"]}


@pytest.mark.timeout(90)
def test_an_agent_routes_to_a_container_started_after_it_and_drops_it_when_removed(
    podman: PodmanEngine, project: Project
) -> None:
    listen = docker_project(project)
    with running_agent(project, env=podman.env) as agent:
        container = podman.run_http("shop-catalog-1", labels={"com.docker.compose.service": "catalog"})
        entry = wait_for(
            lambda: services_by_name(agent).get("catalog"), timeout=20, what="catalog in devmesh status"
        )
        assert entry["origin"] == "docker"
        agent.wait_healthy("catalog")

        status = devmesh("status", "--json", cwd=project.root)
        listed = {item["name"]: item for item in json.loads(status.stdout)["services"]}
        assert listed["catalog"]["origin"] == "docker"

        code, _headers, body = http(listen, "catalog.localhost")
        assert (code, body) == (200, b"shop-catalog-1\n")

        container.remove()
        wait_for(lambda: "catalog" not in services_by_name(agent), timeout=20, what="catalog to leave")
        code, _headers, _body = http(listen, "catalog.localhost")
        assert code == 404
