"""The remote fallback and the mirror as endpoints: pure functions of a view, the remote's last probe and
the live peers' catalogs."""

from __future__ import annotations

import pytest

from devmesh.config.units import Address
from devmesh.mesh.snapshot import Endpoint, Health, Origin, RunState, ServiceView
from devmesh.peers.catalog import Catalog, OfferedService
from devmesh.routing.remote import (
    RemoteStatus,
    add_remote,
    mirror_endpoint,
    remote_endpoint,
    remote_health,
    version_accepted,
)
from devmesh.routing.table import describe_unavailable, select_endpoints

URL = "https://api.staging.shop.dev"
LOCAL = Endpoint("api", "127.0.0.1", 3000, Origin.LOCAL, healthy=True, version="2.1.0")


def view(
    *endpoints: Endpoint,
    requires: str | None = None,
    origin: Origin = Origin.LOCAL,
    state: RunState = RunState.STOPPED,
    detail: str | None = None,
) -> ServiceView:
    return ServiceView(
        "api",
        origin,
        state,
        Health.UNKNOWN,
        ("api",),
        endpoints=endpoints,
        remote=URL,
        requires=requires,
        detail=detail,
    )


def test_the_remote_endpoint_carries_its_probe() -> None:
    fresh = remote_endpoint("api", "https://api.staging.shop.dev:8443")
    assert (fresh.host, fresh.port, fresh.tls, fresh.host_header) == (
        "api.staging.shop.dev",
        8443,
        True,
        "api.staging.shop.dev:8443",
    )
    assert fresh.healthy and fresh.version is None, "before the first probe: tried"
    probed = remote_endpoint("api", "http://remote:8080", RemoteStatus(False, "1.3.0", "answered 503"))
    assert (probed.port, probed.tls, probed.healthy, probed.version) == (8080, False, False, "1.3.0")
    assert remote_endpoint("api", "http://remote").port == 80


@pytest.mark.parametrize(
    ("version", "requires", "accepted"),
    [(None, ">=2", True), ("1.3.0", None, True), ("2.0.1", ">=2", True), ("1.3.0", ">=2", False)],
)
def test_only_an_announced_version_is_checked(
    version: str | None, requires: str | None, accepted: bool
) -> None:
    assert version_accepted(version, requires) is accepted


def test_a_remote_outside_requires_is_filtered_like_a_peer_under_reject() -> None:
    status = RemoteStatus(True, "1.3.0")
    rejected = add_remote(view(requires=">=2"), status, version_policy="reject")
    assert rejected.endpoints == ()
    assert rejected.detail == f"no endpoint satisfies requires '>=2': the remote {URL} announces 1.3.0"
    message, hint = describe_unavailable(rejected)
    assert "1.3.0" in message and "'>=2'" in message and "requires" in hint

    # After the peers' own refusal, the remote's is added to the same sentence.
    peers_said = "no endpoint satisfies requires '>=2': peer bob has 1.0.0"
    both = add_remote(view(requires=">=2", detail=peers_said), status, version_policy="reject")
    assert both.detail == f"{peers_said}, the remote {URL} announces 1.3.0"

    # A healthy local endpoint serves: the remote is left out, but the view's detail is not rewritten.
    served = add_remote(view(LOCAL, requires=">=2"), status, version_policy="reject")
    assert served.endpoints == (LOCAL,) and served.detail is None
    assert served.remote_detail == "announces 1.3.0, outside requires '>=2'"


def test_under_warn_the_remote_is_used_anyway() -> None:
    used = add_remote(view(requires=">=2"), RemoteStatus(True, "1.3.0"), version_policy="warn")
    (endpoint,) = used.endpoints
    assert endpoint.origin is Origin.REMOTE and endpoint.version == "1.3.0"
    assert select_endpoints(used) == [endpoint]


def test_an_unhealthy_remote_stays_listed_but_is_not_selected_and_the_page_says_why() -> None:
    down = add_remote(
        view(), RemoteStatus(False, None, "GET /: certificate verify failed"), version_policy="reject"
    )
    assert [e.healthy for e in down.endpoints] == [False]
    assert select_endpoints(down) == []
    assert down.remote_detail == "GET /: certificate verify failed"
    message, _hint = describe_unavailable(down)
    assert message.startswith("api is stopped") and "certificate verify failed" in message


def test_a_remote_only_service_shows_the_remotes_version_and_its_page_names_the_remote() -> None:
    remote_only = view(origin=Origin.REMOTE, state=RunState.RUNNING)
    up = add_remote(remote_only, RemoteStatus(True, "1.3.0"), version_policy="reject")
    assert up.version == "1.3.0"
    down = add_remote(
        remote_only, RemoteStatus(False, "1.3.0", "GET /: connection refused"), version_policy="reject"
    )
    message, hint = describe_unavailable(down)
    assert message == f"api: its remote {URL} is not usable (GET /: connection refused)"
    assert "SSL_CERT_FILE" in hint


def test_remote_health_for_a_remote_only_service() -> None:
    assert remote_health(None, None, "reject") == (None, None)
    assert remote_health(RemoteStatus(True, "1.3.0"), ">=1", "reject") == (True, None)
    assert remote_health(RemoteStatus(False, None, "answered 503"), None, "reject") == (False, "answered 503")
    usable, why = remote_health(RemoteStatus(True, "1.3.0"), ">=2", "reject")
    assert usable is False and why == "the remote announces 1.3.0, outside requires '>=2'"
    assert remote_health(RemoteStatus(True, "1.3.0"), ">=2", "warn") == (True, None)


def catalog(peer: str, *services: str) -> Catalog:
    return Catalog(peer, "m", 0.0, 1, [OfferedService(name, "1.0.0", True) for name in services])


def test_a_mirror_is_a_url_or_a_peer_by_id_or_by_host_name() -> None:
    url = mirror_endpoint("api", "https://shadow.shop.dev")
    assert (url.host, url.port, url.tls, url.host_header, url.origin) == (
        "shadow.shop.dev",
        443,
        True,
        "shadow.shop.dev",
        Origin.REMOTE,
    )
    peers = [
        (Address("10.0.0.7", 7090), catalog("alice-111111", "web")),
        (Address("10.0.0.5", 7090), catalog("alice-3f2a1b", "api")),
        (Address("10.0.0.6", 7090), catalog("bob-000000", "api")),
    ]
    exact = mirror_endpoint("api", "peer=alice-3f2a1b", peers, tls=True)
    assert (exact.host, exact.peer_id, exact.origin, exact.tls, exact.healthy) == (
        "10.0.0.5",
        "alice-3f2a1b",
        Origin.PEER,
        True,
        True,
    )
    assert exact.host_header is None, "a peer routes by X-DevMesh-Service; the client's Host is kept"
    by_name = mirror_endpoint("api", "peer=bob", peers)
    assert by_name.peer_id == "bob-000000" and by_name.healthy
    first = mirror_endpoint("api", "peer=alice", peers)
    assert first.peer_id == "alice-111111" and not first.healthy, "the closest alice does not offer api"
    absent = mirror_endpoint("api", "peer=carol", peers)
    assert not absent.healthy and absent.peer_id == "carol"
