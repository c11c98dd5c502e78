"""The /metrics collector, on a fresh registry: names and labels of DESIGN §5, cumulative buckets."""

from __future__ import annotations

from types import MappingProxyType

from prometheus_client.parser import text_string_to_metric_families

from devmesh.mesh.snapshot import Endpoint, Health, MeshSnapshot, Origin, RunState, ServiceView
from devmesh.observe.metrics import MeshSources, metrics_registry, render
from devmesh.proxy.observe import RequestStats


def scrape(
    stats: RequestStats, snapshot: MeshSnapshot, **overrides: object
) -> dict[str, list[tuple[dict[str, str], float]]]:
    sources = MeshSources(
        snapshot=lambda: snapshot,
        proxy_stats=lambda: stats,
        mesh_stats=lambda: None,
        live_peers=lambda: 2,
        mesh_refused=lambda: 3,
        faults_injected=lambda: {"slow-payments": 4},
        peer_id="me-123456",
    )
    for key, value in overrides.items():
        object.__setattr__(sources, key, value)
    text = render(metrics_registry(sources)).decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def snapshot() -> MeshSnapshot:
    api = ServiceView(
        "api",
        Origin.LOCAL,
        RunState.RUNNING,
        Health.HEALTHY,
        ("api",),
        endpoints=(
            Endpoint("api", "127.0.0.1", 3000, Origin.LOCAL, healthy=True),
            Endpoint("api", "10.0.0.5", 7090, Origin.PEER, healthy=False, peer_id="bob"),
        ),
        restarts=2,
    )
    db = ServiceView("db", Origin.LOCAL, RunState.CRASHED, Health.UNHEALTHY, ("db",))
    return MeshSnapshot(
        revision=1, mesh="shop", domain="localhost", services=MappingProxyType({"api": api, "db": db})
    )


def test_counters_histograms_and_gauges_carry_the_design_names() -> None:
    stats = RequestStats()
    for duration in (0.0003, 0.0008, 0.004, 0.2, 20.0):
        stats.count("api", "local", 200, duration)
    stats.count("api", "local", 502, 0.001)
    stats.upstream_error("api")
    stats.retry("api")
    samples = scrape(stats, snapshot())

    requests = {
        (labels["service"], labels["code"]): value for labels, value in samples["devmesh_requests_total"]
    }
    assert requests == {("api", "200"): 5, ("api", "502"): 1}
    buckets = {
        labels["le"]: value
        for labels, value in samples["devmesh_request_duration_seconds_bucket"]
        if labels["service"] == "api"
    }
    # Cumulative, starting below a millisecond; 20 s lands only in +Inf.
    assert buckets["0.0005"] == 1 and buckets["0.001"] == 3 and buckets["0.005"] == 4
    assert buckets["0.25"] == 5 and buckets["10.0"] == 5 and buckets["+Inf"] == 6
    assert samples["devmesh_request_duration_seconds_count"][0][1] == 6
    assert abs(samples["devmesh_request_duration_seconds_sum"][0][1] - 20.2061) < 1e-6
    assert samples["devmesh_upstream_errors_total"] == [({"service": "api"}, 1)]
    assert samples["devmesh_retries_total"] == [({"service": "api"}, 1)]
    assert samples["devmesh_faults_injected_total"] == [({"fault": "slow-payments"}, 4)]
    assert samples["devmesh_peers"] == [({}, 2)]
    assert samples["devmesh_mesh_refused_total"] == [({}, 3)]
    up = {(labels["service"], labels["origin"]): value for labels, value in samples["devmesh_service_up"]}
    assert up == {("api", "local"): 1, ("api", "peer"): 0, ("db", "local"): 0}
    restarts = {labels["service"]: value for labels, value in samples["devmesh_restarts_total"]}
    assert restarts == {"api": 2, "db": 0}
    assert samples["devmesh_info"][0][0] == {
        "version": samples["devmesh_info"][0][0]["version"],
        "mesh": "shop",
        "peer": "me-123456",
    }


def test_requests_peers_sent_over_the_mesh_port_are_counted_apart() -> None:
    served = RequestStats()
    served.count("api", "local", 200, 0.001)
    served.count("api", "local", 200, 0.001)
    samples = scrape(RequestStats(), snapshot(), mesh_stats=lambda: served)
    assert samples["devmesh_peer_requests_total"] == [({"service": "api", "code": "200"}, 2)]
    assert "devmesh_requests_total" not in samples  # nothing through the developer's own proxy


def test_each_registry_is_its_own() -> None:
    """Two agents in one process (the tests do that) must not share the global registry."""
    one, other = RequestStats(), RequestStats()
    one.count("api", "local", 200, 0.001)
    assert "devmesh_requests_total" in scrape(one, snapshot())
    assert "devmesh_requests_total" not in scrape(other, snapshot())


def test_mirror_copies_are_counted_by_service_and_result() -> None:
    stats = RequestStats()
    for result in ("sent", "sent", "dropped", "failed", "too_large"):
        stats.mirror("api", result)
    samples = scrape(stats, snapshot())
    assert sorted((labels["result"], value) for labels, value in samples["devmesh_mirror_total"]) == [
        ("dropped", 1.0),
        ("failed", 1.0),
        ("sent", 2.0),
        ("too_large", 1.0),
    ]
    assert {labels["service"] for labels, _ in samples["devmesh_mirror_total"]} == {"api"}
