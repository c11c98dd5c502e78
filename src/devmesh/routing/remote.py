"""Endpoints outside this machine's supervision: the remote fallback and the mirror (DESIGN §2, §3).

Pure functions of a view, the last probe of the remote (`RemoteStatus`, from `health.remote`) and the
live peers' catalogs, so they are tested without sockets. The agent applies them when it builds a
snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from devmesh.mesh.snapshot import Endpoint, Origin, ServiceView

if TYPE_CHECKING:
    from devmesh.config.units import Address
    from devmesh.peers.catalog import Catalog

# The start of a view's `detail` when `requires` filtered out every endpoint (peers.merge writes it too).
NO_MATCH = "no endpoint satisfies"


@dataclass(frozen=True, slots=True)
class RemoteStatus:
    """What the last probes of a service's remote found."""

    healthy: bool  # it answered with a status below 500
    version: str | None = None  # what it announced (a header, or `GET /version`); kept while it is down
    reason: str | None = None  # why it is unhealthy: "certificate verify failed: ...", "answered 503"


def remote_endpoint(service: str, url: str, status: RemoteStatus | None = None) -> Endpoint:
    """The remote fallback (`remote = "https://api.staging.shop.dev"`) as an endpoint: it gets requests
    with its own name as Host, over TLS for https. Before its first probe it counts as healthy."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return Endpoint(
        service=service,
        host=parts.hostname or "",
        port=parts.port or (443 if tls else 80),
        origin=Origin.REMOTE,
        healthy=status.healthy if status is not None else True,
        version=status.version if status is not None else None,
        tls=tls,
        host_header=parts.netloc,
    )


def version_accepted(version: str | None, requires: str | None) -> bool:
    """Whether a remote that announced `version` may serve a service that `requires` a range. A remote
    that announces no version is not filtered (there is nothing to check)."""
    if requires is None or version is None:
        return True
    from devmesh.peers.versions import satisfies

    return satisfies(version, requires)


def remote_health(
    status: RemoteStatus | None, requires: str | None, version_policy: str
) -> tuple[bool | None, str | None]:
    """(usable, why not) for a service that has only a remote: None before the first probe."""
    if status is None:
        return None, None
    if not status.healthy:
        return False, status.reason
    if not version_accepted(status.version, requires) and version_policy != "warn":
        return False, f"the remote announces {status.version}, outside requires {requires!r}"
    return True, None


def add_remote(view: ServiceView, status: RemoteStatus | None, *, version_policy: str) -> ServiceView:
    """`view` with its remote as the last endpoint, unless its announced version is outside `requires`
    under `version_policy = "reject"`: then, as for peers, it is left out and `detail` says why."""
    if not view.remote:
        return view
    endpoint = remote_endpoint(view.name, view.remote, status)
    if not version_accepted(endpoint.version, view.requires) and version_policy != "warn":
        detail = view.detail
        if not any(e.healthy for e in view.endpoints):
            announced = f"the remote {view.remote} announces {endpoint.version}"
            if detail and detail.startswith(NO_MATCH):
                detail = f"{detail}, {announced}"
            else:
                detail = f"{NO_MATCH} requires {view.requires!r}: {announced}"
        return replace(
            view,
            detail=detail,
            remote_detail=f"announces {endpoint.version}, outside requires {view.requires!r}",
        )
    remote_detail = None if endpoint.healthy or status is None else status.reason or "not answering"
    version = view.version
    if view.origin is Origin.REMOTE and version is None:
        version = endpoint.version  # a remote-only service shows what its remote announces
    return replace(view, endpoints=(*view.endpoints, endpoint), remote_detail=remote_detail, version=version)


def parse_mirror(target: str) -> tuple[str, str]:
    """`("peer", ID)` for `peer=ID`, `("url", URL)` for a URL."""
    if target.startswith("peer="):
        return "peer", target.removeprefix("peer=")
    return "url", target


def mirror_endpoint(
    service: str,
    target: str,
    peers: Sequence[tuple[Address, Catalog]] = (),
    *,
    tls: bool = False,
) -> Endpoint:
    """Where copies of `service`'s requests go (`mirror = "https://..." | "peer=ID"`).

    A URL is reached as a remote is (its own name as Host, TLS for https). A peer is reached through its
    mesh port, as for a request routed to it (`tls`: the mesh uses mutual TLS); ID is a peer id as
    `devmesh peers` shows it, or its host-name part (`alice` for `alice-3f2a1b`), which stays the same
    when that agent restarts. A peer that is not there, or does not offer the service, gives an unhealthy
    endpoint: copies are counted as failed, not sent.
    """
    kind, value = parse_mirror(target)
    if kind == "url":
        return replace(remote_endpoint(service, value), healthy=True)
    found = _find_peer(value, peers)
    if found is None:
        return Endpoint(service, "", 0, Origin.PEER, healthy=False, peer_id=value, tls=tls)
    address, catalog = found
    offered = next((s for s in catalog.services if s.name == service), None)
    return Endpoint(
        service=service,
        host=address.host,
        port=address.port,
        origin=Origin.PEER,
        healthy=offered is not None,
        version=offered.version if offered is not None else None,
        peer_id=catalog.peer,
        tls=tls,
    )


def _find_peer(wanted: str, peers: Sequence[tuple[Address, Catalog]]) -> tuple[Address, Catalog] | None:
    """The peer with id `wanted`, else the first (closest) whose id is `wanted-<random part>`."""
    for address, catalog in peers:
        if catalog.peer == wanted:
            return address, catalog
    for address, catalog in peers:
        if catalog.peer.rpartition("-")[0] == wanted:
            return address, catalog
    return None
