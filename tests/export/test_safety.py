"""No value of a route model reaches a rendered config unless it is one token: the renderers refuse a
model that bypassed the schema (a route prefix, a remote's host, a peer's service name) with its value."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from devmesh.export.caddy import render_caddy
from devmesh.export.envoy import render_envoy
from devmesh.export.model import ExportError, PathRoute, RouteModel, Upstream
from devmesh.export.nginx import render_nginx

# A route that `nginx -t` accepts and that serves /etc/ from another server block (a reviewer's payload).
INJECTED_ROUTE = (
    "/x { return 200; } } server { listen 127.0.0.1:9; location / { alias /etc/; autoindex on; } } "
    "server { location = /y"
)
RENDERERS: dict[str, Callable[[RouteModel, tuple[str, int]], str]] = {
    "nginx": render_nginx,
    "Caddy": render_caddy,
    "Envoy": render_envoy,
}


def _with_route(model: RouteModel, prefix: str) -> RouteModel:
    return dataclasses.replace(model, path_routes=(PathRoute(prefix, "docs"), *model.path_routes))


def _with_service(model: RouteModel, index: int, **changes: object) -> RouteModel:
    services = list(model.services)
    services[index] = dataclasses.replace(services[index], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(model, services=tuple(services))


@pytest.mark.parametrize("proxy", sorted(RENDERERS))
def test_the_injected_route_is_refused_naming_it(model: RouteModel, proxy: str) -> None:
    with pytest.raises(ExportError) as caught:
        RENDERERS[proxy](_with_route(model, INJECTED_ROUTE), ("127.0.0.1", 8080))
    text = str(caught.value)
    assert f"the route prefix {INJECTED_ROUTE!r} contains ' '" in text and f"{proxy} config" in text


@pytest.mark.parametrize("proxy", sorted(RENDERERS))
@pytest.mark.parametrize(
    ("what", "make"),
    [
        ("service name", lambda m: _with_service(m, 0, name="api;evil")),
        ("host name", lambda m: _with_service(m, 0, hosts=("api.localhost", "a}b"))),
        ("wildcard", lambda m: _with_service(m, 0, wildcards=(".t#x",))),
        (
            "remote Host",
            lambda m: _with_service(
                m, 3, remote=Upstream("127.0.0.1", 4000, "remote", host_header="a.example\n;x")
            ),
        ),
        ("upstream host", lambda m: _with_service(m, 2, local=(Upstream("a'b", 3001, "local"),))),
        ("route prefix", lambda m: _with_route(m, '/a"b')),
        ("route prefix", lambda m: _with_route(m, "/a\\b")),
        ("domain", lambda m: dataclasses.replace(m, domain="local host")),
    ],
)
def test_a_value_with_whitespace_or_syntax_is_refused(
    model: RouteModel, proxy: str, what: str, make: Callable[[RouteModel], RouteModel]
) -> None:
    with pytest.raises(ExportError, match=f"{what} .* cannot be written into a {proxy} config"):
        RENDERERS[proxy](make(model), ("127.0.0.1", 8080))


@pytest.mark.parametrize("proxy", sorted(RENDERERS))
def test_a_note_cannot_end_its_comment(model: RouteModel, proxy: str) -> None:
    broken = dataclasses.replace(model, notes=(*model.notes, "peer x\nserver { listen 9; }"))
    with pytest.raises(ExportError, match="control character"):
        RENDERERS[proxy](broken, ("127.0.0.1", 8080))


@pytest.mark.parametrize("proxy", sorted(RENDERERS))
def test_the_schemas_values_pass(model: RouteModel, proxy: str) -> None:
    assert RENDERERS[proxy](model, ("127.0.0.1", 8080))
