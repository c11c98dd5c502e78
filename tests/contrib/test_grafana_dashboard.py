"""contrib/grafana/devmesh.json: a dashboard Grafana imports, whose queries name only metrics devmesh exports.

A metric renamed in the contract (or in the agent's /metrics) without the dashboard following breaks here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "devmesh.json"

# The metric names of the observability contract (DESIGN §5): counters with their `_total`, the
# duration histogram with its `_bucket`, `_sum` and `_count` series.
CONTRACT_METRICS = {
    "devmesh_requests_total",
    "devmesh_request_duration_seconds_bucket",
    "devmesh_request_duration_seconds_sum",
    "devmesh_request_duration_seconds_count",
    "devmesh_upstream_errors_total",
    "devmesh_retries_total",
    "devmesh_faults_injected_total",
    "devmesh_peers",
    "devmesh_service_up",
    "devmesh_restarts_total",
}

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])  # a collapsed row holds its panels


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query: panel targets and query variables."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            # label_values(metric, label): the metric is the selector, the label is not a metric.
            label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            yield f"variable {variable['name']!r}", label_values.group(1) if label_values else text


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small reading of PromQL, enough for dashboards)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group()
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name.lower() in _PROMQL_WORDS:
            continue  # a function or aggregation, or a keyword
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the exponent of a number such as 1e3
        names.add(name)
    return names


def test_metric_names_reads_promql_as_expected() -> None:
    assert metric_names('sum by (service) (rate(devmesh_requests_total{code=~"5.."}[$__rate_interval]))') == {
        "devmesh_requests_total"
    }
    assert metric_names(
        "histogram_quantile(0.95, sum by (le) (rate(devmesh_request_duration_seconds_bucket[5m])))"
    ) == {"devmesh_request_duration_seconds_bucket"}
    assert metric_names("count(max by (service) (up) == 0) or vector(0)") == {"up"}
    assert metric_names("devmesh_peers > bool 1e3") == {"devmesh_peers"}


def test_the_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard["id"] is None, "an exported dashboard has no id; Grafana assigns one on import"
    (source,) = dashboard["__inputs"]
    assert source == {**source, "name": "DS_PROMETHEUS", "type": "datasource", "pluginId": "prometheus"}
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    service = variables["service"]
    query = service["query"]["query"] if isinstance(service["query"], dict) else service["query"]
    assert query == "label_values(devmesh_requests_total, service)"
    assert service["includeAll"] and service["multi"] and service["allValue"] == ".*"


def test_every_panel_has_a_unique_id_and_a_place_on_the_grid(dashboard: dict[str, Any]) -> None:
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        x, y, w, h = grid["x"], grid["y"], grid["w"], grid["h"]
        assert all(isinstance(value, int) for value in (x, y, w, h)), panel["title"]
        assert x >= 0 and x + w <= 24 and w > 0 and h > 0 and y >= 0, panel["title"]
        for column in range(x, x + w):
            for line in range(y, y + h):
                assert (column, line) not in occupied, (
                    f"{panel['title']!r} overlaps {occupied[(column, line)]!r}"
                )
                occupied[(column, line)] = panel["title"]


def test_every_query_uses_the_templated_datasource(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_metric_in_a_query_is_one_of_the_contract(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for where, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - CONTRACT_METRICS
        assert not unknown, f"{where}: {sorted(unknown)} not in the metrics contract ({expr})"
        used |= names
        if "[" in expr:
            assert "$__rate_interval" in expr or "$__range" in expr, f"{where}: a fixed range in {expr!r}"
        if "service" in expr and "devmesh_requests_total" in expr and where.startswith("panel"):
            assert 'service=~"$service"' in expr, f"{where}: ignores the service variable"
    # The brief's panels: request and error rate, latency percentiles, upstream errors, retries, faults,
    # service up, restarts and peers: every metric of the contract is on the dashboard.
    assert used == CONTRACT_METRICS


def test_latency_panels_show_p50_p95_and_p99(dashboard: dict[str, Any]) -> None:
    quantiles = set()
    for _where, expr in expressions(dashboard):
        match = re.match(r"histogram_quantile\((0\.\d+),", expr)
        if match:
            assert "devmesh_request_duration_seconds_bucket" in expr and "le" in expr
            quantiles.add(match.group(1))
    assert {"0.5", "0.95", "0.99"} <= quantiles


def test_the_agent_exports_every_metric_the_dashboard_uses() -> None:
    """The other side of the contract: the names the agent's /metrics really writes."""
    from devmesh.mesh.snapshot import Health, MeshSnapshot, Origin, RunState, ServiceView
    from devmesh.observe.metrics import MeshSources, metrics_registry, render
    from devmesh.proxy.observe import RequestStats

    stats = RequestStats()
    stats.count("api", "local", 200, 0.01)
    stats.upstream_error("api")
    stats.retry("api")
    view = ServiceView(
        name="api", origin=Origin.LOCAL, state=RunState.RUNNING, health=Health.HEALTHY, hosts=("api",)
    )
    snapshot = MeshSnapshot(revision=1, mesh="t", domain="localhost", services={"api": view})
    sources = MeshSources(
        snapshot=lambda: snapshot,
        proxy_stats=lambda: stats,
        mesh_stats=lambda: None,
        live_peers=lambda: 1,
        mesh_refused=lambda: 0,
        faults_injected=lambda: {"slow-payments": 1},
        peer_id="me-000000",
    )
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in render(metrics_registry(sources)).decode().splitlines()
        if line and not line.startswith("#")
    }
    assert exported >= CONTRACT_METRICS, sorted(CONTRACT_METRICS - exported)
