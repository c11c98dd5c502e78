"""`DevmeshWSGIMiddleware`: subdomain routing, forwarding to the mesh and a health endpoint for any WSGI
app (Flask, Django, Bottle, Pyramid...).

    from devmesh.wsgi import DevmeshWSGIMiddleware

    app.wsgi_app = DevmeshWSGIMiddleware(app.wsgi_app, hosts={"api": api_app})   # Flask
    application = DevmeshWSGIMiddleware(get_wsgi_application())                 # Django

The same rules as the ASGI middleware (devmesh.asgi): `/_devmesh/health` and `/_devmesh/routes` answered
here, mounted hosts, other mesh services forwarded to the devmesh proxy, the rest to the wrapped app.
The environ carries what was matched: `environ["devmesh"]` (a `HostMatch`) and `devmesh.subdomain`,
`devmesh.wildcard`, `devmesh.pattern`, `devmesh.domain` (Django: `request.META[...]`).
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

from devmesh.middleware.core import (
    Action,
    HostRoutingMiddleware,
    LocalResponse,
    came_through_mesh,
    forward_headers,
    trusted_forwarded,
)
from devmesh.middleware.hosts import HostMatch
from devmesh.middleware.types import StartResponse, WSGIApplication, WSGIEnvironment
from devmesh.middleware.wsgi_forward import environ_headers, forward_wsgi


class DevmeshWSGIMiddleware(HostRoutingMiddleware[WSGIApplication]):
    """Wraps a WSGI app; the arguments are those of `devmesh.asgi.DevmeshMiddleware`, with WSGI apps.

    Args:
        app: the WSGI app that gets every request the middleware does not answer, mount or forward.
        hosts: apps mounted by host, relative to `domain` (`"api"`, `"*.tenant"`) or in full.
        domain: the mesh's domain; default `$DEVMESH_DOMAIN`, else `localhost`.
        mesh: the devmesh proxy's URL; default `$DEVMESH_PROXY_URL`; False never forwards.
        mesh_services: the host names forwarded to the mesh; default: those devmesh lists in the
            environment (`DEVMESH_<NAME>_URL`), less this service's own.
        forward_unknown: also forward any other host under `domain` that nothing here serves.
        service: this service's name; default `$DEVMESH_SERVICE`.
        version: this service's version; default `$DEVMESH_SERVICE_VERSION`.
        trust_forwarded_headers: apply `X-Forwarded-Proto/-Host/-For` to the environ when
            `REMOTE_ADDR` is a loopback address.
        forward_from: the clients besides loopback ones (by `REMOTE_ADDR`) whose requests may be
            forwarded to the mesh: addresses or networks, or `"any"`; others get a 403.
        health_path: where the health document is served; None turns it off.
        routes_path: where the mounted hosts and forwarding rules are listed; None turns it off.
        timeout: seconds to wait for the mesh to connect and to answer (per read).
        environ: the process environment to read the defaults from (tests); default `os.environ`.
    """

    APP_KIND = "a WSGI app"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        peer = environ.get("REMOTE_ADDR") or None  # the connection's own, before X-Forwarded-For
        if self.trust_forwarded_headers:
            _apply_forwarded(environ)
        host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
        plan = self.core.plan(
            host, environ.get("PATH_INFO", ""), via_mesh=came_through_mesh(environ.get("HTTP_VIA"))
        )
        _record_match(environ, plan.match)
        counters = self.core.counters
        if plan.action in (Action.HEALTH, Action.ROUTES):
            counters.add("answered")
            return _respond(
                start_response, self.core.local_response(plan, environ.get("REQUEST_METHOD", "GET"))
            )
        if plan.action is Action.MOUNTED:
            counters.add("mounted")
            assert plan.app is not None
            return plan.app(environ, start_response)
        if plan.action is Action.FORWARD:
            refusal = self.core.refusal(
                host, peer=peer, forwarded_by=environ.get("HTTP_X_DEVMESH_FORWARDED_BY")
            )
            if refusal is not None:
                counters.add("forward_refused")
                return _respond(start_response, refusal)
            return self._forward(environ, start_response, host)
        counters.add("passed_to_app")
        return self.app(environ, start_response)

    def _forward(self, environ: WSGIEnvironment, start_response: StartResponse, host: str) -> Iterable[bytes]:
        mesh = self.core.settings.mesh
        assert mesh is not None
        headers = forward_headers(
            environ_headers(environ),
            client=environ.get("REMOTE_ADDR") or None,
            scheme=environ.get("wsgi.url_scheme", "http"),
            host=host,
            forwarded_by=self.core.settings.service or "devmesh-middleware",
        )
        outcome = forward_wsgi(environ, mesh=mesh, headers=headers, timeout_s=self.timeout)
        if isinstance(outcome, tuple):
            self.core.counters.add("forwarded")
            status, response_headers, body = outcome
            start_response(status, response_headers)
            return body
        self.core.counters.add("forward_failed")
        return _respond(start_response, self.core.failure_response(host, outcome))


def _apply_forwarded(environ: WSGIEnvironment) -> None:
    view = trusted_forwarded(
        environ.get("REMOTE_ADDR"),
        proto=environ.get("HTTP_X_FORWARDED_PROTO"),
        host=environ.get("HTTP_X_FORWARDED_HOST"),
        forwarded_for=environ.get("HTTP_X_FORWARDED_FOR"),
    )
    if view is None:
        return
    if view.scheme is not None:
        environ["wsgi.url_scheme"] = view.scheme
    if view.client is not None:
        environ["REMOTE_ADDR"] = view.client
    if view.host is not None:
        environ["HTTP_HOST"] = view.host


def _record_match(environ: WSGIEnvironment, match: HostMatch) -> None:
    environ["devmesh"] = match
    environ["devmesh.host"] = match.host
    environ["devmesh.domain"] = match.domain
    environ["devmesh.subdomain"] = match.subdomain
    environ["devmesh.pattern"] = match.pattern
    environ["devmesh.wildcard"] = match.wildcard


def _respond(start_response: StartResponse, response: LocalResponse) -> list[bytes]:
    status, headers, body = response
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


__all__ = ["DevmeshWSGIMiddleware", "HostMatch"]
