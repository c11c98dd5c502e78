"""`/metrics`: the mesh in Prometheus text format, with the names of DESIGN §5.

The proxy counts into plain dicts (`RequestStats`) on its hot path; this collector turns them into metric
families only when Prometheus scrapes, so metrics cost a request nothing beyond those dict updates. The
registry is the agent's own, never prometheus-client's global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from devmesh import __version__
from devmesh.mesh.snapshot import MeshSnapshot
from devmesh.proxy.observe import DURATION_BUCKETS_S, RequestStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class MeshSources:
    """Where the collector reads from, each read at scrape time."""

    snapshot: Callable[[], MeshSnapshot]
    proxy_stats: Callable[[], RequestStats | None]  # the developer's proxy
    mesh_stats: Callable[[], RequestStats | None]  # the mesh port: requests peers sent to this agent
    live_peers: Callable[[], int]
    mesh_refused: Callable[[], int]
    faults_injected: Callable[[], Mapping[str, int]]
    peer_id: str


class MeshCollector(Collector):
    def __init__(self, sources: MeshSources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        sources = self._sources
        stats = sources.proxy_stats() or RequestStats()
        snapshot = sources.snapshot()

        info = GaugeMetricFamily(
            "devmesh_info",
            "This agent: devmesh version, mesh and peer id.",
            labels=["version", "mesh", "peer"],
        )
        info.add_metric([__version__, snapshot.mesh, sources.peer_id], 1)
        yield info

        requests = CounterMetricFamily(
            "devmesh_requests", "Requests the proxy answered.", labels=["service", "origin", "code"]
        )
        for (service, origin, status), count in sorted(stats.requests.items()):
            requests.add_metric([service, origin, str(status)], count)
        yield requests

        durations = HistogramMetricFamily(
            "devmesh_request_duration_seconds",
            "Time from a request's last header to the end of its response.",
            labels=["service", "origin"],
        )
        bounds = [*(_bound(le) for le in DURATION_BUCKETS_S), "+Inf"]
        for (service, origin), histogram in sorted(stats.durations.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for bound, in_bucket in zip(bounds, histogram[:-1], strict=True):
                running += in_bucket
                cumulative.append((bound, running))
            durations.add_metric([service, origin], cumulative, sum_value=histogram[-1])
        yield durations

        errors = CounterMetricFamily(
            "devmesh_upstream_errors",
            "Connections to a service that failed: refused, reset, timed out or invalid.",
            labels=["service"],
        )
        for service, count in sorted(stats.upstream_errors.items()):
            errors.add_metric([service], count)
        yield errors

        retries = CounterMetricFamily(
            "devmesh_retries", "Requests sent again to the next endpoint.", labels=["service"]
        )
        for service, count in sorted(stats.retries.items()):
            retries.add_metric([service], count)
        yield retries

        mirrored = CounterMetricFamily(
            "devmesh_mirror",
            "Copies of requests for a service's `mirror`: sent (the mirror answered), failed (it could "
            "not be reached, or reset, or timed out), dropped (too many in flight: it is slow), too_large "
            "(the body was over the limit).",
            labels=["service", "result"],
        )
        for (service, result), count in sorted(stats.mirrored.items()):
            mirrored.add_metric([service, result], count)
        yield mirrored

        faults = CounterMetricFamily(
            "devmesh_faults_injected", "Requests a fault policy touched.", labels=["fault"]
        )
        for fault, count in sorted(sources.faults_injected().items()):
            faults.add_metric([fault], count)
        yield faults

        yield GaugeMetricFamily(
            "devmesh_peers", "Peers this agent follows that answer.", sources.live_peers()
        )

        up = GaugeMetricFamily(
            "devmesh_service_up",
            "1 when the service has a healthy endpoint of this origin, else 0.",
            labels=["service", "origin"],
        )
        restarts = CounterMetricFamily(
            "devmesh_restarts", "Times devmesh restarted a service.", labels=["service"]
        )
        for name, view in sorted(snapshot.services.items()):
            by_origin: dict[str, bool] = {view.origin.value: False}
            for endpoint in view.endpoints:
                origin = endpoint.origin.value
                by_origin[origin] = by_origin.get(origin, False) or endpoint.healthy
            for origin, healthy in by_origin.items():
                up.add_metric([name, origin], 1 if healthy else 0)
            restarts.add_metric([name], view.restarts)
        yield up
        yield restarts

        served = CounterMetricFamily(
            "devmesh_peer_requests",
            "Requests peers sent to this agent's services over the mesh port.",
            labels=["service", "code"],
        )
        mesh_stats = sources.mesh_stats()
        if mesh_stats is not None:
            by_code: dict[tuple[str, str], int] = {}
            for (service, _origin, status), count in mesh_stats.requests.items():
                key = (service, str(status))
                by_code[key] = by_code.get(key, 0) + count
            for (service, code), count in sorted(by_code.items()):
                served.add_metric([service, code], count)
        yield served
        yield CounterMetricFamily(
            "devmesh_mesh_refused",
            "Requests refused on the mesh port: missing, bad or replayed signatures.",
            sources.mesh_refused(),
        )


def _bound(seconds: float) -> str:
    return repr(float(seconds))


def metrics_registry(sources: MeshSources) -> CollectorRegistry:
    """The agent's own registry, with the mesh collector in it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeshCollector(sources))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
