"""The views the agent publishes, built from explicit inputs: no agent, no sockets."""

from __future__ import annotations

from devmesh.agent.views import live_catalogs, peer_keys, published_views, service_url
from devmesh.config.schema import MeshConfig
from devmesh.config.units import Address
from devmesh.mesh.snapshot import Endpoint, Health, MeshState, Origin, RunState, ServiceView
from devmesh.peers.catalog import Catalog, OfferedService
from devmesh.peers.follower import PeerState
from devmesh.routing.remote import RemoteStatus

ALICE = Address("10.0.0.5", 7090)
BOB = Address("10.0.0.6", 7090)
CONFIG = MeshConfig.model_validate(
    {
        "services": {
            "api": {"port": 3000},
            "reports": {"remote": "https://reports.example"},
        }
    }
)


def catalog(peer: str, *services: str) -> Catalog:
    return Catalog(
        peer=peer,
        mesh="m",
        epoch=1.0,
        revision=1,
        services=[OfferedService(s, "1.0.0", True) for s in services],
    )


def local(name: str, *, remote: str | None = None) -> ServiceView:
    endpoints = () if remote else (Endpoint(name, "127.0.0.1", 3000, Origin.LOCAL, True),)
    return ServiceView(
        name, Origin.LOCAL, RunState.RUNNING, Health.HEALTHY, (name,), endpoints=endpoints, remote=remote
    )


def publish(
    *,
    peers: list[tuple[Address, Catalog]] | None = [(ALICE, catalog("alice", "api"))],  # noqa: B006 - never mutated
    partitioned: frozenset[str] = frozenset(),
    pins: dict[str, str] | None = None,
) -> dict[str, ServiceView]:
    return published_views(
        {"api": local("api")}, CONFIG, peers=peers, remotes={}, partitioned=partitioned, pins=pins or {}
    )


def origins(view: ServiceView) -> list[tuple[Origin, str | None]]:
    return [(e.origin, e.peer_id) for e in view.endpoints]


def test_peers_endpoints_follow_the_local_one() -> None:
    assert origins(publish()["api"]) == [(Origin.LOCAL, None), (Origin.PEER, "alice")]


def test_without_a_follower_no_peer_is_merged() -> None:
    assert origins(publish(peers=None)["api"]) == [(Origin.LOCAL, None)]


def test_the_remote_is_the_last_endpoint_with_what_its_probe_found() -> None:
    views = published_views(
        {"reports": local("reports", remote="https://reports.example")},
        CONFIG,
        peers=None,
        remotes={"reports": RemoteStatus(True, "2.0.0")},
        partitioned=frozenset(),
        pins={},
    )
    (endpoint,) = views["reports"].endpoints
    assert endpoint.origin is Origin.REMOTE and endpoint.healthy and endpoint.version == "2.0.0"


def test_a_partition_removes_the_peer_and_says_why() -> None:
    api = publish(partitioned=frozenset({"alice"}))["api"]
    assert origins(api) == [(Origin.LOCAL, None)]
    assert api.detail == "peer partitioned by a scenario"


def test_a_pin_keeps_only_what_it_names_and_says_how_to_undo_it() -> None:
    assert origins(publish(pins={"api": "peer=alice"})["api"]) == [(Origin.PEER, "alice")]
    nowhere = publish(pins={"api": "peer=carol"})["api"]
    assert nowhere.endpoints == () and nowhere.detail is not None and "--clear" in nowhere.detail


def test_the_inputs_are_not_changed() -> None:
    views = {"api": local("api")}
    published_views(
        views, CONFIG, peers=[(ALICE, catalog("alice", "api"))], remotes={}, partitioned=frozenset(), pins={}
    )
    assert origins(views["api"]) == [(Origin.LOCAL, None)]


def test_live_catalogs_are_closest_first_and_skip_the_silent() -> None:
    far = PeerState(ALICE, catalog("alice"), latency_s=0.2)
    near = PeerState(BOB, catalog("bob"), latency_s=0.01)
    silent = PeerState(Address("10.0.0.7", 7090), None)
    assert [c.peer for _, c in live_catalogs([far, silent, near])] == ["bob", "alice"]


def test_peer_keys_are_the_peer_endpoints_of_a_snapshot() -> None:
    state = MeshState("m", "localhost")
    snapshot = state.publish(publish(), mesh="m", domain="localhost", config_error=None, faults={})
    assert peer_keys(snapshot) == {("10.0.0.5", 7090)}


def test_service_url_goes_through_the_proxy() -> None:
    api = local("api")
    assert (
        service_url(api, listen=Address("127.0.0.1", 7080), domain="localhost") == "http://api.localhost:7080"
    )
    assert service_url(api, listen=Address("127.0.0.1", 80), domain="localhost") == "http://api.localhost"
    assert service_url(api, listen=None, domain="localhost") is None
