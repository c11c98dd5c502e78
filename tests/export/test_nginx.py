"""The nginx renderer: what each part of the route model becomes. (`nginx -t` and real traffic:
tests/integration/test_export.py.)"""

from __future__ import annotations

import re

import pytest

from devmesh.export.model import ExportError, RouteModel
from devmesh.export.nginx import NginxOptions, render_nginx


def _block(text: str, head: str) -> str:
    """The text of the `{ }` block that starts with `head` (braces counted)."""
    start = text.index(head)
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start : index + 1]
    raise AssertionError(f"unbalanced block {head}")


def _server(text: str, server_name: str) -> str:
    """The server block whose server_name line starts with `server_name`."""
    for match in re.finditer(r"server \{", text):
        body = _block(text[match.start() :], "server {")
        if f"server_name {server_name}" in body:
            return body
    raise AssertionError(f"no server {server_name}")


def test_full_config_runs_unprivileged_under_a_prefix(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080), NginxOptions(prefix="/tmp/edge"))
    assert "pid /tmp/edge/nginx.pid;" in text and "error_log /tmp/edge/error.log warn;" in text
    assert "events {" in text and "http {" in text
    for folder in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        assert f"{folder}_path /tmp/edge/{folder};" in text
    assert text.count("{") == text.count("}")


def test_snippet_is_http_level_only(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080), NginxOptions(full=False))
    assert not re.search(r"^(events|http) \{|^pid ", text, re.MULTILINE)
    assert text.lstrip().startswith("#") and "upstream devmesh_api {" in text


def test_hosts_wildcards_and_the_404(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080))
    api = _server(text, "api.localhost")
    assert "server_name api.localhost api *.tenant.localhost;" in api
    assert "listen 127.0.0.1:8080;" in api
    default = _server(text, "_")
    assert "listen 127.0.0.1:8080 default_server;" in default
    assert re.search(r'return 404 ".*Known hosts: \*\.tenant\.localhost, api\.localhost', default)


def test_path_routes_end_at_a_segment_boundary_longest_first(model: RouteModel) -> None:
    root = _server(render_nginx(model, ("127.0.0.1", 8080)), "localhost 127.0.0.1 [::1]")
    heads = re.findall(r"location (= |\^~ )?(\S+) \{", root)
    assert heads == [
        ("= ", "/docs"),
        ("^~ ", "/docs/"),
        ("= ", "/api"),
        ("^~ ", "/api/"),
        ("", "@devmesh_api_remote"),
        ("", "/"),
    ]
    # "/" belongs to web, whose port devmesh picks at run time: 503 with the reason.
    assert re.search(
        r'return 503 ".*web is not available here: its port is picked', _block(root, "location / {")
    )


def test_upstreams_balancing_retries_and_timeouts(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080))
    upstream = _block(text, "upstream devmesh_api {")
    assert "least_conn;" in upstream and "server 127.0.0.1:3000 max_fails=4" in upstream
    api = _server(text, "api.localhost")
    assert "proxy_next_upstream error timeout http_502 http_503 http_504;" in api
    assert "proxy_next_upstream_tries 3;" in api  # [proxy] retries = 2, after the first
    assert "proxy_read_timeout 12s;" in api and "proxy_connect_timeout 5s;" in api


def test_websocket_and_forwarding_headers(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080))
    assert "map $http_upgrade $devmesh_connection {" in text
    api = _server(text, "api.localhost")
    for line in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $devmesh_connection;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header Via $devmesh_via;",
        "proxy_set_header Host $http_host;",
    ):
        assert line in api
    assert '"" "1.1 devmesh";' in _block(text, "map $http_via")


def test_remote_fallback_over_tls_with_its_own_name(model: RouteModel) -> None:
    text = render_nginx(model, ("127.0.0.1", 8080), NginxOptions(trusted_ca="/etc/ca.pem"))
    api = _server(text, "api.localhost")
    assert "error_page 502 504 = @devmesh_api_remote;" in _block(api, "location / {")
    fallback = _block(api, "location @devmesh_api_remote {")
    assert "proxy_pass https://devmesh_api_remote;" in fallback
    assert 'proxy_set_header Host "api.staging.example:8443";' in fallback
    assert "proxy_ssl_name api.staging.example;" in fallback and "proxy_ssl_verify on;" in fallback
    # A remote-only service goes straight to it.
    pay = _server(text, "pay.localhost")
    assert "proxy_pass http://devmesh_pay_remote;" in pay and "error_page" not in pay


def test_unverified_remotes_are_said(model: RouteModel) -> None:
    assert "certificates are not verified" in render_nginx(model, ("127.0.0.1", 8080))
    assert "certificates are not verified" not in render_nginx(
        model, ("127.0.0.1", 8080), NginxOptions(trusted_ca="/etc/ca.pem")
    )


def test_ipv6_listen_and_name_prefix(model: RouteModel) -> None:
    text = render_nginx(model, ("::1", 8080), NginxOptions(name="edge_a"))
    assert "listen [::1]:8080 default_server;" in text and "upstream edge_a_api {" in text
    assert not re.search(r"\$devmesh_|upstream devmesh_|@devmesh_", text)


def test_bad_name_prefix() -> None:
    from devmesh.export.model import RouteModel as Model

    empty = Model("m", "localhost", (), (), ("localhost",), 1.0, 1.0, 0, "config")
    with pytest.raises(ExportError, match="name prefix"):
        render_nginx(empty, ("127.0.0.1", 1), NginxOptions(name="bad-name"))


def test_dollar_signs_in_messages_cannot_become_variables(model: RouteModel) -> None:
    from dataclasses import replace

    web = replace(model.service("web"), notes=("costs $5",))
    routes = tuple(route for route in model.path_routes if route.service == "web")
    text = render_nginx(replace(model, services=(web,), path_routes=routes), ("127.0.0.1", 8080))
    assert "$5" not in text and "(dollar)5" in text
