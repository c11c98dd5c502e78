"""A service declared with only a `remote`: no process, up while the agent's probes find its remote
usable, so that what depends on it starts."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from devmesh.config.schema import MeshConfig
from devmesh.mesh.snapshot import Health, Origin, RunState
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.manager import RemoteRunner, Supervisor, remote_only
from support import free_port


async def test_a_remote_only_service_follows_its_remote_and_releases_its_dependents(tmp_path: Path) -> None:
    config = MeshConfig.model_validate(
        {
            "services": {
                "reports": {"remote": "https://reports.example"},
                # Started elsewhere (nothing listens there): it only has to stop waiting for reports.
                "web": {"port": free_port(), "depends_on": ["reports"]},
            }
        }
    )
    assert remote_only(config.services["reports"]) and not remote_only(config.services["web"])
    supervisor = Supervisor(
        config,
        project_dir=tmp_path,
        owner="test",
        logs=LogSink(tmp_path / "logs", terminal=io.StringIO()),
        on_change=lambda: None,
    )
    reports, web = supervisor.runners["reports"], supervisor.runners["web"]
    assert isinstance(reports, RemoteRunner)
    supervisor.up()
    try:
        await asyncio.sleep(0.05)
        view = reports.view("localhost")
        assert (view.origin, view.state, view.health) == (Origin.REMOTE, RunState.STARTING, Health.UNKNOWN)
        assert view.detail == "waiting for the first answer of https://reports.example"
        assert web.detail == "waiting for reports"

        supervisor.follow_remote("reports", True, None)
        view = reports.view("localhost")
        assert (view.state, view.health, view.detail) == (RunState.RUNNING, Health.HEALTHY, None)
        async with asyncio.timeout(2):
            while web.detail == "waiting for reports":
                await asyncio.sleep(0.01)

        supervisor.follow_remote("reports", False, "GET /: connection refused")
        view = reports.view("localhost")
        assert (view.state, view.health) == (RunState.STOPPED, Health.UNHEALTHY)
        assert view.detail == "GET /: connection refused"
        assert not reports.healthy_event.is_set()

        supervisor.follow_remote("reports", True, None)
        assert reports.healthy_event.is_set()
        supervisor.follow_remote("web", True, None)  # not remote-only: ignored
    finally:
        await supervisor.down()
    view = reports.view("localhost")
    assert (view.state, view.health) == (RunState.STOPPED, Health.UNKNOWN)
