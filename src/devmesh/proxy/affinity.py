"""Session affinity (`sticky = "cookie"`): a `devmesh-<service>` cookie names the endpoint that served
the client, and that endpoint is tried first on its next request.

The response side sets the cookie (`response.py`) when the endpoint that answered is not the one named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devmesh.mesh.snapshot import Endpoint, ServiceView
    from devmesh.proxy.exchange import Exchange


def cookie_value(header: bytes | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, if there."""
    if header is None:
        return None
    for part in header.decode("latin-1").split(";"):
        key, found, value = part.strip().partition("=")
        if found and key == name:
            return value
    return None


def sticky_first(ex: Exchange, view: ServiceView, endpoints: list[Endpoint]) -> list[Endpoint]:
    """Session affinity: the endpoint named by the client's `devmesh-<service>` cookie goes first."""
    server = ex.client.server
    name = f"devmesh-{view.name}"
    ex.sticky_cookie = name
    wanted = cookie_value(ex.cookie, name)
    if wanted is None:
        return endpoints
    for index, endpoint in enumerate(endpoints):
        if server.sticky_id(endpoint) == wanted:
            return [endpoint, *endpoints[:index], *endpoints[index + 1 :]]
    return endpoints
