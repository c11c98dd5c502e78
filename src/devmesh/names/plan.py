"""Which names a project needs this machine to resolve, for `devmesh install`.

Names under `localhost` resolve to loopback with no set-up (RFC 6761, and every current resolver and
browser), so they need nothing. Any other domain (`shop.test`, `dev.example`) needs either lines in
the hosts file or a local DNS server answering for it. The names are built the way the route table
builds them (devmesh.routing.table): a host written relative to the domain gets the domain appended,
`*.tenant` stays a wildcard, and the domain itself is the root host that `routes` are served on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig

# Loopback addresses a name is pointed at. The IPv6 one only when the proxy listens there: a client
# that tries ::1 first (Node, Go) gets "connection refused" from a proxy bound to 127.0.0.1 alone.
IPV4_LOOPBACK = "127.0.0.1"
IPV6_LOOPBACK = "::1"
_IPV6_LISTEN_HOSTS = ("::", "::1")
_MARK_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def needs_no_setup(domain: str) -> bool:
    """True for `localhost` and names under it: they resolve to loopback by themselves."""
    domain = domain.lower().rstrip(".")
    return domain == "localhost" or domain.endswith(".localhost")


def mark_name(mesh_name: str) -> str:
    """The mesh name as written in markers and file names: no spaces or slashes (a folder name may have them)."""
    return _MARK_UNSAFE.sub("-", mesh_name).strip("-") or "project"


@dataclass(frozen=True, slots=True)
class NameSet:
    """The names one project (mesh) needs, and the addresses they point to."""

    mesh: str  # already safe for markers (mark_name)
    domain: str
    plain: tuple[str, ...]  # full names, the domain first, then sorted
    wildcards: tuple[str, ...]  # "*.tenant.shop.test", sorted
    addresses: tuple[str, ...]
    # The project folder (absolute), recorded in the hosts-file block and the DNS files: two projects
    # whose folders have the same name get the same mesh name, and this tells their entries apart.
    project: str = ""

    @property
    def needs_setup(self) -> bool:
        return not needs_no_setup(self.domain)


def full_name(host: str, domain: str) -> str:
    """`api` → `api.shop.test`; a host already under the domain (or the domain) stays as it is."""
    if host == domain or host.endswith("." + domain):
        return host
    return f"{host}.{domain}"


def names_for(
    mesh_name: str,
    domain: str,
    hosts_by_service: dict[str, list[str]],
    *,
    ipv6: bool = False,
    project: str = "",
) -> NameSet:
    """The NameSet for a mesh whose services answer to `hosts_by_service` (service → its hosts)."""
    domain = domain.lower().rstrip(".")
    plain: set[str] = set()
    wildcards: set[str] = set()
    for hosts in hosts_by_service.values():
        for host in hosts:
            name = full_name(host.lower(), domain)
            (wildcards if name.startswith("*.") else plain).add(name)
    plain.discard(domain)
    addresses = (IPV4_LOOPBACK, IPV6_LOOPBACK) if ipv6 else (IPV4_LOOPBACK,)
    return NameSet(
        mark_name(mesh_name),
        domain,
        (domain, *sorted(plain)),
        tuple(sorted(wildcards)),
        addresses,
        project_label(project),
    )


def project_label(folder: str) -> str:
    """A project folder as written on a marker line: control characters (a newline) would break it."""
    return _CONTROL.sub("?", folder)


def names_from_config(loaded: LoadedConfig) -> NameSet:
    """The NameSet of a loaded config: every service's hosts (default: its name) and the root host."""
    config = loaded.config
    hosts = {
        name: list(service.hosts) if service.hosts is not None else [name]
        for name, service in config.services.items()
    }
    listens = [config.proxy.listen.host, config.proxy.https.host if config.proxy.https else ""]
    ipv6 = any(host in _IPV6_LISTEN_HOSTS for host in listens)
    project = str(loaded.project_dir.resolve())
    return names_for(loaded.mesh_name, config.mesh.domain, hosts, ipv6=ipv6, project=project)
