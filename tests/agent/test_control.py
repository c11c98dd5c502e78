"""What the admin API calls on the agent, where it is a function of its inputs."""

from __future__ import annotations

from devmesh.agent.control import status_filter


def test_status_filters() -> None:
    five_xx, exact, bad = status_filter("5xx"), status_filter("502"), status_filter("nope")
    assert five_xx is not None and five_xx(503) and not five_xx(404)
    assert exact is not None and exact(502) and not exact(503)
    assert bad is not None and not bad(200)
    assert status_filter(None) is None and status_filter("") is None
