"""Routing is a pure function of (snapshot, request): tested here without sockets."""

from __future__ import annotations

import pytest

from devmesh.mesh.snapshot import Endpoint, Health, MeshState, Origin, RunState, ServiceView
from devmesh.routing.table import RouteTable, describe_unavailable, normalize_host, select_endpoints


def view(
    name: str,
    *,
    hosts: tuple[str, ...] | None = None,
    routes: tuple[str, ...] = (),
    endpoints: tuple[Endpoint, ...] = (),
) -> ServiceView:
    return ServiceView(
        name, Origin.LOCAL, RunState.RUNNING, Health.HEALTHY, hosts or (name,), routes, endpoints
    )


def table(*views: ServiceView, domain: str = "localhost") -> RouteTable:
    state = MeshState("t", domain)
    return RouteTable.build(state.publish({v.name: v for v in views}))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("API.localhost:7080", "api.localhost"),
        ("api.localhost.", "api.localhost"),
        ("[::1]:7080", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        (" a ", "a"),
    ],
)
def test_normalize_host(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


def test_exact_names_aliases_and_full_names() -> None:
    routes = table(view("api", hosts=("api", "api-v1")), view("web"))
    assert routes.match("api.localhost", "/").name == "api"  # type: ignore[union-attr]
    assert routes.match("api-v1.localhost", "/").name == "api"  # type: ignore[union-attr]
    assert routes.match("api", "/").name == "api"  # type: ignore[union-attr]
    assert routes.match("web.localhost", "/").name == "web"  # type: ignore[union-attr]
    assert routes.match("other.localhost", "/") is None


def test_wildcards_match_any_depth_and_the_most_specific_wins() -> None:
    routes = table(
        view("tenants", hosts=("*.tenant",)),
        view("vip", hosts=("*.vip.tenant",)),
        view("admin", hosts=("admin.tenant",)),
    )
    assert routes.match("acme.tenant.localhost", "/").name == "tenants"  # type: ignore[union-attr]
    assert routes.match("a.b.tenant.localhost", "/").name == "tenants"  # type: ignore[union-attr]
    assert routes.match("x.vip.tenant.localhost", "/").name == "vip"  # type: ignore[union-attr]
    assert routes.match("admin.tenant.localhost", "/").name == "admin"  # type: ignore[union-attr]  # exact before wildcard
    assert routes.match("tenant.localhost", "/") is None


def test_longest_path_prefix_on_the_root_host_only() -> None:
    routes = table(
        view("api", routes=("/api/*",)), view("v2", routes=("/api/v2",)), view("web", routes=("/",))
    )
    assert routes.match("localhost", "/api/orders").name == "api"  # type: ignore[union-attr]
    assert routes.match("localhost", "/api").name == "api"  # type: ignore[union-attr]
    assert routes.match("localhost", "/api/v2/x").name == "v2"  # type: ignore[union-attr]
    assert routes.match("localhost", "/api/v2?q=1").name == "v2"  # type: ignore[union-attr]
    assert routes.match("localhost", "/apis").name == "web"  # type: ignore[union-attr]  # not a segment of /api
    assert routes.match("127.0.0.1", "/api/x").name == "api"  # type: ignore[union-attr]
    assert routes.match("other.localhost", "/api/x") is None


def test_known_hosts_for_the_404_page() -> None:
    routes = table(view("api", routes=("/api/*",)), view("t", hosts=("*.tenant",)))
    assert routes.known_hosts() == ["*.tenant.localhost", "api.localhost", "localhost/api"]


def test_custom_domain() -> None:
    routes = table(view("api"), domain="shop.test")
    assert routes.match("api.shop.test", "/").name == "api"  # type: ignore[union-attr]
    assert routes.match("api.localhost", "/") is None


def endpoint(port: int, *, healthy: bool = True, origin: Origin = Origin.LOCAL) -> Endpoint:
    return Endpoint("api", "127.0.0.1", port, origin, healthy)


def test_select_endpoints_healthy_local_first_round_robin() -> None:
    service = view(
        "api",
        endpoints=(endpoint(1), endpoint(2, healthy=False), endpoint(3), endpoint(4, origin=Origin.PEER)),
    )
    assert [e.port for e in select_endpoints(service, 0)] == [1, 3, 4]
    assert [e.port for e in select_endpoints(service, 1)] == [3, 1, 4]
    assert select_endpoints(view("api"), 0) == []


@pytest.mark.parametrize(
    ("state", "hint"),
    [
        (RunState.STOPPED, "devmesh run api"),
        (RunState.CRASHED, "devmesh logs api"),
        (RunState.STARTING, "devmesh status"),
    ],
)
def test_unavailable_pages_say_what_to_do(state: RunState, hint: str) -> None:
    service = ServiceView("api", Origin.LOCAL, state, Health.UNKNOWN, ("api",))
    message, advice = describe_unavailable(service)
    assert "api" in message and hint in advice
