from __future__ import annotations

import pytest

from devmesh.mesh.snapshot import Health, MeshSnapshot, MeshState, Origin, RunState, ServiceView


def test_publish_swaps_an_immutable_snapshot_and_tells_listeners() -> None:
    state = MeshState("shop", "localhost")
    seen: list[MeshSnapshot] = []
    state.subscribe(seen.append)
    first = state.snapshot
    view = ServiceView("api", Origin.LOCAL, RunState.RUNNING, Health.HEALTHY, hosts=("api",))
    services = {"api": view}
    snapshot = state.publish(services)
    services.clear()
    assert state.snapshot is snapshot is seen[-1]
    assert snapshot.revision == first.revision + 1
    assert snapshot.services["api"] is view  # the caller's dict was copied
    with pytest.raises(TypeError):
        snapshot.services["x"] = view  # type: ignore[index]
