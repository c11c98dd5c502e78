"""Services devmesh does not start, registered by discovery: checked by their port, or following what
their source says of them, and giving their port back when they leave."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devmesh.config.schema import MeshConfig
from devmesh.mesh.snapshot import Health, Origin, RunState
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.manager import Supervisor, SupervisorError
from devmesh.supervisor.runner import ReportedRunner
from support import free_port


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[LogSink]:
    sink = LogSink(tmp_path / "logs", terminal=io.StringIO())
    yield sink
    sink.close()


def supervisor_of(config: MeshConfig, tmp_path: Path, logs: LogSink) -> Supervisor:
    return Supervisor(config, project_dir=tmp_path, owner="test", logs=logs, on_change=lambda: None)


def accepted(listener: socket.socket) -> int:
    """How many connections `listener` got since the last call."""
    count = 0
    listener.setblocking(False)
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


async def test_a_service_whose_source_reports_its_health_is_never_probed(
    tmp_path: Path, logs: LogSink
) -> None:
    # A port-forward listener: it accepts whether or not a pod is behind it.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    supervisor = supervisor_of(MeshConfig.model_validate({}), tmp_path, logs)
    try:
        supervisor.register(
            "api",
            port=port,
            version="1.0",
            health=None,
            origin=Origin.KUBERNETES,
            ready=False,
            ready_detail="no ready pod behind default/api",
        )
        runner = supervisor.runners["api"]
        assert isinstance(runner, ReportedRunner)
        await asyncio.sleep(1.5)  # a port check would have connected at once, then every second
        view = runner.view("localhost")
        assert (view.state, view.health) == (RunState.STOPPED, Health.UNHEALTHY)
        assert view.detail == "no ready pod behind default/api"
        assert view.endpoints == ()  # not routed to

        supervisor.report_health("api", True, None, Origin.KUBERNETES)
        view = runner.view("localhost")
        assert (view.state, view.health, view.detail) == (RunState.RUNNING, Health.HEALTHY, None)
        assert [endpoint.healthy for endpoint in view.endpoints] == [True]
        assert runner.healthy_event.is_set()

        supervisor.report_health("api", False, "no ready pod behind default/api", Origin.KUBERNETES)
        view = runner.view("localhost")
        assert (view.state, view.health) == (RunState.STOPPED, Health.UNHEALTHY)
        assert not runner.healthy_event.is_set()

        # Registering it again the same way passes the readiness on; another way is refused.
        supervisor.register(
            "api", port=port, version="1.0", health=None, origin=Origin.KUBERNETES, ready=True
        )
        assert supervisor.runners["api"] is runner and runner.health is Health.HEALTHY
        with pytest.raises(SupervisorError):
            supervisor.register("api", port=port, version="1.0", health=None, origin=Origin.KUBERNETES)
        with pytest.raises(SupervisorError):
            supervisor.report_health("api", True, None, Origin.DOCKER)
        assert accepted(listener) == 0
    finally:
        await supervisor.down()
        listener.close()


async def test_a_service_registered_without_readiness_is_checked_by_its_port(
    tmp_path: Path, logs: LogSink
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    supervisor = supervisor_of(MeshConfig.model_validate({}), tmp_path, logs)
    try:
        supervisor.register(
            "cache", port=listener.getsockname()[1], version=None, health=None, origin=Origin.DOCKER
        )
        runner = supervisor.runners["cache"]
        assert not isinstance(runner, ReportedRunner)
        async with asyncio.timeout(3):
            await runner.wait_healthy()
        assert accepted(listener) >= 1
        with pytest.raises(SupervisorError):  # its health comes from the probe, not from a report
            supervisor.report_health("cache", False, "gone", Origin.DOCKER)
    finally:
        await supervisor.down()
        listener.close()


async def test_unregistering_gives_the_port_back(tmp_path: Path, logs: LogSink) -> None:
    configured = free_port()
    supervisor = supervisor_of(
        MeshConfig.model_validate({"services": {"api": {"port": configured}}}), tmp_path, logs
    )
    given = supervisor._ports._given  # what the allocator will not hand out
    port = free_port()
    supervisor.register("queue", port=port, version=None, health=None, origin=Origin.DOCKER)
    assert port in given
    await supervisor.unregister("queue", Origin.DOCKER)
    assert port not in given
    # A registration on a port of the config's leaves it reserved for the config's service.
    supervisor.register("shadow", port=configured, version=None, health=None, origin=Origin.DOCKER)
    await supervisor.unregister("shadow", Origin.DOCKER)
    assert configured in given
    await supervisor.down()
