"""Which mounted app a Host header names: exact names first, then the longest wildcard.

Pure functions of (patterns, domain, host): no I/O, so the rules are tested without a server. A pattern
is written relative to the domain (`api`, `*.tenant`) or in full (`api.localhost`), as in devmesh.toml.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from devmesh.routing.table import normalize_host

AppT = TypeVar("AppT")

# One DNS label (letters, digits, hyphens; underscores too, as local tools often use them).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")


def normalize_domain(domain: str, *, source: str) -> str:
    """`Localhost.` → `localhost`; raises ValueError naming `source` for something that is no domain."""
    cleaned = domain.strip().lower().strip(".")
    if not _NAME_RE.match(cleaned):
        raise ValueError(f"{source}: {domain!r} is not a domain name (use e.g. 'localhost' or 'dev.test')")
    return cleaned


def full_host(name: str, domain: str) -> str:
    """`api` → `api.localhost`; `api.localhost` and `localhost` stay as they are."""
    return name if name == domain or name.endswith("." + domain) else f"{name}.{domain}"


def subdomain_of(host: str, domain: str) -> str | None:
    """`a.tenant.localhost` → `a.tenant`; None for the domain itself or a host outside it."""
    suffix = "." + domain
    return host[: -len(suffix)] if host.endswith(suffix) and len(host) > len(suffix) else None


@dataclass(frozen=True, slots=True)
class HostMatch:
    """What the middleware tells the app about the request's host.

    `pattern`: the `hosts=` key that matched (None when no mounted app did); `subdomain`: the host without
    the domain (`a.tenant` for `a.tenant.localhost`); `wildcard`: the part a `*.` pattern stood for (`a`).
    """

    host: str
    domain: str
    subdomain: str | None
    pattern: str | None = None
    wildcard: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "host": self.host,
            "domain": self.domain,
            "subdomain": self.subdomain,
            "pattern": self.pattern,
            "wildcard": self.wildcard,
        }


@dataclass(frozen=True, slots=True)
class MountedHost(Generic[AppT]):
    """One `hosts=` entry: the key as written, the full name it stands for, and its app."""

    pattern: str
    full_name: str  # "api.localhost", or "*.tenant.localhost" for a wildcard
    app: AppT


class HostRouter(Generic[AppT]):
    """The mounted apps of one middleware, looked up by normalized host."""

    def __init__(self, hosts: Mapping[str, AppT], *, domain: str) -> None:
        self.domain = domain
        self._exact: dict[str, MountedHost[AppT]] = {}
        wildcards: list[tuple[str, MountedHost[AppT]]] = []
        for pattern, app in hosts.items():
            if not isinstance(pattern, str):
                raise TypeError(f"hosts: the key {pattern!r} is not a string (use e.g. 'api' or '*.tenant')")
            if not callable(app):
                raise TypeError(f"hosts[{pattern!r}]: {app!r} is not an app (give the application object)")
            written = pattern.strip().lower().rstrip(".")
            wildcard = written == "*" or written.startswith("*.")
            name = written[2:] if written.startswith("*.") else ("" if written == "*" else written)
            if name and not _NAME_RE.match(name):
                raise ValueError(
                    f"hosts: {pattern!r} is not a host name "
                    "(use a name like 'api', a wildcard like '*.tenant', or a full name like 'api.localhost')"
                )
            if wildcard:
                suffix = "." + (full_host(name, domain) if name else domain)
                mounted: MountedHost[AppT] = MountedHost(pattern, "*" + suffix, app)
                if any(existing == suffix for existing, _ in wildcards):
                    raise ValueError(f"hosts: {pattern!r} mounts the same names as another key; keep one")
                wildcards.append((suffix, mounted))
            else:
                full = full_host(name, domain)
                if full in self._exact:
                    raise ValueError(
                        f"hosts: {pattern!r} and {self._exact[full].pattern!r} both name {full}; keep one"
                    )
                self._exact[full] = MountedHost(pattern, full, app)
        # The longest suffix is the most specific wildcard: "*.eu.tenant" before "*.tenant".
        self._wildcards = sorted(wildcards, key=lambda entry: len(entry[0]), reverse=True)

    def __bool__(self) -> bool:
        return bool(self._exact or self._wildcards)

    @property
    def mounted(self) -> list[MountedHost[AppT]]:
        """Every entry, exact names first, in the order they are tried."""
        return [*self._exact.values(), *(mounted for _, mounted in self._wildcards)]

    def apps(self) -> list[AppT]:
        """Each mounted app once (one app may serve several names)."""
        unique: dict[int, AppT] = {}
        for mounted in self.mounted:
            unique.setdefault(id(mounted.app), mounted.app)
        return list(unique.values())

    def match(self, host: str) -> tuple[AppT | None, HostMatch]:
        """The app mounted for `host` (normalized), if any, and what to tell the app about the host."""
        subdomain = subdomain_of(host, self.domain)
        exact = self._exact.get(host)
        if exact is not None:
            return exact.app, HostMatch(host, self.domain, subdomain, exact.pattern)
        for suffix, mounted in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return mounted.app, HostMatch(
                    host, self.domain, subdomain, mounted.pattern, wildcard=host[: -len(suffix)]
                )
        return None, HostMatch(host, self.domain, subdomain)


def names_in(hosts: Iterable[str], domain: str) -> frozenset[str]:
    """Full host names for `hosts` written relative to `domain` or in full."""
    return frozenset(full_host(normalize_host(name), domain) for name in hosts if normalize_host(name))
