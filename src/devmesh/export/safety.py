"""The last check before a route model becomes another proxy's config text: every value is one token.

Host names, path prefixes, service names and upstream addresses are written into nginx, Caddy and Envoy
configs as they are, so a value holding `;`, a brace or a quote could end a directive and add others: a
hub revision, a peer's catalog or an agent's status would then write whatever config it likes. The config
schema refuses such values where they enter (routes, URLs, host names, catalogs), and every renderer
checks the whole model here again, so that nothing that bypassed the schema gets into a config.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from devmesh.export.model import ExportError, RouteModel

__all__ = ["check_model_values"]

# Whitespace, control characters, and what ends or opens a directive, a block, a string, a comment or a
# variable in nginx's, Caddy's or Envoy's syntax.
_UNSAFE_TOKEN_RE = re.compile(r"[\x00-\x20\x7f;{}\"'#\\`$]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")  # in text that becomes a comment or a quoted string


def check_model_values(model: RouteModel, *, proxy: str) -> None:
    """Refuse a model with a value that cannot be written into `proxy`'s config as one token.

    Raises:
        ExportError: naming the value and where it comes from.
    """
    for what, value in _tokens(model):
        found = _UNSAFE_TOKEN_RE.search(value)
        if found is not None or not value:
            said = f"contains {found.group()!r}" if found is not None else "is empty"
            raise ExportError(
                f"{what} {value!r} {said}: it cannot be written into a {proxy} config (whitespace, "
                "control characters and ; { } \" ' # \\ ` $ could end a directive and add others)"
            )
    for what, value in _texts(model):
        found = _CONTROL_RE.search(value)
        if found is not None:
            raise ExportError(
                f"{what} {value!r} contains the control character {found.group()!r}: it cannot be "
                f"written into a {proxy} config"
            )


def _tokens(model: RouteModel) -> Iterator[tuple[str, str]]:
    yield "the domain", model.domain
    for host in model.root_hosts:
        yield "the root host", host
    for service in model.services:
        yield "the service name", service.name
        for host in service.hosts:
            yield f"{service.name}'s host name", host
        for suffix in service.wildcards:
            yield f"{service.name}'s wildcard", suffix
        yield f"{service.name}'s lb", service.lb
        for upstream in service.upstreams:
            yield f"{service.name}'s upstream host", upstream.host
            yield f"{service.name}'s upstream origin", upstream.origin
            if upstream.server_name is not None:
                yield f"{service.name}'s remote name", upstream.server_name
            if upstream.host_header is not None:
                yield f"{service.name}'s remote Host", upstream.host_header
        if service.health is not None:
            yield f"{service.name}'s health path", service.health.path
    for route in model.path_routes:
        yield "the route prefix", route.prefix
        yield f"route {route.prefix!r}'s service", route.service


def _texts(model: RouteModel) -> Iterator[tuple[str, str]]:
    yield "the mesh name", model.mesh
    for note in model.notes:
        yield "the note", note
    for service in model.services:
        for note in service.notes:
            yield f"{service.name}'s note", note
