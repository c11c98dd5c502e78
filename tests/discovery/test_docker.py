"""Containers to services: the mapping, on container documents recorded from a real engine.

podman_containers.json was recorded from podman's Docker-compatible API (tests/engines/podman.py) with
`python tests/discovery/test_docker.py` (see `record` below): ten containers, one per case. The few
documents a test changes say so and why.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from devmesh.discovery.docker import ContainerService, DockerSource, image_tag, scan_containers
from devmesh.supervisor.logs import LogSink

RECORDED = json.loads((Path(__file__).parent / "podman_containers.json").read_text(encoding="utf-8"))
LISTED: list[dict[str, Any]] = RECORDED["list"]


def listed(name: str) -> dict[str, Any]:
    for entry in LISTED:
        if entry["Names"] == [f"/{name}"]:
            return copy.deepcopy(entry)
    raise KeyError(name)


def inspected(name: str) -> dict[str, Any]:
    for document in RECORDED["inspect"]:
        if document["Name"].lstrip("/") == name:
            return copy.deepcopy(document)
    raise KeyError(name)


def host_port(entry: dict[str, Any], container_port: int) -> int:
    return next(int(p["PublicPort"]) for p in entry["Ports"] if p["PrivatePort"] == container_port)


def by_container() -> dict[str, ContainerService]:
    return {service.container: service for service in scan_containers(LISTED).services}


def test_a_compose_service_is_named_by_its_label_and_versioned_by_the_oci_label() -> None:
    service = by_container()["other-api-1"]
    assert (service.name, service.port) == ("api", host_port(listed("other-api-1"), 8080))
    assert service.version == "1"  # no version label: the image's tag
    shop = by_container()["shop-api-1"]
    assert shop.version == "1.4.2"  # the OCI label wins over the image's tag
    assert shop.image == "localhost/devmesh-test-busybox:1"


def test_a_plain_container_is_named_after_the_container_and_versioned_by_its_image_tag() -> None:
    service = by_container()["Web_Frontend"]
    assert service.name == "web-frontend"  # a valid service name, as `devmesh init` makes them
    assert service.version == "2.0.1"
    assert service.discovered().detail == "container Web_Frontend (image localhost/shop/web:2.0.1)"


def test_latest_is_no_version_and_the_lowest_tcp_container_port_is_the_service_port() -> None:
    worker = listed("worker")
    service = by_container()["worker"]
    # The API lists ports in no fixed order (a Go map): the choice must not follow it.
    worker["Ports"].sort(key=lambda port: port["PrivatePort"], reverse=True)
    assert scan_containers([worker]).services == [service]
    assert service.version is None
    assert (service.container_port, service.port) == (8080, host_port(worker, 8080))
    detail = service.discovered().detail
    assert f"8443/tcp -> {host_port(worker, 8443)}" in detail
    assert f"9000/udp -> {host_port(worker, 9000)}" in detail


def test_devmesh_labels_pick_the_name_and_the_port() -> None:
    service = by_container()["tls-gateway"]
    assert service.name == "gateway"
    assert (service.container_port, service.port) == (8443, host_port(listed("tls-gateway"), 8443))


def test_containers_left_out_say_why_and_stopped_ones_are_not_mentioned() -> None:
    scan = scan_containers(LISTED)
    reasons = {item.container: item.reason for item in scan.skipped}
    assert set(reasons) == {"hidden", "no-ports", "dns", "wrong-port-label"}
    assert reasons["hidden"] == "labelled devmesh.enable=false"
    assert reasons["no-ports"] == reasons["dns"] == "publishes no TCP port"  # dns publishes 5353/udp
    assert "devmesh.port=9999" in reasons["wrong-port-label"] and "8080/tcp" in reasons["wrong-port-label"]
    assert "stopped" not in {service.container for service in scan.services}
    assert {service.name for service in scan.services} == {
        "api",
        "shop-api-1",
        "web-frontend",
        "worker",
        "gateway",
    }


def test_two_containers_wanting_one_name_are_told_apart_the_same_way_in_any_order() -> None:
    forward = scan_containers(LISTED)
    backward = scan_containers(list(reversed(LISTED)))
    assert forward == backward
    names = {service.container: service.name for service in forward.services}
    # Both are compose service "api": the first by container name keeps it, the other takes its own.
    assert (names["other-api-1"], names["shop-api-1"]) == ("api", "shop-api-1")


def test_the_container_that_has_a_name_keeps_it_when_another_starts() -> None:
    # shop-api-1 runs alone: it is "api".
    alone = [entry for entry in LISTED if entry["Names"] != ["/other-api-1"]]
    assert {s.container: s.name for s in scan_containers(alone).services}["shop-api-1"] == "api"
    # other-api-1 starts; by container name it would come first, but shop-api-1 had the name.
    names = {s.container: s.name for s in scan_containers(LISTED, previous={"api": "shop-api-1"}).services}
    assert (names["shop-api-1"], names["other-api-1"]) == ("api", "other-api-1")
    # Once the owner is gone, the name goes to the next one, by the usual rule.
    rest = [entry for entry in LISTED if entry["Names"] != ["/shop-api-1"]]
    names = {s.container: s.name for s in scan_containers(rest, previous={"api": "shop-api-1"}).services}
    assert names["other-api-1"] == "api"


def test_the_source_remembers_who_had_each_name_from_one_scan_to_the_next(tmp_path: Path) -> None:
    logs = LogSink(tmp_path / "logs", terminal=io.StringIO())
    source = DockerSource(logs=logs)
    alone = [entry for entry in LISTED if entry["Names"] != ["/other-api-1"]]
    first = {service.name: service.detail for service in source.scan(alone)}
    assert first["api"].startswith("container shop-api-1 ")
    second = {service.name: service.detail for service in source.scan(LISTED)}
    assert second["api"].startswith("container shop-api-1 ")  # not stolen by other-api-1
    assert second["other-api-1"].startswith("container other-api-1 ")
    logs.close()


def test_a_name_that_cannot_be_told_apart_is_skipped_with_a_hint() -> None:
    # Changed: a second container whose name normalises to the same service name as Web_Frontend's.
    twin = listed("Web_Frontend")
    twin["Names"], twin["Id"] = ["/web-frontend"], "f" * 64
    scan = scan_containers([listed("Web_Frontend"), twin])
    assert [service.container for service in scan.services] == ["Web_Frontend"]
    assert len(scan.skipped) == 1 and scan.skipped[0].container == "web-frontend"
    assert "devmesh.service=NAME" in scan.skipped[0].reason


def test_a_port_published_on_another_address_is_not_reachable_on_loopback() -> None:
    # Changed: the recorded binding moved from 127.0.0.1 to a LAN address (a test network, RFC 5737).
    entry = listed("shop-api-1")
    entry["Ports"][0]["IP"] = "192.0.2.10"
    scan = scan_containers([entry])
    assert scan.services == []
    assert "192.0.2.10" in scan.skipped[0].reason


def test_inspect_documents_map_like_list_entries() -> None:
    from_list = {s.container: s for s in scan_containers([listed("shop-api-1"), listed("worker")]).services}
    from_inspect = {
        s.container: s for s in scan_containers([inspected("shop-api-1"), inspected("worker")]).services
    }
    assert from_inspect == from_list
    assert scan_containers([inspected("stopped")]).services == []


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("shop/api:1.4", "1.4"),
        ("localhost:5000/shop/api:2", "2"),
        ("localhost:5000/shop/api", None),
        ("shop/api:latest", None),
        ("shop/api@sha256:" + "a" * 64, None),
        ("shop/api:1.4@sha256:" + "a" * 64, "1.4"),
        ("sha256:" + "b" * 64, None),
    ],
)
def test_image_tag(image: str, tag: str | None) -> None:
    assert image_tag(image) == tag


def record() -> None:
    """Record podman_containers.json again from a fresh private podman engine."""
    from engines.podman import HTTPD_SCRIPT, start_engine
    from support import free_port

    engine = start_engine()
    try:
        engine.podman("tag", engine.image, "localhost/shop/web:2.0.1")
        engine.podman("tag", engine.image, "localhost/shop/worker:latest")
        client = engine.client()

        def run(name: str, image: str = engine.image, ports: Any = None, labels: Any = None) -> Any:
            return client.containers.run(
                image,
                ["/bin/sh", "-c", HTTPD_SCRIPT],
                name=name,
                detach=True,
                environment={"BODY": name},
                labels=labels or {},
                network_mode="slirp4netns",
                ports=ports or {},
            )

        def loopback() -> tuple[str, int]:
            return ("127.0.0.1", free_port())

        compose = "com.docker.compose"
        run(
            "shop-api-1",
            ports={"8080/tcp": loopback()},
            labels={
                f"{compose}.project": "shop",
                f"{compose}.service": "api",
                "org.opencontainers.image.version": "1.4.2",
            },
        )
        run(
            "other-api-1",
            ports={"8080/tcp": loopback()},
            labels={f"{compose}.project": "other", f"{compose}.service": "api"},
        )
        run("Web_Frontend", image="localhost/shop/web:2.0.1", ports={"8080/tcp": loopback()})
        run(
            "worker",
            image="localhost/shop/worker:latest",
            ports={"8080/tcp": loopback(), "8443/tcp": loopback(), "9000/udp": loopback()},
        )
        run(
            "tls-gateway",
            ports={"8080/tcp": loopback(), "8443/tcp": loopback()},
            labels={"devmesh.port": "8443", "devmesh.service": "gateway"},
        )
        run("hidden", ports={"8080/tcp": loopback()}, labels={"devmesh.enable": "false"})
        run("no-ports")
        run("dns", ports={"5353/udp": loopback()})
        run("wrong-port-label", ports={"8080/tcp": loopback()}, labels={"devmesh.port": "9999"})
        run("stopped", ports={"8080/tcp": loopback()}).stop(timeout=1)
        version = client.version()
        document = {
            "recorded_from": f"podman {version.get('Version')} Docker-compatible API "
            f"{version.get('ApiVersion')} (tests/engines/podman.py)",
            "list": sorted(client.api.containers(all=True), key=lambda entry: entry["Names"][0]),
            "inspect": [client.api.inspect_container(name) for name in ("shop-api-1", "worker", "stopped")],
        }
        target = Path(__file__).parent / "podman_containers.json"
        target.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    finally:
        engine.close()


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent))
    record()
