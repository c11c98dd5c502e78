"""The views the agent publishes, and the status it reports of them.

A published view is the supervisor's view of a service, with the endpoints live peers offer merged in
(closest peer first), the service's `remote` as its last endpoint, its `mirror` resolved, the peers a
partition scenario cuts off removed, and a `devmesh route` pin applied, in that order. Each step is a
function of explicit inputs (no agent, no sockets, no clock), so each is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from devmesh.mesh.snapshot import Health, MeshSnapshot, Origin, ServiceView

if TYPE_CHECKING:
    from devmesh.admin.models import ServiceStatus
    from devmesh.config.schema import MeshConfig, ServiceSection
    from devmesh.config.units import Address
    from devmesh.peers.catalog import Catalog
    from devmesh.peers.follower import PeerState
    from devmesh.routing.remote import RemoteStatus
    from devmesh.supervisor.elsewhere import Source


def published_views(
    local: Mapping[str, ServiceView],
    config: MeshConfig,
    *,
    peers: Sequence[tuple[Address, Catalog]] | None,
    remotes: Mapping[str, RemoteStatus],
    partitioned: frozenset[str],
    pins: Mapping[str, str],
) -> dict[str, ServiceView]:
    """What the proxy routes by: `local` (the supervisor's views) with all of the above applied.

    `peers` are the live peers' catalogs, closest first (see `live_catalogs`); None when this agent
    follows no peers at all, which is not the same as following peers of which none is live.
    """
    views = dict(local)
    if peers is not None:
        from devmesh.peers.merge import merge_peers

        views = merge_peers(
            views,
            list(peers),
            version_policy=config.mesh.version_policy,
            tls=config.proxy.mesh_tls is not None,
        )
    views = with_remotes(views, config, remotes)
    views = with_mirrors(views, config, peers or ())
    if partitioned:
        views = without_partitioned(views, partitioned)
    return with_pins(views, pins)


def live_catalogs(states: Iterable[PeerState]) -> list[tuple[Address, Catalog]]:
    """The catalogs of `states` (the live peers), closest first: the order their endpoints are tried in
    (round robin among the healthy ones)."""
    nearest = sorted(states, key=lambda state: state.latency_s)
    return [(s.address, s.catalog) for s in nearest if s.catalog is not None]


def with_remotes(
    views: Mapping[str, ServiceView], config: MeshConfig, remotes: Mapping[str, RemoteStatus]
) -> dict[str, ServiceView]:
    """Each service's `remote` as its last endpoint, with what its last probe found (`remotes`)."""
    from devmesh.routing.remote import add_remote

    policy = config.mesh.version_policy
    return {
        name: add_remote(view, remotes.get(name), version_policy=policy) if view.remote else view
        for name, view in views.items()
    }


def with_mirrors(
    views: Mapping[str, ServiceView], config: MeshConfig, peers: Sequence[tuple[Address, Catalog]]
) -> dict[str, ServiceView]:
    """Each service's `mirror` (a URL, or a live peer) resolved into the view's mirror endpoint."""
    from devmesh.routing.remote import mirror_endpoint

    mirrored = dict(views)
    for name, view in views.items():
        spec = config.services.get(name)
        if spec is not None and spec.mirror is not None:
            mirrored[name] = replace(
                view,
                mirror=mirror_endpoint(name, spec.mirror, peers, tls=config.proxy.mesh_tls is not None),
            )
    return mirrored


def without_partitioned(
    views: Mapping[str, ServiceView], partitioned: frozenset[str]
) -> dict[str, ServiceView]:
    """A partition scenario: the views as if this agent could not reach the `partitioned` peers."""
    kept_views = dict(views)
    for name, view in views.items():
        kept = tuple(e for e in view.endpoints if e.peer_id not in partitioned)
        if len(kept) != len(view.endpoints):
            view = kept_views[name] = replace(
                view, endpoints=kept, detail=view.detail or "peer partitioned by a scenario"
            )
        if view.mirror is not None and view.mirror.peer_id in partitioned:
            kept_views[name] = replace(view, mirror=replace(view.mirror, healthy=False))
    return kept_views


def with_pins(views: Mapping[str, ServiceView], pins: Mapping[str, str]) -> dict[str, ServiceView]:
    """`devmesh route NAME local|remote|peer=ID`: only the pinned endpoints, or none and a detail that
    says how to undo the pin."""
    from devmesh.routing.table import apply_pin

    pinned_views = dict(views)
    for name, pin in pins.items():
        pinned = views.get(name)
        if pinned is not None:
            kept = tuple(apply_pin(list(pinned.endpoints), pin))
            detail = pinned.detail if kept else f"pinned to {pin} (`devmesh route {name} --clear` to undo)"
            pinned_views[name] = replace(pinned, endpoints=kept, detail=detail)
    return pinned_views


def peer_source(view: ServiceView | None, states: Sequence[PeerState], *, searching: bool) -> Source:
    """What the followed peers (`states`) say of a service served elsewhere, from its published view
    (peers' endpoints merged in, `requires` applied): usable while a healthy peer endpoint is in it; not
    known yet while a followed peer has neither answered nor failed, or while none is known and mDNS is
    still `searching`; else not usable, and why (versions outside `requires`, peers that do not offer it,
    peers that do not answer)."""
    from devmesh.routing.remote import NO_MATCH
    from devmesh.supervisor.elsewhere import Source

    endpoints = [e for e in view.endpoints if e.origin is Origin.PEER] if view is not None else []
    if any(e.healthy for e in endpoints):
        return Source(True)
    reasons: list[str] = []
    if view is not None and view.detail and view.detail.startswith(NO_MATCH):
        reasons.append(view.detail)
    elif endpoints:
        reasons.append("unhealthy at " + ", ".join(f"peer {e.peer_id}" for e in endpoints))
    else:
        live = [str(state.peer) for state in states if state.catalog is not None]
        if live:
            reasons.append(f"no peer offers it (live: {', '.join(live)})")
    reasons += [
        f"peer at {state.address}: {state.error}"
        for state in states
        if state.catalog is None and state.error is not None
    ]
    unheard = [str(state.address) for state in states if state.catalog is None and state.error is None]
    if unheard:
        return Source(None, "; ".join([f"waiting for peers ({', '.join(unheard)})", *reasons]))
    if not states:
        if searching:
            return Source(None, "waiting for peers (none found by mDNS yet)")
        return Source(False, "no peer found")
    return Source(False, "; ".join(reasons) or "no peer serves it")


def peer_keys(snapshot: MeshSnapshot) -> set[tuple[str, int]]:
    """(host, port) of every peer endpoint in `snapshot`: the proxy's pool keys for peers."""
    return {
        (endpoint.host, endpoint.port)
        for view in snapshot.services.values()
        for endpoint in view.endpoints
        if endpoint.origin is Origin.PEER
    }


def peer_entries(states: Iterable[PeerState]) -> list[dict[str, object]]:
    """The `peers` of the status document (and of the stream's peer events)."""
    return [
        {
            "peer": state.peer,
            "address": str(state.address),
            "alive": state.catalog is not None,
            "latency_ms": round(state.latency_s * 1000, 2),
            "services": [
                {"name": s.name, "version": s.version, "healthy": s.healthy}
                for s in (state.catalog.services if state.catalog else [])
            ],
            "error": state.error,
        }
        for state in states
    ]


def service_url(view: ServiceView, *, listen: Address | None, domain: str) -> str | None:
    """`http://api.localhost:7080`: where a browser reaches the service through the proxy on `listen`."""
    if listen is None:
        return f"http://127.0.0.1:{view.port}" if view.port is not None else None
    suffix = "." + domain
    authority_port = "" if listen.port == 80 else f":{listen.port}"
    for host in view.hosts:
        if not host.startswith("*."):
            full = host if host.endswith(suffix) or host == domain else host + suffix
            return f"http://{full}{authority_port}"
    if view.routes:
        prefix = view.routes[0].rstrip("*")
        return f"http://{domain}{authority_port}{prefix}"
    return None


def service_status(
    view: ServiceView, *, spec: ServiceSection | None, pin: str | None, url: str | None
) -> ServiceStatus:
    """One service of the status document: `view` as published, with its config's `spec` (None for a
    peer's service or a registration) and its pin."""
    from devmesh.admin.models import EndpointStatus, ServiceStatus

    return ServiceStatus(
        name=view.name,
        origin=view.origin.value,
        state=view.state.value,
        health=view.health.value,
        pid=view.pid,
        port=view.port,
        url=url,
        version=view.version,
        hosts=list(view.hosts),
        restarts=view.restarts,
        detail=view.detail if view.health != Health.HEALTHY else None,
        depends_on=list(spec.depends_on) if spec is not None else [],
        declared=spec is not None or view.origin is not Origin.PEER,
        requires=view.requires,
        remote=view.remote,
        pin=pin,
        endpoints=[
            EndpointStatus(
                address=endpoint.authority,
                origin=endpoint.origin.value,
                peer=endpoint.peer_id,
                version=endpoint.version,
                healthy=endpoint.healthy,
            )
            for endpoint in view.endpoints
        ],
    )
