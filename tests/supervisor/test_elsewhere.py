"""A service served elsewhere (no command, no port): its state from what its peers and its remote say."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from devmesh.agent.views import peer_source
from devmesh.config.schema import MeshConfig
from devmesh.config.units import Address
from devmesh.mesh.snapshot import Health, Origin, RunState, ServiceView
from devmesh.peers.catalog import Catalog, OfferedService
from devmesh.peers.follower import PeerState
from devmesh.peers.merge import merge_peers
from devmesh.supervisor.elsewhere import NOTHING_SERVES, Source, decide, served_elsewhere
from devmesh.supervisor.logs import LogSink
from devmesh.supervisor.manager import RemoteRunner, Supervisor
from support import free_port

UP, DOWN, UNHEARD = Source(True), Source(False, "down"), Source(None, "waiting")


@pytest.mark.parametrize(
    ("peers", "remote", "expected"),
    [
        (UP, None, (RunState.RUNNING, Health.HEALTHY, None)),
        (DOWN, UP, (RunState.RUNNING, Health.HEALTHY, None)),
        (UNHEARD, UP, (RunState.RUNNING, Health.HEALTHY, None)),
        (None, UP, (RunState.RUNNING, Health.HEALTHY, None)),
        (UNHEARD, None, (RunState.STARTING, Health.UNKNOWN, "waiting")),
        (UNHEARD, DOWN, (RunState.STARTING, Health.UNKNOWN, "waiting; down")),
        (DOWN, None, (RunState.STOPPED, Health.UNHEALTHY, "down")),
        (DOWN, Source(False, "refused"), (RunState.STOPPED, Health.UNHEALTHY, "down; refused")),
        (None, None, (RunState.STOPPED, Health.UNHEALTHY, NOTHING_SERVES)),
    ],
)
def test_decide(
    peers: Source | None, remote: Source | None, expected: tuple[RunState, Health, str | None]
) -> None:
    assert decide(peers, remote) == expected


def test_served_elsewhere_is_neither_command_nor_port() -> None:
    config = MeshConfig.model_validate(
        {
            "services": {
                "api": {"requires": "^1.4"},
                "reports": {"remote": "https://reports.example"},
                "web": {"command": "true"},
                "db": {"port": 5432},
            }
        }
    )
    assert [name for name, spec in config.services.items() if served_elsewhere(spec)] == ["api", "reports"]


def _declared(requires: str | None = "^1.4") -> ServiceView:
    return ServiceView("api", Origin.PEER, RunState.STARTING, Health.UNKNOWN, ("api",), requires=requires)


def _peer(port: int, *services: OfferedService, peer: str = "alice-1") -> PeerState:
    catalog = Catalog(peer=peer, mesh="m", epoch=1.0, revision=1, services=list(services))
    return PeerState(Address("127.0.0.1", port), catalog=catalog)


def _merged(*states: PeerState, requires: str | None = "^1.4") -> ServiceView:
    live = [(s.address, s.catalog) for s in states if s.catalog is not None]
    return merge_peers({"api": _declared(requires)}, live)["api"]


def test_peer_source_from_the_merged_views() -> None:
    healthy = _peer(7090, OfferedService("api", "1.4.2", True))
    assert peer_source(_merged(healthy), [healthy], searching=False) == Source(True)

    too_new = _peer(7090, OfferedService("api", "2.0.0", True))
    found = peer_source(_merged(too_new), [too_new], searching=False)
    assert found.usable is False and "2.0.0" in str(found.detail) and "'^1.4'" in str(found.detail)

    sick = _peer(7090, OfferedService("api", "1.4.2", False))
    assert peer_source(_merged(sick), [sick], searching=False) == Source(False, "unhealthy at peer alice-1")

    other = _peer(7090, OfferedService("web", None, True))
    assert peer_source(_merged(other), [other], searching=False) == Source(
        False, "no peer offers it (live: alice-1)"
    )

    dead = PeerState(Address("127.0.0.1", 7091), error="its mesh port is closed")
    assert peer_source(_merged(), [dead], searching=False) == Source(
        False, "peer at 127.0.0.1:7091: its mesh port is closed"
    )
    # One answering peer is enough, whatever the others say.
    assert peer_source(_merged(healthy), [dead, healthy], searching=False) == Source(True)


def test_peer_source_is_unknown_while_a_peer_may_still_answer() -> None:
    unheard = PeerState(Address("127.0.0.1", 7091))
    dead = PeerState(Address("127.0.0.1", 7092), error="timed out")
    found = peer_source(_merged(), [unheard, dead], searching=False)
    assert found == Source(None, "waiting for peers (127.0.0.1:7091); peer at 127.0.0.1:7092: timed out")
    assert peer_source(_merged(), [], searching=True) == Source(
        None, "waiting for peers (none found by mDNS yet)"
    )
    assert peer_source(_merged(), [], searching=False) == Source(False, "no peer found")


async def test_a_service_served_by_a_peer_releases_its_dependents(tmp_path: Path) -> None:
    config = MeshConfig.model_validate(
        {
            "services": {
                "api": {"requires": "^1.4"},
                # Started elsewhere (nothing listens there): it only has to stop waiting for api.
                "web": {"port": free_port(), "depends_on": ["api"]},
            }
        }
    )
    supervisor = Supervisor(
        config,
        project_dir=tmp_path,
        owner="test",
        logs=LogSink(tmp_path / "logs", terminal=io.StringIO()),
        on_change=lambda: None,
    )
    api, web = supervisor.runners["api"], supervisor.runners["web"]
    assert isinstance(api, RemoteRunner) and supervisor.elsewhere() == ["api"]
    supervisor.up()
    try:
        await asyncio.sleep(0.05)
        view = api.view("localhost")
        assert (view.origin, view.state, view.health) == (Origin.PEER, RunState.STARTING, Health.UNKNOWN)
        assert view.detail == "waiting for peers"
        assert web.detail == "waiting for api"

        supervisor.follow_peers("api", Source(True))
        view = api.view("localhost")
        assert (view.state, view.health, view.detail) == (RunState.RUNNING, Health.HEALTHY, None)
        async with asyncio.timeout(2):
            while web.detail == "waiting for api":
                await asyncio.sleep(0.01)

        supervisor.follow_peers("api", Source(False, "peer at 127.0.0.1:7090: its mesh port is closed"))
        view = api.view("localhost")
        assert (view.state, view.health) == (RunState.STOPPED, Health.UNHEALTHY)
        assert view.detail == "peer at 127.0.0.1:7090: its mesh port is closed"
        assert not api.healthy_event.is_set()

        supervisor.follow_peers("api", None)  # no peers followed at all, and no remote
        assert (api.state, api.health, api.detail) == (RunState.STOPPED, Health.UNHEALTHY, NOTHING_SERVES)
        supervisor.follow_remote("api", True, None)  # it has no remote: ignored
        assert api.state == RunState.STOPPED
        supervisor.follow_peers("web", Source(True))  # not served elsewhere: ignored
    finally:
        await supervisor.down()
    assert (api.state, api.health) == (RunState.STOPPED, Health.UNKNOWN)


async def test_a_service_with_a_remote_and_peers_is_up_while_either_serves_it(tmp_path: Path) -> None:
    config = MeshConfig.model_validate({"services": {"api": {"remote": "https://api.example"}}})
    supervisor = Supervisor(
        config,
        project_dir=tmp_path,
        owner="test",
        logs=LogSink(tmp_path / "logs", terminal=io.StringIO()),
        on_change=lambda: None,
    )
    api = supervisor.runners["api"]
    assert api.origin is Origin.REMOTE
    supervisor.up()
    try:
        await asyncio.sleep(0.05)
        supervisor.follow_remote("api", False, "GET /: connection refused")
        assert (api.state, api.health) == (RunState.STOPPED, Health.UNHEALTHY)
        supervisor.follow_peers("api", Source(True))
        assert (api.state, api.health) == (RunState.RUNNING, Health.HEALTHY)
        supervisor.follow_peers("api", Source(False, "no peer found"))
        assert (api.state, api.health, api.detail) == (
            RunState.STOPPED,
            Health.UNHEALTHY,
            "no peer found; GET /: connection refused",
        )
    finally:
        await supervisor.down()
