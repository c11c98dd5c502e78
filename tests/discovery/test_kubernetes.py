"""Services to mesh services, and the pod for a connection: on JSON recorded from a real API server.

kubernetes_api.json holds the answers of kube-apiserver v1.20.2 (tests/engines/kube.py) to listing the
Services, Endpoints and Pods of a namespace `shop` made for it: `web` (ports http -> named target, metrics,
dns over UDP; version label), `mail` (ExternalName), `db` (headless), `syslog` (UDP only), `legacy` (no
selector; Endpoints without a pod). Pods web-a and web-b are Running and Ready, web-c is not Ready, db-0
Pending (statuses written through the status subresource, as a kubelet would). managedFields removed.
A test that changes a document says so.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from devmesh.discovery.kubernetes import (
    ClusterService,
    ServicePort,
    assign_mesh_names,
    choose_backend,
    not_ready_reason,
    service_from_api,
    skip_reason,
    valid_mesh_name,
)
from devmesh.discovery.portforward import Backend

RECORDED = json.loads((Path(__file__).parent / "kubernetes_api.json").read_text(encoding="utf-8"))


def item(kind: str, name: str) -> dict[str, Any]:
    for entry in RECORDED[kind]["items"]:
        if entry["metadata"]["name"] == name:
            return copy.deepcopy(entry)
    raise KeyError(name)


PODS = RECORDED["pods"]["items"]


def port_of(service_name: str, mesh_name: str) -> ServicePort:
    service = service_from_api(item("services", service_name))
    assert service is not None
    return next(port for port in service.ports if port.mesh_name == mesh_name)


def test_a_service_becomes_one_mesh_service_per_tcp_port() -> None:
    service = service_from_api(item("services", "web"))
    assert service is not None
    assert (service.name, service.namespace, service.version) == ("web", "shop", "1.4.2")
    assert service.ports == (
        ServicePort(mesh_name="web", name="http", port=80, target="http"),
        ServicePort(mesh_name="web-metrics", name="metrics", port=9090, target=9091),
    )  # dns/UDP left out: a port-forward carries TCP only
    assert service.describe_target() == "pods app=web"
    assert not service.headless


def test_headless_and_selectorless_services_are_kept() -> None:
    db = service_from_api(item("services", "db"))
    assert db is not None and db.headless
    assert db.ports == (
        ServicePort(mesh_name="db", name="", port=5432, target=5432),
    )  # the API filled targetPort
    legacy = service_from_api(item("services", "legacy"))
    assert legacy is not None
    assert legacy.describe_target() == "Endpoints (no selector)"
    assert legacy.version is None


@pytest.mark.parametrize(
    ("name", "reason"), [("mail", "ExternalName (a DNS name"), ("syslog", "no TCP port")]
)
def test_services_that_cannot_be_forwarded_are_skipped_with_a_reason(name: str, reason: str) -> None:
    assert service_from_api(item("services", name)) is None
    assert skip_reason(item("services", name)).startswith(reason)


def test_mesh_names_must_be_valid_devmesh_names() -> None:
    assert valid_mesh_name("web-metrics")
    assert not valid_mesh_name("web-" + "x" * 60)  # a long Service name plus a port name: over 63
    assert not valid_mesh_name("Web")


def test_connections_go_round_robin_to_the_ready_pods_of_the_endpoints() -> None:
    http = port_of("web", "web")
    endpoints = item("endpoints", "web")
    chosen = [choose_backend(http, endpoints, [], turn) for turn in range(3)]
    # web-c is among notReadyAddresses: never chosen. The port is the Endpoints' resolved one.
    assert chosen == [Backend("web-a", 8080), Backend("web-b", 8080), Backend("web-a", 8080)]
    assert choose_backend(port_of("web", "web-metrics"), endpoints, []) == Backend("web-a", 9091)


def test_without_endpoints_a_running_ready_pod_of_the_selector_is_chosen() -> None:
    http = port_of("web", "web")
    chosen = {choose_backend(http, None, PODS, turn) for turn in range(4)}
    # The named target port is resolved from the container ports; web-c (not Ready) is left out.
    assert chosen == {Backend("web-a", 8080), Backend("web-b", 8080)}
    assert choose_backend(port_of("web", "web-metrics"), None, PODS) == Backend("web-a", 9091)


def test_no_ready_pod_means_no_backend() -> None:
    # The caller passes the pods of the Service's selector: for db, only db-0.
    db_pods = [pod for pod in PODS if pod["metadata"]["labels"] == {"app": "db"}]
    assert [pod["metadata"]["name"] for pod in db_pods] == ["db-0"]
    assert (
        choose_backend(port_of("db", "db"), None, db_pods) is None
    )  # Pending, though its condition says Ready
    web_c = [pod for pod in PODS if pod["metadata"]["name"] == "web-c"]
    assert choose_backend(port_of("web", "web"), {"subsets": []}, web_c) is None  # Running, not Ready


def test_endpoints_addresses_without_a_pod_cannot_be_forwarded() -> None:
    legacy = port_of("legacy", "legacy")
    endpoints = item("endpoints", "legacy")
    assert choose_backend(legacy, endpoints, []) is None  # 192.0.2.50: an address, no pod to forward to
    # Changed: the same address with a targetRef, as the endpoints controller writes for a pod.
    endpoints["subsets"][0]["addresses"][0]["targetRef"] = {
        "kind": "Pod",
        "name": "legacy-0",
        "namespace": "shop",
    }
    assert choose_backend(legacy, endpoints, []) == Backend("legacy-0", 8080)  # single unnamed port


def test_a_terminating_pod_is_not_chosen() -> None:
    pod = copy.deepcopy(next(pod for pod in PODS if pod["metadata"]["name"] == "web-a"))
    # Changed: deleted, still Running and Ready while it shuts down.
    pod["metadata"]["deletionTimestamp"] = "2026-11-28T08:00:00Z"
    assert choose_backend(port_of("web", "web"), None, [pod]) is None


def service_of(name: str) -> ClusterService:
    service = service_from_api(item("services", name))
    assert service is not None
    return service


def test_a_port_is_ready_while_a_connection_would_find_a_pod() -> None:
    web, db, legacy = service_of("web"), service_of("db"), service_of("legacy")
    # Ready addresses in the Endpoints; or, without Endpoints, a Running and Ready pod of the selector
    # (among all the namespace's pods: only those the selector matches count).
    assert not_ready_reason(web, web.ports[0], item("endpoints", "web"), []) is None
    assert not_ready_reason(web, web.ports[1], None, PODS) is None
    # db-0 is Pending: no pod would be found, and the reason says behind what.
    assert not_ready_reason(db, db.ports[0], None, PODS) == "no ready pod behind shop/db (pods app=db)"
    # web's pods do not make db ready, even if they serve its port: the selector decides.
    renamed = [copy.deepcopy(pod) for pod in PODS if pod["metadata"]["name"] == "web-a"]
    renamed[0]["spec"]["containers"][0]["ports"].append({"containerPort": 5432})
    assert not_ready_reason(db, db.ports[0], None, renamed) is not None
    # No selector, and Endpoints that name no pod: nothing to forward to.
    assert not_ready_reason(legacy, legacy.ports[0], item("endpoints", "legacy"), PODS) == (
        "no ready pod behind shop/legacy (Endpoints (no selector))"
    )


def test_two_ports_wanting_one_mesh_name_are_not_both_kept() -> None:
    web = service_of("web")  # its port "metrics" is the mesh service web-metrics
    # Changed: a Service named web-metrics, wanting the same name for its first port.
    other = copy.deepcopy(item("services", "db"))
    other["metadata"]["name"] = "web-metrics"
    web_metrics = service_from_api(other)
    assert web_metrics is not None

    wanted, skipped = assign_mesh_names([web, web_metrics])
    # The Service named so wins over a name made from another Service's port name, in any order.
    assert wanted == assign_mesh_names([web_metrics, web])[0]
    assert {key: port.mesh_name for key, (_service, port) in wanted.items()} == {
        ("web", 80): "web",
        ("web-metrics", 5432): "web-metrics",
    }
    assert [(service.name, port.port) for service, port, _reason in skipped] == [("web", 9090)]
    assert "'web-metrics' is already the mesh name of shop/web-metrics port 5432" in skipped[0][2]

    # The port that has the name keeps it: a Service created later takes nobody's traffic.
    wanted, skipped = assign_mesh_names([web, web_metrics], owners={"web-metrics": ("web", 9090)})
    assert ("web", 9090) in wanted and ("web-metrics", 5432) not in wanted
    assert [(service.name, port.port) for service, port, _reason in skipped] == [("web-metrics", 5432)]


def test_invalid_mesh_names_are_left_out_with_the_reason() -> None:
    long = copy.deepcopy(item("services", "web"))
    long["metadata"]["name"] = "w" * 60  # its second port's name is over 63 characters
    service = service_from_api(long)
    assert service is not None
    wanted, skipped = assign_mesh_names([service])
    assert list(wanted) == [("w" * 60, 80)]
    assert [(port.port, reason) for _service, port, reason in skipped] == [
        (9090, f"{'w' * 60 + '-metrics'!r} is not a valid devmesh name")
    ]
