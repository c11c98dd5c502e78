from __future__ import annotations

from devmesh.config.units import Address
from devmesh.mesh.snapshot import Endpoint, Health, Origin, RunState, ServiceView
from devmesh.peers.catalog import Catalog, OfferedService
from devmesh.peers.merge import merge_peers
from devmesh.routing.table import describe_unavailable, select_endpoints

ALICE = Address("10.0.0.5", 7090)


def catalog(*services: OfferedService, peer: str = "alice") -> Catalog:
    return Catalog(peer=peer, mesh="m", epoch=1.0, revision=1, services=list(services))


def local(name: str, *, requires: str | None = None, running: bool = True) -> ServiceView:
    endpoints = (Endpoint(name, "127.0.0.1", 3000, Origin.LOCAL, True, "1.0.0"),) if running else ()
    state = RunState.RUNNING if running else RunState.STOPPED
    return ServiceView(
        name, Origin.LOCAL, state, Health.HEALTHY, (name,), endpoints=endpoints, requires=requires
    )


def test_a_service_declared_nowhere_here_becomes_routable_by_its_name() -> None:
    merged = merge_peers({}, [(ALICE, catalog(OfferedService("api", "1.4.2", True)))])
    api = merged["api"]
    assert api.origin is Origin.PEER and api.hosts == ("api",)
    assert [(e.host, e.port, e.peer_id, e.version) for e in api.endpoints] == [
        ("10.0.0.5", 7090, "alice", "1.4.2")
    ]


def test_local_endpoints_stay_first_and_peers_follow() -> None:
    merged = merge_peers({"api": local("api")}, [(ALICE, catalog(OfferedService("api", "1.4.2", True)))])
    assert [e.origin for e in select_endpoints(merged["api"])] == [Origin.LOCAL, Origin.PEER]


def test_requires_rejects_then_warns() -> None:
    views = {"api": local("api", requires="^2.0", running=False)}
    peers = [(ALICE, catalog(OfferedService("api", "1.4.2", True)))]
    rejected = merge_peers(views, peers)["api"]
    assert select_endpoints(rejected) == []
    message, hint = describe_unavailable(rejected)
    assert "peer alice has 1.4.2" in message and "requires" in hint
    warned = merge_peers(views, peers, version_policy="warn")["api"]
    assert [e.version for e in select_endpoints(warned)] == ["1.4.2"]
