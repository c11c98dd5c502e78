"""The Envoy bootstrap renderer. (`envoy --mode validate` and real traffic: tests/integration/test_export.py.)"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import yaml

from devmesh.export.envoy import EnvoyOptions, render_envoy
from devmesh.export.model import RouteModel


def _bootstrap(model: RouteModel, **options: Any) -> dict[str, Any]:
    document = yaml.safe_load(render_envoy(model, ("127.0.0.1", 8080), EnvoyOptions(**options)))
    assert isinstance(document, dict)
    return document


def _manager(document: dict[str, Any]) -> dict[str, Any]:
    listener = document["static_resources"]["listeners"][0]
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert isinstance(manager, dict)
    return manager


def _clusters(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {cluster["name"]: cluster for cluster in document["static_resources"]["clusters"]}


def test_virtual_hosts_domains_and_the_404(model: RouteModel) -> None:
    manager = _manager(_bootstrap(model))
    assert manager["strip_any_host_port"] is True and manager["via"] == "1.1 devmesh"
    assert manager["upgrade_configs"] == [{"upgrade_type": "websocket"}]
    assert manager["use_remote_address"] is True
    hosts = {vhost["name"]: vhost for vhost in manager["route_config"]["virtual_hosts"]}
    assert hosts["api"]["domains"] == ["api.localhost", "api", "*.tenant.localhost"]
    assert hosts["root"]["domains"] == ["localhost", "127.0.0.1", "[::1]"]
    unknown = hosts["unknown"]
    assert unknown["domains"] == ["*"]
    response = unknown["routes"][0]["direct_response"]
    assert response["status"] == 404 and "api.localhost" in response["body"]["inline_string"]
    assert list(hosts)[-1] == "unknown"


def test_root_paths_are_segment_prefixes_longest_first(model: RouteModel) -> None:
    manager = _manager(_bootstrap(model))
    root = next(v for v in manager["route_config"]["virtual_hosts"] if v["name"] == "root")
    matches = [route["match"] for route in root["routes"]]
    assert matches == [
        {"path_separated_prefix": "/docs"},
        {"path_separated_prefix": "/api"},
        {"prefix": "/"},
        {"prefix": "/"},
    ]
    # "/" is web's: its port is unknown offline, so 503 with the reason; then the 404.
    assert root["routes"][2]["direct_response"]["status"] == 503
    assert "port is picked" in root["routes"][2]["direct_response"]["body"]["inline_string"]
    assert root["routes"][3]["direct_response"]["status"] == 404


def test_timeouts_and_retries_for_idempotent_methods(model: RouteModel) -> None:
    manager = _manager(_bootstrap(model))
    docs = next(v for v in manager["route_config"]["virtual_hosts"] if v["name"] == "docs")
    action = docs["routes"][0]["route"]
    # [proxy] timeout bounds the wait for the response head (per try), not a streamed response.
    assert action["cluster"] == "docs-local" and action["timeout"] == "0s"
    assert action["idle_timeout"] == "300s"
    policy = action["retry_policy"]
    assert policy["per_try_timeout"] == "12s"
    assert policy["num_retries"] == 2 and policy["retriable_status_codes"] == [502, 503, 504]
    assert "connect-failure" in policy["retry_on"]
    method = policy["retriable_request_headers"][0]
    assert method["name"] == ":method"
    assert method["string_match"]["safe_regex"]["regex"] == "^(GET|HEAD|OPTIONS|PUT|DELETE|TRACE)$"


def test_clusters_local_remote_and_aggregate(model: RouteModel) -> None:
    clusters = _clusters(_bootstrap(model, trusted_ca="/etc/ca.pem"))
    local = clusters["api-local"]
    assert (
        local["type"] == "STATIC"
        and local["lb_policy"] == "LEAST_REQUEST"
        and local["connect_timeout"] == "5s"
    )
    endpoint = local["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 3000}
    check = local["health_checks"][0]
    assert check["http_health_check"] == {"path": "/health"} and check["interval"] == "3s"
    remote = clusters["api-remote"]
    assert remote["type"] == "STRICT_DNS"
    remote_endpoint = remote["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert remote_endpoint["hostname"] == "api.staging.example:8443"
    tls = remote["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.staging.example"
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"] == {"filename": "/etc/ca.pem"}
    aggregate = clusters["api"]
    assert aggregate["cluster_type"]["typed_config"]["clusters"] == ["api-local", "api-remote"]
    # An address is a STATIC remote over plain HTTP.
    assert clusters["pay-remote"]["type"] == "STATIC" and "transport_socket" not in clusters["pay-remote"]
    assert "web-local" not in clusters


def test_admin_is_off_unless_asked(model: RouteModel) -> None:
    assert "admin" not in _bootstrap(model)
    admin = _bootstrap(model, admin=("127.0.0.1", 9901))["admin"]
    assert admin == {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}}


def test_without_retries_the_timeout_still_bounds_only_the_response_head(model: RouteModel) -> None:
    quiet = replace(model, retries=0, timeout_s=600.0)
    manager = _manager(yaml.safe_load(render_envoy(quiet, ("127.0.0.1", 8080))))
    docs = next(v for v in manager["route_config"]["virtual_hosts"] if v["name"] == "docs")
    action = docs["routes"][0]["route"]
    assert action["timeout"] == "0s" and action["idle_timeout"] == "600s"  # never below [proxy] timeout
    assert action["retry_policy"] == {"num_retries": 0, "per_try_timeout": "600s"}
