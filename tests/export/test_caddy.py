"""The Caddyfile renderer. (`caddy validate` and real traffic: tests/integration/test_export.py.)"""

from __future__ import annotations

import re

from devmesh.export.caddy import CaddyOptions, render_caddy
from devmesh.export.model import RouteModel


def test_one_site_on_the_listen_address_without_automatic_https(model: RouteModel) -> None:
    text = render_caddy(model, ("127.0.0.1", 8080), CaddyOptions(admin="off"))
    assert "\tauto_https off\n" in text and "\tadmin off\n" in text
    assert "http://:8080 {\n\tbind 127.0.0.1\n" in text
    assert text.count("{") - text.count("\\{") == text.count("}") - text.count("\\}")


def test_routes_in_devmeshs_order_exact_then_wildcards_then_paths(model: RouteModel) -> None:
    text = render_caddy(model, ("127.0.0.1", 8080))
    handles = re.findall(r"^\thandle (@\S+ )?\{", text, re.MULTILINE)
    assert handles == [
        "@api_host ",
        "@web_host ",
        "@docs_host ",
        "@pay_host ",
        "@api_wildcard_0 ",
        "@docs_path_0 ",
        "@api_path_1 ",
        "@web_path_2 ",
        "",  # the 404 for everything else
    ]
    assert "@api_host host api.localhost api\n" in text
    # Caddy's `*` matches one label; devmesh's wildcard any number of them.
    assert '@api_wildcard_0 expression `{host}.endsWith(".tenant.localhost")`' in text
    assert "\t@api_path_1 {\n\t\thost localhost 127.0.0.1 ::1\n\t\tpath /api /api/*\n\t}" in text
    assert "\t\tpath *\n" in text  # web's "/" route
    assert re.search(r'respond ".*Known hosts: \*\.tenant\.localhost, api\.localhost.*" 404', text)
    assert re.search(r'respond "devmesh export: web is not available here: its port is picked.*" 503', text)


def test_reverse_proxy_balancing_retries_health_and_timeouts(model: RouteModel) -> None:
    text = render_caddy(model, ("127.0.0.1", 8080))
    api = text[text.index("handle @api_host {") : text.index("@web_host")]
    assert "reverse_proxy 127.0.0.1:3000 {" in api
    assert "lb_retries 2" in api
    # A reset (no status) or a 502/503/504 answer is retried, for idempotent methods only.
    assert (
        "lb_retry_match expression `method('GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE') && "
        "({rp.status_code} in [502, 503, 504] || {rp.status_code} == null)`"
    ) in api
    # No passive health: one failed request would take the upstream out for fail_duration.
    assert "unhealthy_status" not in text and "fail_duration" not in text and "max_fails" not in text
    assert "health_uri /health" in api and "health_interval 3s" in api and "health_fails 4" in api
    assert "dial_timeout 5s" in api and "response_header_timeout 12s" in api
    assert 'header_up +Via "1.1 devmesh"' in api


def test_remote_fallback_in_handle_errors(model: RouteModel) -> None:
    text = render_caddy(model, ("127.0.0.1", 8080))
    errors = text[text.index("\thandle_errors {") :]
    assert (
        "@api_host_fallback {\n\t\t\thost api.localhost api\n\t\t\texpression `{err.status_code} in [502, 503, 504]`"
        in errors
    )
    assert (
        '@api_wildcard_0_fallback expression `({host}.endsWith(".tenant.localhost")) && ({err.status_code} in [502, 503, 504])`'
        in errors
    )
    assert "reverse_proxy https://api.staging.example:8443 {" in errors
    assert (
        'header_up Host "api.staging.example:8443"' in errors
        and "tls_server_name api.staging.example" in errors
    )
    # The remote gets no active health check meant for the local service.
    assert "health_uri" not in errors
    # A remote-only service proxies to it directly, without fallback.
    pay = text[text.index("handle @pay_host {") : text.index("@api_wildcard_0 ")]
    assert "reverse_proxy 127.0.0.1:4000 {" in pay and 'header_up Host "127.0.0.1:4000"' in pay
    assert "pay" not in errors


def test_admin_endpoint_by_default_for_caddy_reload(model: RouteModel) -> None:
    assert "\tadmin localhost:2019\n" in render_caddy(model, ("127.0.0.1", 8080))
