"""DevmeshWSGIMiddleware with plain WSGI apps, through Werkzeug's WSGI test client."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from werkzeug.test import Client

from devmesh.middleware.types import StartResponse, WSGIEnvironment
from devmesh.wsgi import DevmeshWSGIMiddleware


def replying(name: str) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = json.dumps(
            {
                "app": name,
                "subdomain": environ["devmesh.subdomain"],
                "pattern": environ["devmesh.pattern"],
                "wildcard": environ["devmesh"].wildcard,
                "scheme": environ["wsgi.url_scheme"],
                "remote": environ.get("REMOTE_ADDR"),
                "host": environ.get("HTTP_HOST"),
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def client(**options: Any) -> Client:
    options.setdefault("environ", {})
    wrapped = DevmeshWSGIMiddleware(
        replying("main"), hosts={"api": replying("api"), "*.tenant": replying("tenant")}, **options
    )

    def served(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ.setdefault("REMOTE_ADDR", "127.0.0.1")  # as a server on loopback sets it
        return wrapped(environ, start_response)

    return Client(served)


def test_mounted_hosts_wildcards_and_fall_through() -> None:
    web = client()
    assert web.get("/", headers={"Host": "api.localhost:5000"}).json == {
        "app": "api",
        "subdomain": "api",
        "pattern": "api",
        "wildcard": None,
        "scheme": "http",
        "remote": "127.0.0.1",
        "host": "api.localhost:5000",
    }
    tenant = web.get("/", headers={"Host": "eu.acme.tenant.localhost"}).json
    assert (tenant["app"], tenant["wildcard"], tenant["subdomain"]) == ("tenant", "eu.acme", "eu.acme.tenant")
    other = web.get("/", headers={"Host": "other.localhost"}).json
    assert (other["app"], other["pattern"], other["subdomain"]) == ("main", None, "other")


def test_health_and_routes() -> None:
    web = client(service="web", version="0.9")
    response = web.get("/_devmesh/health", headers={"Host": "api.localhost"})
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert (response.json["status"], response.json["service"], response.json["version"]) == (
        "ok",
        "web",
        "0.9",
    )
    routes = web.get("/_devmesh/routes").json
    assert routes["hosts"][1] == {"pattern": "*.tenant", "host": "*.tenant.localhost"}
    assert routes["requests"]["answered"] == 2
    refused = web.post("/_devmesh/health")
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"


def test_forwarded_headers_apply_only_from_a_loopback_peer() -> None:
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.5",
        "X-Forwarded-Host": "api.localhost",
    }
    trusted = client().get("/", headers={"Host": "web.localhost", **headers}).json
    assert (trusted["app"], trusted["scheme"], trusted["remote"]) == ("api", "https", "203.0.113.5")
    remote = (
        client()
        .get(
            "/",
            headers={"Host": "web.localhost", **headers},
            environ_overrides={"REMOTE_ADDR": "198.51.100.2"},
        )
        .json
    )
    assert (remote["app"], remote["scheme"], remote["remote"]) == ("main", "http", "198.51.100.2")


def test_a_mesh_host_delivered_by_the_proxy_is_not_sent_back() -> None:
    web = client(mesh="http://127.0.0.1:9", mesh_services=["pay"])
    response = web.get("/", headers={"Host": "pay.localhost", "Via": "1.1 devmesh"})
    assert response.json["app"] == "main"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="app: None is not a WSGI app"):
        DevmeshWSGIMiddleware(None, environ={})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hosts: 'a/b' is not a host name"):
        DevmeshWSGIMiddleware(replying("x"), hosts={"a/b": replying("y")}, environ={})


def ask(web: Client, host: str, remote: str = "127.0.0.1", **headers: str) -> tuple[str, Any]:
    """GET / for `host` from a client at `remote`: the status line and the JSON answer."""
    response = web.get("/", headers={"Host": host, **headers}, environ_overrides={"REMOTE_ADDR": remote})
    return response.status, json.loads(response.data)


def test_a_mesh_host_is_forwarded_only_for_a_loopback_client() -> None:
    web = client(mesh="http://127.0.0.1:9", mesh_services=["admin"])
    # X-Forwarded-For can't make a remote peer look local.
    status, refused = ask(web, "admin.localhost", "192.168.1.7", X_Forwarded_For="127.0.0.1")
    assert status == "403 Forbidden"
    assert refused["error"] == "forward refused" and refused["client"] == "192.168.1.7"
    assert ask(web, "admin.localhost", "")[0] == "403 Forbidden"  # no REMOTE_ADDR (a Unix socket)
    assert ask(web, "api.localhost", "192.168.1.7")[1]["app"] == "api"  # its own apps answer anyone
    status, forwarded = ask(web, "admin.localhost")  # from 127.0.0.1: to the mesh (down here)
    assert status == "502 Bad Gateway" and forwarded["error"] == "mesh unreachable"
    lan = client(mesh="http://127.0.0.1:9", mesh_services=["admin"], forward_from="192.168.1.0/24")
    assert ask(lan, "admin.localhost", "192.168.1.7")[0] == "502 Bad Gateway"


def test_a_request_another_middleware_forwarded_is_not_forwarded_again() -> None:
    web = client(mesh="http://127.0.0.1:9", mesh_services=["admin"])
    status, loop = ask(web, "admin.localhost", X_DevMesh_Forwarded_By="web")
    assert status == "508 Loop Detected" and loop["error"] == "forwarding loop"
