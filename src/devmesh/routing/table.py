"""The route table: which service a request is for, and in which order its endpoints are tried (DESIGN §3).

Everything here is a pure function of a `MeshSnapshot` and the request, so it is tested without sockets.
A `RouteTable` is built once per snapshot (the proxy caches it by revision) and never changes after.
"""

from __future__ import annotations

from dataclasses import dataclass

from devmesh.mesh.snapshot import Endpoint, MeshSnapshot, Origin, ServiceView

# Endpoints of these origins are "here": tried before any peer or remote.
LOCAL_ORIGINS = (Origin.LOCAL, Origin.REGISTERED, Origin.DOCKER, Origin.KUBERNETES)
# The order endpoints are tried in, by origin: this machine, then peers, then the remote fallback.
TIER = {origin: 0 for origin in LOCAL_ORIGINS} | {Origin.PEER: 1, Origin.REMOTE: 2}


def normalize_host(host: str) -> str:
    """`API.localhost:7080.` → `api.localhost`; `[::1]:7080` → `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host.count(":") == 1:
        host = host[:colon]
    return host.rstrip(".")


def _prefix_matches(prefix: str, path: str) -> bool:
    """`/api` matches `/api`, `/api/x` and `/api?q`, not `/apis`: prefixes end at a segment boundary."""
    if not path.startswith(prefix):
        return False
    if len(path) == len(prefix) or prefix.endswith("/"):
        return True
    return path[len(prefix)] in "/?#"


def _route_prefix(route: str) -> str:
    """`/api/*` and `/api/` and `/api` all mean the `/api` subtree; `/` and `/*` mean everything."""
    prefix = route[:-1] if route.endswith("*") else route
    if len(prefix) > 1:
        prefix = prefix.rstrip("/")
    return prefix or "/"


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Host and path lookups for one snapshot."""

    revision: int
    domain: str
    exact: dict[str, ServiceView]
    # (".tenant.localhost", view), longest suffix first so the most specific wildcard wins.
    wildcards: tuple[tuple[str, ServiceView], ...]
    # ("/api", view), longest first; they apply on the root host (the domain itself).
    prefixes: tuple[tuple[str, ServiceView], ...]

    @classmethod
    def build(cls, snapshot: MeshSnapshot) -> RouteTable:
        domain = snapshot.domain.lower().rstrip(".")
        suffix = "." + domain
        exact: dict[str, ServiceView] = {}
        wildcards: list[tuple[str, ServiceView]] = []
        prefixes: list[tuple[str, ServiceView]] = []
        for view in snapshot.services.values():
            for host in view.hosts:
                # A host is written relative to the domain ("api"), or in full ("api.localhost").
                full = host if host.endswith(suffix) or host == domain else host + suffix
                if host.startswith("*."):
                    wildcards.append((full[1:], view))
                else:
                    exact.setdefault(full, view)
                    exact.setdefault(host, view)
            for route in view.routes:
                prefixes.append((_route_prefix(route), view))
        wildcards.sort(key=lambda item: len(item[0]), reverse=True)
        prefixes.sort(key=lambda item: len(item[0]), reverse=True)
        return cls(snapshot.revision, domain, exact, tuple(wildcards), tuple(prefixes))

    def match(self, host: str, path: str) -> ServiceView | None:
        """The service a request for `host` (a normalized Host header) and `path` goes to, if any."""
        view = self.exact.get(host)
        if view is not None:
            return view
        for suffix, candidate in self.wildcards:
            if host.endswith(suffix):
                return candidate
        if self.prefixes and self.is_root_host(host):
            for prefix, candidate in self.prefixes:
                if _prefix_matches(prefix, path):
                    return candidate
        return None

    def is_root_host(self, host: str) -> bool:
        # The proxy's own address (127.0.0.1:7080 typed in a browser) counts as the root host too.
        return host == self.domain or host in ("localhost", "127.0.0.1", "::1")

    def known_hosts(self) -> list[str]:
        """Every host name a request can use, for the 404 page: full names, wildcards, root routes."""
        names: set[str] = set()
        suffix = "." + self.domain
        for host in self.exact:
            if host.endswith(suffix) or host == self.domain:
                names.add(host)
        names.update("*" + wildcard for wildcard, _ in self.wildcards)
        names.update(self.domain + prefix for prefix, _ in self.prefixes)
        return sorted(names)


def select_endpoints(view: ServiceView, turn: int = 0) -> list[Endpoint]:
    """The endpoints to try for `view`, best first (DESIGN §3 step 2).

    Healthy local endpoints first, then peers' (both rotated by `turn`: round robin across requests),
    then the remote fallback.
    """
    local = [e for e in view.endpoints if e.healthy and e.origin in LOCAL_ORIGINS]
    peers = [e for e in view.endpoints if e.healthy and e.origin is Origin.PEER]
    remote = [e for e in view.endpoints if e.healthy and e.origin is Origin.REMOTE]
    return _rotate(local, turn) + _rotate(peers, turn) + remote


def parse_pin(text: str) -> str | None:
    """`local`, `remote` or `peer=ID` (also `peer:ID`), normalized; None when it is none of these."""
    value = text.strip()
    if value in ("local", "remote"):
        return value
    for separator in ("=", ":"):
        kind, found, peer = value.partition(separator)
        if found and kind.strip() == "peer" and peer.strip():
            return f"peer={peer.strip()}"
    return None


def apply_pin(endpoints: list[Endpoint], pin: str) -> list[Endpoint]:
    """The endpoints a pin allows (DESIGN §3 step 2: a pin wins over the usual order)."""
    if pin == "local":
        return [e for e in endpoints if e.origin in LOCAL_ORIGINS]
    if pin == "remote":
        return [e for e in endpoints if e.origin is Origin.REMOTE]
    peer = pin.removeprefix("peer=")
    return [e for e in endpoints if e.origin is Origin.PEER and e.peer_id == peer]


def _rotate(endpoints: list[Endpoint], turn: int) -> list[Endpoint]:
    if len(endpoints) < 2:
        return endpoints
    shift = turn % len(endpoints)
    return endpoints[shift:] + endpoints[:shift]


def describe_unavailable(view: ServiceView) -> tuple[str, str]:
    """Why nothing can serve `view`, and what to do about it: for the 503 page."""
    name = view.name
    state = view.state.value
    if view.detail and view.detail.startswith("no endpoint satisfies"):
        return (
            f"{name}: {view.detail}",
            f"run a matching version here (`devmesh run {name}`), ask the peer to update, "
            "or widen `requires` in devmesh.toml",
        )
    if view.origin is Origin.REMOTE:  # declared with only a remote: nothing runs here
        reason = view.remote_detail or view.detail or "is not answering"
        return (
            f"{name}: its remote {view.remote} is not usable ({reason})",
            "check `remote` in devmesh.toml and that this machine trusts the remote's certificate "
            "(SSL_CERT_FILE for a private CA); `devmesh status` shows the last check",
        )
    detail = f" ({view.detail})" if view.detail else ""
    remote = (
        f"; its remote {view.remote} is not usable either ({view.remote_detail})"
        if view.remote and view.remote_detail
        else ""
    )
    if state == "stopped":
        return f"{name} is stopped{detail}{remote}", f"start it with `devmesh run {name}`"
    if state == "crashed":
        return (
            f"{name} crashed{detail}{remote}",
            f"see `devmesh logs {name}`, then `devmesh restart {name}`",
        )
    if state == "starting":
        return f"{name} is starting{detail}{remote}", "wait for it to turn healthy: `devmesh status`"
    return (
        f"{name} is {view.health.value}{detail}{remote}",
        f"see `devmesh logs {name}` and its health check in devmesh.toml",
    )
