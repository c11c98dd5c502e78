"""The shared decisions: settings from devmesh's environment, the plan per request, X-Forwarded-*."""

from __future__ import annotations

import json

import pytest

from devmesh.middleware.core import (
    Action,
    ForwardFrom,
    ForwardProblem,
    MeshAddress,
    MeshSettings,
    MiddlewareCore,
    came_through_mesh,
    client_from_forwarded_for,
    forward_headers,
    response_headers,
    trusted_forwarded,
)

# What `devmesh up` gives the `web` service of a mesh with services web, api and docs (routed by path).
DEVMESH_ENV = {
    "DEVMESH_SERVICE": "web",
    "DEVMESH_PROXY_URL": "http://127.0.0.1:7080",
    "DEVMESH_WEB_URL": "http://web.localhost:7080",
    "DEVMESH_API_URL": "http://api.localhost:7080",
    "DEVMESH_PAYMENTS_URL": "http://pay.localhost:7080",
    "DEVMESH_DOCS_URL": "http://localhost:7080/docs",
    "PATH": "/usr/bin",
}


def settings(**overrides: object) -> MeshSettings:
    arguments: dict[str, object] = {
        "service": None,
        "version": None,
        "domain": None,
        "mesh": None,
        "mesh_services": None,
        "forward_unknown": False,
        "environ": DEVMESH_ENV,
    }
    arguments.update(overrides)
    return MeshSettings.resolve(**arguments)  # type: ignore[arg-type]


def test_settings_come_from_what_devmesh_passes_its_children() -> None:
    resolved = settings()
    assert resolved.service == "web"
    assert resolved.mesh == MeshAddress("http://127.0.0.1:7080", "127.0.0.1", 7080)
    assert resolved.mesh_hosts == {"api.localhost", "pay.localhost"}
    assert resolved.own_hosts == {"web.localhost"}
    assert resolved.domain == "localhost"


def test_arguments_win_over_the_environment() -> None:
    resolved = settings(
        service="api", version="2.0", domain="dev.test", mesh="http://127.0.0.1:9000", mesh_services=["x"]
    )
    assert (resolved.service, resolved.version, resolved.domain) == ("api", "2.0", "dev.test")
    assert resolved.mesh is not None and resolved.mesh.port == 9000
    assert resolved.mesh_hosts == {"x.dev.test"}
    assert settings(mesh=False).mesh is None
    assert settings(environ={}).mesh is None


@pytest.mark.parametrize(
    ("mesh", "message"),
    [
        ("https://127.0.0.1:7080", "mesh: 'https://127.0.0.1:7080' is not the devmesh proxy's address"),
        ("http://127.0.0.1:notaport", "has no valid port"),
        (True, "give the devmesh proxy's URL"),
    ],
)
def test_bad_mesh_address_is_named(mesh: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings(mesh=mesh)


def test_a_bad_proxy_url_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DEVMESH_PROXY_URL: 'ftp://x'"):
        settings(environ={"DEVMESH_PROXY_URL": "ftp://x"})


def test_plan_order_health_mounted_forward_app() -> None:
    def api_app() -> None:
        pass

    core: MiddlewareCore[object] = MiddlewareCore(
        {"admin": api_app}, settings(), health_path="/_devmesh/health", routes_path="/_devmesh/routes"
    )
    assert core.plan("api.localhost", "/_devmesh/health", via_mesh=False).action is Action.HEALTH
    assert core.plan("x", "/_devmesh/routes", via_mesh=False).action is Action.ROUTES
    mounted = core.plan("admin.localhost:8000", "/", via_mesh=False)
    assert (mounted.action, mounted.app) == (Action.MOUNTED, api_app)
    assert core.plan("API.localhost:8000", "/", via_mesh=False).action is Action.FORWARD
    # Delivered by the devmesh proxy: the mesh routes that host here, so it is not sent back.
    assert core.plan("api.localhost", "/", via_mesh=True).action is Action.APP
    assert core.plan("web.localhost", "/", via_mesh=False).action is Action.APP
    assert core.plan("unknown.localhost", "/", via_mesh=False).action is Action.APP
    assert core.plan("localhost", "/", via_mesh=False).action is Action.APP


def test_forward_unknown_sends_every_other_subdomain_to_the_mesh() -> None:
    core: MiddlewareCore[object] = MiddlewareCore(
        {}, settings(forward_unknown=True), health_path=None, routes_path=None
    )
    assert core.plan("peer-service.localhost", "/", via_mesh=False).action is Action.FORWARD
    assert core.plan("web.localhost", "/", via_mesh=False).action is Action.APP
    assert core.plan("example.com", "/", via_mesh=False).action is Action.APP
    assert core.plan("x.localhost", "/_devmesh/health", via_mesh=False).action is Action.FORWARD


def test_health_and_routes_documents() -> None:
    core: MiddlewareCore[object] = MiddlewareCore(
        {"*.tenant": print},
        settings(version="1.2.3"),
        health_path="/_devmesh/health",
        routes_path="/_devmesh/routes",
    )
    health = core.plan("x", "/_devmesh/health", via_mesh=False)
    status, headers, body = core.local_response(health, "GET")
    document = json.loads(body)
    assert status == 200 and ("content-type", "application/json") in headers
    assert (document["status"], document["service"], document["version"]) == ("ok", "web", "1.2.3")
    assert document["uptime_s"] >= 0
    assert core.local_response(health, "HEAD")[2] == b""
    status, headers, _ = core.local_response(health, "POST")
    assert status == 405 and ("allow", "GET, HEAD") in headers
    core.counters.add("forwarded")
    routes = json.loads(core.local_response(core.plan("x", "/_devmesh/routes", via_mesh=False), "GET")[2])
    assert routes["hosts"] == [{"pattern": "*.tenant", "host": "*.tenant.localhost"}]
    assert routes["forwarded_hosts"] == ["api.localhost", "pay.localhost"]
    assert routes["mesh"] == "http://127.0.0.1:7080"
    assert routes["requests"]["forwarded"] == 1


def test_failure_response_names_the_mesh_the_host_and_what_to_do() -> None:
    core: MiddlewareCore[object] = MiddlewareCore({}, settings(), health_path=None, routes_path=None)
    status, _, body = core.failure_response(
        "api.localhost:8000", ForwardProblem.unreachable(ConnectionRefusedError(111, "Connection refused"))
    )
    document = json.loads(body)
    assert status == 502
    assert document["error"] == "mesh unreachable"
    assert "http://127.0.0.1:7080" in document["message"]
    assert "api.localhost:8000" in document["message"]
    assert "Connection refused" in document["message"]
    assert "devmesh up" in document["message"]
    assert core.failure_response("h", ForwardProblem.timeout(2))[0] == 504


def test_forwarded_headers_are_trusted_only_from_loopback() -> None:
    view = trusted_forwarded(
        "127.0.0.1", proto="https", host="shop.localhost", forwarded_for="203.0.113.9, 127.0.0.1"
    )
    assert view is not None
    assert (view.scheme, view.host, view.client) == ("https", "shop.localhost", "203.0.113.9")
    assert trusted_forwarded("203.0.113.7", proto="https", host=None, forwarded_for=None) is None
    assert trusted_forwarded("::1", proto=None, host=None, forwarded_for=None) is None
    odd = trusted_forwarded("::1", proto="gopher", host=None, forwarded_for="127.0.0.1")
    assert odd is not None and odd.scheme is None and odd.client == "127.0.0.1"
    assert client_from_forwarded_for("10.0.0.1, 203.0.113.9, ::1") == "203.0.113.9"


def test_came_through_mesh_reads_the_proxys_via() -> None:
    assert came_through_mesh("1.1 devmesh")
    assert came_through_mesh("1.0 squid, 1.1 devmesh")
    assert not came_through_mesh("1.1 nginx")
    assert not came_through_mesh(None)


def test_forward_headers_drop_hop_by_hop_and_extend_the_chain() -> None:
    sent = forward_headers(
        [
            ("Host", "api.localhost:8000"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "5"),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "spoofed"),
            ("Cookie", "a=b"),
        ],
        client="127.0.0.1",
        scheme="http",
        host="api.localhost:8000",
        forwarded_by="web",
    )
    assert sent == [
        ("Host", "api.localhost:8000"),
        ("Cookie", "a=b"),
        ("X-Forwarded-For", "198.51.100.1, 127.0.0.1"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "api.localhost:8000"),
        ("X-DevMesh-Forwarded-By", "web"),
    ]


def test_response_headers_keep_the_length_unless_chunked() -> None:
    assert response_headers([("Content-Length", "3"), ("Connection", "close"), ("X-A", "1")]) == [
        ("Content-Length", "3"),
        ("X-A", "1"),
    ]
    assert response_headers([("Transfer-Encoding", "chunked"), ("Content-Length", "3")]) == []


def test_forward_from_parses_addresses_networks_and_any() -> None:
    assert ForwardFrom.parse(None).describe() == ["loopback"]
    assert ForwardFrom.parse("any").everyone and ForwardFrom.parse(["10.0.0.0/8", "ANY"]).everyone
    policy = ForwardFrom.parse(["10.0.0.0/8", "192.168.1.20", "fd00::/8", "loopback"])
    assert policy.describe() == ["loopback", "10.0.0.0/8", "192.168.1.20/32", "fd00::/8"]
    assert policy.allows("10.1.2.3") and policy.allows("192.168.1.20") and policy.allows("fd00::1")
    assert policy.allows("::ffff:10.1.2.3") and policy.allows("127.0.0.1") and policy.allows("[::1]")
    assert not policy.allows("192.168.1.21") and not policy.allows(None) and not policy.allows("testclient")
    assert ForwardFrom.parse("10.0.0.0/8").allows("10.9.9.9")  # one network as a string
    with pytest.raises(ValueError, match="forward_from: 'lan' is not an address or a network"):
        ForwardFrom.parse(["lan"])
    with pytest.raises(ValueError, match="forward_from: 7 is not"):
        ForwardFrom.parse([7])  # type: ignore[list-item]
