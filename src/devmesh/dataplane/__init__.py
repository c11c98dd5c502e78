"""The agent's data plane when it is not devmesh's own proxy: nginx (`--engine nginx`).

`engine` owns an nginx master and applies route models to it (test, swap, reload, confirm, roll back,
drift); `sync` drives an engine from the agent's snapshots; `control` is how the engine sees which config
is live; `binary` finds nginx. docs/nginx-engine.md says how it behaves and why.
"""

from __future__ import annotations

from devmesh.dataplane.engine import NginxEngine
from devmesh.dataplane.results import ApplyResult, DriftReport, EngineError
from devmesh.dataplane.sync import DataplaneSync

__all__ = ["ApplyResult", "DataplaneSync", "DriftReport", "EngineError", "NginxEngine"]
