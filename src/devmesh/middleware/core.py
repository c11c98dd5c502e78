"""What the ASGI and WSGI middleware share: settings from arguments and devmesh's environment, the plan
for one request (answer it here, hand it to a mounted app, forward it to the mesh, or pass it on), the
documents of `/_devmesh/health` and `/_devmesh/routes`, and the rules for trusting `X-Forwarded-*`.

Everything here is pure (the environment is passed in), so both adapters behave the same by construction.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import urlsplit

import devmesh
from devmesh.middleware.hosts import (
    HostMatch,
    HostRouter,
    full_host,
    names_in,
    normalize_domain,
)
from devmesh.routing.table import normalize_host

AppT = TypeVar("AppT")

HEALTH_PATH = "/_devmesh/health"
ROUTES_PATH = "/_devmesh/routes"
FORWARDED_BY_HEADER = "X-DevMesh-Forwarded-By"
LOOP_DETECTED = 508  # RFC 5842: the request came back to where it was forwarded from
FORWARD_TIMEOUT_S = 30.0
CONNECT_ATTEMPTS = 2  # a refused connect is retried once: the proxy may be restarting (hot reload)
CONNECT_RETRY_DELAY_S = 0.05
BODY_CHUNK_BYTES = 64 * 1024

# Hop-by-hop (RFC 9110 §7.6.1) and framing headers: they describe one connection, never the next one.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)

# What devmesh passes to the processes it starts (see agent/runtime.py and supervisor/runner.py).
SERVICE_ENV = "DEVMESH_SERVICE"
VERSION_ENV = "DEVMESH_SERVICE_VERSION"
DOMAIN_ENV = "DEVMESH_DOMAIN"
PROXY_URL_ENV = "DEVMESH_PROXY_URL"


class Action(enum.Enum):
    HEALTH = "health"
    ROUTES = "routes"
    MOUNTED = "mounted"  # a `hosts=` app
    FORWARD = "forward"  # another service of the mesh: through the devmesh proxy
    APP = "app"  # the wrapped app


@dataclass(frozen=True, slots=True)
class Plan(Generic[AppT]):
    action: Action
    match: HostMatch
    app: AppT | None = None


@dataclass(frozen=True, slots=True)
class MeshAddress:
    """Where the devmesh proxy listens (plain HTTP: the middleware forwards over loopback)."""

    url: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str, *, source: str) -> MeshAddress:
        parts = urlsplit(url.strip())
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"{source}: {url!r} is not the devmesh proxy's address "
                "(give its plain-HTTP URL, e.g. 'http://127.0.0.1:7080')"
            )
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"{source}: {url!r} has no valid port (e.g. 'http://127.0.0.1:7080')") from None
        host = "127.0.0.1" if parts.hostname in ("0.0.0.0", "") else parts.hostname
        host = "::1" if host == "::" else host
        return cls(url=f"http://{parts.netloc}", host=host, port=port)


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """The middleware's view of the mesh, resolved once at construction."""

    service: str | None
    version: str | None
    domain: str
    mesh: MeshAddress | None
    mesh_hosts: frozenset[str]  # full names of the mesh's other services: forwarded
    own_hosts: frozenset[str]  # this service's own names: never forwarded
    forward_unknown: bool

    @classmethod
    def resolve(
        cls,
        *,
        service: str | None,
        version: str | None,
        domain: str | None,
        mesh: str | bool | None,
        mesh_services: Iterable[str] | None,
        forward_unknown: bool,
        environ: Mapping[str, str],
    ) -> MeshSettings:
        """Arguments win; else what devmesh passes to its children; else local defaults (no mesh)."""
        chosen_domain = normalize_domain(
            domain if domain is not None else environ.get(DOMAIN_ENV) or "localhost",
            source="domain" if domain is not None else DOMAIN_ENV,
        )
        name = service if service is not None else environ.get(SERVICE_ENV) or None
        address: MeshAddress | None = None
        if isinstance(mesh, str):
            address = MeshAddress.parse(mesh, source="mesh")
        elif mesh is None and environ.get(PROXY_URL_ENV):
            address = MeshAddress.parse(environ[PROXY_URL_ENV], source=PROXY_URL_ENV)
        elif mesh is True:
            raise ValueError(
                "mesh: give the devmesh proxy's URL (e.g. 'http://127.0.0.1:7080'), None or False"
            )
        own_url_key = f"DEVMESH_{name.upper().replace('-', '_')}_URL" if name else None
        own = set(names_in([name], chosen_domain)) if name else set()
        env_hosts: set[str] = set()
        for key, value in environ.items():
            if not (key.startswith("DEVMESH_") and key.endswith("_URL")) or key == PROXY_URL_ENV:
                continue
            host = normalize_host(urlsplit(value).hostname or "")
            # A service reached by path on the root host (`http://localhost:7080/api`) has no name to forward.
            if not host or host == chosen_domain or host in ("localhost", "127.0.0.1", "::1"):
                continue
            (own if key == own_url_key else env_hosts).add(host)
        hosts = names_in(mesh_services, chosen_domain) if mesh_services is not None else frozenset(env_hosts)
        return cls(
            service=name,
            version=version if version is not None else environ.get(VERSION_ENV) or None,
            domain=chosen_domain,
            mesh=address,
            mesh_hosts=frozenset(hosts - own),
            own_hosts=frozenset(own),
            forward_unknown=forward_unknown,
        )


@dataclass
class Counters:
    """Requests by what the middleware did with them; shown by `/_devmesh/routes`."""

    mounted: int = 0
    forwarded: int = 0
    forward_failed: int = 0
    forward_refused: int = 0  # a client outside `forward_from`, or a forwarding loop
    passed_to_app: int = 0
    answered: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:  # WSGI servers call from many threads
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "mounted": self.mounted,
                "forwarded": self.forwarded,
                "forward_failed": self.forward_failed,
                "forward_refused": self.forward_refused,
                "passed_to_app": self.passed_to_app,
                "answered": self.answered,
            }


LocalResponse = tuple[int, list[tuple[str, str]], bytes]


class MiddlewareCore(Generic[AppT]):
    """The decisions of one middleware instance; the ASGI and WSGI classes only carry them out."""

    def __init__(
        self,
        hosts: Mapping[str, AppT] | None,
        settings: MeshSettings,
        *,
        health_path: str | None,
        routes_path: str | None,
        forward_from: ForwardFrom | None = None,
    ) -> None:
        self.settings = settings
        self.router: HostRouter[AppT] = HostRouter(hosts or {}, domain=settings.domain)
        self.health_path = health_path
        self.routes_path = routes_path
        self.forward_from = forward_from or ForwardFrom()
        self.counters = Counters()
        self._started = time.monotonic()

    def plan(self, raw_host: str, path: str, *, via_mesh: bool) -> Plan[AppT]:
        """What to do with a request for `raw_host` (a Host header) and `path`.

        `via_mesh`: the devmesh proxy delivered it (its `Via`), so the mesh routes this host here and
        forwarding it back would loop: it goes to the app instead.
        """
        host = normalize_host(raw_host)
        app, match = self.router.match(host)
        if path == self.health_path:
            return Plan(Action.HEALTH, match)
        if path == self.routes_path:
            return Plan(Action.ROUTES, match)
        if app is not None:
            return Plan(Action.MOUNTED, match, app)
        if self.should_forward(host) and not via_mesh:
            return Plan(Action.FORWARD, match)
        return Plan(Action.APP, match)

    def should_forward(self, host: str) -> bool:
        settings = self.settings
        if settings.mesh is None or not host or host in settings.own_hosts:
            return False
        if host in settings.mesh_hosts:
            return True
        return settings.forward_unknown and match_is_subdomain(host, settings.domain)

    def health_document(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "service": self.settings.service,
            "version": self.settings.version,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "pid": os.getpid(),
            "devmesh": devmesh.__version__,
        }

    def routes_document(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "service": settings.service,
            "domain": settings.domain,
            "hosts": [
                {"pattern": mounted.pattern, "host": mounted.full_name} for mounted in self.router.mounted
            ],
            "own_hosts": sorted(settings.own_hosts),
            "mesh": settings.mesh.url if settings.mesh else None,
            "forwarded_hosts": sorted(settings.mesh_hosts) if settings.mesh else [],
            "forward_unknown": settings.forward_unknown and settings.mesh is not None,
            "forward_from": self.forward_from.describe(),
            "requests": self.counters.as_dict(),
        }

    def local_response(self, plan: Plan[AppT], method: str) -> LocalResponse:
        """The answer to HEALTH and ROUTES: JSON for GET and HEAD, 405 otherwise."""
        if method not in ("GET", "HEAD"):
            return json_response(
                405,
                {"error": "method not allowed", "message": f"{plan.match.host or 'this host'}: use GET"},
                extra=[("allow", "GET, HEAD")],
            )
        document = self.health_document() if plan.action is Action.HEALTH else self.routes_document()
        status, headers, body = json_response(200, document, extra=[("cache-control", "no-store")])
        return status, headers, b"" if method == "HEAD" else body

    def refusal(self, host: str, *, peer: str | None, forwarded_by: str | None) -> LocalResponse | None:
        """The answer instead of forwarding a FORWARD plan, or None to forward it.

        `peer`: the address of the connection itself (never one from X-Forwarded-For). Only clients on
        this machine (or in `forward_from`) reach the mesh through the app: an app listening on the
        network must not relay other machines to the loopback proxy. `forwarded_by`: the request's
        X-DevMesh-Forwarded-By; a middleware already forwarded it, so `mesh=` leads back to an app
        rather than to the devmesh proxy (which delivers with its `Via`): forwarding again would loop.
        """
        mesh = self.settings.mesh
        where = mesh.url if mesh else None
        if forwarded_by:
            return json_response(
                LOOP_DETECTED,
                {
                    "error": "forwarding loop",
                    "message": f"devmesh: {host or 'this request'} was already forwarded by "
                    f"{forwarded_by!r} ({FORWARDED_BY_HEADER}) and reached an app with the devmesh "
                    f"middleware again instead of the devmesh proxy: it is not forwarded a second time. "
                    f"mesh= or DEVMESH_PROXY_URL ({where}) must be the devmesh proxy's address, not this "
                    "app's or another app's.",
                    "host": host,
                    "forwarded_by": forwarded_by,
                    "mesh": where,
                },
            )
        if not self.forward_from.allows(peer):
            return json_response(
                403,
                {
                    "error": "forward refused",
                    "message": f"devmesh: {host or 'this host'} is another service of the mesh, and this "
                    f"request came from {peer or 'an unknown address'}, not from this machine. The "
                    "middleware forwards to the devmesh proxy only for loopback clients, so that an app "
                    "listening on the network does not open the mesh's local services to other machines. "
                    "To allow more, give the middleware forward_from=['192.168.1.0/24'] (addresses or "
                    "networks) or forward_from='any'.",
                    "host": host,
                    "client": peer,
                    "forward_from": self.forward_from.describe(),
                },
            )
        return None

    def failure_response(self, host: str, problem: ForwardProblem) -> LocalResponse:
        """502 (or 504) naming the mesh address, the host and the error, and what to check."""
        mesh = self.settings.mesh
        where = mesh.url if mesh else "the mesh"
        return json_response(
            problem.status,
            {
                "error": problem.kind,
                "message": f"devmesh: could not forward {host or 'the request'} to the devmesh proxy at "
                f"{where}: {problem.detail}. {problem.hint}",
                "host": host,
                "mesh": mesh.url if mesh else None,
            },
        )


def match_is_subdomain(host: str, domain: str) -> bool:
    return host.endswith("." + domain)


@dataclass(frozen=True, slots=True)
class ForwardProblem:
    """Why a forward failed before any of the mesh's response reached the client."""

    status: int
    kind: str
    detail: str
    hint: str

    @classmethod
    def unreachable(cls, error: BaseException) -> ForwardProblem:
        return cls(
            502,
            "mesh unreachable",
            describe(error),
            "Is the mesh running (`devmesh up`)? The address comes from DEVMESH_PROXY_URL or mesh=.",
        )

    @classmethod
    def timeout(cls, seconds: float) -> ForwardProblem:
        return cls(
            504, "mesh timeout", f"no response within {seconds:g} s", "See `devmesh logs` for the service."
        )

    @classmethod
    def bad_response(cls, error: BaseException) -> ForwardProblem:
        return cls(502, "bad response from mesh", describe(error), "See `devmesh logs` for the service.")

    @classmethod
    def send_failed(cls, error: BaseException) -> ForwardProblem:
        """The connection broke while the request body was being sent, and no answer came."""
        return cls(
            502,
            "mesh stopped reading",
            f"the connection broke while sending the request body ({describe(error)}), with no answer",
            "See `devmesh logs` for the service.",
        )

    @classmethod
    def body_stalled(cls, seconds: float) -> ForwardProblem:
        """The mesh took none of the request body for `seconds`, and did not answer."""
        return cls(
            504,
            "mesh timeout",
            f"the mesh took none of the request body for {seconds:g} s and did not answer",
            "See `devmesh logs` for the service.",
        )


def describe(error: BaseException) -> str:
    return str(error) or type(error).__name__


def json_response(
    status: int, document: Mapping[str, Any], *, extra: Iterable[tuple[str, str]] = ()
) -> LocalResponse:
    body = json.dumps(document, indent=2).encode() + b"\n"
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *extra,
    ]
    return status, headers, body


IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardFromArg: TypeAlias = str | Iterable[str] | None


def ip_of(address: str | None) -> IPAddress | None:
    """The IP address in a peer address as servers give it (`::1`, `[::1]`, `fe80::1%eth0`,
    `::ffff:127.0.0.1` from a dual-stack socket: the IPv4 one), or None (a Unix socket, a name)."""
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def is_loopback(address: str | None) -> bool:
    parsed = ip_of(address)
    return parsed is not None and parsed.is_loopback


@dataclass(frozen=True, slots=True)
class ForwardFrom:
    """The clients whose requests may be forwarded to the mesh: loopback ones always, those in
    `networks` too, or every client when `everyone`. A peer with no IP address (a Unix socket, a test
    client's name) is not loopback: only `everyone` lets it through."""

    networks: tuple[IPNetwork, ...] = ()
    everyone: bool = False

    @classmethod
    def parse(cls, value: ForwardFromArg) -> ForwardFrom:
        """`None` (loopback only), `"any"`, or addresses and networks: `["10.0.0.0/8", "192.168.1.20"]`
        (a single one may be given as a string)."""
        if value is None:
            return cls()
        items = [value] if isinstance(value, str) else list(value)
        networks: list[IPNetwork] = []
        for item in items:
            text = item.strip().lower() if isinstance(item, str) else None
            if text == "any":
                return cls(everyone=True)
            if text == "loopback":
                continue
            try:
                if text is None:
                    raise ValueError
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(
                    f"forward_from: {item!r} is not an address or a network (give e.g. "
                    "['192.168.1.0/24', '10.0.0.5'], or 'any')"
                ) from None
        return cls(networks=tuple(networks))

    def allows(self, peer: str | None) -> bool:
        if self.everyone:
            return True
        address = ip_of(peer)
        if address is None:
            return False
        return address.is_loopback or any(address in network for network in self.networks)

    def describe(self) -> list[str]:
        return ["any"] if self.everyone else ["loopback", *(str(network) for network in self.networks)]


@dataclass(frozen=True, slots=True)
class ForwardedView:
    """What a trusted proxy says about the original request; None fields were not given."""

    scheme: str | None = None
    host: str | None = None
    client: str | None = None


def _last_value(value: str | None) -> str | None:
    if not value:
        return None
    items = [item.strip() for item in value.split(",") if item.strip()]
    return items[-1] if items else None


def client_from_forwarded_for(value: str) -> str | None:
    """The original client in an `X-Forwarded-For` chain: the rightmost address that is not a local proxy
    (each proxy appends the address it saw), or the leftmost when every hop is local."""
    items = [item.strip().strip('"') for item in value.split(",") if item.strip()]
    for item in reversed(items):
        if not is_loopback(item):
            return item
    return items[0] if items else None


def trusted_forwarded(
    peer: str | None, *, proto: str | None, host: str | None, forwarded_for: str | None
) -> ForwardedView | None:
    """The X-Forwarded-* view when `peer` (the connection's address) is loopback, as the devmesh proxy's
    is; None otherwise: a remote peer could claim anything."""
    if not is_loopback(peer) or not (proto or host or forwarded_for):
        return None
    scheme = (_last_value(proto) or "").lower() or None
    return ForwardedView(
        scheme=scheme if scheme in ("http", "https") else None,
        host=_last_value(host),
        client=client_from_forwarded_for(forwarded_for) if forwarded_for else None,
    )


def came_through_mesh(via: str | None) -> bool:
    """True when a `Via` header lists the devmesh proxy (`1.1 devmesh`)."""
    return bool(via) and any(hop.strip().endswith(" devmesh") for hop in (via or "").split(","))


def forward_headers(
    headers: Iterable[tuple[str, str]],
    *,
    client: str | None,
    scheme: str,
    host: str,
    forwarded_by: str,
) -> list[tuple[str, str]]:
    """The request headers to send to the mesh: hop-by-hop ones dropped (and those `Connection` names),
    `X-Forwarded-For` extended with the client, `X-Forwarded-Proto`/`-Host` set, and our own mark."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    kept: list[tuple[str, str]] = []
    chain: list[str] = []
    for name, value in pairs:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in named:
            continue
        if lowered == "x-forwarded-for":
            chain.append(value)
            continue
        if lowered in ("x-forwarded-proto", "x-forwarded-host", FORWARDED_BY_HEADER.lower()):
            continue
        kept.append((name, value))
    if client:
        chain.append(client)
    if chain:
        kept.append(("X-Forwarded-For", ", ".join(chain)))
    kept += [("X-Forwarded-Proto", scheme), ("X-Forwarded-Host", host), (FORWARDED_BY_HEADER, forwarded_by)]
    return kept


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The mesh's response headers to pass on: hop-by-hop ones dropped, Content-Length kept (the body is
    passed through unchanged) unless the response was chunked."""
    pairs = list(headers)
    chunked = any(name.lower() == "transfer-encoding" and "chunked" in value.lower() for name, value in pairs)
    named = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    kept = []
    for name, value in pairs:
        lowered = name.lower()
        keep_length = lowered == "content-length" and not chunked
        if keep_length or (lowered not in HOP_BY_HOP and lowered not in named):
            kept.append((name, value))
    return kept


__all__ = [
    "HEALTH_PATH",
    "ROUTES_PATH",
    "Action",
    "ForwardFrom",
    "ForwardProblem",
    "MeshAddress",
    "MeshSettings",
    "MiddlewareCore",
    "Plan",
    "full_host",
]


class HostRoutingMiddleware(Generic[AppT]):
    """The constructor both middleware classes share (their docstrings list the arguments); `APP_KIND`
    names the kind of app for errors."""

    APP_KIND = "an app"

    def __init__(
        self,
        app: AppT,
        *,
        hosts: Mapping[str, AppT] | None = None,
        domain: str | None = None,
        mesh: str | bool | None = None,
        mesh_services: Iterable[str] | None = None,
        forward_unknown: bool = False,
        service: str | None = None,
        version: str | None = None,
        trust_forwarded_headers: bool = True,
        forward_from: ForwardFromArg = None,
        health_path: str | None = HEALTH_PATH,
        routes_path: str | None = ROUTES_PATH,
        timeout: float = FORWARD_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app: {app!r} is not {self.APP_KIND} (give the application object)")
        if timeout <= 0:
            raise ValueError(f"timeout: {timeout!r} must be a positive number of seconds")
        self.app = app
        self.core: MiddlewareCore[AppT] = MiddlewareCore(
            hosts,
            MeshSettings.resolve(
                service=service,
                version=version,
                domain=domain,
                mesh=mesh,
                mesh_services=mesh_services,
                forward_unknown=forward_unknown,
                environ=os.environ if environ is None else environ,
            ),
            health_path=health_path,
            routes_path=routes_path,
            forward_from=ForwardFrom.parse(forward_from),
        )
        self.trust_forwarded_headers = trust_forwarded_headers
        self.timeout = timeout
