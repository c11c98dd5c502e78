"""The export's route model: from a config, from a recorded status document, and its parity with devmesh's
own route table."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from devmesh.config.loader import load_config
from devmesh.export.model import (
    ExportError,
    RouteModel,
    Upstream,
    from_config,
    from_status,
    parse_listen,
)
from devmesh.mesh.snapshot import Health, MeshSnapshot, Origin, RunState, ServiceView
from devmesh.routing.table import RouteTable, _prefix_matches, normalize_host

RECORDED = Path(__file__).parent / "recorded_services.json"

# The config the recorded status document (recorded_services.json) was taken with: a real agent ran it
# with tiny_service.py as every command, docs stopped and worker registered on a port nothing serves.
RECORDED_CONFIG = """
[mesh]
name = "shop"
[proxy]
listen = "127.0.0.1:18311"
timeout = "20s"
retries = 1
[services.api]
command = "run-api"
hosts = ["api", "*.tenant"]
routes = ["/api/*"]
health = { http = "/health" }
lb = "least_conn"
remote = "https://127.0.0.1:18399"
[services.web]
command = "run-web"
port = 18312
routes = ["/"]
[services.docs]
command = "run-docs"
routes = ["/docs"]
[services.billing]
requires = ">=1.0"
"""


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "devmesh.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_from_config_has_fixed_ports_remotes_and_says_what_it_cannot_know(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        """
[mesh]
name = "shop"
domain = "shop.test"
[proxy]
timeout = "12s"
retries = 3
[services.api]
port = 3000
hosts = ["api", "*.tenant", "api-v1.shop.test"]
routes = ["/api/*", "/api/v2/"]
lb = "random"
health = { http = "/healthz", interval = "3s", timeout = "500ms", unhealthy_after = 2 }
[services.web]
command = "npm run dev"
routes = ["/"]
[services.pay]
remote = "https://pay.example.com:8443"
[services.peer-only]
requires = ">=2"
""",
    )
    model = from_config(loaded.config, mesh_name=loaded.mesh_name)
    assert model.source == "config" and model.domain == "shop.test"
    assert (model.timeout_s, model.connect_timeout_s, model.retries) == (12.0, 5.0, 3)
    api = model.service("api")
    assert api.hosts == ("api.shop.test", "api", "api-v1.shop.test")
    assert api.wildcards == (".tenant.shop.test",)
    assert api.local == (Upstream("127.0.0.1", 3000, "local"),) and api.remote is None
    assert api.lb == "random"
    assert api.health is not None and (api.health.path, api.health.interval_s, api.health.timeout_s) == (
        "/healthz",
        3.0,
        0.5,
    )
    # Longest prefix first; "/api/*" and "/api/v2/" are the /api and /api/v2 subtrees, "/" is everything.
    assert [(r.prefix, r.service) for r in model.path_routes] == [
        ("/api/v2", "api"),
        ("/api", "api"),
        ("/", "web"),
    ]
    web = model.service("web")
    assert not web.reachable and "port is picked when devmesh starts it" in web.unavailable_reason
    pay = model.service("pay")
    assert pay.local == () and pay.remote == Upstream(
        "pay.example.com",
        8443,
        "remote",
        tls=True,
        server_name="pay.example.com",
        host_header="pay.example.com:8443",
    )
    assert "peers only" in model.service("peer-only").unavailable_reason
    assert [note.split(":")[0] for note in model.notes] == ["web", "peer-only"]
    assert model.root_hosts == ("shop.test", "localhost", "127.0.0.1", "::1")


def test_a_name_claimed_by_a_service_is_not_a_root_host(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[services.home]\nport = 3000\nhosts = ["localhost"]\nroutes = ["/x"]\n')
    model = from_config(loaded.config, mesh_name="m")
    assert model.service("home").hosts == ("localhost",)
    assert "localhost" not in model.root_hosts


def _recorded() -> list[dict[str, Any]]:
    return list(json.loads(RECORDED.read_text(encoding="utf-8")))


def test_from_a_recorded_status_document(tmp_path: Path) -> None:
    loaded = _load(tmp_path, RECORDED_CONFIG)
    model = from_status(_recorded(), loaded.config, mesh_name=loaded.mesh_name)
    assert model.source == "agent"
    assert [s.name for s in model.services] == ["api", "web", "docs", "billing", "worker"]
    api = model.service("api")
    # The port devmesh picked at run time, and the remote as the TLS fallback.
    assert api.local == (Upstream("127.0.0.1", 39029, "local"),)
    assert api.remote is not None and api.remote.tls and api.remote.authority == "127.0.0.1:18399"
    assert api.lb == "least_conn" and api.wildcards == (".tenant.localhost",)
    assert model.service("web").local == (Upstream("127.0.0.1", 18312, "local"),)
    docs = model.service("docs")
    assert not docs.reachable and "devmesh run docs" in docs.unavailable_reason
    assert not model.service("billing").reachable
    # Registered on a port that does not answer now: still where it comes back.
    assert model.service("worker").local == (Upstream("127.0.0.1", 18313, "registered"),)
    assert [(r.prefix, r.service) for r in model.path_routes] == [
        ("/docs", "docs"),
        ("/api", "api"),
        ("/", "web"),
    ]
    assert model.timeout_s == 20.0 and model.retries == 1


def test_peer_endpoints_are_left_out_and_said_so(tmp_path: Path) -> None:
    loaded = _load(tmp_path, RECORDED_CONFIG)
    services = _recorded()
    billing = next(s for s in services if s["name"] == "billing")
    # A peer's endpoint as the agent reports it (EndpointStatus): its mesh port, its peer id.
    billing["endpoints"] = [
        {
            "address": "10.0.0.5:7090",
            "origin": "peer",
            "peer": "alice-3f2a1b",
            "version": "1.2",
            "healthy": True,
        }
    ]
    model = from_status(services, loaded.config, mesh_name="shop")
    billing_routes = model.service("billing")
    assert not billing_routes.reachable
    assert "alice-3f2a1b at 10.0.0.5:7090" in billing_routes.unavailable_reason
    assert any("peer endpoints left out" in note for note in model.notes)


def test_a_pin_is_followed(tmp_path: Path) -> None:
    loaded = _load(tmp_path, RECORDED_CONFIG)
    services = copy.deepcopy(_recorded())
    api = next(s for s in services if s["name"] == "api")
    api["pin"] = "remote"
    api["endpoints"] = [e for e in api["endpoints"] if e["origin"] == "remote"]
    web = next(s for s in services if s["name"] == "web")
    web["pin"] = "local"
    model = from_status(services, loaded.config, mesh_name="shop")
    assert model.service("api").local == () and model.service("api").remote is not None
    assert model.service("web").remote is None and model.service("web").local
    assert any("pinned to remote" in note for note in model.notes)


def test_an_unreadable_status_is_an_export_error(tmp_path: Path) -> None:
    loaded = _load(tmp_path, RECORDED_CONFIG)
    with pytest.raises(ExportError, match="cannot be read"):
        from_status([{"name": "api"}], loaded.config, mesh_name="shop")


def _model_match(model: RouteModel, host: str, path: str) -> str | None:
    """What the exported configs express: exact names, then wildcards longest first, then the root
    host's path prefixes (segment boundaries), longest first."""
    for service in model.services:
        if host in service.hosts:
            return service.name
    for suffix, service in model.wildcard_order:
        if host.endswith(suffix):
            return service.name
    if host in model.root_hosts:
        for route in model.path_routes:
            if _prefix_matches(route.prefix, path):
                return route.service
    return None


def test_the_model_routes_as_devmeshs_route_table(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        """
[services.api]
port = 3000
hosts = ["api", "*.tenant", "*.eu.tenant"]
routes = ["/api/*", "/"]
[services.eu]
port = 3001
hosts = ["*.x.eu.tenant"]
routes = ["/api/v2"]
[services.admin]
port = 3002
hosts = ["admin.localhost"]
routes = ["/admin/"]
""",
    )
    model = from_config(loaded.config, mesh_name="m")
    views = {
        name: ServiceView(
            name=name,
            origin=Origin.LOCAL,
            state=RunState.RUNNING,
            health=Health.HEALTHY,
            hosts=tuple(spec.hosts or [name]),
            routes=tuple(spec.routes),
        )
        for name, spec in loaded.config.services.items()
    }
    table = RouteTable.build(MeshSnapshot(revision=1, mesh="m", domain="localhost", services=views))
    hosts = [
        "api.localhost",
        "api",
        "a.tenant.localhost",
        "a.b.eu.tenant.localhost",
        "q.x.eu.tenant.localhost",
        "tenant.localhost",
        "admin.localhost",
        "localhost",
        "127.0.0.1",
        "[::1]:7080",
        "other.localhost",
    ]
    paths = ["/", "/api", "/api/", "/apis", "/api/v2", "/api/v2/x", "/admin", "/admin/x", "/adminx", "/x"]
    for host in hosts:
        for path in paths:
            expected = table.match(normalize_host(host), path)
            assert _model_match(model, normalize_host(host), path) == (expected.name if expected else None), (
                host,
                path,
            )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9000", ("::1", 9000)),
        (":8081", ("127.0.0.1", 8081)),
        ("8082", ("127.0.0.1", 8082)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["nope", "127.0.0.1:0", "127.0.0.1:99999"])
def test_bad_listen_addresses_name_the_option(text: str) -> None:
    with pytest.raises(ExportError, match="--listen"):
        parse_listen(text)
