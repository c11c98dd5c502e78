"""Requests on the mesh port, from peer agents: checked (signature, nonce), then served by a local
endpoint of a service this agent offers; the mesh catalog is answered here.

A function of the exchange (its first argument), called from `Exchange.start` on a mesh-port server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.peers.catalog import CATALOG_PATH
from devmesh.peers.signing import SERVICE_HEADER, SIGNED_HEADERS
from devmesh.proxy.pages import ErrorPage
from devmesh.routing.table import LOCAL_ORIGINS

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange

_PEER_ONLY_HEADERS = SIGNED_HEADERS | {SERVICE_HEADER.lower().encode()}


def start_from_peer(ex: Exchange) -> None:
    """A request on the mesh port, from a peer agent: checked, then served by a local endpoint of a
    service this agent offers, never forwarded to a third agent."""
    server = ex.client.server
    mesh = server.mesh
    assert mesh is not None
    # Only devmesh's own headers matter here (signature, service): the rest passes through untouched.
    headers = {
        name.lower().decode("latin-1"): value.decode("latin-1")
        for name, value in ex.headers
        if name[:10].lower() == b"x-devmesh-"
    }
    target = ex.target.decode("latin-1")
    if not ex.peer_checked:  # routed again after a wait: its nonce is spent, it was checked
        verdict = mesh.check(ex.method.decode(), target, headers)
        if not verdict.ok:
            ex.respond_error(ErrorPage(401, "Unauthorized", f"Peer request refused: {verdict.reason}."))
            return
        ex.peer_checked = True
    if target == CATALOG_PATH and ex.method in (b"GET", b"HEAD"):
        ex.respond_raw(200, b"application/json", mesh.catalog())
        return
    name = headers.get(SERVICE_HEADER.lower(), "")
    view = server.state.snapshot.services.get(name)
    if view is None or not mesh.offers(name):
        ex.respond_error(
            ErrorPage(404, "Not offered", f"This agent does not offer {name or 'that service'!r}.")
        )
        return
    # Headers meant for this hop only: the service sees a plain proxied request.
    ex.headers = [(n, v) for n, v in ex.headers if n.lower() not in _PEER_ONLY_HEADERS]
    ex.view = view
    ex._forward(view, [e for e in server.endpoints_for(view) if e.origin in LOCAL_ORIGINS])
