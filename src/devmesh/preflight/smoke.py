"""The `devmesh.smoke` checks: a GET through the proxy per service (its health path, or / on its host)
and per route, judged by who answered.

A 5xx or a connection error fails; a 4xx the service itself answered passes with a note (the mesh
reaches it); a 4xx from devmesh itself (no `X-DevMesh-Served-By`: nothing routes there) fails. The
request is `get=`, so that the judging is tested without sockets.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from devmesh import __version__
from devmesh.preflight.ports import loopback_address
from devmesh.preflight.report import FAILED, SKIPPED, CheckResult, Report

if TYPE_CHECKING:
    from devmesh.config import LoadedConfig

SMOKE_TIMEOUT_S = 10.0  # one smoke request through the proxy (headers only; bodies are not read)
BODY_EXCERPT_BYTES = 2048


@dataclass(frozen=True, slots=True)
class SmokeAnswer:
    """What one smoke request got: a status (None: no response), who served it, the start of an error
    body, or why the request failed."""

    status: int | None
    served_by: str = ""  # X-DevMesh-Served-By: empty when devmesh answered itself
    excerpt: str = ""
    error: str = ""


def smoke_targets(
    loaded: LoadedConfig, name: str, entry: Mapping[str, Any], listen_port: int
) -> list[tuple[str, str]]:
    """(Host header, path) pairs to GET for a service: its health path (or /) on its host, each route."""
    spec = loaded.config.services.get(name)
    targets: list[tuple[str, str]] = []
    url = entry.get("url")
    parts = urlsplit(url) if url else None
    if parts is not None and parts.path in ("", "/"):  # a host of its own (else the URL is a route)
        health = spec.health.http if spec is not None and spec.health is not None else None
        targets.append((parts.netloc, health or "/"))
    domain = loaded.config.mesh.domain
    authority = domain if listen_port == 80 else f"{domain}:{listen_port}"
    for prefix in spec.routes if spec is not None else []:
        targets.append((authority, prefix.rstrip("*") or "/"))
    return targets


def smoke_request(listen: str, host: str, path: str) -> SmokeAnswer:
    """GET `path` as `Host: host` through the proxy listening on `listen`."""
    connection = http.client.HTTPConnection(*loopback_address(listen), timeout=SMOKE_TIMEOUT_S)
    try:
        connection.request(
            "GET",
            path,
            headers={
                "Host": host,
                "Accept": "application/json",
                "User-Agent": f"devmesh-check/{__version__}",
            },
        )
        response = connection.getresponse()
        served_by = response.getheader("X-DevMesh-Served-By") or ""
        excerpt = ""
        if response.status >= 400:
            # Only error bodies, and only a little: a healthy page may stream forever (server-sent events).
            # A body that breaks off leaves the excerpt empty: the status alone still judges the answer.
            with contextlib.suppress(OSError, http.client.HTTPException):
                excerpt = response.read(BODY_EXCERPT_BYTES).decode("utf-8", "replace").strip()
        return SmokeAnswer(response.status, served_by, excerpt)
    except (OSError, http.client.HTTPException) as error:
        return SmokeAnswer(
            None, error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        )
    finally:
        connection.close()


def devmesh_page(excerpt: str) -> str:
    """The message and hint of devmesh's own JSON error page (else the start of the body)."""
    try:
        page = json.loads(excerpt)
    except ValueError:
        return excerpt[:300]
    if not isinstance(page, dict):
        return excerpt[:300]
    parts = [str(page.get("message") or page.get("error") or "")]
    if page.get("hint"):
        parts.append(f"devmesh says: {page['hint']}")
    return " ".join(part for part in parts if part)


def check_smoke(
    loaded: LoadedConfig,
    entries: Mapping[str, Mapping[str, Any]],
    unhealthy: set[str],
    listen: str | None,
    report: Report,
    *,
    get: Callable[[str, str, str], SmokeAnswer] = smoke_request,
) -> None:
    """A testcase per service and target (`smoke_targets`) of `entries` (the status document's services
    by name); those of `unhealthy` services are skipped, and every one when the agent has no `listen`
    address. `get(listen, host, path)` makes the request."""
    listen_port = int(listen.rpartition(":")[2]) if listen else 0
    for name, entry in entries.items():
        targets = smoke_targets(loaded, name, entry, listen_port)
        if not targets:
            report.add(
                CheckResult(
                    "devmesh.smoke",
                    name,
                    SKIPPED,
                    message="no host name or route to request (only wildcard hosts)",
                )
            )
            continue
        for host, path in targets:
            case = report.add(CheckResult("devmesh.smoke", f"{name} GET http://{host}{path}"))
            if name in unhealthy:
                case.outcome, case.message = (
                    SKIPPED,
                    f"not checked: {name} is not healthy (see devmesh.health)",
                )
                continue
            if listen is None:
                case.outcome, case.message = SKIPPED, "not checked: the agent has no proxy listen address"
                continue
            began = time.monotonic()
            answer = get(listen, host, path)
            case.time_s = time.monotonic() - began
            _judge(case, answer, name=name, host=host, path=path, listen=listen, config_name=loaded.path.name)


def _judge(
    case: CheckResult, answer: SmokeAnswer, *, name: str, host: str, path: str, listen: str, config_name: str
) -> None:
    """Fill in `case` from what GET `path` as `Host: host` through the proxy at `listen` answered."""
    url = f"http://{host}{path}"
    status, served_by = answer.status, answer.served_by
    if status is None:
        case.outcome = FAILED
        case.message = f"GET {url} through the proxy at {listen} failed: {answer.error}"
        case.hint = "see .devmesh/agent.log and `devmesh logs " + name + "`"
    elif status >= 500:
        case.outcome = FAILED
        who = served_by or "devmesh (no endpoint answered)"
        case.message = f"GET {url} answered {status} from {who}"
        case.details = devmesh_page(answer.excerpt) if not served_by else answer.excerpt[:1000]
        case.hint = (
            f"`devmesh logs {name}` shows the service's side; `devmesh requests -s {name}` the request"
        )
    elif status >= 400 and not served_by:
        case.outcome = FAILED
        case.message = f"GET {url} answered {status} from devmesh itself: nothing routes there"
        case.details = devmesh_page(answer.excerpt)
        case.hint = f"check hosts / routes of [services.{name}] and [mesh] domain in {config_name}"
    else:
        case.message = f"{status} from {served_by or 'devmesh'}"
        if status >= 400:
            case.note = (
                f"{status} from {served_by}: the mesh reaches {name}, which has nothing to serve at {path}"
            )
