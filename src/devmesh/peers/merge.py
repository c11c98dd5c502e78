"""Peers' services in the mesh snapshot: a pure function of the local views and the live catalogs.

A service a peer offers becomes an endpoint (origin `peer`, the peer's mesh port) of the local service of
that name, if its version satisfies the local `requires`; a service declared nowhere locally becomes a
service of its own, routable by its name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from devmesh.config.units import Address
from devmesh.mesh.snapshot import Endpoint, Health, Origin, RunState, ServiceView
from devmesh.peers.catalog import Catalog
from devmesh.peers.versions import satisfies


def merge_peers(
    local: Mapping[str, ServiceView],
    peers: list[tuple[Address, Catalog]],
    *,
    version_policy: str = "reject",
    tls: bool = False,
) -> dict[str, ServiceView]:
    """`peers` closest first (by measured latency): their endpoints keep that order."""
    merged = dict(local)
    offered: dict[str, list[Endpoint]] = {}
    for address, catalog in peers:
        for service in catalog.services:
            offered.setdefault(service.name, []).append(
                Endpoint(
                    service=service.name,
                    host=address.host,
                    port=address.port,
                    origin=Origin.PEER,
                    healthy=service.healthy,
                    version=service.version,
                    peer_id=catalog.peer,
                    tls=tls,
                )
            )
    for name, endpoints in offered.items():
        view = merged.get(name)
        requires = view.requires if view is not None else None
        accepted = [e for e in endpoints if satisfies(e.version, requires)]
        rejected = [e for e in endpoints if e not in accepted]
        if rejected and not accepted and version_policy == "warn":
            accepted = rejected  # warn: better a version outside the range than no answer
        if view is None:
            healthy = any(e.healthy for e in accepted)
            merged[name] = ServiceView(
                name=name,
                origin=Origin.PEER,
                state=RunState.RUNNING,
                health=Health.HEALTHY if healthy else Health.UNHEALTHY,
                hosts=(name,),
                endpoints=tuple(accepted),
                version=accepted[0].version if accepted else None,
            )
            continue
        detail = view.detail
        usable_here = any(e.healthy for e in view.endpoints)
        if rejected and not usable_here and not any(e.healthy for e in accepted):
            versions = ", ".join(f"peer {e.peer_id} has {e.version or 'no version'}" for e in rejected)
            detail = f"no endpoint satisfies requires {requires!r}: {versions}"
        merged[name] = replace(view, endpoints=view.endpoints + tuple(accepted), detail=detail)
    return merged
